"""`--mixed-precision` per device, and the process-wide settings a training run puts back."""

from __future__ import annotations

import keras
import pytest
from tensorflow.python.framework.config import is_op_determinism_enabled

from detector.cli import build_parser
from detector.precision import precision_policy, training_globals
from detector.train import fit_verbosity


@pytest.mark.parametrize(("choice", "gpu", "policy"), [
    ("auto", True, "mixed_float16"), ("auto", False, "float32"),
    ("float16", True, "mixed_float16"), ("bfloat16", False, "mixed_bfloat16"),
    ("off", True, "float32"),
])
def test_each_choice_has_its_policy_on_each_device(choice, gpu, policy, capsys):
    assert precision_policy(choice, gpu=gpu) == policy
    assert capsys.readouterr().err == ""


def test_float16_on_a_cpu_warns_in_one_line(capsys):
    assert precision_policy("float16", gpu=False) == "mixed_float16"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "80 times slower" in err


def test_the_flag_defaults_to_auto_and_a_bare_flag_means_auto():
    parser = build_parser()
    base = ["train", "--dataset", "d"]
    assert parser.parse_args(base).mixed_precision == "auto"
    assert parser.parse_args([*base, "--mixed-precision"]).mixed_precision == "auto"
    assert parser.parse_args([*base, "--mixed-precision", "bfloat16"]).mixed_precision \
        == "bfloat16"


def test_training_globals_puts_policy_and_determinism_back():
    before = keras.mixed_precision.global_policy().name
    assert not is_op_determinism_enabled()
    with training_globals("mixed_bfloat16", seed=3):
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
        assert is_op_determinism_enabled()
    assert keras.mixed_precision.global_policy().name == before
    assert not is_op_determinism_enabled()


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for shown in ("training epochs (default: 50)", "images per step (default: 8)",
                  "Adam learning rate (default: 0.0001)", "(default: auto)"):
        assert shown in out, shown


def test_fit_output_is_plain_lines_when_not_a_terminal():
    assert fit_verbosity(1, "auto", terminal=True) == 1  # Keras's bar
    assert fit_verbosity(1, "auto", terminal=False) == 2  # a line per epoch: no \r, no colour
    assert fit_verbosity("auto", "plain", terminal=True) == 2
    assert fit_verbosity(1, "bar", terminal=False) == 1
    assert fit_verbosity(0, "bar", terminal=True) == 0
    assert fit_verbosity(2, "bar", terminal=True) == 2
    args = build_parser().parse_args(["train", "--dataset", "d", "--fit-verbose", "2",
                                      "--log-format", "plain"])
    assert (args.fit_verbose, args.log_format) == (2, "plain")
