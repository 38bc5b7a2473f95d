"""keras-retinanet snapshots (`resnet50_coco_best_v2.1.0.h5` and the like) as a starting point.

fizyr/keras-retinanet builds a ResNet50/101 from keras-resnet (`conv1`, `bn_conv1`,
`res2a_branch2a`, `bn2a_branch2a`...; ResNet101 numbers the blocks of stages 3 and 4:
`res4b1`...`res4b22`), a P3-P7 pyramid (`C3_reduced`...`C5_reduced`, `P3`...`P7`) and two
4-layer 256-channel heads (`pyramid_classification_0..3`, `pyramid_classification`,
`pyramid_regression_0..3`, `pyramid_regression`), with caffe-style input (BGR, ImageNet
mean subtracted). Mapped here, by name:

- the backbone into an `ImageNetBackbone` (Keras Applications' ResNet, whose convolutions
  are the same; their biases, absent in keras-resnet, are set to 0),
- the pyramid into `PyramidNeck`, the four convolutions of each head into `ConvHead`,
- the classification layer when the classes are as many: anchors are the same (sizes 32-512,
  scales 2^0, 2^1/3, 2^2/3, ratios 1:2, 1:1, 2:1) but listed in another order (ratio-major,
  height/width), so its output channels are permuted.

Not mapped: the box regression layer (keras-retinanet regresses corner offsets / 0.2 of the
anchor size, KerasCV centre and log-size deltas / [0.1, 0.1, 0.2, 0.2]), which starts
afresh. The first max-pooling pads differently (keras-resnet "same", Keras Applications one
pixel on every side; batch-norm epsilon 1e-5 vs 1.001e-5), so features are not identical to
keras-retinanet's: a starting point to fine-tune from, not a converter for inference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from detector.backbones import ImageNetBackbone, ModelError
from detector.model import MultiLabelRetinaNet
from detector.weights import read_legacy_h5

_BRANCHES = {0: "branch1", 1: "branch2a", 2: "branch2b", 3: "branch2c"}
_STAGE_BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
_CHANNELS, _DEPTH = 256, 4  # keras-retinanet's pyramid and head width and depth


def file_weights(path: str | Path) -> dict[tuple[str, str], np.ndarray]:
    """{(layer, variable): value} for every weight of the file, submodels' included."""
    weights = {}
    for layer in read_legacy_h5(path):
        for name, value in layer.weights:
            parts = name.split(":")[0].split("/")
            weights[parts[-2] if len(parts) > 1 else layer.name, parts[-1]] = value
    return weights


def retinanet_architecture(path: str | Path) -> dict:
    """`build_model` options for the architecture of a keras-retinanet snapshot."""
    weights = file_weights(path)
    if ("C5_reduced", "kernel") not in weights or ("conv1", "kernel") not in weights:
        raise ModelError(f"{path}: not a keras-retinanet ResNet snapshot (no C5_reduced or conv1 "
                         f"layer) nor a whole model from ava-detector train")
    architecture = "resnet101" if ("res4b22_branch2a", "kernel") in weights else "resnet50"
    return {"backbone": ImageNetBackbone(architecture), "fpn_channels": _CHANNELS,
            "head_channels": _CHANNELS, "head_depth": _DEPTH}


