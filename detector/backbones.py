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
_PACKAGE = "detector"


class ModelError(ValueError):
    """A model option or file that cannot be used; the message says which."""


def _resnet(blocks: list[int], block_type: str, width: float, rescaling: bool) -> keras.Model:
    # The stem has 64 channels (fixed by KerasCV) and the first stage's identity shortcut
    # needs the same width, so narrower variants keep at least 64 channels per stage.
    filters = [max(64, round(f * width)) for f in (64, 128, 256, 512)]
    return keras_cv.models.ResNetBackbone(
        stackwise_filters=filters,
        stackwise_blocks=blocks,
        stackwise_strides=[1, 2, 2, 2],
        block_type=block_type,
        include_rescaling=rescaling,
    )


def _mobilenet_v3(large: bool, width: float, rescaling: bool) -> keras.Model:
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
    return keras_cv.models.MobileNetV3Backbone(include_rescaling=rescaling, alpha=width, **config)


def _efficientnetv2_b0(width: float, rescaling: bool) -> keras.Model:
    return keras_cv.models.EfficientNetV2Backbone(
        include_rescaling=rescaling,
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


_BACKBONE_BUILDERS: dict[str, Callable[[float, bool], keras.Model]] = {
    "resnet18": lambda w, r: _resnet([2, 2, 2, 2], "basic_block", w, r),
    "resnet34": lambda w, r: _resnet([3, 4, 6, 3], "basic_block", w, r),
    "resnet50": lambda w, r: _resnet([3, 4, 6, 3], "block", w, r),
    "resnet101": lambda w, r: _resnet([3, 4, 23, 3], "block", w, r),
    "mobilenet_v3_small": lambda w, r: _mobilenet_v3(False, w, r),
    "mobilenet_v3_large": lambda w, r: _mobilenet_v3(True, w, r),
    "efficientnetv2_b0": _efficientnetv2_b0,
}
BACKBONES = tuple(_BACKBONE_BUILDERS)


def build_backbone(name: str, width: float = 1.0, *, include_rescaling: bool = True
                   ) -> keras.Model:
    """A randomly initialised KerasCV backbone (input 0..255) from its explicit config.

    `width` scales the channels (ResNet stages keep at least 64, MobileNetV3's `alpha`,
    EfficientNetV2's width coefficient): values below 1 make CPU-sized models. Without
    `include_rescaling` the input goes to the first convolution as it is.
    """
    if name not in _BACKBONE_BUILDERS:
        raise ModelError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")
    if not 0 < width <= 4:
        raise ModelError(f"backbone width must be in (0, 4], got {width}")
    return _BACKBONE_BUILDERS[name](width, include_rescaling)


# The input scaling each family's Keras Applications ImageNet weights were trained with, as
# (flip RGB to BGR, scale, offset): x' = x[..., order] * scale + offset, for x in 0..255.
_CAFFE = (True, [1.0] * 3, [-103.939, -116.779, -123.68])  # imagenet_utils' "caffe" mode
_MINUS_ONE_TO_ONE = (False, [1 / 127.5] * 3, [-1.0] * 3)  # MobileNetV3's Rescaling layer
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # EfficientNetV2-B*'s Normalization
_TORCH = (False, [1 / (255 * s) for s in _STD], [-m / s for m, s in zip(_MEAN, _STD, strict=True)])
IMAGENET_BACKBONES = (
    "resnet50", "resnet101", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnetv2_b0",
)


def _imagenet_network(architecture: str) -> tuple[keras.Model, list[str], tuple]:
    """The network for `architecture`'s Keras Applications weights, its C3-C5 layer names and
    the input scaling the weights expect."""
    if architecture in ("resnet50", "resnet101"):
        # KerasCV's ResNetBackbone pads its stem with "same" (Keras Applications pads 3, then
        # "valid") and has no convolution biases: the same weights would give other features.
        build = {"resnet50": keras.applications.ResNet50, "resnet101": keras.applications.ResNet101}
        network = build[architecture](include_top=False, weights=None)
        blocks = 6 if architecture == "resnet50" else 23
        return network, ["conv3_block4_out", f"conv4_block{blocks}_out", "conv5_block3_out"], _CAFFE
    if architecture not in IMAGENET_BACKBONES:
        raise ModelError(f"no ImageNet weights for backbone {architecture!r}; "
                         f"those with weights: {', '.join(IMAGENET_BACKBONES)}")
    network = build_backbone(architecture, include_rescaling=False)
    levels = [network.pyramid_level_inputs[f"P{i}"] for i in (3, 4, 5)]
    return network, levels, _TORCH if architecture == "efficientnetv2_b0" else _MINUS_ONE_TO_ONE


@keras.saving.register_keras_serializable(package=_PACKAGE)
class InputScaling(keras.layers.Layer):
    """`x[..., ::-1]` when `bgr`, then `x * scale + offset` per channel."""

    def __init__(self, bgr: bool, scale: list[float], offset: list[float], **kwargs):
        super().__init__(**kwargs)
        self.bgr, self.scale, self.offset = bgr, list(scale), list(offset)

    def call(self, x):
        if self.bgr:
            x = keras.ops.flip(x, axis=-1)
        return x * keras.ops.convert_to_tensor(self.scale, x.dtype) + keras.ops.convert_to_tensor(
            self.offset, x.dtype)

    def get_config(self):
        return {**super().get_config(), "bgr": self.bgr, "scale": self.scale,
                "offset": self.offset}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ImageNetBackbone(keras_cv.models.Backbone):
    """A backbone shaped for Keras Applications' ImageNet weights, taking 0..255 RGB images.

    The network is Keras Applications' ResNet, or this package's KerasCV MobileNetV3 /
    EfficientNetV2 config (the layers of Keras Applications' models, in the same order),
    behind the input scaling those weights were trained with, so a raw image gives the
    features Keras Applications gives after its `preprocess_input`. Its C3-C5 outputs are
    the layers `C3`, `C4`, `C5`. Load the weights with `detector.weights`.
    """

    def __init__(self, architecture: str = "resnet50", input_shape=(None, None, 3), **kwargs):
        network, levels, scaling = _imagenet_network(architecture)
        features = keras.Model(network.inputs, [network.get_layer(n).output for n in levels],
                               name=f"{architecture}_features")
        inputs = keras.Input(tuple(input_shape), name="images")
        scaled = InputScaling(*scaling, name="imagenet_scaling")(inputs)
        outputs = [keras.layers.Identity(name=f"C{i}")(tensor)
                   for i, tensor in zip((3, 4, 5), features(scaled), strict=True)]
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.architecture = architecture
        self.pyramid_level_inputs = {f"P{i}": f"C{i}" for i in (3, 4, 5)}

    @property
    def network(self) -> keras.Model:
        """The network up to C5, whose weights a Keras Applications file fills."""
        return self.get_layer(f"{self.architecture}_features")

    def get_config(self):
        return {**super().get_config(), "architecture": self.architecture,
                "input_shape": tuple(self.input_shape[1:])}


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
            f"{known[preset]['kaggle_handle']}; is the network reachable?): {first_line(error)}"
        ) from error
    return loaded.backbone


