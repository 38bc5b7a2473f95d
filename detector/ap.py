"""Per-class AP by the official AVA frame-mAP protocol, vectorized with NumPy.

The reference is ActivityNet's ``Evaluation/get_ava_performance.py`` with the TensorFlow
object-detection code it ships (``object_detection_evaluation.py``, ``per_image_evaluation.py``,
``metrics.py``, ``np_box_ops.py``). This module reproduces its numbers exactly, step by step:

1. Only rows whose action is in the label map count (ground truth and detections alike); the
   label map defaults to the 60-class evaluation map.
2. Per keyframe, the 50 highest-scoring detection rows across all classes are kept. Upstream
   pushes ``(score, action_id, y1, x1, y2, x2)`` tuples through a size-50 ``heapq`` in file
   order and then sorts them by descending score (stable); keyframes with tied scores are
   replayed through that same heap so ties fall exactly as upstream lets them fall.
3. Detections on keyframes absent from the ground truth are ignored; a keyframe is present if
   the ground-truth file has any row for it: a box of any class, or a 2-column row.
4. Detections whose box has ``x2 <= x1`` or ``y2 <= y1`` are dropped, after step 2 (so they
   still take one of the 50 places, as upstream).
5. Per keyframe and class, detections in descending score order each take the ground-truth
   box of highest IoU (normalized coordinates, no +1; the first such box on an exact tie, in
   upstream's order). Above the IoU threshold that box is a true positive if no earlier
   detection took it, otherwise (or below the threshold) the detection is a false positive.
   Upstream has no ``difficult`` or group-of boxes here. A detection that takes an already
   matched box does not fall back to another box: that is the upstream rule.
6. Per class: precision and recall over all keyframes in descending score order, Pascal VOC
   all-point interpolated AP; the mAP is the mean over label-map classes that have ground
   truth. Classes without ground truth get NaN.

With ``exclusions`` (the scorer's ``-x``: an excluded-timestamps file), ground-truth and
detection rows on those keyframes are left out before anything else, as upstream's
``run_evaluation`` skips their image keys.

Other metrics, with the same selection and matching:
``metric="voc07"``: Pascal VOC 2007 11-point interpolated AP at IoU 0.5.
``metric="coco"``: AP at each IoU threshold 0.50, 0.55, ..., 0.95 (all-point interpolation
at each, as for ``ava``, not COCO's 101-point sampling; matching by the upstream rule of
step 5 at each threshold), averaged over the ten thresholds per class.

Ground truth and detections are :class:`ava_keyframes.annotations.Annotations` (read the
ground truth with ``labelmap=None`` so that keyframes holding only other classes stay
present, as upstream) or plain DataFrames with the columns of ``Annotations.table``:
``video_id, second, x1, y1, x2, y2, action_id`` and ``score`` for detections, optionally
``line`` (file order, which only decides ties).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ava_keyframes.annotations import Annotations, Keyframe
from ava_keyframes.labelmap import LabelMap
from detector.ap_inputs import EvaluationError, scored_labelmap

METRICS = ("ava", "voc07", "coco")
DETECTIONS_PER_KEYFRAME = 50
IOU_THRESHOLD = 0.5
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


@dataclass
class APResult:
    """Per-class AP (NaN where a class has no ground truth) and the mean over the others.

    ``pr_curves`` maps each class with ground truth to its (precision, recall) arrays at IoU
    0.5 in descending score order (upstream's, before interpolation); ``dropped`` counts the
    detection rows the protocol leaves out: ``other_classes``, ``beyond_50_per_keyframe``,
    ``absent_keyframes``, ``invalid_boxes``, ``excluded_keyframes``;
    ``excluded_groundtruth`` counts the ground-truth rows left out by the exclusions.
    """

    metric: str
    mAP: float
    per_class: dict[str, float]
    num_groundtruth: dict[str, int]
    pr_curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(repr=False)
    dropped: dict[str, int] = field(default_factory=dict)
    excluded_groundtruth: int = 0

    def to_json(self) -> dict:
        """``{"mAP", "per_class", "num_groundtruth"}``; NaN becomes null (valid JSON)."""

        def value(x: float) -> float | None:
            return None if math.isnan(x) else float(x)

        return {
            "mAP": value(self.mAP),
            "per_class": {name: value(ap) for name, ap in self.per_class.items()},
            "num_groundtruth": dict(self.num_groundtruth),
        }

    def to_markdown(self, *, every_class: bool = True) -> str:
        """The AP table; without `every_class`, only the classes with ground truth (the
        others have no AP) and a line saying how many were left out (`to_json` has all)."""
        lines = [
            f"| class | ground truth | AP ({self.metric}) |",
            "| --- | ---: | ---: |",
        ]
        for name, ap in self.per_class.items():
            if every_class or not math.isnan(ap):
                shown = "n/a" if math.isnan(ap) else f"{ap:.4f}"
                lines.append(f"| {name} | {self.num_groundtruth[name]} | {shown} |")
        classes = sum(1 for ap in self.per_class.values() if not math.isnan(ap))
        lines.append(f"| **mAP** ({classes} classes with ground truth) | "
                     f"{sum(self.num_groundtruth.values())} | **{self.mAP:.4f}** |")
        if not every_class and classes < len(self.per_class):
            lines.append(f"\n{len(self.per_class) - classes} classes without ground truth "
                         "not shown (all are in --json).")
        return "\n".join(lines)


def evaluate(
    groundtruth: Annotations | pd.DataFrame,
    detections: Annotations | pd.DataFrame,
    labelmap: LabelMap | None = None,
    metric: str = "ava",
    exclusions: set[Keyframe] | None = None,
) -> APResult:
    """Score ``detections`` against ``groundtruth`` by the official AVA protocol (see module);
    ``exclusions``: keyframes ``(video_id, second)`` left out of both. Raises
    `EvaluationError` when no ground-truth box of the label map's classes is left to score."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, not {metric!r}")
    if labelmap is None:
        labelmap = scored_labelmap()
    gt, empty = _table_and_empty_keyframes(groundtruth)
    det, _ = _table_and_empty_keyframes(detections)
    gt, det, empty, excluded = _excluded(gt, det, empty, exclusions)
    ids = np.asarray(labelmap.ids, dtype=np.int64)

    gt_key, det_key, empty_key = _keyframe_codes(gt, det, empty)
    present = np.unique(np.concatenate([gt_key, empty_key]))
    gt_class = _class_index(gt["action_id"].to_numpy(np.int64), ids)
    det_class = _class_index(det["action_id"].to_numpy(np.int64), ids)

    gt_rows = np.flatnonzero(gt_class >= 0)
    if not gt_rows.size:
        raise EvaluationError(
            f"nothing to score: none of {len(gt)} ground-truth rows"
            f"{' left after the exclusions' if exclusions else ''} is of the "
            f"{len(ids)} classes of the label map")
    g = _Boxes(gt, gt_rows, gt_key, gt_class, len(ids))
    num_gt = np.bincount(g.cls, minlength=len(ids))

    in_map = np.flatnonzero(det_class >= 0)
    d = _Boxes(det, in_map, det_key, det_class, len(ids))
    dropped = {"excluded_keyframes": excluded[1], "other_classes": len(det) - len(in_map)}
    d, rank, first_row = _protocol_selection(d, present, dropped)
    per_class_ap, curves = _per_class_ap(d, g, rank, first_row, num_gt, metric)
    return APResult(
        metric=metric,
        mAP=_mean_ap(per_class_ap, ids),
        per_class={labelmap.names[c]: float(per_class_ap[c]) for c in range(len(ids))},
        num_groundtruth={labelmap.names[c]: int(num_gt[c]) for c in range(len(ids))},
        pr_curves={labelmap.names[c]: curve for c, curve in sorted(curves.items())},
        dropped=dropped,
        excluded_groundtruth=excluded[0],
    )


def _excluded(gt: pd.DataFrame, det: pd.DataFrame, empty: set[Keyframe],
              exclusions: set[Keyframe] | None):
    """The tables and empty keyframes without the excluded keyframes, and how many ground-truth
    and detection rows that left out."""
    if not exclusions:
        return gt, det, empty, (0, 0)
    out_gt, out_det = _on_keyframes(gt, exclusions), _on_keyframes(det, exclusions)
    return (gt[~out_gt], det[~out_det], empty - exclusions,
            (int(out_gt.sum()), int(out_det.sum())))


def _protocol_selection(d: _Boxes, present: np.ndarray, dropped: dict[str, int]
                        ) -> tuple[_Boxes, np.ndarray, np.ndarray]:
    """Steps 2 to 4: the 50 best per keyframe, on present keyframes, with valid boxes; counts
    what each step left out into ``dropped``. Returns the kept detections, their rank in their
    keyframe's list and the file position of their keyframe's first row."""
    rank, first_row = _keyframe_ranks(d)
    kept = rank < DETECTIONS_PER_KEYFRAME
    dropped["beyond_50_per_keyframe"] = int(np.count_nonzero(~kept))
    on_present = np.isin(d.key, present)
    dropped["absent_keyframes"] = int(np.count_nonzero(kept & ~on_present))
    kept &= on_present
    valid = (d.y1 < d.y2) & (d.x1 < d.x2)
    dropped["invalid_boxes"] = int(np.count_nonzero(kept & ~valid))
    return d.take(np.flatnonzero(kept & valid)), rank[kept & valid], first_row[kept & valid]


def _per_class_ap(d: _Boxes, g: _Boxes, rank: np.ndarray, first_row: np.ndarray,
                  num_gt: np.ndarray, metric: str
                  ) -> tuple[np.ndarray, dict[int, tuple[np.ndarray, np.ndarray]]]:
    """Steps 5 and 6: AP per class (NaN without ground truth) and the IoU-0.5 curves."""
    best_iou, best_gt = _best_matches(d, g)
    # Upstream appends each keyframe's detections class by class, keyframes in order of
    # their first row; its argsort of that concatenation then decides score ties.
    order = np.lexsort((rank, first_row, d.cls))
    scores, cls, best_iou, best_gt, group = (
        d.score[order], d.cls[order], best_iou[order], best_gt[order], d.group[order]
    )
    thresholds = COCO_IOU_THRESHOLDS if metric == "coco" else np.array([IOU_THRESHOLD])
    starts = np.searchsorted(cls, np.arange(len(num_gt) + 1))
    ap_sum = np.zeros(len(num_gt))
    curves: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for threshold in thresholds:
        tp = _true_positives(best_iou, best_gt, group, rank[order], threshold)
        for c in np.flatnonzero(num_gt):
            part = slice(starts[c], starts[c + 1])
            precision, recall = _precision_recall(scores[part], tp[part], int(num_gt[c]))
            ap_sum[c] += _voc07_ap(precision, recall) if metric == "voc07" else _all_point_ap(
                precision, recall)
            if threshold == IOU_THRESHOLD:
                curves[c] = (precision, recall)
    return np.where(num_gt > 0, ap_sum / len(thresholds), np.nan), curves


def _on_keyframes(table: pd.DataFrame, keyframes: set[Keyframe]) -> np.ndarray:
    """Which rows of ``table`` lie on one of ``keyframes``."""
    rows = pd.MultiIndex.from_arrays([table["video_id"], table["second"].astype(np.int64)])
    return np.asarray(rows.isin(list(keyframes)), dtype=bool)


def _table_and_empty_keyframes(
    annotations: Annotations | pd.DataFrame,
) -> tuple[pd.DataFrame, set[tuple[str, int]]]:
    if isinstance(annotations, Annotations):
        return annotations.table, annotations.empty_keyframes
    return annotations, set()


def _keyframe_codes(
    gt: pd.DataFrame, det: pd.DataFrame, empty: set[tuple[str, int]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One int64 code per (video_id, second), shared by both tables (seconds as integers, so
    ``0902`` and ``902`` are one keyframe)."""
    empty_list = sorted(empty)
    videos = np.concatenate([
        gt["video_id"].to_numpy(object), det["video_id"].to_numpy(object),
        np.array([v for v, _ in empty_list], dtype=object),
    ])
    seconds = np.concatenate([
        gt["second"].to_numpy(np.int64), det["second"].to_numpy(np.int64),
        np.array([s for _, s in empty_list], dtype=np.int64),
    ])
    video_code, _ = pd.factorize(videos)
    second_code, second_values = pd.factorize(seconds)
    key = video_code.astype(np.int64) * max(len(second_values), 1) + second_code
    n_gt, n_det = len(gt), len(det)
    return key[:n_gt], key[n_gt:n_gt + n_det], key[n_gt + n_det:]


def _class_index(action_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Position of each action id in the label map, -1 when it is not there."""
    order = np.argsort(ids)
    pos = np.clip(np.searchsorted(ids, action_ids, sorter=order), 0, len(ids) - 1)
    index = order[pos]
    return np.where(ids[index] == action_ids, index, -1)


class _Boxes:
    """Selected rows of a table as arrays: keyframe, class index, action id, box, score, file
    position (``line`` where there is one) and (keyframe, class) group."""

    def __init__(self, table: pd.DataFrame, rows: np.ndarray, key: np.ndarray,
                 cls: np.ndarray, n_classes: int) -> None:
        self.key = key[rows]
        self.cls = cls[rows]
        self.group = self.key * n_classes + self.cls
        self.action = table["action_id"].to_numpy(np.int64)[rows]
        for name in ("x1", "y1", "x2", "y2"):
            setattr(self, name, table[name].to_numpy(np.float64)[rows])
        self.score = (table["score"].to_numpy(np.float64)[rows] if "score" in table
                      else np.ones(len(rows)))
        self.pos = (table["line"].to_numpy(np.int64)[rows] if "line" in table
                    else rows.astype(np.int64))

    def take(self, index: np.ndarray) -> _Boxes:
        taken = object.__new__(_Boxes)
        for name, value in vars(self).items():
            setattr(taken, name, value[index])
        return taken


def _keyframe_ranks(d: _Boxes) -> tuple[np.ndarray, np.ndarray]:
    """Each detection's place in upstream's per-keyframe list (descending score; >= 50 means
    cut by the heap), and the file position of its keyframe's first row."""
    n = len(d.key)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order = np.lexsort((-d.score, d.key))
    key, score = d.key[order], d.score[order]
    new_key = np.ones(n, dtype=bool)
    new_key[1:] = key[1:] != key[:-1]
    starts = np.flatnonzero(new_key)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - np.repeat(starts, np.diff(np.append(starts, n)))
    first_row = np.empty(n, dtype=np.int64)
    first_row[order] = np.repeat(np.minimum.reduceat(d.pos[order], starts),
                                 np.diff(np.append(starts, n)))
    tied = ~new_key[1:] & (score[1:] == score[:-1])
    if tied.any():
        for rows in _rows_of_keyframes(d, np.unique(key[1:][tied])):
            rank[rows] = DETECTIONS_PER_KEYFRAME
            rank[_upstream_list(d, rows, DETECTIONS_PER_KEYFRAME)] = np.arange(
                min(len(rows), DETECTIONS_PER_KEYFRAME))
    return rank, first_row


def _rows_of_keyframes(boxes: _Boxes, keys: np.ndarray) -> list[np.ndarray]:
    """For each of ``keys``, the rows of ``boxes`` on that keyframe in file order."""
    by_key = np.lexsort((boxes.pos, boxes.key))
    sorted_keys = boxes.key[by_key]
    lo = np.searchsorted(sorted_keys, keys, side="left")
    hi = np.searchsorted(sorted_keys, keys, side="right")
    return [by_key[a:b] for a, b in zip(lo, hi, strict=True)]


def _upstream_list(boxes: _Boxes, rows: np.ndarray, capacity: int) -> np.ndarray:
    """Upstream ``read_csv`` for one keyframe: ``(score, action_id, y1, x1, y2, x2)`` tuples
    in file order through a heap of ``capacity`` (0: unbounded), then a stable sort by
    descending score. Returns the rows it lists, in its order (the row index ends each tuple
    only to name it; it can decide nothing but the order of identical entries)."""
    entries: list[tuple] = []
    columns = (boxes.score, boxes.action, boxes.y1, boxes.x1, boxes.y2, boxes.x2)
    for entry in zip(*(c[rows].tolist() for c in columns), rows.tolist(), strict=True):
        if capacity < 1 or len(entries) < capacity:
            heapq.heappush(entries, entry)
        elif entry[0] > entries[0][0]:
            heapq.heapreplace(entries, entry)
    return np.array([entry[-1] for entry in sorted(entries, key=lambda tup: -tup[0])],
                    dtype=np.int64)


def _best_matches(d: _Boxes, g: _Boxes) -> tuple[np.ndarray, np.ndarray]:
    """Per detection: the highest IoU with a ground-truth box of its keyframe and class, and
    that box's row in ``g`` (-1 when there is none). Exact IoU ties between different boxes
    go to the box upstream lists first."""
    gt_place = np.zeros(len(g.key), dtype=np.int64)
    best_iou, best_gt, tied_keys = _argmax_iou(d, g, gt_place)
    if tied_keys.size:
        for rows in _rows_of_keyframes(g, tied_keys):
            gt_place[_upstream_list(g, rows, 0)] = np.arange(len(rows))
        best_iou, best_gt, _ = _argmax_iou(d, g, gt_place)
    return best_iou, best_gt


def _argmax_iou(
    d: _Boxes, g: _Boxes, gt_place: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every (detection, same keyframe-and-class ground truth) pair, computed with
    upstream's operations in upstream's order so that the floats are identical; returns the
    best IoU and box per detection and the keyframes where different boxes tie for best."""
    gt_group = g.group
    gt_order = np.lexsort((gt_place, gt_group))
    sorted_groups = gt_group[gt_order]
    group_first = np.searchsorted(sorted_groups, d.group, side="left")
    counts = np.searchsorted(sorted_groups, d.group, side="right") - group_first
    n_pairs = int(counts.sum())
    pair_det = np.repeat(np.arange(len(d.key)), counts)
    pair_start = np.cumsum(counts) - counts
    within = np.arange(n_pairs) - np.repeat(pair_start, counts)
    pair_gt = gt_order[np.repeat(group_first, counts) + within]

    dy1, dx1, dy2, dx2 = d.y1[pair_det], d.x1[pair_det], d.y2[pair_det], d.x2[pair_det]
    gy1, gx1, gy2, gx2 = g.y1[pair_gt], g.x1[pair_gt], g.y2[pair_gt], g.x2[pair_gt]
    heights = np.maximum(0.0, np.minimum(dy2, gy2) - np.maximum(dy1, gy1))
    widths = np.maximum(0.0, np.minimum(dx2, gx2) - np.maximum(dx1, gx1))
    intersection = heights * widths
    union = (dy2 - dy1) * (dx2 - dx1) + (gy2 - gy1) * (gx2 - gx1) - intersection
    iou = intersection / union

    has_gt = counts > 0
    best_iou = np.full(len(d.key), -1.0)
    best_gt = np.full(len(d.key), -1, dtype=np.int64)
    if n_pairs:
        best_iou[has_gt] = np.maximum.reduceat(iou, pair_start[has_gt])
        at_best = np.flatnonzero(iou == best_iou[pair_det])
        _, first = np.unique(pair_det[at_best], return_index=True)
        best_gt[has_gt] = pair_gt[at_best[first]]
        # A tie matters only at an IoU that can match (every threshold is >= 0.5) and between
        # boxes that differ (identical boxes are interchangeable).
        at_best = at_best[best_iou[pair_det[at_best]] >= IOU_THRESHOLD]
        winner, tied = best_gt[pair_det[at_best]], pair_gt[at_best]
        differs = ((g.y1[tied] != g.y1[winner]) | (g.x1[tied] != g.x1[winner])
                   | (g.y2[tied] != g.y2[winner]) | (g.x2[tied] != g.x2[winner]))
        tied_keys = np.unique(d.key[pair_det[at_best[differs]]])
    else:
        tied_keys = np.array([], dtype=np.int64)
    return best_iou, best_gt, tied_keys


def _true_positives(best_iou: np.ndarray, best_gt: np.ndarray, group: np.ndarray,
                    rank: np.ndarray, threshold: float) -> np.ndarray:
    """Upstream's greedy rule: in score order within a keyframe and class, a detection at or
    above ``threshold`` is a true positive iff it is the first to take its best box."""
    qualifies = np.flatnonzero(best_iou >= threshold)
    in_order = qualifies[np.lexsort((rank[qualifies], group[qualifies]))]
    _, first = np.unique(best_gt[in_order], return_index=True)
    tp = np.zeros(len(best_iou), dtype=bool)
    tp[in_order[first]] = True
    return tp


def _precision_recall(scores: np.ndarray, tp: np.ndarray, num_gt: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``metrics.compute_precision_recall``, including its (unstable) argsort."""
    labels = tp[np.argsort(scores)[::-1]].astype(int)
    cum_tp = np.cumsum(labels)
    cum_fp = np.cumsum(1 - labels)
    precision = cum_tp.astype(float) / (cum_tp + cum_fp)
    recall = cum_tp.astype(float) / num_gt
    return precision, recall


def _all_point_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """``metrics.compute_average_precision`` (VOCdevkit, all points)."""
    if not precision.size:
        return 0.0
    recall = np.concatenate([[0], recall, [1]])
    precision = np.maximum.accumulate(np.concatenate([[0], precision, [0]])[::-1])[::-1]
    indices = np.where(recall[1:] != recall[:-1])[0] + 1
    return float(np.sum((recall[indices] - recall[indices - 1]) * precision[indices]))


def _voc07_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """Pascal VOC 2007 11-point interpolated AP (VOCdevkit's ``VOCevaldet``)."""
    ap = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
        above = recall >= t
        ap += (np.max(precision[above]) if above.any() else 0.0) / 11.0
    return float(ap)


def _mean_ap(per_class_ap: np.ndarray, ids: np.ndarray) -> float:
    """Upstream's ``np.nanmean`` over an array indexed by action id (same summation order)."""
    if np.isnan(per_class_ap).all():
        return float("nan")
    by_id = np.full(int(ids.max() - min(ids.min(), 1)) + 1, np.nan)
    by_id[ids - min(ids.min(), 1)] = per_class_ap
    return float(np.nanmean(by_id))
