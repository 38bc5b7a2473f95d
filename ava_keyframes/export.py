"""A built `ava_keyframes` split -> keras-retinanet's CSV format (images, annotations, classes)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

import ava_keyframes.ava_keyframes_dataset_builder  # noqa: F401 - registers the dataset
from ava_keyframes.annotations import keyframe_key
from ava_keyframes.labelmap import default_labelmap_path, read_labelmap, write_classes_csv


def export_retinanet_csv(
    data_dir: str | Path, split: str, out: str | Path, config: str = "v2.2"
) -> dict[str, int]:
    """Write a built split for keras-retinanet: ``OUT/images/<key>.jpg`` (the stored JPEG
    bytes), ``OUT/annotations.csv`` (``path,x1,y1,x2,y2,class_name``: one row per person and
    action, ``box_pixels`` rounded to integers and at least 1 px wide and high; a keyframe
    without persons gets keras-retinanet's ``path,,,,,`` row) and ``OUT/classes.csv``.
    Returns the counts of images and rows.

    Raises FileNotFoundError when the dataset is not built in ``data_dir``, ValueError for a
    split it does not have.
    """
    name = f"ava_keyframes/{config}"
    try:
        builder = tfds.builder(name, data_dir=str(data_dir))
    except (tfds.core.registered.DatasetNotFoundError, ValueError):
        builder = None
    if builder is None or not builder.is_prepared():
        raise FileNotFoundError(
            f"{data_dir}: no built {name} (build it with `tfds build ava_keyframes --imports "
            f"ava_keyframes --config {config} --data_dir {data_dir}`)"
        )
    if split not in builder.info.splits:
        raise ValueError(f"{name} has no split {split!r} (it has {', '.join(builder.info.splits)})")
    labelmap = read_labelmap(default_labelmap_path())
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images = rows = 0
    dataset = builder.as_dataset(
        split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
    )
    with (out / "annotations.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        for example in tfds.as_numpy(dataset):
            key = keyframe_key(example["video_id"].decode(), int(example["timestamp"]))
            path = f"images/{key}.jpg"
            (out / path).write_bytes(example["image"])
            images += 1
            objects = example["objects"]
            if not len(objects["person_id"]):
                writer.writerow([path, "", "", "", "", ""])
                rows += 1
            for box, labels in zip(objects["box_pixels"], objects["labels"], strict=True):
                x1, y1, x2, y2 = (round(float(v)) for v in box)
                corners = [x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)]  # never an empty box
                for label in np.flatnonzero(labels):
                    writer.writerow([path, *corners, labelmap.names[label]])
                    rows += 1
    write_classes_csv(labelmap, out / "classes.csv")
    return {"images": images, "rows": rows}
