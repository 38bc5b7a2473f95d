"""Starting weights from files on disk, offline.

- Keras Applications ImageNet weights (`~/.keras/models/*.h5`, with or without top): into
  an `ImageNetBackbone`, variable by variable in layer order (the file's layers carry Keras
  Applications' names, ours KerasCV's), each shape checked.
- A whole model from `ava-detector train` (`.keras` or `.weights.h5`): every layer whose
  weights fit is copied; heads whose shapes differ (another class list) stay initialised.

Backbone weights come in two layouts: the legacy `.h5` of Keras Applications' download cache,
and Keras 3's `.weights.h5` (`model.save_weights`), whose groups `layers/<name>/vars/<i>` are
stored in name order, so their layer order is taken from the Keras Applications model itself.
Files in the legacy `.h5` layout hold a `layer_names` attribute (split into `layer_names0`,
`layer_names1`... when long) and, per layer, a group with a `weight_names` attribute; a
whole-model `.h5` keeps them under `model_weights`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from detector.backbones import ImageNetBackbone, ModelError, first_line
from detector.model import MultiLabelRetinaNet, load_model


@dataclass
class H5Layer:
    """One layer with weights in a legacy `.h5` file, in file order."""

    name: str
    weights: list[tuple[str, np.ndarray]] = field(default_factory=list)


def read_legacy_h5(path: str | Path) -> list[H5Layer]:
    """The layers that have weights, in the file's order; `ModelError` if it is not such a file."""
    with _legacy_group(path) as group:
        if group is None:
            raise ModelError(f"{path}: not a Keras weights file in the legacy .h5 layout "
                             f"(no layer_names attribute).")
        layers = []
        try:
            for name in _attribute(group, "layer_names"):
                weight_names = _attribute(group[name], "weight_names") or []
                if weight_names:
                    layers.append(H5Layer(name, [(w, np.asarray(group[name][w]))
                                                 for w in weight_names]))
        except KeyError as error:
            raise ModelError(f"{path}: damaged weights file: {first_line(error)}") from None
        return layers


@contextmanager
def _legacy_group(path: str | Path) -> Iterator[h5py.Group | None]:
    """The group of a legacy `.h5` that lists its layers, or None for another HDF5 file."""
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise ModelError(f"{path}: cannot read weights: {first_line(error)}") from None
    with file:
        group = file["model_weights"] if "model_weights" in file else file
        yield group if _attribute(group, "layer_names") is not None else None


def _attribute(group: h5py.Group, name: str) -> list[str] | None:
    """A string-list attribute, joined from its chunks (`name0`, `name1`...) when split."""
    if name in group.attrs:
        values = list(group.attrs[name])
    elif f"{name}0" in group.attrs:
        values, index = [], 0
        while f"{name}{index}" in group.attrs:
            values.extend(group.attrs[f"{name}{index}"])
            index += 1
    else:
        return None
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


# Keras Applications' model per backbone with ImageNet weights (`IMAGENET_BACKBONES`).
_APPLICATIONS = {"resnet50": "ResNet50", "resnet101": "ResNet101",
                 "mobilenet_v3_small": "MobileNetV3Small", "mobilenet_v3_large": "MobileNetV3Large",
                 "efficientnetv2_b0": "EfficientNetV2B0"}


def read_keras3_h5(path: str | Path, architecture: str) -> list[H5Layer]:
    """The layers of a Keras 3 `.weights.h5` of Keras Applications' `architecture`, in that
    model's order (a layer missing from the file ends the list); `ModelError` otherwise.

    Keras 3 keys a model's layers by class, numbered in layer order (`conv2d`, `conv2d_1`...,
    as `keras.src.saving.saving_lib` names them), so the order is that of the model built."""
    import keras
    from keras.src.utils.naming import to_snake_case

    build = getattr(keras.applications, _APPLICATIONS[architecture])
    reference = build(include_top=False, weights=None, input_shape=(224, 224, 3))
    counts: dict[str, int] = {}
    layers = []
    try:
        with h5py.File(path, "r") as file:
            stored = file["layers"]
            for layer in reference.layers:
                key = to_snake_case(type(layer).__name__)
                counts[key] = counts.get(key, -1) + 1
                key = f"{key}_{counts[key]}" if counts[key] else key
                if not layer.weights:
                    continue
                if key not in stored:
                    break
                found = stored[key]["vars"]
                layers.append(H5Layer(layer.name, [(f"{key}/vars/{i}", np.asarray(found[str(i)]))
                                                   for i in range(len(found))]))
    except (OSError, KeyError) as error:
        raise ModelError(f"{path}: not a Keras 3 .weights.h5 of Keras Applications' "
                         f"{architecture} ({first_line(error)}).") from None
    return layers


