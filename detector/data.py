"""TFDS detection datasets -> batches for `detector.model`.

Reads `ava_keyframes/...` (each person a box with a multi-hot `objects/labels` over the
80 AVA actions, a `MultiHotClassLabel`) or any TFDS
detection dataset whose examples hold `objects/bbox` and `objects/label` (such as
`voc/2007`). Every example becomes the same standard form first (`standardize`), so the
rest of the pipeline does not care which dataset it is:

    image uint8 [H, W, 3], boxes float32 [N, 4] normalized TFDS order (ymin, xmin, ymax, xmax),
    classes float32 [N, C] multi-hot, video_id string, second int32, person_id int32 [N]

Training batches are `(images, {"boxes": [B, N, 4], "classes": [B, N, C]})`: images
resized keeping their aspect ratio and padded (bottom and right) to a square, float 0..255;
`xyxy` pixel boxes padded with -1 and multi-hot classes padded with 0 up to the largest N of
the batch. Evaluation batches also carry what is needed to map detections back to the
original image and to score them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import tensorflow as tf
import tensorflow_datasets as tfds

from ava_keyframes.labelmap import LabelMap, default_labelmap_path, read_labelmap

AVA_PREFIX = "ava_keyframes"
SHUFFLE_BUFFER = 256
# Jittered resize: the longer image side becomes image_size times a factor in this range,
# then the image is cropped or padded back to the square at a random place.
SCALE_RANGE = (0.75, 1.25)
# After a crop, a box keeps at least this fraction of its area or it is dropped.
MIN_VISIBLE = 0.5


class DataError(ValueError):
    """A dataset that cannot be read or is not a detection dataset; the message says why."""


@dataclass(frozen=True)
class DatasetInfo:
    """What the detector needs to know about a TFDS detection dataset."""

    name: str
    class_names: list[str]
    # Ids written to AVA CSVs: AVA action ids for a dataset whose classes are the AVA label
    # map's (ava_keyframes), index + 1 for others.
    class_ids: list[int]
    ava_classes: bool  # the classes are those of the AVA 80-class label map
    multi_label: bool  # objects/labels (multi-hot per box) rather than objects/label
    has_keyframes: bool  # video_id and timestamp features
    splits: dict[str, int]  # split name -> number of examples
    tfds_info: tfds.core.DatasetInfo

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def labelmap(self) -> LabelMap:
        """The classes as a label map (AVA's own map for AVA; for others ids are index + 1)."""
        return LabelMap(self.class_ids, self.class_names, [None] * self.num_classes)


def _builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    if name.startswith(AVA_PREFIX):
        import ava_keyframes  # noqa: F401 - registers the builder
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except (tfds.core.registered.DatasetNotFoundError, ValueError) as error:
        raise DataError(f"dataset {name!r}: {str(error).splitlines()[0]}") from None
    return builder


def dataset_info(name: str, data_dir: str | None = None) -> DatasetInfo:
    """Classes, splits and label kind of TFDS dataset `name` (built under `data_dir`)."""
    info = _builder(name, data_dir).info
    objects = info.features["objects"] if "objects" in info.features else None
    if objects is None or "bbox" not in objects.feature:
        raise DataError(f"dataset {name!r} has no objects/bbox feature: not a detection dataset")
    if "labels" in objects.feature:
        names = list(objects.feature["labels"].names)
        multi_label = True
    elif "label" in objects.feature:
        names = list(objects.feature["label"].names)
        multi_label = False
    else:
        raise DataError(f"dataset {name!r} has neither objects/labels nor objects/label")
    ava = read_labelmap(default_labelmap_path())
    ava_classes = names == ava.names
    ids = list(ava.ids) if ava_classes else list(range(1, len(names) + 1))
    return DatasetInfo(
        name=name,
        class_names=names,
        class_ids=ids,
        ava_classes=ava_classes,
        multi_label=multi_label,
        has_keyframes="video_id" in info.features and "timestamp" in info.features,
        splits={split: info.splits[split].num_examples for split in info.splits},
        tfds_info=info,
    )


def load_split(
    info: DatasetInfo, split: str, data_dir: str | None = None, *, shuffle_files: bool = False
) -> tf.data.Dataset:
    """The raw TFDS examples of `split` (never downloads or builds), or a `DataError`."""
    if info.splits and split not in info.splits:
        raise DataError(
            f"dataset {info.name!r} has no split {split!r}; it has {', '.join(info.splits)}"
        )
    try:
        # No auto-cache: a small dataset would be kept decoded in memory, a large one not;
        # decoding every epoch keeps memory flat and the throughput the same for both.
        return tfds.load(
            info.name, split=split, data_dir=data_dir, shuffle_files=shuffle_files,
            download=False, read_config=tfds.ReadConfig(try_autocache=False),
            decoders=_unused_video_features(info),
        )
    except (AssertionError, ValueError) as error:
        raise DataError(
            f"dataset {info.name!r} split {split!r} is not readable (built with `tfds build`"
            f" under --data-dir?): {str(error).strip().splitlines()[0]}"
        ) from None


def _unused_video_features(info: DatasetInfo) -> dict | None:
    """Video features (an AVA clip config's `clip`) are left encoded: the detector reads the
    keyframe image only, and decoding T frames per example would cost most of the input time."""
    skipped = {name: tfds.decode.SkipDecoding() for name, feature in info.tfds_info.features.items()
               if isinstance(feature, tfds.features.Video)}
    return skipped or None


def standardize(info: DatasetInfo) -> Callable[[dict, tf.Tensor], dict[str, tf.Tensor]]:
    """A map function: one TFDS example -> the standard form of the module docstring."""
    num_classes = info.num_classes

    def convert(example: dict, index: tf.Tensor) -> dict[str, tf.Tensor]:
        objects = example["objects"]
        boxes = tf.reshape(tf.cast(objects["bbox"], tf.float32), [-1, 4])
        count = tf.shape(boxes)[0]
        if info.multi_label:
            classes = tf.reshape(tf.cast(objects["labels"], tf.float32), [-1, num_classes])
        else:
            classes = tf.one_hot(objects["label"], num_classes)
        if info.has_keyframes:
            video_id = example["video_id"]
            second = tf.cast(example["timestamp"], tf.int32)
        else:  # an image dataset: each image its own "keyframe" with an AVA-form id
            video_id = tf.strings.join(["img", tf.strings.as_string(index, width=8, fill="0")])
            second = tf.constant(0, tf.int32)
        person_id = (
            tf.cast(objects["person_id"], tf.int32)
            if "person_id" in objects
            else tf.range(count, dtype=tf.int32)
        )
        return {
            "image": example["image"],
            "boxes": boxes,
            "classes": classes,
            "video_id": video_id,
            "second": second,
            "person_id": person_id,
        }

    return convert


def letterbox(image: tf.Tensor, size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Resize `image` (or a batch of same-sized images) so its longer side is `size`, keeping
    the aspect ratio, and pad the bottom and right with zeros to `size` x `size`. Returns the
    float32 0..255 square(s) and the content's (height, width) in them: a normalized
    coordinate times that is a pixel."""
    content = _fit(tf.shape(image)[-3:-1], size)
    resized = tf.image.resize(tf.cast(image, tf.float32), content)
    return tf.image.pad_to_bounding_box(resized, 0, 0, size, size), content


def _fit(shape: tf.Tensor, side: tf.Tensor | int) -> tf.Tensor:
    shape = tf.cast(shape, tf.float32)
    scale = tf.cast(side, tf.float32) / tf.reduce_max(shape)
    return tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), 1)


def _pixel_boxes(boxes: tf.Tensor, content: tf.Tensor, offset: tf.Tensor) -> tf.Tensor:
    """Normalized (ymin, xmin, ymax, xmax) -> xyxy pixels of content placed at `offset` (y, x)."""
    height, width = tf.unstack(tf.cast(content, tf.float32))
    dy, dx = tf.unstack(tf.cast(offset, tf.float32))
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    return tf.stack(
        [xmin * width + dx, ymin * height + dy, xmax * width + dx, ymax * height + dy], axis=-1
    )


def _train_example(size: int, random_transform: bool):
    def prepare(example: dict) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        image, boxes, classes = example["image"], example["boxes"], example["classes"]
        if not random_transform:
            square, content = letterbox(image, size)
            return square, {"boxes": _pixel_boxes(boxes, content, [0, 0]), "classes": classes}
        if tf.random.uniform([]) < 0.5:
            image = tf.image.flip_left_right(image)
            ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
            boxes = tf.stack([ymin, 1.0 - xmax, ymax, 1.0 - xmin], axis=-1)
        scale = tf.random.uniform([], *SCALE_RANGE)
        content = _fit(tf.shape(image)[:2], tf.round(size * scale))
        pixels = _colour_jitter(tf.image.resize(tf.cast(image, tf.float32), content))
        canvas = tf.maximum(content, size)
        pad = _random_offset(canvas - content)
        crop = _random_offset(canvas - size)
        pixels = tf.image.pad_to_bounding_box(pixels, pad[0], pad[1], canvas[0], canvas[1])
        pixels = tf.image.crop_to_bounding_box(pixels, crop[0], crop[1], size, size)
        placed = _pixel_boxes(boxes, content, pad - crop)
        clipped = tf.clip_by_value(placed, 0.0, float(size))
        keep = _area(clipped) >= MIN_VISIBLE * _area(placed)
        keep &= (clipped[:, 2] - clipped[:, 0] >= 2) & (clipped[:, 3] - clipped[:, 1] >= 2)
        return pixels, {
            "boxes": tf.boolean_mask(clipped, keep),
            "classes": tf.boolean_mask(classes, keep),
        }

    return prepare


def _random_offset(room: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.floor(tf.random.uniform([2]) * tf.cast(room + 1, tf.float32)), tf.int32)


def _area(boxes: tf.Tensor) -> tf.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _colour_jitter(pixels: tf.Tensor) -> tf.Tensor:
    image = pixels / 255.0
    image = tf.image.random_brightness(image, 0.1)
    image = tf.image.random_contrast(image, 0.8, 1.2)
    image = tf.image.random_saturation(image, 0.8, 1.2)
    image = tf.image.random_hue(image, 0.02)
    return tf.clip_by_value(image, 0.0, 1.0) * 255.0


def train_batches(
    info: DatasetInfo,
    split: str,
    *,
    image_size: int,
    batch_size: int,
    random_transform: bool = False,
    data_dir: str | None = None,
    repeat: bool = True,
) -> tf.data.Dataset:
    """Shuffled, repeated training batches `(images, {"boxes", "classes"})`."""
    dataset = load_split(info, split, data_dir, shuffle_files=True)
    dataset = _standard(dataset, info)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.shuffle(SHUFFLE_BUFFER)
    dataset = dataset.map(
        _train_example(image_size, random_transform), num_parallel_calls=tf.data.AUTOTUNE
    )
    # Boxes are padded with -1 (KerasCV's padding), classes and images with 0.
    padding = (0.0, {"boxes": -1.0, "classes": 0.0})
    return dataset.padded_batch(
        batch_size, padding_values=padding, drop_remainder=repeat
    ).prefetch(tf.data.AUTOTUNE)


def eval_batches(
    info: DatasetInfo,
    split: str,
    *,
    image_size: int,
    batch_size: int,
    data_dir: str | None = None,
    limit: int | None = None,
) -> tf.data.Dataset:
    """Evaluation batches in dataset order: dicts with `images` (letterboxed), `content`
    ([B, 2] content height and width), `video_id`, `second`, and the ground truth `boxes`
    (normalized TFDS order, padded -1), `classes` (multi-hot) and `person_id`."""
    dataset = _standard(load_split(info, split, data_dir), info)
    if limit is not None:
        dataset = dataset.take(limit)

    def prepare(example):
        square, content = letterbox(example.pop("image"), image_size)
        return {**example, "images": square, "content": content}

    dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    padding = {
        "images": 0.0, "content": 0, "video_id": "", "second": 0,
        "boxes": -1.0, "classes": 0.0, "person_id": -1,
    }
    return dataset.padded_batch(batch_size, padding_values=padding).prefetch(tf.data.AUTOTUNE)


def _standard(dataset: tf.data.Dataset, info: DatasetInfo) -> tf.data.Dataset:
    indexed = tf.data.Dataset.zip(dataset, tf.data.Dataset.counter())
    return indexed.map(standardize(info), num_parallel_calls=tf.data.AUTOTUNE)
