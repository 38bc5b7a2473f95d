"""detector.keras_retinanet: a snapshot with keras-retinanet's layer names and shapes.

The file is written the way Keras 2 saved keras-retinanet's training models (`model.save`:
a `model_weights` group, the backbone's and pyramid's layers at the top, the heads inside
`regression_submodel` and `classification_submodel`), with the names and shapes of
fizyr/keras-retinanet's `models/retinanet.py` and keras-resnet's ResNet50 (conv1, bn_conv1,
res2a_branch2a, bn2a_branch2a..., no convolution biases in the backbone).
"""

from __future__ import annotations

from types import SimpleNamespace

import h5py
import keras_cv
import numpy as np
import pytest

from detector import model as M
from detector.keras_retinanet import _anchor_order
from detector.train import TrainOptions, _new_model

SIZE = 64


def _conv(name: str, size: int, inputs: int, outputs: int, rng, bias: bool = True) -> list:
    weights = [(f"{name}/kernel:0", rng.normal(0, 0.05, (size, size, inputs, outputs)))]
    return weights + ([(f"{name}/bias:0", rng.normal(0, 0.05, outputs))] if bias else [])


def _bn(name: str, channels: int, rng) -> list:
    return [(f"{name}/{v}:0", rng.uniform(0.5, 1.5, channels))
            for v in ("gamma", "beta", "moving_mean", "moving_variance")]


def keras_retinanet_file(path, classes: int) -> dict[str, np.ndarray]:
    """A keras-retinanet ResNet50 snapshot with random weights; returns {weight name: value}."""
    rng = np.random.default_rng(0)
    layers = [("conv1", _conv("conv1", 7, 3, 64, rng, bias=False)),
              ("bn_conv1", _bn("bn_conv1", 64, rng))]
    channels = 64
    for stage, blocks in enumerate((3, 4, 6, 3), 2):
        filters = 64 * 2 ** (stage - 2)
        for block in range(blocks):
            name = f"res{stage}{chr(ord('a') + block)}"
            shapes = {"branch2a": (1, channels, filters), "branch2b": (3, filters, filters),
                      "branch2c": (1, filters, 4 * filters)}
            if block == 0:
                shapes["branch1"] = (1, channels, 4 * filters)
            for branch, (size, inputs, outputs) in shapes.items():
                layers.append((f"{name}_{branch}",
                               _conv(f"{name}_{branch}", size, inputs, outputs, rng, bias=False)))
                layers.append((f"bn{name[3:]}_{branch}", _bn(f"bn{name[3:]}_{branch}", outputs,
                                                             rng)))
            channels = 4 * filters
    for name, size, inputs in (("C5_reduced", 1, 2048), ("P5", 3, 256), ("C4_reduced", 1, 1024),
                               ("P4", 3, 256), ("C3_reduced", 1, 512), ("P3", 3, 256),
                               ("P6", 3, 2048), ("P7", 3, 256)):
        layers.append((name, _conv(name, size, inputs, 256, rng)))
    for head, outputs in (("regression", 9 * 4), ("classification", 9 * classes)):
        weights = []
        for index in range(4):
            weights += _conv(f"pyramid_{head}_{index}", 3, 256, 256, rng)
        layers.append((f"{head}_submodel", weights + _conv(f"pyramid_{head}", 3, 256, outputs,
                                                           rng)))
    with h5py.File(path, "w") as file:
        group = file.create_group("model_weights")
        group.attrs["layer_names"] = [name.encode() for name, _ in layers]
        for name, weights in layers:
            layer = group.create_group(name)
            layer.attrs["weight_names"] = [w.encode() for w, _ in weights]
            for weight, value in weights:
                layer[weight] = value.astype("float32")
    return {weight: value.astype("float32") for _, weights in layers for weight, value in weights}


def start(path, classes: int):
    options = TrainOptions(dataset="unused", weights=str(path), image_size=SIZE)
    names = [f"c{i}" for i in range(classes)]
    return _new_model(options, SimpleNamespace(num_classes=classes, class_names=names,
                                               class_ids=list(range(1, classes + 1))))


