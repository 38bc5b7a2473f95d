"""detector.model: multi-label targets, per-class NMS, loss, save/reload, options."""

from __future__ import annotations

import keras
import keras_cv
import numpy as np
import pytest
import tensorflow as tf

from detector import model as M

SIZE = 96
TINY = dict(backbone="resnet18", image_size=SIZE, backbone_width=0.25, fpn_channels=8,
            head_channels=8, head_depth=1)


def anchors_xyxy(size: int = SIZE) -> np.ndarray:
    generator = keras_cv.models.RetinaNet.default_anchor_generator(M.BOX_FORMAT)
    levels = generator(image_shape=(size, size, 3))
    return np.concatenate([np.asarray(a) for a in levels.values()])


@pytest.fixture(scope="module")
def tiny_batch():
    """Two images with two figures each: the second figure carries two classes."""
    rng = np.random.default_rng(0)
    images = rng.uniform(90, 110, (2, SIZE, SIZE, 3)).astype("float32")
    boxes = np.array([[[8, 10, 40, 80], [50, 20, 90, 90], [-1, -1, -1, -1]]] * 2, "float32")
    for image in images:
        image[10:80, 8:40] = (230, 30, 30)
        image[20:90, 50:90] = (30, 30, 230)
    classes = np.array([[[1, 0, 0], [0, 1, 1], [0, 0, 0]]] * 2, "float32")
    return images, {"boxes": boxes, "classes": classes}


def test_label_encoder_gives_positive_anchor_every_action_of_its_person():
    anchors = anchors_xyxy()
    person = anchors[100]  # a box exactly on an anchor: that anchor must be positive
    encoder = M.MultiLabelEncoder(
        bounding_box_format=M.BOX_FORMAT,
        anchor_generator=keras_cv.models.RetinaNet.default_anchor_generator(M.BOX_FORMAT),
    )
    labels = {
        "boxes": tf.constant([[person, [-1, -1, -1, -1]]], tf.float32),
        "classes": tf.constant([[[0, 1, 0, 1], [0, 0, 0, 0]]], tf.float32),  # two actions
    }
    box_targets, cls_targets = encoder(tf.zeros([1, SIZE, SIZE, 3]), labels)
    cls_targets = cls_targets.numpy()[0]
    assert cls_targets.shape == (len(anchors), 4)
    np.testing.assert_array_equal(cls_targets[100], [0, 1, 0, 1])
    np.testing.assert_allclose(box_targets.numpy()[0, 100], 0, atol=1e-5)
    positive = cls_targets.max(axis=1) > 0
    ignored = cls_targets.min(axis=1) < 0
    assert positive.sum() >= 1 and not ignored[100]
    # every positive anchor carries exactly the person's two actions; the rest are 0 or -2
    np.testing.assert_array_equal(np.unique(cls_targets[positive], axis=0), [[0, 1, 0, 1]])
    assert set(np.unique(cls_targets[~positive])) <= {0.0, -2.0}
    assert (cls_targets[~positive & ~ignored] == 0).all()


def test_per_class_nms_keeps_one_box_with_two_classes():
    decoder = M.PerClassNMS(M.BOX_FORMAT, max_detections=10)
    boxes = tf.constant([[[10, 10, 50, 90], [12, 10, 50, 92], [60, 10, 90, 40], [0, 0, 5, 5]]],
                        tf.float32)
    scores = np.array([[[0.01, 0.9, 0.8],    # one person, two actions
                        [0.01, 0.7, 0.01],   # the same person again: suppressed for class 1
                        [0.1, 0.01, 0.01],   # another box, low but above 0.05
                        [0.04, 0.04, 0.04]]], "float32")  # below the 0.05 threshold
    out = decoder(boxes, tf.constant(np.log(scores / (1 - scores))), image_shape=(96, 96, 3))
    count = int(out["num_detections"][0])
    found = {
        (tuple(out["boxes"][0, i].numpy().round(2)), int(out["classes"][0, i]))
        for i in range(count)
    }
    assert found == {((10, 10, 50, 90), 1), ((10, 10, 50, 90), 2), ((60, 10, 90, 40), 0)}
    np.testing.assert_allclose(out["confidence"][0, :count], [0.9, 0.8, 0.1], rtol=1e-5)
    assert (out["classes"].numpy()[0, count:] == -1).all()


