"""AVA CSV rows -> validated table and multi-label keyframes, with a row-level report.

A row is ``video_id, middle_frame_timestamp, x1, y1, x2, y2, action_id[, person_id]``
(ground truth, 7 or 8 columns) or ``..., action_id, score`` (detections, 8 columns); a
2-column row ``video_id, timestamp`` names a keyframe that has no boxes. Validation is
vectorized with pandas/NumPy so that a million rows take seconds, and every row read ends
up either in ``Annotations.table`` or in ``Annotations.report``.
"""

from __future__ import annotations

import csv
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
KEYFRAME_KEY_RE = re.compile(rf"(?P<video_id>{VIDEO_ID_RE.pattern})_(?P<second>[0-9]{{4,10}})")
INT32_MAX = 2**31 - 1
"""Largest timestamp, person id and action id: the dataset stores them as int32."""
BOX_TOLERANCE = 0.01
BOX_COLUMNS = ["x1", "y1", "x2", "y2"]
_FIELDS = ["video_id", "timestamp", *BOX_COLUMNS, "action_id"]
_KINDS = ("groundtruth", "detections")
_NUMBER = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"

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


def keyframe_key(video_id: str, second: int) -> str:
    """The name of one keyframe: ``<video_id>_<ssss>`` (seconds zero-padded to 4 digits), the
    TFDS example key, the exported image's stem and the name of a keyframe picture."""
    return f"{check_video_id(video_id)}_{second:04d}"


def parse_keyframe_key(key: str) -> Keyframe:
    """``<video_id>_<ssss>`` -> (video_id, second); ValueError for anything else."""
    match = KEYFRAME_KEY_RE.fullmatch(key)
    if match is None or int(match["second"]) > INT32_MAX:
        raise ValueError(f"{key!r} is not a keyframe key <video_id>_<ssss> such as "
                         "'1j20qq1JyX4_0902'")
    return match["video_id"], int(match["second"])


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


def _read_lines(path: Path, *, may_be_empty: bool = False) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise AnnotationError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise AnnotationError(f"{path}: cannot read ({error})") from None
    lines = text.splitlines()
    if not may_be_empty and not any(line.strip() for line in lines):
        raise AnnotationError(f"{path}: empty file, no AVA rows")
    return lines


