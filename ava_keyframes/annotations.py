"""AVA's CSV formats, both ways: rows -> validated table and multi-label keyframes, with a
row-level report; and rows, detections and excluded timestamps written, with the companion
files' names. The one place that knows these formats (synth, predict and evaluation call it).

A row is ``video_id, middle_frame_timestamp, x1, y1, x2, y2, action_id[, person_id]``
(ground truth, 7 or 8 columns) or ``..., action_id, score`` (detections, 8 columns); a
2-column row ``video_id, timestamp`` names a keyframe that has no boxes. Validation runs
column by column with NumPy (a million rows take seconds) and without pandas, so that
``ava-keyframes inspect`` starts fast; ``Annotations.table`` builds the pandas DataFrame on
first use. Every row read ends up either in the table or in ``Annotations.report``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from etils import epath

from ava_keyframes.labelmap import INT32_MAX, LabelMap
from ava_keyframes.textio import read_bounded

if TYPE_CHECKING:
    import pandas as pd

VIDEO_ID_RE = re.compile(r"[A-Za-z0-9_-]{11}")  # always used with fullmatch
KEYFRAME_KEY_RE = re.compile(rf"(?P<video_id>{VIDEO_ID_RE.pattern})_(?P<second>[0-9]{{4,10}})")
BOX_TOLERANCE = 0.01
BOX_COLUMNS = ["x1", "y1", "x2", "y2"]
_FIELDS = ["video_id", "timestamp", *BOX_COLUMNS, "action_id"]
_KINDS = ("groundtruth", "detections")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_UNSIGNED = re.compile(r"[0-9]+")
_SIGNED = re.compile(r"[+-]?[0-9]+")

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


class Annotations:
    """Accepted rows as a table, plus what was rejected and which keyframes have no boxes.

    ``table`` is a pandas DataFrame with the columns ``video_id, second, x1, y1, x2, y2,
    action_id, person_id`` (or ``score``) ``, line``; ``columns`` the same as NumPy arrays.
    Either may be given; the other is made on first use.
    """

    def __init__(self, path: str, kind: str, table: pd.DataFrame | Mapping[str, np.ndarray],
                 empty_keyframes: set[Keyframe] | None = None,
                 report: list[Rejection] | None = None, rows_read: int = 0) -> None:
        self.path, self.kind, self.rows_read = path, kind, rows_read
        self.empty_keyframes = set() if empty_keyframes is None else empty_keyframes
        self.report = [] if report is None else report
        self._table = None if isinstance(table, Mapping) else table
        self._columns = dict(table) if isinstance(table, Mapping) else None

    @property
    def table(self) -> pd.DataFrame:
        if self._table is None:
            import pandas as pd  # only where a DataFrame is asked for

            self._table = pd.DataFrame(self._columns)
        return self._table

    @property
    def columns(self) -> dict[str, np.ndarray]:
        if self._columns is None:
            self._columns = {name: self._table[name].to_numpy() for name in self._table}
        return self._columns

    def keyframes(self) -> dict[Keyframe, list[Person]]:
        """Keyframes in (video, second) order; rows sharing video, second, box and person id
        become one person carrying all their actions (in file order of first appearance)."""
        if self.kind != "groundtruth":
            raise ValueError("keyframes() merges ground-truth persons; detections have scores")
        c = self.columns
        keys = zip(c["video_id"].tolist(), c["second"].tolist(),
                   *(c[name].tolist() for name in BOX_COLUMNS), c["person_id"].tolist(),
                   strict=True)
        persons: dict[tuple, set[int]] = {}
        for key, action in zip(keys, c["action_id"].tolist(), strict=True):
            persons.setdefault(key, set()).add(action)
        result: dict[Keyframe, list[Person]] = {key: [] for key in self.empty_keyframes}
        for (video_id, second, x1, y1, x2, y2, person_id), actions in persons.items():
            result.setdefault((video_id, second), []).append(
                Person((x1, y1, x2, y2), person_id, tuple(sorted(actions))))
        return dict(sorted(result.items()))

    def summary(self, labelmap: LabelMap | None = None) -> dict:
        """Counts for ``ava-keyframes inspect``: rows, keyframes, persons, labels per class."""
        keyframes = self.keyframes() if self.kind == "groundtruth" else {}
        per_class = Counter(self.columns["action_id"].tolist())
        name = labelmap.name_of if labelmap is not None else str
        return {
            "file": self.path,
            "rows": self.rows_read,
            "rows_used": len(self.columns["video_id"]) + len(self.empty_keyframes),
            "rows_rejected": len(self.report),
            "videos": len(set(self.columns["video_id"].tolist())),
            "keyframes": len(keyframes),
            "persons": sum(len(p) for p in keyframes.values()),
            "labels_per_class": {
                name(a) if labelmap is None or a in labelmap else str(a): n
                for a, n in sorted(per_class.items())
            },
            "rejected": [r.to_json() for r in self.report],
        }


MAX_CSV_BYTES = 256 * 2**20
"""Default size limit of an AVA CSV: reading takes about 20 times a file's size in memory, so
this bounds a read near 5 GB (the official train file is 50 MB); ``max_bytes`` raises it."""
MAX_LINE_BYTES = 4096  # an AVA row is under 100 bytes


def _read_lines(path: epath.Path, *, may_be_empty: bool = False,
                max_bytes: int = MAX_CSV_BYTES) -> list[str]:
    text = read_bounded(path, max_bytes, "an AVA CSV", AnnotationError, MAX_LINE_BYTES,
                        raise_limit="max_bytes; evaluate --max-csv-mb")
    lines = text.splitlines()
    if not may_be_empty and not any(line.strip() for line in lines):
        raise AnnotationError(f"{path}: empty file, no AVA rows")
    return lines


def read_excluded(path: str | Path) -> set[Keyframe]:
    """Read an ``ava_*_excluded_timestamps`` CSV (``video_id,timestamp`` per line); a file
    without rows is valid (no keyframe excluded)."""
    path = epath.Path(path)  # gs://... too (a remote --manual_dir)
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


def _numbers(column: np.ndarray, ascii_only: bool) -> np.ndarray:
    """Floats, NaN where a field is not a plain decimal number (fast path when the file is
    ASCII and every field is one; Python alone would also read full-width digits, '1_0',
    'nan' and 'inf')."""
    if ascii_only:
        try:
            values = column.astype(np.float64)
            if np.isfinite(values).all() and not any("_" in text for text in column):
                return values
        except ValueError:
            pass
    values = np.array([float(text) if _NUMBER.fullmatch(text.strip()) else np.nan
                       for text in column.tolist()], dtype=np.float64)
    return np.where(np.isfinite(values), values, np.nan)


def _quoted(prefix: str, values) -> Callable[[np.ndarray], list[str]]:
    """A lazy reason: ``prefix`` followed by each failing row's value, quoted."""
    return lambda rows: [f"{prefix}{value!r}" for value in np.asarray(values)[rows]]