@pytest.mark.slow
def test_loss_falls_on_a_fixed_batch(tiny_batch):
    images, labels = tiny_batch
    keras.utils.set_random_seed(1)
    model = M.compile_model(M.build_model(3, **TINY), lr=3e-3)
    history = model.fit(images, labels, batch_size=2, epochs=10, verbose=0).history
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["classification_loss"][-1] < history["classification_loss"][0]
    # the anchors found both figures
    assert history["percent_boxes_matched_with_anchor"][-1] == 1.0


@pytest.mark.slow
def test_saved_model_reloads_and_detects_the_same(tiny_batch, tmp_path):
    images, labels = tiny_batch
    # a threshold below the initial score (0.01) so that an untrained model detects plenty
    model = M.compile_model(M.build_model(
        3, confidence_threshold=0.001, class_names=["a", "b", "c"], class_ids=[7, 8, 9], **TINY
    ))
    model.fit(images, labels, batch_size=2, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = M.load_model(str(tmp_path / "m.keras"))
    assert type(loaded) is M.MultiLabelRetinaNet
    assert loaded.class_names == ["a", "b", "c"] and loaded.class_ids == [7, 8, 9]
    assert loaded.feature_pyramid.channels == 8 and loaded.image_size == SIZE
    before, after = model.predict(images, verbose=0), loaded.predict(images, verbose=0)
    assert before["num_detections"].min() > 10
    for key in ("boxes", "confidence", "classes", "num_detections"):
        np.testing.assert_array_equal(before[key], after[key])
    # the optimizer came back too, so training resumes where it was
    assert loaded.optimizer.iterations.numpy() == model.optimizer.iterations.numpy() == 1


def test_predict_on_another_image_size_is_a_clear_error(tiny_batch):
    model = M.build_model(3, **TINY)
    images, _ = tiny_batch
    assert model.predict(images, verbose=0)["boxes"].shape[0] == 2
    with pytest.raises(M.ModelError, match="detect_images or serving_function"):
        model.predict(np.zeros((1, SIZE + 32, SIZE, 3), "float32"), verbose=0)


def test_load_model_errors_name_the_file(tmp_path):
    with pytest.raises(M.ModelError, match="nope.keras"):
        M.load_model(str(tmp_path / "nope.keras"))
    other = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    other.save(tmp_path / "other.keras")
    with pytest.raises(M.ModelError, match="not a model saved by ava-detector train"):
        M.load_model(str(tmp_path / "other.keras"))


def test_bad_options_are_model_errors():
    with pytest.raises(M.ModelError, match="unknown backbone 'vgg'"):
        M.build_backbone("vgg")
    with pytest.raises(M.ModelError, match="multiple of 32"):
        M.build_model(3, backbone="resnet18", image_size=100)


def test_anchor_generator_is_an_option():
    anchors = keras_cv.layers.AnchorGenerator(
        bounding_box_format=M.BOX_FORMAT, sizes=[32.0, 64.0, 128.0, 256.0, 512.0],
        aspect_ratios=[1.0], scales=[1.0], strides=[8, 16, 32, 64, 128], clip_boxes=True,
    )
    model = M.build_model(3, anchor_generator=anchors, **TINY)
    # one anchor per location: the heads predict 3 classes and 4 deltas per location
    assert model.classification_head.output_filters == 3 and model.box_head.output_filters == 4
    assert model.label_encoder.anchor_generator is anchors
    assert model.anchor_generator is anchors  # what decode_predictions decodes with
