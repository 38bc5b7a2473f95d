"""Starting weights from files on disk, offline.

- Keras Applications ImageNet weights (`~/.keras/models/*.h5`, with or without top): into
  an `ImageNetBackbone`, variable by variable in layer order (the file's layers carry Keras
  Applications' names, ours KerasCV's), each shape checked.
- A whole model from `ava-detector train` (`.keras` or `.weights.h5`): every layer whose
  weights fit is copied; heads whose shapes differ (another class list) stay initialised.

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
                             f"(no layer_names attribute)")
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


def load_imagenet_weights(backbone: ImageNetBackbone, path: str | Path) -> None:
    """Fill `backbone` from a Keras Applications ImageNet `.h5` of its architecture.

    Variables are paired in order; the file may hold more layers after ours (the top, or
    MobileNetV3's last 1x1 convolution, which RetinaNet does not use). The first pair whose
    shapes differ, or a file that ends early, is a one-line `ModelError` naming both layers.
    """
    ours = [(layer.name, variable) for layer in backbone.network.layers
            for variable in layer.weights]
    # Preprocessing layers of older Keras versions may hold their constants as weights
    # (EfficientNetV2's Normalization mean and variance): ours apply them as InputScaling.
    theirs = [(layer.name, name, value) for layer in read_legacy_h5(path)
              if not layer.name.startswith(("normalization", "rescaling"))
              for name, value in layer.weights]
    what = f"{path}: not Keras Applications' {backbone.architecture} ImageNet weights"
    for (layer, variable), (their_layer, name, value) in zip(ours, theirs, strict=False):
        if tuple(variable.shape) != value.shape:
            raise ModelError(f"{what}: its layer {their_layer!r} ({name} {value.shape}) does not "
                             f"fit layer {layer!r} ({variable.path} {tuple(variable.shape)})")
    if len(theirs) < len(ours):
        raise ModelError(f"{what}: it has {len(theirs)} weights, {backbone.architecture} "
                         f"needs {len(ours)}; layer {ours[len(theirs)][0]!r} gets none")
    for (_, variable), (_, _, value) in zip(ours, theirs, strict=False):
        variable.assign(value)


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
    """The model in a `.keras` file from `ava-detector train`, or a `.weights.h5` of one
    loaded into `like(num_classes)` (the architecture of the training flags, with the file's
    number of classes)."""
    if str(path).endswith(".keras"):
        return load_model(str(path))
    try:
        with h5py.File(path, "r") as file:
            # Keras 3 names a model's layers by class in graph order: RetinaNet's box head
            # (4 outputs per anchor) is the first ConvHead, its classification head the second.
            anchors = file["layers/conv_head/prediction/vars/1"].shape[0] // 4
            outputs = file["layers/conv_head_1/prediction/vars/1"].shape[0]
    except (OSError, KeyError):
        raise ModelError(f"{path}: not a .weights.h5 of a model from ava-detector train "
                         f"(no box and classification heads found)") from None
    model = like(outputs // max(anchors, 1))
    try:
        model.load_weights(str(path))
    except (ValueError, KeyError) as error:
        raise ModelError(f"{path}: does not fit the model the flags describe (--backbone, "
                         f"--backbone-width, --fpn-channels, --head-*): "
                         f"{first_line(error)}") from None
    return model


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
            raise ModelError(f"{path}: its {name} does not fit this model's")
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


def imagenet_backbone(architecture: str, path: str | Path, *, width: float = 1.0
                      ) -> ImageNetBackbone:
    """An `ImageNetBackbone` filled from a Keras Applications ImageNet `.h5`."""
    if width != 1.0:
        raise ModelError(f"{path}: ImageNet weights are for the full-width {architecture}; "
                         f"drop --backbone-width {width:g}")
    backbone = ImageNetBackbone(architecture)
    load_imagenet_weights(backbone, path)
    return backbone