def _local_preset_backbone(folder: Path) -> keras.Model:
    config = folder / "config.json"
    try:
        content = json.loads(config.read_text())
        registered = content["registered_name"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelError(f"{config}: not a KerasCV preset config: {first_line(error)}") from None
    _check_inside(folder, config, content.get("weights"))
    cls = keras.saving.get_registered_object(registered)
    kinds = (keras_cv.models.Backbone, keras_cv.models.RetinaNet)
    if not isinstance(cls, type) or not issubclass(cls, kinds):
        raise ModelError(f"{config}: {registered!r} is neither a KerasCV backbone nor a RetinaNet")
    try:
        loaded = cls.from_preset(str(folder))
    except Exception as error:  # noqa: BLE001 - any missing file or mismatch is reported whole
        raise ModelError(f"{folder}: cannot load KerasCV preset: {first_line(error)}") from None
    return loaded if isinstance(loaded, keras_cv.models.Backbone) else loaded.backbone


def _check_inside(folder: Path, config: Path, weights: object) -> None:
    """A preset's ``weights`` names a file in its own folder (KerasCV joins it to the folder
    as given, so ``../../x.h5`` or an absolute path would load weights from anywhere)."""
    if weights is None:
        return
    if not isinstance(weights, str) or not weights:
        raise ModelError(f"{config}: field 'weights': expected a file name, not {weights!r}")
    inside = folder.resolve()
    target = (folder / weights).resolve()
    if Path(weights).is_absolute() or inside not in target.parents:
        raise ModelError(f"{config}: field 'weights': {weights!r} is outside the preset folder "
                         f"{folder}")


def first_line(error: BaseException) -> str:
    """The first line of an error's message (library messages run to many lines)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
