"""`import ava_keyframes`: cheap for the verbs that need little, and still registers the dataset."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ava_keyframes

DATA = Path(__file__).parent / "data" / "ava"
EXCERPT = "ava_val_v2.2_excerpt_1j20qq1JyX4_0902-1014.csv"


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],  # noqa: S603
                          capture_output=True, text=True, timeout=300, env=env)


def test_labelmap_and_inspect_verbs_import_neither_tfds_nor_pandas():
    result = _python(f"""
        import sys
        from ava_keyframes.cli import main
        assert main(["labelmap", {str(DATA / "ava_action_list_v2.2.pbtxt")!r}]) == 0
        heavy = {{"tensorflow_datasets", "tensorflow", "pandas"}} & set(sys.modules)
        assert not heavy, heavy
        assert main(["inspect", {str(DATA / EXCERPT)!r}]) == 0
        heavy = {{"tensorflow_datasets", "tensorflow", "pandas"}} & set(sys.modules)
        assert not heavy, heavy
    """)
    assert result.returncode == 0, result.stderr[-2000:]


def test_import_registers_the_dataset_before_or_after_tfds():
    result = _python("""
        import sys
        import ava_keyframes
        from ava_keyframes import annotations, plan  # submodules, whatever __init__ holds
        assert (annotations.__name__, plan.__name__) == ("ava_keyframes.annotations",
                                                         "ava_keyframes.plan")
        assert "tensorflow_datasets" not in sys.modules
        import tensorflow_datasets as tfds
        assert tfds.builder_cls("ava_keyframes").__module__ == (
            "ava_keyframes.ava_keyframes_dataset_builder")
        assert ava_keyframes.Builder is tfds.builder_cls("ava_keyframes")
    """)
    assert result.returncode == 0, result.stderr[-2000:]


def test_names_resolve_lazily_and_unknown_names_fail():
    assert ava_keyframes.read_labelmap.__module__ == "ava_keyframes.labelmap"
    assert set(ava_keyframes.__all__) <= set(dir(ava_keyframes))
    for name in ava_keyframes.__all__:
        assert getattr(ava_keyframes, name) is not None
    try:
        ava_keyframes.no_such_name  # noqa: B018
    except AttributeError as error:
        assert "no_such_name" in str(error)
    else:
        raise AssertionError("an unknown name resolved")


@pytest.mark.slow
def test_any_module_imported_first_registers_the_dataset():
    """A module that imports TFDS itself (features, export) triggers the registration while
    it is still being initialized: the builder must not need its names yet."""
    for module in ("features", "export", "plan", "frames"):
        result = _python(f"""
            import ava_keyframes.{module}
            import tensorflow_datasets as tfds
            assert "ava_keyframes" in tfds.list_builders()
        """)
        assert result.returncode == 0, (module, result.stderr[-2000:])
