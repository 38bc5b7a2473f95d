"""What goes into `detector.ap`: the AVA table, the classes that are scored, the exclusions
of an official split, and the checks that refuse inputs which would score without meaning."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ava_keyframes.annotations import Annotations, companion_excluded_name
from ava_keyframes.labelmap import LabelMap, evaluation_labelmap_path, read_labelmap

if TYPE_CHECKING:
    from detector.data import DatasetInfo


class EvaluationError(ValueError):
    """Inputs that cannot give a meaningful score (nothing to score, files of the wrong kind)."""


def ava_table(
    video_id: Sequence[str], second: Sequence[int], boxes: np.ndarray,
    action_id: Sequence[int], *, score: Sequence[float] | None = None,
    person_id: Sequence[int] | None = None,
) -> pd.DataFrame:
    """AVA rows in the columns of ``Annotations.table``: ``video_id, second, x1, y1, x2, y2,
    action_id``, then ``score`` (detections) or ``person_id`` (ground truth, -1 when not
    given), and ``line`` (1, 2, ...: the file order, which decides score ties). ``boxes``
    are normalized ``[x1, y1, x2, y2]`` rows."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    table = pd.DataFrame({
        "video_id": np.asarray(video_id, dtype=object), "second": np.asarray(second, np.int64),
        **{name: boxes[:, i] for i, name in enumerate(("x1", "y1", "x2", "y2"))},
        "action_id": np.asarray(action_id, np.int64),
    })
    if score is not None:
        table["score"] = np.asarray(score, np.float64)
    else:
        table["person_id"] = -1 if person_id is None else np.asarray(person_id, np.int64)
    table["line"] = np.arange(1, len(table) + 1)
    return table


def check_pair(groundtruth: Annotations, detections: Annotations) -> None:
    """Refuse what would score without meaning: the same file twice, a file that has no usable
    row, detections whose 8th column holds whole numbers above 1 (a ground-truth file's
    person ids, not scores)."""
    same = Path(groundtruth.path).resolve() == Path(detections.path).resolve()
    if same:
        raise EvaluationError(f"{detections.path} is given as both ground truth and detections")
    for table in (groundtruth, detections):
        if table.table.empty and not (table.kind == "groundtruth" and table.empty_keyframes):
            raise EvaluationError(f"{table.path}: no usable {table.kind} row "
                                  f"({len(table.report)} of {table.rows_read} rejected)")
    scores = detections.table["score"].to_numpy()
    if (scores == np.round(scores)).all() and scores.max() > 1:
        raise EvaluationError(
            f"{detections.path}: the 8th column holds whole numbers up to {scores.max():g}, "
            "not scores: a ground-truth file (person ids)? Detections are video_id, second, "
            "x1, y1, x2, y2, action_id, score")


def default_exclusions(groundtruth: str | Path) -> Path | None:
    """The excluded-timestamps file of an official split's ground truth beside it:
    ``ava_val_v2.2.csv`` -> ``ava_val_excluded_timestamps_v2.2.csv`` (the AVA zip's names),
    if it is there; None otherwise."""
    path = Path(groundtruth)
    name = companion_excluded_name(path.name)
    if name is None or not path.with_name(name).is_file():
        return None
    return path.with_name(name)


def scored_labelmap(path: str | Path | None = None, info: DatasetInfo | None = None) -> LabelMap:
    """The classes that are scored (the one place that decides): the label map at ``path`` if
    given; else the dataset's own classes for a non-AVA dataset ``info``; else AVA's official
    60-class evaluation map."""
    if path:
        return read_labelmap(path)
    if info is not None and not info.ava_classes:
        return info.labelmap()
    return read_labelmap(evaluation_labelmap_path())