def _checked_integers(check: _Validator, rows: np.ndarray, column: np.ndarray, name: str,
                     what: str, low: int = 0, high: int = INT32_MAX,
                     pattern: re.Pattern = _SIGNED) -> np.ndarray:
    """The ASCII integers of ``column`` as int64 (0 where not valid); among ``rows``, fails
    those that are not ``pattern`` (reason ``what``) or lie outside ``low..high`` (a value
    too long for int64 is out of range, never an overflow)."""
    text = [value.strip() for value in column.tolist()]
    syntax = np.fromiter((pattern.fullmatch(t) is not None for t in text), bool, len(text))
    values = np.array([int(t) if ok and len(t) <= 12 else low - 1
                       for t, ok in zip(text, syntax.tolist(), strict=True)], dtype=np.int64)
    in_range = (values >= low) & (values <= high)
    check.fail(rows & ~syntax, name, _quoted(f"{what}: ", column))
    check.fail(rows & ~in_range, name, _quoted(f"outside {low}..{high}: ", column))
    return np.where(in_range, values, 0)


def read_annotations(
    path: str | Path,
    labelmap: LabelMap | None = None,
    excluded: set[Keyframe] | None = None,
    kind: str = "groundtruth",
    max_bytes: int = MAX_CSV_BYTES,
) -> Annotations:
    """Read an AVA ground-truth or detections CSV, validating every row.

    Ground truth: coordinates outside [0, 1] by at most 0.01 are clipped, further out the row
    is rejected. Detections keep their coordinates as given (the official evaluator does not
    clip them) and need a numeric score in the 8th column. Rows with an action not in
    ``labelmap`` or on a keyframe in ``excluded`` are rejected with that reason. A file over
    ``max_bytes`` or with a line over ``MAX_LINE_BYTES`` is refused before it fills memory.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, not {kind!r}")
    path = epath.Path(path)  # gs://... too (a remote --manual_dir)
    frame, columns, line_numbers, ascii_only = _split_fields(_read_lines(path,
                                                                         max_bytes=max_bytes))
    check = _Validator(len(columns))
    _check_column_counts(check, columns, kind)
    video_id = np.array([v.strip() for v in frame["video_id"].tolist()], dtype=object)
    check.fail(~np.fromiter((VIDEO_ID_RE.fullmatch(v) is not None for v in video_id.tolist()),
                            bool, len(video_id)),
               "video_id", _quoted("invalid video id ", video_id))
    every = np.ones(len(columns), dtype=bool)
    seconds = _checked_integers(check, every, frame["timestamp"], "timestamp",
                                "not a whole number of seconds", pattern=_UNSIGNED)
    if excluded:
        keys = zip(video_id.tolist(), seconds.tolist(), strict=True)
        check.fail(np.fromiter((key in excluded for key in keys), bool, len(columns)),
                   "timestamp", "excluded keyframe")
    boxed = columns != 2
    boxes = _checked_boxes(check, frame, boxed, kind, ascii_only)
    action = _checked_integers(check, boxed, frame["action_id"], "action_id", "not an integer")
    if labelmap is not None:
        check.fail(boxed & ~np.isin(action, labelmap.ids), "action_id",
                   lambda rows: [f"action id {action[i]} not in the label map" for i in rows])
    last_name, last_values = _checked_last(check, frame["extra"], columns, kind, ascii_only)
    accepted = check.ok()
    empty = accepted & ~boxed
    rows = accepted & boxed
    table = {
        "video_id": video_id[rows],
        "second": seconds[rows],
        **{name: boxes[name][rows] for name in BOX_COLUMNS},
        "action_id": action[rows],
        last_name: last_values[rows],
        "line": line_numbers[rows],
    }
    report = [
        Rejection(str(path), int(line_numbers[i]), check.field[i], check.reason[i])
        for i in np.flatnonzero(~accepted)
    ]
    empty_keyframes = set(zip(video_id[empty].tolist(), seconds[empty].tolist(), strict=True))
    return Annotations(str(path), kind, table, empty_keyframes, report, len(columns))


def _check_column_counts(check: _Validator, columns: np.ndarray, kind: str) -> None:
    allowed = (7, 8) if kind == "groundtruth" else (8,)
    check.fail(
        ~np.isin(columns, (2, *allowed)), "row",
        lambda rows: [
            f"wrong column count: {columns[i]} (expected {' or '.join(map(str, allowed))},"
            " or 2 for a keyframe without boxes)" for i in rows
        ],
    )


def _checked_last(check: _Validator, column: np.ndarray, columns: np.ndarray, kind: str,
                  ascii_only: bool) -> tuple[str, np.ndarray]:
    """The 8th column: ground truth's optional person id (-1 where a row has 7 columns), or
    detections' score."""
    if kind == "groundtruth":
        has_person = columns == 8
        return "person_id", np.where(has_person, _checked_integers(
            check, has_person, column, "person_id", "not an integer"), -1)
    scores = _numbers(column, ascii_only)
    check.fail((columns != 2) & np.isnan(scores), "score", _quoted("not a number: ", column))
    return "score", scores


