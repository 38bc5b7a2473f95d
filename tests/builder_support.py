"""Constants shared by the builder's test modules."""

from __future__ import annotations

import sys
from pathlib import Path

from ava_keyframes import ava_keyframes_dataset_builder as builder_module
from ava_keyframes.labelmap import default_labelmap_path, read_labelmap

DATASET_FOLDER = Path(builder_module.__file__).parent
TFDS_CLI = str(Path(sys.executable).parent / "tfds")
LABELMAP = read_labelmap(default_labelmap_path())
SIZE = (96, 72)
