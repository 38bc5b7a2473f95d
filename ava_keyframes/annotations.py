"""AVA CSV rows -> validated table and multi-label keyframes, with a row-level report.

A row is ``video_id, middle_frame_timestamp, x1, y1, x2, y2, action_id[, person_id]``
(ground truth, 7 or 8 columns) or ``..., action_id, score`` (detections, 8 columns); a
2-column row ``video_id, timestamp`` names a keyframe that has no boxes. Validation is
vectorized with pandas/NumPy so that a million rows take seconds, and every row read ends
up either in ``Annotations.table`` or in ``Annotations.report``.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ava_keyframes.labelmap import LabelMap

VIDEO_ID_RE = re.compile(r"[A-Za-z0-9_-]{11}")  # always used with fullmatch
BOX_TOLERANCE = 0.01
BOX_COLUMNS = ["x1", "y1", "x2", "y2"]
_FIELDS = ["video_id", "timestamp", *BOX_COLUMNS, "action_id"]
_INTEGER = r"[+-]?\d+"
_KINDS = ("groundtruth", "detections")

Keyframe = tuple[str, int]


class AnnotationError(ValueError):
    """An annotation file that cannot be read at all (missing, unreadable, empty)."""


def check_video_id(video_id: str) -> str:
    """Return ``video_id`` if it has YouTube's form (11 of ``A-Za-z0-9_-``), else raise."""
    if not isinstance(video_id, str) or not VIDEO_ID_RE.fullmatch(video_id):
        raise ValueError(
            f"invalid video id {video_id!r}: expected 11 characters of A-Z, a-z, 0-9, '_' or '-'"
        )
    return video_id


@dataclass(frozen=True)
class Rejection:
    """One row that was not used, and why."""

    file: str
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.reason}"

    def to_json(self) -> dict:
        return {"line": self.line, "field": self.field, "reason": self.reason}


@dataclass(frozen=True)
class Person:
    """One annotated person on a keyframe with every action they perform."""

    box: tuple[float, float, float, float]  # normalized x1, y1, x2, y2
    person_id: int
    actions: tuple[int, ...]


@dataclass
class Annotations:
    """Accepted rows as a table, plus what was rejected and which keyframes have no boxes."""

    path: str
    kind: str
    table: pd.DataFrame
    empty_keyframes: set[Keyframe] = field(default_factory=set)
    report: list[Rejection] = field(default_factory=list)
    rows_read: int = 0

    def keyframes(self) -> dict[Keyframe, list[Person]]:
        """Keyframes in (video, second) order; rows sharing video, second, box and person id
        become one person carrying all their actions (in file order of first appearance)."""
        if self.kind != "groundtruth":
            raise ValueError("keyframes() merges ground-truth persons; detections have scores")
        result: dict[Keyframe, list[Person]] = {key: [] for key in self.empty_keyframes}
        keys = ["video_id", "second", *BOX_COLUMNS, "person_id"]
        grouped = self.table.groupby(keys, sort=False)["action_id"].agg(
            lambda ids: tuple(sorted(set(ids)))
        )
        for (video_id, second, x1, y1, x2, y2, person_id), actions in grouped.items():
            result.setdefault((video_id, int(second)), []).append(
                Person((x1, y1, x2, y2), int(person_id), actions)
            )
        return dict(sorted(result.items()))

    def summary(self, labelmap: LabelMap | None = None) -> dict:
        """Counts for ``ava-keyframes inspect``: rows, keyframes, persons, labels per class."""
        keyframes = self.keyframes() if self.kind == "groundtruth" else {}
        per_class = Counter(int(a) for a in self.table["action_id"])
        name = labelmap.name_of if labelmap is not None else str
        return {
            "file": self.path,
            "rows": self.rows_read,
            "rows_used": len(self.table) + len(self.empty_keyframes),
            "rows_rejected": len(self.report),
            "videos": self.table["video_id"].nunique(),
            "keyframes": len(keyframes),
            "persons": sum(len(p) for p in keyframes.values()),
            "labels_per_class": {
                name(a) if labelmap is None or a in labelmap else str(a): n
                for a, n in sorted(per_class.items())
            },
            "rejected": [r.to_json() for r in self.report],
        }


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise AnnotationError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise AnnotationError(f"{path}: cannot read ({error})") from None
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise AnnotationError(f"{path}: empty file, no AVA rows")
    return lines