def load_retinanet_weights(model: MultiLabelRetinaNet, path: str | Path) -> str:
    """Copy a keras-retinanet snapshot into `model` (built with `retinanet_architecture`);
    returns a one-line report of what was loaded and what starts afresh."""
    weights = file_weights(path)
    pairs = _backbone_pairs(model.backbone) + _pyramid_pairs(model) + _head_pairs(model)
    classes = weights["pyramid_classification", "kernel"].shape[-1] // 9
    for theirs, variable in pairs:
        value = weights.get(theirs)
        if value is None and theirs[1] == "bias" and variable.path.endswith("_conv/bias"):
            value = np.zeros(variable.shape, "float32")  # keras-resnet convolutions: no bias
        if value is None:
            raise ModelError(f"{path}: no weight {'/'.join(theirs)} (not a keras-retinanet "
                             f"{model.backbone.architecture} snapshot?)")
        if tuple(variable.shape) != value.shape:
            raise ModelError(f"{path}: layer {theirs[0]!r} {value.shape} does not fit "
                             f"{variable.path} {tuple(variable.shape)}")
        variable.assign(value)
    fresh = ["the box regression layer (another box encoding)"]
    if classes == model.num_classes:
        head = model.classification_head.prediction
        head.kernel.assign(_anchor_order(weights["pyramid_classification", "kernel"], classes))
        head.bias.assign(_anchor_order(weights["pyramid_classification", "bias"], classes))
    else:
        fresh.append(f"the classification layer ({classes} classes in the file, "
                     f"{model.num_classes} here)")
    return (f"{path}: loaded keras-retinanet's {model.backbone.architecture}, pyramid and head "
            f"convolutions; starting afresh: {', '.join(fresh)}")


def _backbone_pairs(backbone: ImageNetBackbone) -> list:
    network = backbone.network
    pairs = _conv_pairs("conv1", network.get_layer("conv1_conv"))
    pairs += _batch_norm_pairs("bn_conv1", network.get_layer("conv1_bn"))
    numbered = {"resnet50": (), "resnet101": (3, 4)}[backbone.architecture]
    for stage, blocks in enumerate(_STAGE_BLOCKS[backbone.architecture], 2):
        for block in range(blocks):
            letter = f"b{block}" if block and stage in numbered else chr(ord("a") + block)
            for index, branch in _BRANCHES.items():
                if index == 0 and block:
                    continue  # only the first block of a stage has a projection shortcut
                ours = f"conv{stage}_block{block + 1}_{index}"
                pairs += _conv_pairs(f"res{stage}{letter}_{branch}",
                                     network.get_layer(f"{ours}_conv"))
                pairs += _batch_norm_pairs(f"bn{stage}{letter}_{branch}",
                                           network.get_layer(f"{ours}_bn"))
    return pairs


def _batch_norm_pairs(theirs: str, layer) -> list:
    return [((theirs, name), getattr(layer, name))
            for name in ("gamma", "beta", "moving_mean", "moving_variance")]


def _conv_pairs(theirs: str, conv) -> list:
    return [((theirs, "kernel"), conv.kernel), ((theirs, "bias"), conv.bias)]


def _pyramid_pairs(model: MultiLabelRetinaNet) -> list:
    neck = model.feature_pyramid
    pairs = []
    for level, lateral, output in zip((3, 4, 5), neck.lateral, neck.output_convs, strict=True):
        pairs += _conv_pairs(f"C{level}_reduced", lateral) + _conv_pairs(f"P{level}", output)
    return pairs + _conv_pairs("P6", neck.conv_p6) + _conv_pairs("P7", neck.conv_p7)


def _head_pairs(model: MultiLabelRetinaNet) -> list:
    pairs = []
    for name, head in (("regression", model.box_head),
                       ("classification", model.classification_head)):
        for index, conv in enumerate(head.convs):
            pairs += _conv_pairs(f"pyramid_{name}_{index}", conv)
    return pairs


def _anchor_order(value: np.ndarray, classes: int) -> np.ndarray:
    """keras-retinanet's classification outputs (anchor = ratio * 3 + scale, ratio h/w in
    0.5, 1, 2) in KerasCV's order (anchor = scale * 3 + ratio, ratio w/h in 0.5, 1, 2)."""
    by_anchor = value.reshape(*value.shape[:-1], 3, 3, classes)  # ratio, scale, class
    # KerasCV's ratio w/h 0.5, 1, 2 are keras-retinanet's h/w ratios 2, 1, 0.5: reversed.
    reordered = np.swapaxes(by_anchor[..., ::-1, :, :], -3, -2)  # scale, ratio, class
    return reordered.reshape(value.shape)
