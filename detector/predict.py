"""Detections from a trained model: AVA CSV rows, pictures, evaluation, SavedModel export.

All paths go through one function, `detect_letterboxed`: letterboxed images in, detections
with boxes normalized to the original images out. `serving_function` wraps it for images of
any size (the exported SavedModel's signature), `detect_dataset` feeds it a TFDS split, and
`evaluate_model` scores that through `detector.ap` (the training callback uses it too).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from ava_keyframes.annotations import (
    VIDEO_ID_RE,
    Annotations,
    check_video_id,
    keyframe_key,
    parse_keyframe_key,
    write_rows,
)
from ava_keyframes.frames import extract_keyframes
from ava_keyframes.labelmap import LabelMap
from detector import ap
from detector.ap_inputs import ava_table, scored_labelmap
from detector.data import DatasetInfo, eval_batches, letterbox
from detector.model import ModelError, MultiLabelRetinaNet
from detector.progress import Progress

CSV_COLUMNS = ["video_id", "second", "x1", "y1", "x2", "y2", "action_id", "score"]


@dataclass(frozen=True)
class Keyframe:
    """The detections of one image: normalized `xyxy` boxes, scores, class indices."""

    video_id: str
    second: int
    boxes: np.ndarray  # [K, 4]
    scores: np.ndarray  # [K]
    classes: np.ndarray  # [K] class index of the model


def detect_letterboxed(
    model: MultiLabelRetinaNet, images: tf.Tensor, content: tf.Tensor
) -> dict[str, tf.Tensor]:
    """Detections for letterboxed `images` ([B, S, S, 3] float 0..255) whose content has
    (height, width) `content` ([B, 2] or [2]): `boxes` normalized `[x1, y1, x2, y2]` of the
    original images, `scores`, `classes` (class index, -1 padding), `class_ids` (dataset
    ids, -1 padding) and `num_detections`."""
    decoded = model.decode_predictions(model(images, training=False), images)
    height, width = tf.unstack(tf.cast(content, tf.float32), axis=-1)
    scale = tf.stack([width, height, width, height], axis=-1)
    scale = tf.reshape(scale, [-1, 1, 4])
    valid = decoded["classes"] >= 0
    boxes = tf.where(valid[..., None], tf.clip_by_value(decoded["boxes"] / scale, 0.0, 1.0), -1.0)
    class_ids = tf.constant(model.class_ids, tf.int32)
    classes = tf.cast(decoded["classes"], tf.int32)
    return {
        "boxes": boxes,
        "scores": decoded["confidence"],
        "classes": classes,
        "class_ids": tf.where(valid, tf.gather(class_ids, tf.maximum(classes, 0)), -1),
        "num_detections": decoded["num_detections"],
    }


def serving_function(model: MultiLabelRetinaNet) -> tf.types.experimental.ConcreteFunction:
    """`images` (a uint8 batch [B, H, W, 3] of one size, any size) -> detections as in
    `detect_letterboxed`: the signature of the exported SavedModel."""

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    def serve(images):
        squares, content = letterbox(images, model.image_size)
        return detect_letterboxed(model, squares, content)

    return serve


def detect_images(
    model: MultiLabelRetinaNet, images: Iterable[tuple[str, int, np.ndarray]]
) -> Iterator[tuple[np.ndarray, Keyframe]]:
    """`(image, detections)` for `(video_id, second, HxWx3 uint8 image)` items, one image at
    a time (images may differ in size)."""
    serve = serving_function(model)
    for video_id, second, image in images:
        out = serve(tf.convert_to_tensor(image[None], tf.uint8))
        yield image, _keyframe(video_id, second, {k: v[0].numpy() for k, v in out.items()})


def _keyframe(video_id: str, second: int, out: dict[str, np.ndarray]) -> Keyframe:
    count = int(out["num_detections"])
    return Keyframe(
        video_id, int(second), out["boxes"][:count], out["scores"][:count], out["classes"][:count]
    )


def detect_dataset(
    model: MultiLabelRetinaNet,
    info: DatasetInfo,
    split: str,
    *,
    data_dir: str | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    progress: bool = False,
) -> tuple[Annotations, list[Keyframe]]:
    """The ground truth of a TFDS split (one row per person and class, as in AVA's CSVs)
    and the model's detections on it; with `progress`, images done on stderr (`Progress`)."""
    if model.class_names != info.class_names:
        raise ModelError(f"the model's classes are not those of {info.name} "
                         f"({model.num_classes} vs {info.num_classes} classes)")
    detect = tf.function(lambda images, content: detect_letterboxed(model, images, content))
    return detect_split(detect, info, split, image_size=model.image_size, data_dir=data_dir,
                        batch_size=batch_size, limit=limit, progress=progress)


def detect_split(
    detect: Callable[[tf.Tensor, tf.Tensor], dict[str, tf.Tensor]],
    info: DatasetInfo,
    split: str,
    *,
    image_size: int,
    data_dir: str | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    progress: bool = False,
) -> tuple[Annotations, list[Keyframe]]:
    """`detect_dataset` for any detector: `detect(images, content)` answers as
    `detect_letterboxed` does (`boxes`, `scores`, `classes`, `num_detections`), so another
    implementation (benchmarks/peers.py) is scored on the same ground truth."""
    truth: list[pd.DataFrame] = []
    empty: set[tuple[str, int]] = set()
    keyframes: list[Keyframe] = []
    total = info.splits.get(split)
    if limit is not None:
        total = min(limit, total) if total else limit
    bar = Progress(f"{info.name}:{split}", total, enabled=progress)
    for batch in eval_batches(info, split, image_size=image_size, batch_size=batch_size,
                              data_dir=data_dir, limit=limit):
        out = {k: v.numpy() for k, v in detect(batch["images"], batch["content"]).items()}
        bar.update(len(batch["second"]))
        for i, (raw_id, second) in enumerate(zip(batch["video_id"].numpy(),
                                                  batch["second"].numpy(), strict=True)):
            video_id = raw_id.decode()
            keyframes.append(_keyframe(video_id, second, {k: v[i] for k, v in out.items()}))
            box, index = np.nonzero(batch["classes"][i].numpy() > 0)  # a row per (box, class)
            if not box.size:
                empty.add((video_id, int(second)))
            ymin, xmin, ymax, xmax = batch["boxes"][i].numpy()[box].T
            truth.append(ava_table(
                [video_id] * box.size, [int(second)] * box.size,
                np.stack([xmin, ymin, xmax, ymax], axis=-1), np.asarray(info.class_ids)[index],
                person_id=batch["person_id"][i].numpy()[box]))
    bar.close()
    table = pd.concat(truth, ignore_index=True) if truth else ava_table([], [], [], [])
    table["line"] = np.arange(1, len(table) + 1)
    groundtruth = Annotations(f"{info.name}:{split}", "groundtruth", table, empty,
                              rows_read=len(table) + len(empty))
    return groundtruth, keyframes


def detections_table(keyframes: Iterable[Keyframe], class_ids: list[int]) -> pd.DataFrame:
    """AVA detection rows (`CSV_COLUMNS` plus `line`), one per (box, class)."""
    keyframes = list(keyframes)
    counts = [len(k.scores) for k in keyframes]
    return ava_table(
        np.repeat([k.video_id for k in keyframes], counts).astype(object),
        np.repeat([k.second for k in keyframes], counts),
        np.concatenate([k.boxes for k in keyframes]) if keyframes else [],
        np.asarray(class_ids)[np.concatenate([k.classes for k in keyframes]).astype(int)]
        if keyframes else [],
        score=np.concatenate([k.scores for k in keyframes]) if keyframes else [],
    )


def write_detections_csv(table: pd.DataFrame, path: str | Path) -> None:
    """The official AVA detections format (``ava_keyframes.annotations.write_rows``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_rows(path, table[CSV_COLUMNS].itertuples(index=False), kind="detections")


def evaluate_model(
    model: MultiLabelRetinaNet,
    info: DatasetInfo,
    split: str,
    *,
    data_dir: str | None = None,
    labelmap: LabelMap | None = None,
    metric: str = "ava",
    batch_size: int = 8,
    limit: int | None = None,
    detections_csv: str | Path | None = None,
    exclusions: set[tuple[str, int]] | None = None,
    progress: bool = False,
) -> ap.APResult:
    """Run `model` on a TFDS split and score it with `detector.ap` against the split's own
    ground truth (a built AVA split has left out its excluded keyframes already; `exclusions`
    leaves out more); optionally write the detections as an AVA CSV."""
    groundtruth, keyframes = detect_dataset(
        model, info, split, data_dir=data_dir, batch_size=batch_size, limit=limit,
        progress=progress,
    )
    detections = detections_table(keyframes, model.class_ids)
    if detections_csv is not None:
        write_detections_csv(detections, detections_csv)
    return ap.evaluate(groundtruth, detections, labelmap or scored_labelmap(info=info), metric,
                       exclusions)


class InputError(ValueError):
    """An image or video given to predict that cannot be read."""


def read_images(paths: Iterable[str | Path]) -> Iterator[tuple[str, int, np.ndarray]]:
    """`(video_id, second, HxWx3 uint8 RGB image)` per image file (see `image_keyframe`),
    for `detect_images`; `InputError` names a file that is missing or not an image."""
    from PIL import Image, UnidentifiedImageError

    for name in paths:
        path = Path(name)
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except Image.DecompressionBombError as error:
            raise InputError(f"{path}: refused, {error}") from None
        except (UnidentifiedImageError, OSError) as error:
            raise InputError(f"{path}: not a readable image ({error})") from None
        yield (*image_keyframe(path), pixels)


# The video id written for a video whose file name is no AVA id and that was given none: an
# id of AVA's form (11 of A-Za-z0-9_-), so the detections CSV still reads back everywhere.
UNNAMED_VIDEO = "unnamed_vid"


def video_id_of(path: str | Path, video_id: str | None = None) -> str:
    """The id under which a video's detections are written: `video_id` when given (it must
    have AVA's form), else the file's stem when that is an AVA id, else `UNNAMED_VIDEO`.
    A user's own video may have any name; ids only matter to AVA CSVs."""
    if video_id is not None:
        try:
            return check_video_id(video_id)
        except ValueError as error:
            raise InputError(f"--video-id: {error}") from None
    stem = Path(path).stem
    return stem if VIDEO_ID_RE.fullmatch(stem) else UNNAMED_VIDEO


def video_keyframes(
    path: str | Path, seconds: Iterable[int], *, video_id: str | None = None
) -> Iterator[tuple[str, int, np.ndarray]]:
    """`(video_id, second, frame)` for keyframe `seconds` of a video file of any name, for
    `detect_images`; the id is `video_id_of(path, video_id)`. Raises what
    `extract_keyframes` raises (`MissingKeyframes` after the frames that exist)."""
    video_id = video_id_of(path, video_id)
    for second, frame in extract_keyframes(path, seconds):
        yield video_id, int(second), frame


def image_keyframe(path: Path) -> tuple[str, int]:
    """(video_id, second) for an image file: from a `<video id>_<second>` name (a dataset
    key, as the builder and export-csv name them), else the file's stem and second 0."""
    try:
        return parse_keyframe_key(path.stem)
    except ValueError:
        return path.stem, 0


def picture_name(keyframe: Keyframe) -> str:
    """The file name of a keyframe's picture: its key `<video id>_<ssss>.png`; an image of no
    AVA video keeps its stem with the same suffix, `photo_0000.png`."""
    try:
        return f"{keyframe_key(keyframe.video_id, keyframe.second)}.png"
    except ValueError:
        return f"{keyframe.video_id}_{keyframe.second:04d}.png"


@dataclass
class Predictions:
    """What `predict_images` and `predict_video` found: a `Keyframe` per image, their AVA
    detection rows (`detections_table`), and `missing`: why keyframes asked for are absent
    (seconds past the video's end), or None."""

    keyframes: list[Keyframe]
    table: pd.DataFrame
    missing: str | None = None


def predict_images(
    model: MultiLabelRetinaNet, paths: Iterable[str | Path], *,
    pictures: str | Path | None = None, min_score: float = 0.3, progress: bool = False,
) -> Predictions:
    """Detections on image files of any size (ids from their names, `image_keyframe`); with
    `pictures`, a picture per image in that folder (`picture_name`) showing detections from
    `min_score`; with `progress`, images done on stderr. Raises `InputError` naming a file
    that cannot be read."""
    paths = list(paths)
    return _predict(model, read_images(paths), pictures, min_score,
                    Progress("predict", len(paths), enabled=progress))


def predict_video(
    model: MultiLabelRetinaNet, path: str | Path, seconds: Iterable[int],
    video_id: str | None = None, *, pictures: str | Path | None = None,
    min_score: float = 0.3, progress: bool = False,
) -> Predictions:
    """Detections on the keyframes at `seconds` of a video file of any name, written under
    `video_id_of(path, video_id)`; `pictures` as in `predict_images`. Seconds past the end
    are reported in `Predictions.missing`; an undecodable video raises `KeyframeError`."""
    seconds = list(seconds)
    return _predict(model, video_keyframes(path, seconds, video_id=video_id), pictures,
                    min_score, Progress(f"predict {path}", len(seconds), enabled=progress))


def _predict(model: MultiLabelRetinaNet, items: Iterator[tuple[str, int, np.ndarray]],
             pictures: str | Path | None, min_score: float, progress: Progress
             ) -> Predictions:
    from PIL import Image

    from ava_keyframes.frames import MissingKeyframes
    from detector.plots import draw_keyframe

    keyframes: list[Keyframe] = []
    missing = None
    try:
        for image, keyframe in detect_images(model, items):
            progress.update()
            keyframes.append(keyframe)
            if pictures is not None:
                picture = draw_keyframe(image, keyframe, model.class_names, min_score=min_score)
                Image.fromarray(picture).save(Path(pictures) / picture_name(keyframe))
    except MissingKeyframes as error:
        missing = str(error)
    finally:
        progress.close()
    return Predictions(keyframes, detections_table(keyframes, model.class_ids), missing)


def export(model: MultiLabelRetinaNet, out: str | Path) -> tuple[Path, Path]:
    """Write `out/model.keras` and a SavedModel `out/saved_model` whose `serve` (and
    `serving_default`) signature maps a uint8 image batch to detections, and whose
    `class_names` signature returns the class names."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keras_path = out / "model.keras"
    model.save(keras_path)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serving_function(model))
    names = tf.constant(model.class_names)
    archive.add_endpoint(
        "class_names", tf.function(lambda: {"names": names}, input_signature=[])
    )
    saved = out / "saved_model"
    archive.write_out(str(saved), verbose=False)
    return keras_path, saved