def read_excluded(path: str | Path) -> set[Keyframe]:
    """Read an ``ava_*_excluded_timestamps`` CSV (``video_id,timestamp`` per line)."""
    path = Path(path)
    excluded = set()
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        valid = len(parts) == 2 and VIDEO_ID_RE.fullmatch(parts[0]) and parts[1].isdecimal()
        if not valid:
            raise AnnotationError(
                f"{path}:{number}: expected 'video_id,timestamp', found {line.strip()!r}"
            )
        excluded.add((parts[0], int(parts[1])))
    return excluded


class _Validator:
    """Assigns each row its first failing (field, reason); rows left unassigned are accepted."""

    def __init__(self, n: int) -> None:
        self.field = np.full(n, "", dtype=object)
        self.reason = np.full(n, "", dtype=object)

    def ok(self) -> np.ndarray:
        return self.field == ""

    def fail(self, mask: np.ndarray, field_name: str, reason: str | Callable) -> None:
        """Mark rows in ``mask`` not yet failed; ``reason`` is a text, or a function of the
        failing rows' positions returning one text each (built only for those rows)."""
        rows = np.flatnonzero(np.asarray(mask, dtype=bool) & self.ok())
        if rows.size:
            self.field[rows] = field_name
            self.reason[rows] = reason if isinstance(reason, str) else reason(rows)


def _numbers(column: pd.Series) -> np.ndarray:
    """Floats, NaN where a field is not a number (fast path when all of them are)."""
    try:
        return column.astype(np.float64).to_numpy()
    except ValueError:
        return pd.to_numeric(column.str.strip(), errors="coerce").to_numpy(dtype=np.float64)


def _quoted(prefix: str, values) -> Callable[[np.ndarray], list[str]]:
    """A lazy reason: ``prefix`` followed by each failing row's value, quoted."""
    return lambda rows: [f"{prefix}{value!r}" for value in np.asarray(values)[rows]]


