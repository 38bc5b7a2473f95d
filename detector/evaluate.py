"""Scoring as `ava-detector evaluate` does it, callable from Python: AVA CSVs
(`evaluate_files`, no TensorFlow) or a trained model on a TFDS split (`evaluate_split`).

Both return an `Evaluation`: the `detector.ap` result plus what was read and not scored
(rejected rows, detection rows without a box) and which exclusions applied and why, so that
a caller can report everything that did not count. `write_outputs` writes the JSON, the AP
chart and the precision-recall plots of a result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ava_keyframes.annotations import MAX_CSV_BYTES, Rejection, read_annotations, read_excluded
from detector.ap import METRICS, APResult, evaluate
from detector.ap_inputs import EvaluationError, check_pair, default_exclusions, scored_labelmap

if TYPE_CHECKING:
    from detector.model import MultiLabelRetinaNet

# `exclusions=DEFAULT_EXCLUSIONS`: the official split's excluded-timestamps file beside the
# ground truth, when there is one (CSV mode); a built TFDS split has left them out already.
DEFAULT_EXCLUSIONS = "default"


@dataclass
class Evaluation:
    """A score and what it leaves out: `rejected` rows per file, `boxless_detections`
    (keyframes with a 2-column detections row, not scored), the exclusions file used (None:
    none) and `exclusions_note`, one line saying which exclusions applied and why."""

    result: APResult
    exclusions: Path | None = None
    exclusions_note: str | None = None
    rejected: dict[str, list[Rejection]] = field(default_factory=dict)
    boxless_detections: list[tuple[str, int]] = field(default_factory=list)
    detections_csv: Path | None = None


def exclusions_of(
    exclusions: str | Path | None, groundtruth: str | Path | None = None
) -> tuple[Path | None, str | None]:
    """The exclusions file to use and a line saying why: `exclusions` itself; None or
    'none' for none; `DEFAULT_EXCLUSIONS` for the official file beside `groundtruth`."""
    if exclusions is None or str(exclusions).lower() == "none":
        return None, None
    if str(exclusions) != DEFAULT_EXCLUSIONS:
        return Path(exclusions), None
    if groundtruth is None:
        return None, None
    path = default_exclusions(groundtruth)
    if path is not None:
        return path, (f"exclusions: {path} (the split's excluded timestamps; --exclusions none "
                      "to score them)")
    return None, (f"exclusions: none (no ava_<split>_excluded_timestamps_v<version>.csv beside "
                  f"{groundtruth} named ava_<split>_v<version>.csv; --exclusions CSV to give "
                  "one)")


def evaluate_files(
    groundtruth: str | Path,
    detections: str | Path,
    *,
    exclusions: str | Path | None = DEFAULT_EXCLUSIONS,
    labelmap: str | Path | None = None,
    metric: str = "ava",
    max_bytes: int = MAX_CSV_BYTES,
) -> Evaluation:
    """Score an AVA detections CSV against a ground-truth CSV by the official protocol.
    `labelmap`: the classes scored (default: AVA's 60-class evaluation map); `exclusions`:
    an excluded-timestamps CSV, None, or `DEFAULT_EXCLUSIONS`. Raises `EvaluationError`,
    `AnnotationError` or `LabelMapError` (one line naming the file) for unusable inputs."""
    if metric not in METRICS:
        raise EvaluationError(f"unknown metric {metric!r}: one of {', '.join(METRICS)}")
    excluded_path, note = exclusions_of(exclusions, groundtruth)
    excluded = read_excluded(excluded_path) if excluded_path is not None else None
    scored = scored_labelmap(labelmap)
    # No label map here: rows of other classes are skipped by `evaluate`, as upstream does,
    # and a ground-truth keyframe holding only such rows still counts as annotated.
    truth = read_annotations(groundtruth, kind="groundtruth", max_bytes=max_bytes)
    found = read_annotations(detections, kind="detections", max_bytes=max_bytes)
    check_pair(truth, found)
    return Evaluation(
        evaluate(truth, found, scored, metric, excluded), excluded_path, note,
        {str(t.path): t.report for t in (truth, found) if t.report},
        sorted(found.empty_keyframes), Path(detections),
    )


def evaluate_split(
    model: MultiLabelRetinaNet,
    dataset: str,
    split: str = "validation",
    *,
    data_dir: str | None = None,
    labelmap: str | Path | None = None,
    metric: str = "ava",
    batch_size: int = 8,
    limit: int | None = None,
    detections_csv: str | Path | None = None,
    exclusions: str | Path | None = None,
    progress: bool = False,
) -> Evaluation:
    """Run `model` on a split of the TFDS `dataset` (e.g. ``ava_keyframes/v2.2``), write its
    detections CSV if asked, and score them against the split's own ground truth; with
    `progress`, images done on stderr (a bar on a terminal, plain lines otherwise)."""
    from detector.data import dataset_info
    from detector.predict import evaluate_model

    excluded_path, note = exclusions_of(exclusions)
    excluded = read_excluded(excluded_path) if excluded_path is not None else None
    info = dataset_info(dataset, data_dir)
    result = evaluate_model(
        model, info, split, data_dir=data_dir, labelmap=scored_labelmap(labelmap, info),
        metric=metric, batch_size=batch_size, limit=limit, detections_csv=detections_csv,
        exclusions=excluded, progress=progress,
    )
    return Evaluation(result, excluded_path, note,
                      detections_csv=None if detections_csv is None else Path(detections_csv))


def write_outputs(result: APResult, *, json_path: str | Path | None = None,
                  plot: str | Path | None = None, pr_curves: str | Path | None = None) -> None:
    """The full table as JSON (`APResult.to_json`), a per-class AP chart, a folder of
    precision-recall plots: those asked for. Raises OSError when one cannot be written."""
    from detector.plots import plot_ap, plot_pr_curves

    if json_path is not None:
        with open(json_path, "w", encoding="utf-8") as handle:
            json.dump(result.to_json(), handle, indent=2, ensure_ascii=False)
    if plot is not None:
        plot_ap(result, plot)
    if pr_curves is not None:
        plot_pr_curves(result, pr_curves)


def not_scored_lines(evaluation: Evaluation, shown: int = 5) -> list[str]:
    """What was read and not scored, for stderr: rejected rows (how many, the first few as
    file:line: field: reason), detections without a box, excluded keyframes, and the rows
    the official protocol drops."""
    lines = []
    for path, report in evaluation.rejected.items():
        lines.append(f"{path}: {len(report)} rows rejected")
        lines += [f"  {rejection}" for rejection in report[:shown]]
        if len(report) > shown:
            lines.append(f"  ... and {len(report) - shown} more")
    if evaluation.boxless_detections:
        keys = evaluation.boxless_detections
        listed = ", ".join(f"{v},{s}" for v, s in keys[:shown])
        lines.append(f"{evaluation.detections_csv}: {len(keys)} rows of 2 columns (no box, "
                     f"no score) not scored: {listed}")
    result = evaluation.result
    dropped = result.dropped
    if dropped["excluded_keyframes"] or result.excluded_groundtruth:
        lines.append(f"excluded keyframes: {result.excluded_groundtruth} ground-truth rows and "
                     f"{dropped['excluded_keyframes']} detections left out")
    lines.append(
        f"detections not scored (official protocol): {dropped['other_classes']} of classes "
        f"outside the label map, {dropped['beyond_50_per_keyframe']} beyond the 50 best per "
        f"keyframe, {dropped['absent_keyframes']} on keyframes absent from the ground truth, "
        f"{dropped['invalid_boxes']} with x2 <= x1 or y2 <= y1")
    return lines