def _split_fields(lines: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray,
                                             bool]:
    """The non-blank lines as text fields (the first 8 columns, by name; "" where a line is
    shorter), each line's column count and line number, and whether the text is all ASCII.
    Quotes are plain characters (AVA files quote nothing), so an unbalanced quote fails its
    own row's fields only."""
    numbered = [(i, line) for i, line in enumerate(lines, 1) if line.strip()]
    line_numbers = np.array([i for i, _ in numbered], dtype=np.int64)
    body = [line for _, line in numbered]
    columns = np.array([line.count(",") + 1 for line in body], dtype=np.int64)
    names = [*_FIELDS, "extra"]
    frame = {name: np.full(len(body), "", dtype=object) for name in names}
    for count in np.unique(columns).tolist():  # lines of one width split in one call
        rows = np.flatnonzero(columns == count)
        fields = ",".join([body[i] for i in rows.tolist()]).split(",")
        table = np.array(fields, dtype=object).reshape(len(rows), count)
        for j, name in enumerate(names[:count]):
            frame[name][rows] = table[:, j]
    return frame, columns, line_numbers, "".join(body).isascii()


def _checked_boxes(check: _Validator, frame: dict[str, np.ndarray], boxed: np.ndarray, kind: str,
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


# --- the same formats written, and the files' names ---

_SPLIT_FILE = re.compile(r"ava_(?P<split>train|val|test)_v(?P<version>\d+\.\d+)\.csv")
_DIGITS = {"groundtruth": ("{:.3f}", "{}"), "detections": ("{:.4f}", "{:.6f}")}


def annotation_csv_name(split: str, version: str) -> str:
    """An official split's annotation CSV as the AVA zip names it: ``ava_val_v2.2.csv``
    (``split`` is train, val or test)."""
    return f"ava_{split}_v{version}.csv"


def excluded_csv_name(split: str, version: str) -> str:
    """The split's excluded-timestamps CSV: ``ava_val_excluded_timestamps_v2.2.csv``."""
    return f"ava_{split}_excluded_timestamps_v{version}.csv"


def companion_excluded_name(annotation_csv: str) -> str | None:
    """The excluded-timestamps name that goes with an official annotation CSV's name
    (``ava_val_v2.2.csv`` -> ``ava_val_excluded_timestamps_v2.2.csv``); None for another name."""
    match = _SPLIT_FILE.fullmatch(annotation_csv)
    return None if match is None else excluded_csv_name(match["split"], match["version"])


def format_row(video_id: str, second: int, box: Iterable[float], action_id: int,
               last: float, kind: str = "groundtruth") -> str:
    """One AVA CSV line: ``video_id,ssss,x1,y1,x2,y2,action_id,person_id`` (ground truth,
    coordinates to 3 decimals as in AVA's files) or ``...,action_id,score`` (detections,
    coordinates to 4 and scores to 6 decimals)."""
    coordinate, tail = _DIGITS[kind]
    return ",".join([video_id, f"{int(second):04d}",
                     *(coordinate.format(float(v)) for v in box), str(int(action_id)),
                     tail.format(last)]) + "\n"


def write_rows(path: str | Path, rows: Iterable[tuple], kind: str = "groundtruth") -> None:
    """Write AVA CSV rows ``(video_id, second, x1, y1, x2, y2, action_id, person_id or
    score)`` in the form ``read_annotations`` reads (no header, normalized boxes)."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.writelines(format_row(v, s, box, a, last, kind)
                          for v, s, *box, a, last in rows)


def write_excluded(path: str | Path, keyframes: Iterable[Keyframe]) -> None:
    """An excluded-timestamps CSV: ``video_id,ssss`` per keyframe, in order."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.writelines(f"{v},{s:04d}\n" for v, s in sorted(keyframes))