def _backbone_layers(path: str | Path, architecture: str) -> list[H5Layer]:
    """The layers of either layout; `ModelError` naming both when the file is neither."""
    if is_legacy_h5(path):
        return read_legacy_h5(path)
    if _has_layers_group(path):
        return read_keras3_h5(path, architecture)
    raise ModelError(f"{path}: not Keras Applications weights. --backbone-weights takes a "
                     "legacy .h5 (as in ~/.keras/models/, with a layer_names attribute) or a "
                     "Keras 3 .weights.h5 (model.save_weights, with a layers group).")


def _has_layers_group(path: str | Path) -> bool:
    with h5py.File(path, "r") as file:
        return isinstance(file.get("layers"), h5py.Group)


def load_imagenet_weights(backbone: ImageNetBackbone, path: str | Path) -> str:
    """Fill `backbone` from Keras Applications ImageNet weights of its architecture (legacy
    `.h5` or Keras 3 `.weights.h5`); returns a line saying what was loaded and skipped.

    Variables are paired in order; the file may hold more layers after ours (the top, or
    MobileNetV3's last 1x1 convolution, which RetinaNet does not use). The first pair whose
    shapes differ, or a file that ends early, is a one-line `ModelError` naming both layers.
    """
    ours = [(layer.name, variable) for layer in backbone.network.layers
            for variable in layer.weights]
    layers = _backbone_layers(path, backbone.architecture)
    # Preprocessing layers of older Keras versions may hold their constants as weights
    # (EfficientNetV2's Normalization mean and variance): ours apply them as InputScaling.
    scaling = [layer for layer in layers if layer.name.startswith(("normalization", "rescaling"))]
    theirs = [(layer.name, name, value) for layer in layers if layer not in scaling
              for name, value in layer.weights]
    what = f"{path}: not Keras Applications' {backbone.architecture} ImageNet weights"
    for (layer, variable), (their_layer, name, value) in zip(ours, theirs, strict=False):
        if tuple(variable.shape) != value.shape:
            raise ModelError(f"{what}: its layer {their_layer!r} ({name} {value.shape}) does not "
                             f"fit layer {layer!r} ({variable.path} {tuple(variable.shape)}).")
    if len(theirs) < len(ours):
        raise ModelError(f"{what}: it has {len(theirs)} weights, {backbone.architecture} "
                         f"needs {len(ours)}; layer {ours[len(theirs)][0]!r} gets none.")
    for (_, variable), (_, _, value) in zip(ours, theirs, strict=False):
        variable.assign(value)
    matched = len({name for name, _ in ours})
    extra = sorted({layer for layer, _, _ in theirs[len(ours):]}, key=[
        layer.name for layer in layers].index)
    skipped = [layer.name for layer in scaling] + extra
    return (f"{path}: loaded {len(ours)} weights of {matched} layers into the "
            f"{backbone.architecture} backbone; skipped {len(skipped)} layers of the file"
            + (f" ({', '.join(skipped[:5])}{', ...' if len(skipped) > 5 else ''})"
               if skipped else ""))


# The parts of a RetinaNet, in the order they are copied from a whole model.
_PARTS = {"backbone": "backbone", "feature_pyramid": "feature pyramid", "box_head": "box head",
          "classification_head": "classification head"}


def is_legacy_h5(path: str | Path) -> bool:
    """Whether `path` is a weights file in the legacy `.h5` layout (Keras Applications,
    keras-retinanet), rather than a `.keras` or Keras 3 `.weights.h5` of a whole model."""
    if str(path).endswith(".keras"):
        return False
    with _legacy_group(path) as group:
        return group is not None


def saved_model(
    path: str | Path, like: Callable[[int], MultiLabelRetinaNet]
) -> MultiLabelRetinaNet:
    """The model in a `.keras` file from `ava-detector train`, or a `.weights.h5` of one: its
    architecture from a sibling config when there is one (`sibling_config`), else
    `like(num_classes)` (the architecture of the training flags, with the file's number of
    classes)."""
    if str(path).endswith(".keras"):
        return load_model(str(path))
    config = sibling_config(path)
    if config is not None:
        model = _model_of_config(config)
        print(f"{path}: architecture from {config}")
    else:
        model = like(_num_classes(path))
    try:
        model.load_weights(str(path))
    except (ValueError, KeyError):
        described = (f"described by {config}" if config is not None else "the flags describe "
                     "(--backbone, --backbone-width, --image-size, --fpn-channels, --head-*)")
        raise ModelError(f"{path}: its weights do not fit the model {described}. Give the "
                         "flags it was trained with, or put its .keras or config.json beside "
                         "it.") from None
    return model


