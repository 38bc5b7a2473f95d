"""Process-wide settings of a training run, chosen for the device and put back afterwards.

`--mixed-precision`: auto is float16 on a GPU and off on a CPU, where bfloat16 was not
reliably faster and float16 was reported up to about 80 times slower (benchmarks/README.md).
No TensorFlow import at module level: the CLI reads `MIXED_PRECISION` for its parser.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

MIXED_PRECISION = ("auto", "float16", "bfloat16", "off")


def precision_policy(choice: str, *, gpu: bool | None = None) -> str:
    """The Keras dtype policy for `--mixed-precision` `choice` (see MIXED_PRECISION) on this
    machine (`gpu`: whether it has one; default: ask TensorFlow). One line on stderr when the
    choice is known to be slow here."""
    if choice not in MIXED_PRECISION:
        raise ValueError(f"--mixed-precision {choice!r}: expected one of "
                         f"{', '.join(MIXED_PRECISION)}.")
    if gpu is None:
        import tensorflow as tf

        gpu = bool(tf.config.list_physical_devices("GPU"))
    if choice == "auto":
        return "mixed_float16" if gpu else "float32"
    if choice == "float16" and not gpu:
        print("warning: --mixed-precision float16 on a CPU can train up to about 80 times slower "
              "than off (benchmarks/README.md); use auto or off here.", file=sys.stderr)
    return "float32" if choice == "off" else f"mixed_{choice}"


@contextmanager
def training_globals(policy: str, seed: int | None) -> Iterator[None]:
    """Keras's dtype policy, and with `seed` the random seeds and deterministic ops, set for
    the duration; the policy and the op determinism are restored afterwards."""
    import keras
    import tensorflow as tf
    from tensorflow.python.framework.config import (  # TF 2.21 exports only `enable`
        disable_op_determinism,
        is_op_determinism_enabled,
    )

    policy_before = keras.mixed_precision.global_policy()
    determinism_before = is_op_determinism_enabled()
    keras.mixed_precision.set_global_policy(policy)
    if seed is not None:
        keras.utils.set_random_seed(seed)
        tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(policy_before)
        if not determinism_before:
            disable_op_determinism()
