"""The scripts under examples/ run as a user would run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.slow
def test_end_to_end_example_builds_loads_fits_and_evaluates(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(  # noqa: S603
        [sys.executable, str(EXAMPLES / "end_to_end.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("tfds.load: 2 validation keyframes") for line in lines)
    assert any(line.startswith("fit: loss ") for line in lines)
    assert any(line.startswith("evaluate: frame-mAP ") for line in lines)
    assert (tmp_path / "tensorflow_datasets/ava_keyframes/v2.2/2.0.0/dataset_info.json").is_file()
    header = (tmp_path / "detections.csv").read_text().splitlines()[:1]
    assert header == [] or header[0].count(",") == 6  # AVA CSV: 7 columns
