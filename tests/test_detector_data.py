"""detector.data: TFDS examples (ava_keyframes-shaped and VOC-shaped) -> detector batches."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from detector_support import SIZE, build

from detector import data as D

IMAGE = 128


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tfds")
    build(str(path))
    return str(path)


def raw_examples(name: str, split: str, data_dir: str) -> list[dict]:
    return list(tfds.as_numpy(tfds.load(name, split=split, data_dir=data_dir)))


def test_ava_shaped_dataset_info_uses_the_ava_label_map(data_dir):
    info = D.dataset_info("detector_toy_ava", data_dir)
    assert info.num_classes == 80 and info.multi_label and info.has_keyframes and info.ava_classes
    assert info.class_ids[info.class_names.index("carry/hold (an object)")] == 17
    assert info.splits == {"train": 8, "validation": 4}
    voc = D.dataset_info("detector_toy_voc", data_dir)
    assert voc.class_ids == [1, 2, 3] and not voc.multi_label and not voc.ava_classes


def test_eval_batches_keep_keyframes_boxes_and_every_label(data_dir):
    info = D.dataset_info("detector_toy_ava", data_dir)
    raw = {(e["video_id"].decode(), int(e["timestamp"])): e
           for e in raw_examples("detector_toy_ava", "validation", data_dir)}
    batch = next(iter(D.eval_batches(info, "validation", image_size=IMAGE, batch_size=4,
                                     data_dir=data_dir)))
    height, width = SIZE
    np.testing.assert_array_equal(batch["content"].numpy(),
                                  [[round(height * IMAGE / width), IMAGE]] * 4)
    assert batch["images"].shape == (4, IMAGE, IMAGE, 3)
    multi_label_persons = 0
    for i in range(4):
        example = raw[(batch["video_id"][i].numpy().decode(), int(batch["second"][i]))]
        count = len(example["objects"]["bbox"])
        np.testing.assert_allclose(batch["boxes"][i, :count], example["objects"]["bbox"])
        assert (batch["boxes"][i, count:].numpy() == -1).all()
        for person, labels in enumerate(example["objects"]["labels"]):
            hot = np.flatnonzero(batch["classes"][i, person].numpy())
            assert list(hot) == list(np.flatnonzero(labels))
            multi_label_persons += labels.sum() > 1
    assert multi_label_persons > 0


def test_train_batches_letterbox_pixel_boxes_and_multi_hot(data_dir):
    info = D.dataset_info("detector_toy_ava", data_dir)
    batches = D.train_batches(info, "train", image_size=IMAGE, batch_size=8, data_dir=data_dir)
    images, labels = next(iter(batches))
    assert images.shape == (8, IMAGE, IMAGE, 3) and images.dtype == tf.float32
    content_height = round(SIZE[0] * IMAGE / SIZE[1])
    assert float(tf.reduce_max(images[:, content_height:])) == 0  # padding below the content
    boxes, classes = labels["boxes"].numpy(), labels["classes"].numpy()
    real = classes.max(axis=-1) > 0
    assert (boxes[~real] == -1).all()
    assert (boxes[real][:, 2] <= IMAGE + 1e-3).all()
    assert (boxes[real][:, 3] <= content_height + 1e-3).all()
    # every training box matches a raw box times the content size, with its labels
    raw = raw_examples("detector_toy_ava", "train", data_dir)
    expected = {
        tuple(np.round(np.array([b[1] * IMAGE, b[0] * content_height, b[3] * IMAGE,
                                 b[2] * content_height]), 2)): list(np.flatnonzero(labels))
        for e in raw for b, labels in zip(e["objects"]["bbox"], e["objects"]["labels"], strict=True)
    }
    keys = np.array(list(expected))
    for box, hot in zip(boxes[real], classes[real], strict=True):
        # nearest raw box within float32 rounding (an exact 2-decimal key can flip at .xx5)
        nearest = keys[np.abs(keys - box).max(axis=1).argmin()]
        assert np.abs(nearest - box).max() < 0.02
        assert expected[tuple(nearest)] == list(np.flatnonzero(hot))


def test_random_transform_keeps_boxes_inside_and_labels_whole(data_dir):
    info = D.dataset_info("detector_toy_ava", data_dir)
    tf.random.set_seed(0)
    batches = D.train_batches(info, "train", image_size=IMAGE, batch_size=8, data_dir=data_dir,
                              random_transform=True)
    label_sets = set()
    for images, labels in batches.take(3):
        boxes, classes = labels["boxes"].numpy(), labels["classes"].numpy()
        real = classes.max(axis=-1) > 0
        assert ((boxes[real] >= 0) & (boxes[real] <= IMAGE)).all()
        assert (boxes[real][:, 2] > boxes[real][:, 0]).all()
        assert float(tf.reduce_max(images)) <= 255 and float(tf.reduce_min(images)) >= 0
        label_sets |= {tuple(np.flatnonzero(hot)) for hot in classes[real]}
    assert any(len(labels) == 2 for labels in label_sets)


def test_single_label_dataset_gives_one_hot_classes(data_dir):
    info = D.dataset_info("detector_toy_voc", data_dir)
    batch = next(iter(D.eval_batches(info, "test", image_size=IMAGE, batch_size=3,
                                     data_dir=data_dir)))
    raw = raw_examples("detector_toy_voc", "test", data_dir)
    assert sorted(v.decode() for v in batch["video_id"].numpy()) == [
        "img00000000", "img00000001", "img00000002"]
    classes = batch["classes"].numpy()
    assert set(classes.sum(axis=-1).ravel()) <= {0.0, 1.0}
    assert int(classes.sum()) == sum(len(e["objects"]["label"]) for e in raw)


def test_unknown_dataset_and_split_are_data_errors(data_dir):
    with pytest.raises(D.DataError, match="no_such_dataset"):
        D.dataset_info("no_such_dataset", data_dir)
    info = D.dataset_info("detector_toy_ava", data_dir)
    with pytest.raises(D.DataError, match="no split 'test'; it has train, validation"):
        D.load_split(info, "test", data_dir)
