"""Every place this package leans on KerasCV 0.9 internals, declared once.

KerasCV exposes RetinaNet's seams (label encoder, prediction decoder, pyramid, heads) but
not the helpers and constants behind them. The names below are private (`keras_cv.src`)
and may move in another KerasCV release; if an upgrade breaks an import, this is the only
file to fix. Nothing else in the package imports from `keras_cv.src`.
"""

from __future__ import annotations

# The box-delta encoder KerasCV's own RetinaNet label encoder uses; the multi-label encoder
# must encode exactly as KerasCV's `RetinaNet.decode_predictions` decodes.
from keras_cv.src.bounding_box.converters import _encode_box_to_deltas as encode_box_to_deltas

# The box variance `RetinaNet.decode_predictions` decodes with. It is a module constant there,
# not a model option, so the label encoder must be given this very value (not a copy of it).
from keras_cv.src.models.object_detection.retinanet.retinanet import BOX_VARIANCE

# Which preset names are RetinaNet presets (the others are backbone presets).
from keras_cv.src.models.object_detection.retinanet.retinanet_presets import retinanet_presets

# Writes a layer as a preset folder (config.json, model.weights.h5, metadata.json), the
# layout `from_preset` reads from a local directory.
from keras_cv.src.utils.preset_utils import save_to_preset

# Gathers each anchor's matched box and classes (KerasCV's label encoder uses it too).
from keras_cv.src.utils.target_gather import _target_gather as target_gather

__all__ = [
    "BOX_VARIANCE",
    "encode_box_to_deltas",
    "retinanet_presets",
    "save_to_preset",
    "target_gather",
]
