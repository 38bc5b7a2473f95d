"""detector.weights: ImageNet backbones from Keras Applications files, whole models, offline.

The Keras Applications models are built with `weights=None` (nothing is downloaded) and
written in the legacy `.h5` layout of its download cache (`~/.keras/models/`).
"""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

from detector import model as M
from detector.backbones import ImageNetBackbone
from detector.train import TrainOptions, _new_model
from detector.weights import imagenet_backbone, read_legacy_h5

SIZE = 64
APPLICATIONS = {  # ours -> Keras Applications' model, its preprocess_input, the layer of our C5
    "resnet50": (keras.applications.ResNet50, keras.applications.resnet.preprocess_input,
                 "conv5_block3_out"),
    "mobilenet_v3_small": (keras.applications.MobileNetV3Small,
                           keras.applications.mobilenet_v3.preprocess_input,
                           "expanded_conv_10_add"),
    "efficientnetv2_b0": (keras.applications.EfficientNetV2B0,
                          keras.applications.efficientnet_v2.preprocess_input, "top_activation"),
}
TINY_HEADS = dict(image_size=SIZE, fpn_channels=8, head_channels=8, head_depth=1)


def keras_applications_file(path, architecture: str, *, include_top: bool = False):
    """A Keras Applications model with random weights (batch-norm statistics too, so that a
    wrong pairing shows), saved as its download cache holds it; returns the model."""
    build = APPLICATIONS[architecture][0]
    keras.utils.set_random_seed(0)
    model = build(weights=None, include_top=include_top, input_shape=(SIZE, SIZE, 3))
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            # gamma, beta, mean, variance: every channel different, activations not exploding
            for variable, low, high in zip(layer.weights, (0.5, -0.1, -0.1, 1), (1, 0.1, 0.1, 2),
                                           strict=True):
                variable.assign(rng.uniform(low, high, variable.shape))
    with h5py.File(path, "w") as file:
        save_weights_to_hdf5_group(file, model)
        if architecture == "efficientnetv2_b0":  # a Normalization layer with its constants as
            layer = file["normalization"]        # weights, as older Keras versions may save it
            layer.attrs["weight_names"] = [b"normalization/mean:0", b"normalization/variance:0"]
            layer["normalization/mean:0"] = np.array([0.485, 0.456, 0.406], "float32")
            layer["normalization/variance:0"] = np.array([0.229, 0.224, 0.225], "float32") ** 2
    return model


def raw_images() -> np.ndarray:
    return np.random.default_rng(1).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")


@pytest.mark.parametrize("architecture", list(APPLICATIONS))
def test_keras_applications_weights_give_its_features_from_raw_images(tmp_path, architecture):
    path = tmp_path / f"{architecture}.h5"
    theirs = keras_applications_file(path, architecture)
    with h5py.File(path) as file:  # the layout of the files in ~/.keras/models/
        names = [n.decode() if isinstance(n, bytes) else n for n in file.attrs["layer_names"]]
        assert names == [layer.name for layer in theirs.layers]
        first = next(n for n in names if len(file[n].attrs["weight_names"]))
        assert first in ("conv1_conv", "conv", "normalization")

    ours = imagenet_backbone(architecture, path)
    _, preprocess, c5 = APPLICATIONS[architecture]
    images = raw_images()
    expected = keras.Model(theirs.inputs, theirs.get_layer(c5).output)(preprocess(images.copy()))
    got = ours(images)[2]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_file_with_top_loads_and_the_model_round_trips(tmp_path):
    path = tmp_path / "mobilenet_v3_small_with_top.h5"
    theirs = keras_applications_file(path, "mobilenet_v3_small", include_top=True)
    assert read_legacy_h5(path)[-1].name == "logits"  # the classifier, which ours has not
    backbone = imagenet_backbone("mobilenet_v3_small", path)
    model = M.build_model(3, backbone=backbone, **TINY_HEADS)
    model.save(tmp_path / "m.keras")
    loaded = M.load_model(str(tmp_path / "m.keras"))
    assert type(loaded.backbone) is ImageNetBackbone
    images = raw_images()
    expected = keras.Model(theirs.inputs, theirs.get_layer("expanded_conv_10_add").output)(
        keras.applications.mobilenet_v3.preprocess_input(images.copy()))
    np.testing.assert_allclose(loaded.backbone(images)[2], expected, rtol=1e-4, atol=1e-4)


def test_wrong_file_is_one_line_naming_the_first_layer_that_does_not_fit(tmp_path):
    keras_applications_file(tmp_path / "small.h5", "mobilenet_v3_small")
    with pytest.raises(M.ModelError) as error:
        imagenet_backbone("efficientnetv2_b0", tmp_path / "small.h5")
    message = str(error.value)
    assert "\n" not in message and "small.h5" in message
    # the file's stem has 16 channels, EfficientNetV2-B0's 32
    assert "layer 'conv'" in message and "'stem_conv'" in message

    with h5py.File(tmp_path / "short.h5", "w") as file:
        file.attrs["layer_names"] = [b"conv"]
        file.create_group("conv").attrs["weight_names"] = [b"conv/kernel"]
        file["conv"]["conv/kernel"] = np.zeros((3, 3, 3, 16), "float32")
    with pytest.raises(M.ModelError, match="it has 1 weights.*gets none") as error:
        imagenet_backbone("mobilenet_v3_small", tmp_path / "short.h5")
    assert "\n" not in str(error.value)

    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(M.ModelError, match="text.h5: cannot read weights"):
        imagenet_backbone("mobilenet_v3_small", tmp_path / "text.h5")
    with pytest.raises(M.ModelError, match="no ImageNet weights for backbone 'resnet18'"):
        imagenet_backbone("resnet18", tmp_path / "small.h5")


