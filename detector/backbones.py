"""Backbones: seven explicit configs (no download), KerasCV presets, a fixed input size.

Every backbone is a KerasCV `Backbone` taking 0..255 images and naming its C3-C5 outputs in
`pyramid_level_inputs`, which is all RetinaNet asks of it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import keras
import keras_cv

from detector.kerascv import retinanet_presets

BOX_FORMAT = "xyxy"


class ModelError(ValueError):
    """A model option or file that cannot be used; the message says which."""


def _resnet(blocks: list[int], block_type: str, width: float) -> keras.Model:
    # The stem has 64 channels (fixed by KerasCV) and the first stage's identity shortcut
    # needs the same width, so narrower variants keep at least 64 channels per stage.
    filters = [max(64, round(f * width)) for f in (64, 128, 256, 512)]
    return keras_cv.models.ResNetBackbone(
        stackwise_filters=filters,
        stackwise_blocks=blocks,
        stackwise_strides=[1, 2, 2, 2],
        block_type=block_type,
        include_rescaling=True,
    )


def _mobilenet_v3(large: bool, width: float) -> keras.Model:
    if large:
        config = dict(
            stackwise_expansion=[1, 4, 3, 3, 3, 3, 6, 2.5, 2.3, 2.3, 6, 6, 6, 6, 6],
            stackwise_filters=[16, 24, 24, 40, 40, 40, 80, 80, 80, 80, 112, 112, 160, 160, 160],
            stackwise_kernel_size=[3, 3, 3, 5, 5, 5, 3, 3, 3, 3, 3, 3, 5, 5, 5],
            stackwise_stride=[1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1],
            stackwise_se_ratio=[None] * 3 + [0.25] * 3 + [None] * 4 + [0.25] * 5,
            stackwise_activation=["relu"] * 6 + ["hard_swish"] * 9,
        )
    else:
        config = dict(
            stackwise_expansion=[1, 72.0 / 16, 88.0 / 24, 4, 6, 6, 3, 3, 6, 6, 6],
            stackwise_filters=[16, 24, 24, 40, 40, 40, 48, 48, 96, 96, 96],
            stackwise_kernel_size=[3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 5],
            stackwise_stride=[2, 2, 1, 2, 1, 1, 1, 1, 2, 1, 1],
            stackwise_se_ratio=[0.25, None, None] + [0.25] * 8,
            stackwise_activation=["relu"] * 3 + ["hard_swish"] * 8,
        )
    return keras_cv.models.MobileNetV3Backbone(include_rescaling=True, alpha=width, **config)


def _efficientnetv2_b0(width: float) -> keras.Model:
    return keras_cv.models.EfficientNetV2Backbone(
        include_rescaling=True,
        width_coefficient=width,
        depth_coefficient=1.0,
        stackwise_kernel_sizes=[3, 3, 3, 3, 3, 3],
        stackwise_num_repeats=[1, 2, 2, 3, 5, 8],
        stackwise_input_filters=[32, 16, 32, 48, 96, 112],
        stackwise_output_filters=[16, 32, 48, 96, 112, 192],
        stackwise_expansion_ratios=[1, 4, 4, 4, 6, 6],
        stackwise_squeeze_and_excite_ratios=[0.0, 0.0, 0.0, 0.25, 0.25, 0.25],
        stackwise_strides=[1, 2, 2, 2, 1, 2],
        stackwise_conv_types=["fused"] * 3 + ["unfused"] * 3,
    )


_BACKBONE_BUILDERS: dict[str, Callable[[float], keras.Model]] = {
    "resnet18": lambda w: _resnet([2, 2, 2, 2], "basic_block", w),
    "resnet34": lambda w: _resnet([3, 4, 6, 3], "basic_block", w),
    "resnet50": lambda w: _resnet([3, 4, 6, 3], "block", w),
    "resnet101": lambda w: _resnet([3, 4, 23, 3], "block", w),
    "mobilenet_v3_small": lambda w: _mobilenet_v3(False, w),
    "mobilenet_v3_large": lambda w: _mobilenet_v3(True, w),
    "efficientnetv2_b0": _efficientnetv2_b0,
}
BACKBONES = tuple(_BACKBONE_BUILDERS)


def build_backbone(name: str, width: float = 1.0) -> keras.Model:
    """A randomly initialised KerasCV backbone (input 0..255) from its explicit config.

    `width` scales the channels (ResNet stages keep at least 64, MobileNetV3's `alpha`,
    EfficientNetV2's width coefficient): values below 1 make CPU-sized models.
    """
    if name not in _BACKBONE_BUILDERS:
        raise ModelError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")
    if not 0 < width <= 4:
        raise ModelError(f"backbone width must be in (0, 4], got {width}")
    return _BACKBONE_BUILDERS[name](width)


def with_input_size(backbone: keras.Model, image_size: int) -> keras.Model:
    """The same backbone config with a fixed square input (RetinaNet needs static shapes)."""
    shape = (image_size, image_size, 3)
    if tuple(backbone.input_shape[1:]) == shape:
        return backbone
    config = backbone.get_config()
    config["input_shape"] = shape
    rebuilt = backbone.__class__.from_config(config)
    if backbone.weights:
        rebuilt.set_weights(backbone.get_weights())
    return rebuilt



def preset_backbone(preset: str) -> keras.Model:
    """The backbone of a KerasCV preset: a folder on disk or a KerasCV preset name.

    A folder is what Kaggle serves for a preset (`config.json`, `model.weights.h5`,
    `metadata.json`), e.g. copied by hand or written by `save_to_preset`; it loads without
    network. It may hold a backbone or a KerasCV RetinaNet, whose backbone is taken. A name
    downloads from Kaggle; without network access this fails, and the error says so rather
    than showing the download traceback.
    """
    if Path(preset).is_dir():
        return _local_preset_backbone(Path(preset))
    known = keras_cv.models.RetinaNet.presets
    if preset not in known:
        raise ModelError(
            f"unknown KerasCV preset {preset!r} and no such folder; "
            f"known: {', '.join(sorted(known))}"
        )
    # A backbone preset becomes a KerasCV RetinaNet around it, which needs head settings.
    task_options = (
        {} if preset in retinanet_presets else {"num_classes": 1, "bounding_box_format": BOX_FORMAT}
    )
    try:
        loaded = keras_cv.models.RetinaNet.from_preset(preset, **task_options)
    except Exception as error:  # noqa: BLE001 - any download/parse failure is reported whole
        raise ModelError(
            f"cannot load KerasCV preset {preset!r} (it downloads from "
            f"{known[preset]['kaggle_handle']}; is the network reachable?): {_first_line(error)}"
        ) from error
    return loaded.backbone


def _local_preset_backbone(folder: Path) -> keras.Model:
    config = folder / "config.json"
    try:
        registered = json.loads(config.read_text())["registered_name"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelError(f"{config}: not a KerasCV preset config: {_first_line(error)}") from None
    cls = keras.saving.get_registered_object(registered)
    kinds = (keras_cv.models.Backbone, keras_cv.models.RetinaNet)
    if not isinstance(cls, type) or not issubclass(cls, kinds):
        raise ModelError(f"{config}: {registered!r} is neither a KerasCV backbone nor a RetinaNet")
    try:
        loaded = cls.from_preset(str(folder))
    except Exception as error:  # noqa: BLE001 - any missing file or mismatch is reported whole
        raise ModelError(f"{folder}: cannot load KerasCV preset: {_first_line(error)}") from None
    return loaded if isinstance(loaded, keras_cv.models.Backbone) else loaded.backbone


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