def read_excluded(path: str | Path) -> set[Keyframe]:
    """Read an ``ava_*_excluded_timestamps`` CSV (``video_id,timestamp`` per line); a file
    without rows is valid (no keyframe excluded)."""
    path = Path(path)
    excluded = set()
    for number, line in enumerate(_read_lines(path, may_be_empty=True), start=1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        valid = (len(parts) == 2 and VIDEO_ID_RE.fullmatch(parts[0])
                 and re.fullmatch(r"[0-9]{1,10}", parts[1]) and int(parts[1]) <= INT32_MAX)
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


def _numbers(column: pd.Series, ascii_only: bool) -> np.ndarray:
    """Floats, NaN where a field is not a plain decimal number (fast path when the file is
    ASCII and every field is one; Python would also read full-width digits, 'nan', 'inf')."""
    if ascii_only:
        try:
            values = column.astype(np.float64).to_numpy()
            if np.isfinite(values).all():
                return values
        except ValueError:
            pass
    plain = column.str.strip().str.fullmatch(_NUMBER).to_numpy()
    values = pd.to_numeric(column.where(plain, "nan"), errors="coerce").to_numpy(np.float64)
    return np.where(np.isfinite(values), values, np.nan)


def _quoted(prefix: str, values) -> Callable[[np.ndarray], list[str]]:
    """A lazy reason: ``prefix`` followed by each failing row's value, quoted."""
    return lambda rows: [f"{prefix}{value!r}" for value in np.asarray(values)[rows]]


def _checked_integers(check: _Validator, rows: np.ndarray, column: pd.Series, name: str,
                     what: str, low: int = 0, high: int = INT32_MAX,
                     pattern: str = r"[+-]?[0-9]+") -> np.ndarray:
    """The ASCII integers of ``column`` as int64 (0 where not valid); among ``rows``, fails
    those that are not ``pattern`` (reason ``what``) or lie outside ``low..high`` (a value
    too long for int64 is out of range, never an overflow)."""
    text = column.str.strip()
    syntax = text.str.fullmatch(pattern).to_numpy()
    short = syntax & (text.str.len() <= 12).to_numpy()
    values = pd.to_numeric(text.where(short, "0")).to_numpy(dtype=np.int64)
    in_range = short & (values >= low) & (values <= high)
    check.fail(rows & ~syntax, name, _quoted(f"{what}: ", column))
    check.fail(rows & ~in_range, name, _quoted(f"outside {low}..{high}: ", column))
    return np.where(in_range, values, 0)


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
    frame, columns, line_numbers, ascii_only = _split_fields(_read_lines(path))
    check = _Validator(len(frame))
    allowed = (7, 8) if kind == "groundtruth" else (8,)
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
    every = np.ones(len(frame), dtype=bool)
    seconds = _checked_integers(check, every, frame["timestamp"], "timestamp",
                                "not a whole number of seconds", pattern="[0-9]+")
    if excluded:
        keys = pd.MultiIndex.from_arrays([video_id, seconds])
        check.fail(keys.isin(list(excluded)), "timestamp", "excluded keyframe")
    boxed = columns != 2
    boxes = _checked_boxes(check, frame, boxed, kind, ascii_only)
    action = _checked_integers(check, boxed, frame["action_id"], "action_id", "not an integer")
    if labelmap is not None:
        check.fail(boxed & ~np.isin(action, labelmap.ids), "action_id",
                   lambda rows: [f"action id {action[i]} not in the label map" for i in rows])
    if kind == "groundtruth":
        last_name = "person_id"
        has_person = columns == 8
        last_values = np.where(has_person, _checked_integers(
            check, has_person, frame["extra"], last_name, "not an integer"), -1)
    else:
        last_name = "score"
        last_values = _numbers(frame["extra"], ascii_only)
        check.fail(boxed & np.isnan(last_values), "score",
                   _quoted("not a number: ", frame["extra"]))

    accepted = check.ok()
    empty = accepted & ~boxed
    rows = accepted & boxed
    table = pd.DataFrame({
        "video_id": video_id.to_numpy(dtype=object)[rows],
        "second": seconds[rows],
        **{name: boxes[name][rows] for name in BOX_COLUMNS},
        "action_id": action[rows],
        last_name: last_values[rows],
        "line": line_numbers[rows],
    })
    report = [
        Rejection(str(path), int(line_numbers[i]), check.field[i], check.reason[i])
        for i in np.flatnonzero(~accepted)
    ]
    empty_keyframes = set(zip(video_id.to_numpy()[empty], seconds[empty].tolist(), strict=True))
    return Annotations(str(path), kind, table, empty_keyframes, report, len(frame))


def _split_fields(lines: list[str]) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, bool]:
    """The non-blank lines as text fields (the first 8 columns, named), each line's column
    count and line number, and whether the text is all ASCII. Quotes are plain characters
    (AVA files quote nothing), so an unbalanced quote fails its own row's fields only."""
    line_numbers = np.array([i for i, line in enumerate(lines, 1) if line.strip()], dtype=np.int64)
    body = [line for line in lines if line.strip()]
    columns = np.fromiter((line.count(",") + 1 for line in body), dtype=np.int64, count=len(body))
    text = "\n".join(body)
    frame = pd.read_csv(
        io.StringIO(text), header=None, names=range(max(8, int(columns.max()))), dtype=str,
        keep_default_na=False, na_filter=False, engine="c", quoting=csv.QUOTE_NONE,
    ).iloc[:, :8]
    frame.columns = [*_FIELDS, "extra"]
    return frame, columns, line_numbers, text.isascii()


def _checked_boxes(check: _Validator, frame: pd.DataFrame, boxed: np.ndarray, kind: str,
                   ascii_only: bool) -> dict[str, np.ndarray]:
    """The four coordinates as floats. Ground truth: within 0.01 outside [0, 1] clipped, further
    out rejected, empty boxes rejected; detections keep them as given."""
    boxes = {}
    for name in BOX_COLUMNS:
        values = _numbers(frame[name], ascii_only)
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
    return boxes