def options(**kwargs) -> TrainOptions:
    return TrainOptions(**{"dataset": "unused", "backbone": "resnet18", "backbone_width": 0.25,
                           **TINY_HEADS, **kwargs})


def info(names: list[str]) -> SimpleNamespace:
    """What `_new_model` reads of a dataset: its classes."""
    return SimpleNamespace(num_classes=len(names), class_names=names,
                           class_ids=list(range(1, len(names) + 1)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A compiled 3-class model whose every weight moved away from its initial value (as
    training would move it), saved as .keras and as .weights.h5."""
    folder = tmp_path_factory.mktemp("trained")
    keras.utils.set_random_seed(2)
    model = M.compile_model(M.build_model(
        3, backbone="resnet18", backbone_width=0.25, class_names=["a", "b", "c"],
        confidence_threshold=0.001, **TINY_HEADS))
    rng = np.random.default_rng(2)
    for variable in model.weights:
        variable.assign(variable.numpy() + rng.normal(0, 0.01, variable.shape))
    model.save(folder / "model.keras")
    model.save_weights(folder / "model.weights.h5")
    return model, folder


@pytest.mark.parametrize("file", ["model.keras", "model.weights.h5"])
def test_whole_model_round_trip(trained, capsys, file):
    source, folder = trained
    started = _new_model(options(weights=str(folder / file)), info(["a", "b", "c"]))
    assert "loaded backbone, feature pyramid, box head, classification head" in (
        capsys.readouterr().out)
    images = raw_images()
    before, after = source(images, training=False), started(images, training=False)
    for key in ("box", "classification"):  # the raw outputs of the heads
        np.testing.assert_allclose(before[key], after[key], rtol=1e-5, atol=1e-5)
    if file.endswith(".keras"):  # with its detection settings (a low threshold here)
        before, after = source.predict(images, verbose=0), started.predict(images, verbose=0)
        assert before["num_detections"].min() > 0
        np.testing.assert_allclose(before["confidence"], after["confidence"], rtol=1e-5)


def test_other_classes_keep_the_backbone_and_reinitialise_the_classification_head(
        trained, capsys):
    source, folder = trained
    started = _new_model(options(weights=str(folder / "model.keras"), backbone="resnet50"),
                         info(["a", "b", "c", "d"]))
    report = capsys.readouterr().out
    assert "re-initialised the classification head (3 classes in the file, 4 here" in report
    # the architecture comes from the file, not from --backbone
    assert started.backbone.count_params() == source.backbone.count_params()
    for part in ("backbone", "feature_pyramid", "box_head"):
        for ours, theirs in zip(getattr(started, part).weights, getattr(source, part).weights,
                                strict=True):
            np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    assert started.classification_head.prediction.kernel.shape[-1] == 9 * 4
    assert started.class_names == ["a", "b", "c", "d"]
    # same number of classes under other names: the classification head starts afresh too
    _new_model(options(weights=str(folder / "model.keras")), info(["x", "y", "z"]))
    assert "re-initialised the classification head" in capsys.readouterr().out


def test_weights_h5_that_does_not_fit_the_flags_is_one_line_of_whole_sentences(
        trained, tmp_path):
    _, folder = trained
    alone = tmp_path / "model.weights.h5"  # no sibling .keras or config.json to read
    shutil.copy(folder / "model.weights.h5", alone)
    with pytest.raises(M.ModelError, match="do not fit the model the flags describe") as error:
        _new_model(options(weights=str(alone), backbone="resnet34"), info(["a", "b", "c"]))
    message = str(error.value)
    assert "\n" not in message and message.endswith("put its .keras or config.json beside it.")


def test_weights_h5_takes_its_architecture_from_a_sibling_config(trained, tmp_path, capsys):
    """Beside its .keras (a snapshot) or a config.json, a .weights.h5 needs no architecture
    flags: here the flags say resnet34, the file is a resnet18 at width 0.25."""
    source, folder = trained
    alone = tmp_path / "model.weights.h5"
    shutil.copy(folder / "model.weights.h5", alone)
    (tmp_path / "config.json").write_text(source.to_json())
    started = _new_model(options(weights=str(alone), backbone="resnet34"),
                         info(["a", "b", "c"]))
    assert f"{alone}: architecture from {tmp_path / 'config.json'}" in capsys.readouterr().out
    assert started.backbone.count_params() == source.backbone.count_params()
    images = raw_images()
    np.testing.assert_allclose(source(images, training=False)["classification"],
                               started(images, training=False)["classification"], atol=1e-5)


def test_keras3_weights_h5_backbone_loads_and_says_what(tmp_path):
    theirs = keras_applications_file(tmp_path / "legacy.h5", "mobilenet_v3_small")
    theirs.save_weights(tmp_path / "small.weights.h5")
    reports = []
    ours = imagenet_backbone("mobilenet_v3_small", tmp_path / "small.weights.h5",
                             report=reports.append)
    legacy = imagenet_backbone("mobilenet_v3_small", tmp_path / "legacy.h5",
                               report=reports.append)
    images = raw_images()
    np.testing.assert_allclose(ours(images)[2], legacy(images)[2], rtol=1e-5, atol=1e-5)
    keras3, old = reports
    assert keras3.startswith(f"{tmp_path / 'small.weights.h5'}: loaded ")
    assert " weights of " in keras3 and "layers into the mobilenet_v3_small backbone" in keras3
    assert keras3.split(":", 1)[1] == old.split(":", 1)[1]  # the same layers either way
    with h5py.File(tmp_path / "empty.h5", "w"):
        pass
    with pytest.raises(M.ModelError, match=r"takes a legacy \.h5 .* or a Keras 3 \.weights\.h5"):
        imagenet_backbone("mobilenet_v3_small", tmp_path / "empty.h5")