def test_anchor_order_pairs_the_same_anchor_boxes():
    """keras-retinanet's anchors at one location (its utils/anchors.py: ratio-major, ratio
    h/w) reordered are KerasCV's (scale-major, ratio w/h)."""
    scales, ratios = np.array([2 ** 0, 2 ** (1 / 3), 2 ** (2 / 3)]), np.array([0.5, 1, 2])
    sizes = 32 * np.tile(scales, (2, len(ratios))).T  # keras-retinanet's generate_anchors
    widths = np.sqrt(sizes[:, 0] * sizes[:, 1] / np.repeat(ratios, len(scales)))
    heights = widths * np.repeat(ratios, len(scales))
    theirs = np.stack([heights, widths], axis=1)
    generator = keras_cv.models.RetinaNet.default_anchor_generator(M.BOX_FORMAT)
    # a location in the middle of a 512-pixel image (64 x 64 at stride 8), away from clipping
    location = 32 * 64 + 32
    levels = generator(image_shape=(512, 512, 3))  # P3 (stride 8) first
    boxes = np.asarray(next(iter(levels.values())))[location * 9:][:9]
    ours = np.stack([boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]], axis=1)
    order = _anchor_order(np.arange(9.0), 1).astype(int)  # ours[i] is theirs[order[i]]
    assert sorted(order) == list(range(9))
    np.testing.assert_allclose(ours, theirs[order], rtol=1e-4)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    path = tmp_path_factory.mktemp("keras_retinanet") / "resnet50_csv_10.h5"
    return path, keras_retinanet_file(path, classes=3)


def test_snapshot_maps_backbone_pyramid_and_heads(snapshot, capsys):
    path, weights = snapshot
    model = start(path, classes=3)
    report = capsys.readouterr().out
    assert "loaded keras-retinanet's resnet50" in report and "box regression layer" in report
    assert "classification layer" not in report
    network = model.backbone.network
    np.testing.assert_array_equal(network.get_layer("conv1_conv").kernel, weights["conv1/kernel:0"])
    np.testing.assert_array_equal(network.get_layer("conv1_conv").bias, 0)
    np.testing.assert_array_equal(network.get_layer("conv4_block6_2_conv").kernel,
                                  weights["res4f_branch2b/kernel:0"])
    np.testing.assert_array_equal(network.get_layer("conv3_block1_0_bn").moving_variance,
                                  weights["bn3a_branch1/moving_variance:0"])
    neck = model.feature_pyramid
    np.testing.assert_array_equal(neck.lateral[0].kernel, weights["C3_reduced/kernel:0"])
    np.testing.assert_array_equal(neck.conv_p7.bias, weights["P7/bias:0"])
    np.testing.assert_array_equal(model.box_head.convs[3].kernel,
                                  weights["pyramid_regression_3/kernel:0"])
    assert not np.array_equal(model.box_head.prediction.bias, weights["pyramid_regression/bias:0"])
    # classification: theirs anchor 1 (ratio h/w 0.5, scale 2^1/3) is ours anchor 5 (scale
    # 2^1/3, ratio w/h 2); class 2 of 3
    kernel = model.classification_head.prediction.kernel.numpy()
    np.testing.assert_array_equal(kernel[..., 5 * 3 + 2],
                                  weights["pyramid_classification/kernel:0"][..., 1 * 3 + 2])
    # caffe-style input scaling, as keras-retinanet's preprocess_image
    scaling = model.backbone.get_layer("imagenet_scaling")
    assert scaling.bgr and scaling.offset == [-103.939, -116.779, -123.68]


def test_other_classes_start_the_classification_layer_afresh(snapshot, capsys):
    path, weights = snapshot
    model = start(path, classes=5)
    assert "the classification layer (3 classes in the file, 5 here)" in capsys.readouterr().out
    np.testing.assert_array_equal(model.classification_head.convs[0].kernel,
                                  weights["pyramid_classification_0/kernel:0"])


def test_other_h5_is_one_line(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as file:
        file.attrs["layer_names"] = [b"dense"]
        file.create_group("dense").attrs["weight_names"] = [b"dense/kernel:0"]
        file["dense"]["dense/kernel:0"] = np.zeros((2, 2), "float32")
    with pytest.raises(M.ModelError, match="other.h5: not a keras-retinanet ResNet snapshot"
                       ) as error:
        start(tmp_path / "other.h5", classes=3)
    assert "\n" not in str(error.value)