def read_annotations(
    path: str | Path,
    labelmap: LabelMap | None = None,
    excluded: set[Keyframe] | None = None,
    kind: str = "groundtruth",
) -> Annotations:
    """Read an AVA ground-truth or detections CSV, validating every row.

    Ground truth: coordinates outside [0, 1] by at most 0.01 are clipped, further out the row
    is rejected. Detections keep their coordinates as given (the official evaluator does not
    clip them) and need a numeric score in the 8th column. Rows with an action not in
    ``labelmap`` or on a keyframe in ``excluded`` are rejected with that reason.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, not {kind!r}")
    path = Path(path)
    lines = _read_lines(path)
    line_numbers = np.array([i for i, line in enumerate(lines, 1) if line.strip()], dtype=np.int64)
    body = [line for line in lines if line.strip()]
    columns = np.fromiter((line.count(",") + 1 for line in body), dtype=np.int64, count=len(body))
    width = max(8, int(columns.max()))
    frame = pd.read_csv(
        io.StringIO("\n".join(body)), header=None, names=range(width), dtype=str,
        keep_default_na=False, na_filter=False, engine="c",
    ).iloc[:, :8]
    frame.columns = [*_FIELDS, "extra"]

    check = _Validator(len(frame))
    allowed = (7, 8) if kind == "groundtruth" else (8,)
    is_empty_keyframe = columns == 2
    check.fail(
        ~np.isin(columns, (2, *allowed)), "row",
        lambda rows: [
            f"wrong column count: {columns[i]} (expected {' or '.join(map(str, allowed))},"
            " or 2 for a keyframe without boxes)" for i in rows
        ],
    )
    video_id = frame["video_id"].str.strip()
    check.fail(~video_id.str.fullmatch(VIDEO_ID_RE.pattern).to_numpy(), "video_id",
               _quoted("invalid video id ", video_id))
    timestamp = frame["timestamp"].str.strip()
    check.fail(~timestamp.str.fullmatch(r"\d+").to_numpy(), "timestamp",
               _quoted("not a whole number of seconds: ", timestamp))
    seconds = pd.to_numeric(timestamp.where(timestamp.str.fullmatch(r"\d+"), "0")).to_numpy(
        dtype=np.int64
    )
    if excluded:
        keys = pd.MultiIndex.from_arrays([video_id, seconds])
        check.fail(keys.isin(list(excluded)), "timestamp", "excluded keyframe")

    boxed = ~is_empty_keyframe
    boxes = {}
    for name in BOX_COLUMNS:
        values = _numbers(frame[name])
        check.fail(boxed & np.isnan(values), name, _quoted("not a number: ", frame[name]))
        if kind == "groundtruth":
            outside = (values < -BOX_TOLERANCE) | (values > 1 + BOX_TOLERANCE)
            check.fail(boxed & outside, name, _quoted("outside [0, 1]: ", frame[name]))
            values = np.clip(values, 0.0, 1.0)
        boxes[name] = values
    if kind == "groundtruth":
        # Detections keep empty boxes: the official evaluator counts them among a keyframe's
        # 50 best before dropping them (detector.ap reports them as dropped).
        check.fail(boxed & (boxes["x2"] <= boxes["x1"]), "x2", "x2 <= x1")
        check.fail(boxed & (boxes["y2"] <= boxes["y1"]), "y2", "y2 <= y1")

    action_text = frame["action_id"].str.strip()
    is_int_action = action_text.str.fullmatch(_INTEGER).to_numpy()
    check.fail(boxed & ~is_int_action, "action_id",
               _quoted("not an integer: ", frame["action_id"]))
    action = pd.to_numeric(action_text.where(is_int_action, "0")).to_numpy(dtype=np.int64)
    if labelmap is not None:
        check.fail(boxed & ~np.isin(action, labelmap.ids), "action_id",
                   lambda rows: [f"action id {action[i]} not in the label map" for i in rows])

    last = frame["extra"].str.strip()
    if kind == "groundtruth":
        has_person = columns == 8
        is_int_person = last.str.fullmatch(_INTEGER).to_numpy()
        check.fail(has_person & ~is_int_person, "person_id",
                   _quoted("not an integer: ", frame["extra"]))
        last_values = np.where(
            has_person & is_int_person,
            pd.to_numeric(last.where(is_int_person, "-1")).to_numpy(dtype=np.float64), -1.0,
        ).astype(np.int64)
        last_name = "person_id"
    else:
        last_values = _numbers(last)
        check.fail(boxed & ~np.isfinite(last_values), "score",
                   _quoted("not a number: ", frame["extra"]))
        last_name = "score"

    accepted = check.ok()
    empty = accepted & is_empty_keyframe
    rows = accepted & boxed
    table = pd.DataFrame({
        "video_id": video_id.to_numpy(dtype=object)[rows],
        "second": seconds[rows],
        **{name: boxes[name][rows] for name in BOX_COLUMNS},
        "action_id": action[rows],
        last_name: last_values[rows],
        "line": line_numbers[rows],
    })
    rejected = np.flatnonzero(~accepted)
    report = [
        Rejection(str(path), int(line_numbers[i]), check.field[i], check.reason[i])
        for i in rejected
    ]
    empty_keyframes = set(zip(video_id.to_numpy()[empty], seconds[empty].tolist(), strict=True))
    return Annotations(str(path), kind, table, empty_keyframes, report, len(body))