def sibling_config(path: str | Path) -> Path | None:
    """Where a `.weights.h5`'s architecture can be read: `<name>.keras` beside
    `<name>.weights.h5` (a snapshot), else a `config.json` in its folder (`model.to_json()`,
    or a KerasCV preset folder's); None when neither is there."""
    path = Path(path)
    stem = path.name.removesuffix(".h5").removesuffix(".weights")
    for candidate in (path.with_name(f"{stem}.keras"), path.with_name("config.json")):
        if candidate.is_file():
            return candidate
    return None


def _model_of_config(config: Path) -> MultiLabelRetinaNet:
    if config.suffix == ".keras":
        return load_model(str(config))
    import keras

    try:
        model = keras.models.model_from_json(config.read_text(encoding="utf-8"))
    except (ValueError, KeyError, TypeError) as error:
        raise ModelError(f"{config}: not the config of a model from ava-detector train "
                         f"({first_line(error)}).") from None
    if not isinstance(model, MultiLabelRetinaNet):
        raise ModelError(f"{config}: not the config of a model from ava-detector train.")
    return model


def _num_classes(path: str | Path) -> int:
    """The classes of a `.weights.h5` of a RetinaNet, from its heads' output sizes."""
    try:
        with h5py.File(path, "r") as file:
            # Keras 3 names a model's layers by class in graph order: RetinaNet's box head
            # (4 outputs per anchor) is the first ConvHead, its classification head the second.
            anchors = file["layers/conv_head/prediction/vars/1"].shape[0] // 4
            outputs = file["layers/conv_head_1/prediction/vars/1"].shape[0]
    except (OSError, KeyError):
        raise ModelError(f"{path}: not a .weights.h5 of a model from ava-detector train "
                         f"(no box and classification heads found).") from None
    return outputs // max(anchors, 1)


def architecture_of(model: MultiLabelRetinaNet) -> dict:
    """`build_model` options for a model of the same architecture and detection settings
    (with a fresh backbone)."""
    backbone = model.backbone.__class__.from_config(model.backbone.get_config())
    head, decoder = model.classification_head, model.prediction_decoder
    return {"backbone": backbone, "fpn_channels": model.feature_pyramid.channels,
            "head_channels": head.channels, "head_depth": head.depth,
            "max_detections": decoder.max_detections,
            "confidence_threshold": decoder.confidence_threshold}


def copy_parts(source: MultiLabelRetinaNet, target: MultiLabelRetinaNet, path: str | Path
               ) -> str:
    """Copy every part of `source` into `target` that fits; the classification head only
    for the same classes. Returns a one-line report of what was loaded and re-initialised."""
    same_classes = source.num_classes == target.num_classes and (
        not str(path).endswith(".keras") or source.class_names == target.class_names)
    loaded, fresh = [], []
    for attribute, name in _PARTS.items():
        theirs, ours = getattr(source, attribute).weights, getattr(target, attribute).weights
        fits = len(theirs) == len(ours) and all(
            tuple(a.shape) == tuple(b.shape) for a, b in zip(theirs, ours, strict=True))
        if not fits and attribute != "classification_head":
            raise ModelError(f"{path}: its {name} does not fit this model's.")
        if fits and (same_classes or attribute != "classification_head"):
            for variable, value in zip(ours, theirs, strict=True):
                variable.assign(value)
            loaded.append(name)
        else:
            fresh.append(name)
    report = f"{path}: loaded {', '.join(loaded)}"
    if fresh:
        report += (f"; re-initialised the {' and '.join(fresh)} ({source.num_classes} classes "
                   f"in the file, {target.num_classes} here, other names or order)")
    return report


def imagenet_backbone(architecture: str, path: str | Path, *, width: float = 1.0,
                      report: Callable[[str], None] | None = None) -> ImageNetBackbone:
    """An `ImageNetBackbone` filled from Keras Applications ImageNet weights (legacy `.h5` or
    Keras 3 `.weights.h5`); `report` gets the line saying what was loaded and skipped."""
    if width != 1.0:
        raise ModelError(f"{path}: ImageNet weights are for the full-width {architecture}; "
                         f"drop --backbone-width {width:g}.")
    backbone = ImageNetBackbone(architecture)
    loaded = load_imagenet_weights(backbone, path)
    if report is not None:
        report(loaded)
    return backbone
