"""AVA Actions keyframes: label maps, annotations, videos, frames and the TFDS builder.

Importing the package is cheap: each name below is imported from its module on first use,
so ``ava-keyframes labelmap`` does not load TensorFlow Datasets or pandas. The TFDS dataset
``ava_keyframes`` is still registered by ``import ava_keyframes`` (so ``tfds.load`` and
``tfds build --imports ava_keyframes`` find it): at once when TensorFlow Datasets is
already imported, else right after it is.
"""

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from ava_keyframes.import_hooks import import_after

try:
    __version__ = version("ava-keyframes")  # pyproject.toml's, the one source of truth
except PackageNotFoundError:  # a source tree on sys.path that pip never installed
    __version__ = "0+unknown"

_BUILDER_MODULE = "ava_keyframes.ava_keyframes_dataset_builder"
_TFDS = "tensorflow_datasets"

_EXPORTS = {
    "annotations": ["AnnotationError", "Annotations", "Person", "Rejection", "check_video_id",
                    "keyframe_key", "parse_keyframe_key", "read_annotations", "read_excluded"],
    "ava_keyframes_dataset_builder": ["AvaKeyframesConfig", "Builder"],
    "export": ["export_retinanet_csv"],
    "features": ["MultiHotClassLabel", "keyframe_features"],
    "frames": ["KeyframeError", "MissingKeyframes", "extract_keyframes", "save_keyframes"],
    "labelmap": ["LabelMap", "LabelMapError", "default_labelmap_path",
                 "evaluation_labelmap_path", "read_labelmap", "write_classes_csv"],
    "media": ["VideoError", "check_video", "ffmpeg_binary"],
    "plan": ["pixel_box"],
    "settings": ["FetchSettings"],
    "sources": ["Downloaded", "FetchResult", "VideoCache", "download"],
    "stamp": ["read_frame_stamp", "write_stamped_video"],
    "synth": ["CorpusInfo", "make_corpus"],
    "csvworld": ["make_csv_corpus", "plan_world"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'ava_keyframes' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ava_keyframes.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


import_after(_TFDS, _BUILDER_MODULE)
