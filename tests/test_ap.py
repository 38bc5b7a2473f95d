"""detector.ap: the official AVA frame-mAP, its protocol details, and `ava-detector evaluate`."""

from __future__ import annotations

import heapq
import json
import math
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict

import numpy as np
import pandas as pd
import pytest

from ava_keyframes.annotations import read_annotations
from ava_keyframes.labelmap import evaluation_labelmap_path, read_labelmap
from detector.ap import APResult, evaluate
from detector.ap_inputs import ava_table
from detector.cli import main
from detector.plots import plot_ap, plot_pr_curves

VIDEO = "vid00000000"
SIT, STAND, WALK, CRAWL = 11, 12, 14, 2  # crawl (2) is not in the 60-class evaluation map
FULL = (0.0, 0.0, 1.0, 1.0)


def _groundtruth(rows) -> pd.DataFrame:
    """Rows ``(video, second, (x1, y1, x2, y2), action)`` in file order."""
    return ava_table(*zip(*rows, strict=True)) if rows else ava_table([], [], [], [])


def _detections(rows) -> pd.DataFrame:
    """Rows ``(video, second, (x1, y1, x2, y2), action, score)`` in file order."""
    *columns, scores = zip(*rows, strict=True)
    return ava_table(*columns, score=scores)


def _ap(result: APResult, action_id: int) -> float:
    labelmap = read_labelmap(evaluation_labelmap_path())
    return result.per_class[labelmap.name_of(action_id)]


# --- the official numbers -------------------------------------------------------------------

def test_golden_case_equals_the_official_evaluator(ava_data):
    golden = ava_data / "golden"
    official = json.loads((golden / "official_result.json").read_text())
    result = evaluate(read_annotations(golden / "groundtruth.csv", kind="groundtruth"),
                      read_annotations(golden / "detections.csv", kind="detections"))
    for name, ap in official["per_class"].items():
        assert result.per_class[name] == pytest.approx(ap, abs=1e-9), name
    assert result.mAP == pytest.approx(official["mAP"], abs=1e-9)
    with_gt = {name for name, ap in result.per_class.items() if not math.isnan(ap)}
    assert with_gt == set(official["per_class"])


def _reference(gt_rows, det_rows, class_ids, excluded=frozenset()):
    """Upstream's algorithm restated literally (read_csv's heaps, run_evaluation skipping the
    excluded image keys, the per-image loop of per_image_evaluation,
    metrics.compute_precision_recall / compute_average_precision)."""
    whitelist = set(class_ids)
    gt_rows = [r for r in gt_rows if (r[0], r[1]) not in excluded]
    det_rows = [r for r in det_rows if (r[0], r[1]) not in excluded]
    annotated = {(r[0], r[1]) for r in gt_rows}
    gt = defaultdict(list)
    for video, second, (x1, y1, x2, y2), action in gt_rows:
        if action in whitelist:
            heapq.heappush(gt[(video, second)], (1.0, action, y1, x1, y2, x2))
    entries = defaultdict(list)
    for video, second, (x1, y1, x2, y2), action, score in det_rows:
        if action in whitelist:
            heap, entry = entries[(video, second)], (score, action, y1, x1, y2, x2)
            if len(heap) < 50:
                heapq.heappush(heap, entry)
            elif score > heap[0][0]:
                heapq.heapreplace(heap, entry)
    num_gt = Counter(entry[1] for heap in gt.values() for entry in heap)
    scores, labels = defaultdict(list), defaultdict(list)
    for key, heap in entries.items():
        if key not in annotated:
            continue
        dets = [e for e in sorted(heap, key=lambda e: -e[0]) if e[2] < e[4] and e[3] < e[5]]
        gts = sorted(gt.get(key, []), key=lambda e: -e[0])
        for c in class_ids:
            boxes = np.array([e[2:] for e in gts if e[1] == c]).reshape(-1, 4)
            taken = np.zeros(len(boxes), dtype=bool)
            for e in (e for e in dets if e[1] == c):
                tp = False
                if len(boxes):
                    y1, x1, y2, x2 = e[2:]
                    gy1, gx1, gy2, gx2 = boxes.T
                    inter = (np.maximum(0.0, np.minimum(y2, gy2) - np.maximum(y1, gy1))
                             * np.maximum(0.0, np.minimum(x2, gx2) - np.maximum(x1, gx1)))
                    iou = inter / ((y2 - y1) * (x2 - x1) + (gy2 - gy1) * (gx2 - gx1) - inter)
                    j = int(np.argmax(iou))
                    if iou[j] >= 0.5 and not taken[j]:
                        taken[j] = tp = True
                scores[c].append(e[0])
                labels[c].append(tp)
    aps = {}
    for c in class_ids:
        if num_gt[c]:
            order = np.argsort(np.array(scores[c], dtype=float))[::-1]
            hits = np.array(labels[c], dtype=int)[order]
            precision = [0.0, *(np.cumsum(hits) / np.arange(1, len(hits) + 1)), 0.0]
            recall = [0.0, *(np.cumsum(hits) / num_gt[c]), 1.0]
            for i in range(len(precision) - 2, -1, -1):
                precision[i] = max(precision[i], precision[i + 1])
            aps[c] = sum((recall[i] - recall[i - 1]) * precision[i]
                         for i in range(1, len(recall)) if recall[i] != recall[i - 1])
    return aps


def _tie_heavy_case(seed: int):
    """Boxes on a 1/8 grid (exact IoU ties), scores with one decimal (score ties), duplicate
    ground truth, keyframes with more than 50 rows, invalid boxes, empty and absent keyframes."""
    rng = np.random.default_rng(seed)
    gt_rows, det_rows = [], []
    for video in (VIDEO, "vid00000001"):
        for second in range(902, 914):
            for _ in range(rng.integers(0, 4)):
                (x1, x2), (y1, y2) = np.sort(rng.choice(9, (2, 2), replace=False) / 8, axis=1)
                for action in rng.choice([SIT, STAND, WALK, CRAWL], rng.integers(1, 3), False):
                    gt_rows += [(video, second, (x1, y1, x2, y2), int(action))] * (
                        1 + (rng.random() < 0.2))
            for _ in range(rng.integers(0, 70)):
                x, y = rng.integers(0, 9, (2, 2)) / 8
                if rng.random() < 0.85:
                    x, y = np.sort(x), np.sort(y)
                det_rows.append((video, second, (x[0], y[0], x[1], y[1]),
                                 int(rng.choice([SIT, STAND, WALK, CRAWL])),
                                 round(float(rng.random()), 1)))
    det_rows.append((VIDEO, 2000, FULL, STAND, 0.5))
    return gt_rows, det_rows


@pytest.mark.parametrize("seed", range(8))
def test_equals_literal_restatement_of_upstream_with_ties(seed):
    gt_rows, det_rows = _tie_heavy_case(seed)
    labelmap = read_labelmap(evaluation_labelmap_path())
    expected = _reference(gt_rows, det_rows, labelmap.ids)
    result = evaluate(_groundtruth(gt_rows), _detections(det_rows), labelmap)
    for action_id, ap in expected.items():
        assert _ap(result, action_id) == pytest.approx(ap, abs=1e-12)
    assert result.mAP == pytest.approx(np.mean(list(expected.values())), abs=1e-12)
    assert sum(result.num_groundtruth.values()) == sum(
        1 for r in gt_rows if r[3] in labelmap)


@pytest.mark.parametrize("seed", range(3))
def test_exclusions_equal_upstream_skipping_excluded_image_keys(seed):
    gt_rows, det_rows = _tie_heavy_case(seed)
    excluded = {(VIDEO, 903), (VIDEO, 907), ("vid00000001", 902), (VIDEO, 2000)}
    labelmap = read_labelmap(evaluation_labelmap_path())
    expected = _reference(gt_rows, det_rows, labelmap.ids, excluded)
    result = evaluate(_groundtruth(gt_rows), _detections(det_rows), labelmap,
                      exclusions=excluded)
    for action_id, ap in expected.items():
        assert _ap(result, action_id) == pytest.approx(ap, abs=1e-12)
    assert result.excluded_groundtruth == sum((r[0], r[1]) in excluded for r in gt_rows) > 0
    assert result.dropped["excluded_keyframes"] == sum((r[0], r[1]) in excluded
                                                       for r in det_rows) > 0


def _golden_plus_excluded_keyframes(ava_data, tmp_path):
    """The golden files plus rows on three keyframes they lack (missed ground truth, false
    and true detections), and an excluded-timestamps file naming those three."""
    golden = ava_data / "golden"
    gt_lines = (golden / "groundtruth.csv").read_text().splitlines()
    video = gt_lines[0].split(",")[0]
    extra_gt, extra_det = [], []
    for second in (1799, 1800, 1801):
        extra_gt += [f"{video},{second},0.1,0.1,0.5,0.9,{a},7" for a in (11, 12, 14)]
        extra_det += [f"{video},{second},0.1,0.1,0.5,0.9,12,0.99"]
        extra_det += [f"{video},{second},0.5,0.1,0.9,0.9,{a},0.98" for a in (11, 14)]
    gt, det, excluded = tmp_path / "gt.csv", tmp_path / "det.csv", tmp_path / "excluded.csv"
    gt.write_text("\n".join([*gt_lines, *extra_gt]) + "\n")
    det.write_text((golden / "detections.csv").read_text() + "\n".join(extra_det) + "\n")
    excluded.write_text("".join(f"{video},{s}\n" for s in (1799, 1800, 1801)))
    return gt, det, excluded


def test_golden_case_plus_excluded_keyframes_equals_the_official_evaluator_with_x(
        ava_data, tmp_path, capsys):
    official = json.loads((ava_data / "golden" / "official_result.json").read_text())
    gt, det, excluded = _golden_plus_excluded_keyframes(ava_data, tmp_path)
    assert main(["evaluate", "--groundtruth", str(gt), "--detections", str(det),
                 "--exclusions", str(excluded), "--json", str(tmp_path / "x" / "ap.json")]) == 0
    assert "excluded keyframes: 9 ground-truth rows and 9 detections left out" in (
        capsys.readouterr().err)
    result = json.loads((tmp_path / "x" / "ap.json").read_text())
    with_truth = {name: ap for name, ap in result["per_class"].items() if ap is not None}
    assert with_truth == pytest.approx(official["per_class"], abs=1e-9)
    assert result["mAP"] == pytest.approx(official["mAP"], abs=1e-9)
    # The same files without -x score the extra keyframes: another result.
    assert main(["evaluate", "--groundtruth", str(gt), "--detections", str(det),
                 "--json", str(tmp_path / "all.json")]) == 0
    assert json.loads((tmp_path / "all.json").read_text())["mAP"] != pytest.approx(
        official["mAP"], abs=1e-6)


def test_cli_says_when_exclusions_are_off_and_prints_only_classes_with_truth(tmp_path, capsys):
    gt, det = tmp_path / "my_groundtruth.csv", tmp_path / "det.csv"
    gt.write_text(f"{VIDEO},902,0,0,1,1,14,0\n")
    det.write_text(f"{VIDEO},902,0,0,1,1,14,0.9\n")
    (tmp_path / "ava_val_excluded_timestamps_v2.2.csv").write_text(f"{VIDEO},0902\n")
    assert main(["evaluate", "--groundtruth", str(gt), "--detections", str(det),
                 "--json", str(tmp_path / "ap.json")]) == 0
    out, err = capsys.readouterr()
    assert f"exclusions: none (no ava_<split>_excluded_timestamps_v<version>.csv beside {gt}" \
        in err
    assert "| walk | 1 | 1.0000 |" in out and "n/a" not in out
    assert "59 classes without ground truth not shown (all are in --json)." in out
    assert len(json.loads((tmp_path / "ap.json").read_text())["per_class"]) == 60


def test_cli_defaults_to_the_splits_excluded_timestamps_beside_the_ground_truth(
        tmp_path, capsys):
    gt, det = tmp_path / "ava_val_v2.2.csv", tmp_path / "det.csv"
    gt.write_text(f"{VIDEO},902,0,0,1,1,14,0\n{VIDEO},903,0,0,1,1,14,0\n")
    det.write_text(f"{VIDEO},902,0,0,1,1,14,0.9\n{VIDEO},903,0,0,1,1,12,0.95\n")
    excluded = tmp_path / "ava_val_excluded_timestamps_v2.2.csv"
    excluded.write_text(f"{VIDEO},0903\n")
    assert main(["evaluate", "--groundtruth", str(gt), "--detections", str(det)]) == 0
    out, err = capsys.readouterr()
    assert f"exclusions: {excluded}" in err and "| walk | 1 | 1.0000 |" in out
    assert main(["evaluate", "--groundtruth", str(gt), "--detections", str(det),
                 "--exclusions", "none"]) == 0
    assert "| walk | 2 | 0.5000 |" in capsys.readouterr().out


def test_cli_refuses_endless_and_oversized_inputs_naming_the_limit_flag(tmp_path, capsys):
    gt, det = tmp_path / "gt.csv", tmp_path / "det.csv"
    gt.write_text(f"{VIDEO},902,0,0,1,1,14,0\n")
    det.write_text(f"{VIDEO},902,0,0,1,1,14,0.9\n" * 40_000)  # 1.3 MB
    args = ["evaluate", "--groundtruth", str(gt), "--detections", str(det)]
    assert main([*args, "--exclusions", "none", "--max-csv-mb", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{det}: more than the 1,048,576 bytes allowed" in err
    assert "--max-csv-mb" in err
    assert main([*args, "--exclusions", "none", "--max-csv-mb", "2"]) == 0
    capsys.readouterr()
    endless = tmp_path / "endless.csv"  # as /dev/zero, which once took 23 GB
    endless.write_bytes(b"\0" * 20_000)
    assert main([*args, "--exclusions", str(endless)]) == 2
    assert "endless.csv: a line longer than 4,096 bytes" in capsys.readouterr().err


# --- protocol details, by hand ----------------------------------------------------------------

def test_each_ground_truth_box_is_matched_once():
    gt = _groundtruth([(VIDEO, 902, (0, 0, 0.5, 1), STAND), (VIDEO, 902, (0.5, 0, 1, 1), STAND)])
    det = _detections([
        (VIDEO, 902, (0, 0, 0.5, 1), STAND, 0.9),      # TP
        (VIDEO, 902, (0, 0, 0.5, 1), STAND, 0.8),      # same box again: FP
        (VIDEO, 902, (0.5, 0, 1, 1), STAND, 0.7),      # TP
    ])
    result = evaluate(gt, det)
    precision, recall = result.pr_curves["stand"]
    np.testing.assert_allclose(precision, [1, 0.5, 2 / 3])
    np.testing.assert_allclose(recall, [0.5, 0.5, 1])
    assert _ap(result, STAND) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_a_detection_whose_best_box_is_taken_does_not_fall_back():
    # The second detection overlaps box B by IoU 0.68 but box A (taken) by 0.88: upstream
    # counts it a false positive rather than matching B.
    gt = _groundtruth([(VIDEO, 902, (0, 0, 1, 0.5), SIT), (VIDEO, 902, (0, 0.125, 1, 0.625), SIT)])
    det = _detections([(VIDEO, 902, (0, 0, 1, 0.5), SIT, 0.9),
                       (VIDEO, 902, (0, 0.03125, 1, 0.53125), SIT, 0.8)])
    assert _ap(evaluate(gt, det), SIT) == pytest.approx(0.5)


def test_exact_iou_tie_goes_to_the_box_upstream_lists_first():
    # The first detection has IoU 0.6 with both boxes; upstream's heap lists B (smaller y1)
    # first although A comes first in the file, so the second detection still finds A free.
    gt = _groundtruth([(VIDEO, 902, (0, 0.25, 1, 0.75), STAND),
                       (VIDEO, 902, (0, 0, 1, 0.5), STAND)])
    det = _detections([(VIDEO, 902, (0, 0.125, 1, 0.625), STAND, 0.9),
                       (VIDEO, 902, (0, 0.25, 1, 0.75), STAND, 0.8)])
    assert _ap(evaluate(gt, det), STAND) == 1.0


def test_only_the_50_best_rows_per_keyframe_across_classes_count():
    gt = _groundtruth([(VIDEO, 902, FULL, WALK)])
    decoys = [(VIDEO, 902, (0, 0, 0.1, 0.1), SIT, 0.5 + i / 100) for i in range(50)]
    late = (VIDEO, 902, FULL, WALK, 0.4)
    result = evaluate(gt, _detections([*decoys, late]))
    assert _ap(result, WALK) == 0.0
    assert result.dropped["beyond_50_per_keyframe"] == 1
    better = (VIDEO, 902, FULL, WALK, 0.6)  # beats the weakest decoy, which is dropped
    assert _ap(evaluate(gt, _detections([*decoys, better])), WALK) == 1.0


def test_score_tie_at_the_cap_keeps_the_earlier_row():
    # Upstream replaces the heap's smallest entry only for a strictly higher score.
    gt = _groundtruth([(VIDEO, 902, FULL, WALK)])
    decoys = [(VIDEO, 902, (0, 0, 0.1, 0.1), SIT, 0.5) for _ in range(50)]
    assert _ap(evaluate(gt, _detections([*decoys, (VIDEO, 902, FULL, WALK, 0.5)])), WALK) == 0.0


def test_invalid_boxes_are_dropped_after_taking_their_place_in_the_50():
    gt = _groundtruth([(VIDEO, 902, FULL, WALK)])
    invalid = [(VIDEO, 902, (0.5, 0.1, 0.5, 0.9), SIT, 0.9 - i / 1000) for i in range(25)]
    invalid += [(VIDEO, 902, (0.1, 0.6, 0.9, 0.2), SIT, 0.8 - i / 1000) for i in range(25)]
    result = evaluate(gt, _detections([*invalid, (VIDEO, 902, FULL, WALK, 0.1)]))
    assert result.dropped["invalid_boxes"] == 50
    assert _ap(result, WALK) == 0.0
    result = evaluate(gt, _detections([*invalid[:49], (VIDEO, 902, FULL, WALK, 0.1)]))
    assert result.dropped["invalid_boxes"] == 49
    assert _ap(result, WALK) == 1.0


def test_keyframes_absent_from_ground_truth_are_ignored_but_annotated_ones_count():
    gt = _groundtruth([(VIDEO, 902, FULL, WALK), (VIDEO, 903, FULL, CRAWL)])
    hit = (VIDEO, 902, FULL, WALK, 0.5)
    absent = (VIDEO, 904, FULL, WALK, 0.9)
    result = evaluate(gt, _detections([hit, absent]))
    assert _ap(result, WALK) == 1.0
    assert result.dropped["absent_keyframes"] == 1
    # 903 has ground truth only of a class outside the map: still annotated, so a false positive.
    assert _ap(evaluate(gt, _detections([hit, (VIDEO, 903, FULL, WALK, 0.9)])), WALK) == 0.5


def test_only_label_map_classes_count_and_map_is_over_classes_with_ground_truth():
    gt = _groundtruth([(VIDEO, 902, FULL, WALK), (VIDEO, 902, FULL, CRAWL),
                       (VIDEO, 902, FULL, SIT)])
    det = _detections([(VIDEO, 902, FULL, WALK, 0.9), (VIDEO, 902, FULL, CRAWL, 0.8)])
    result = evaluate(gt, det)
    assert "crawl" not in result.per_class and len(result.per_class) == 60
    assert result.num_groundtruth["walk"] == 1 and result.num_groundtruth["sit"] == 1
    assert sum(result.num_groundtruth.values()) == 2
    assert (_ap(result, WALK), _ap(result, SIT)) == (1.0, 0.0)
    assert math.isnan(_ap(result, STAND))
    assert result.mAP == 0.5
    assert result.dropped["other_classes"] == 1


def test_voc07_and_coco_metrics():
    gt = _groundtruth([(VIDEO, 902, (0, 0, 0.5, 1), STAND), (VIDEO, 902, (0.5, 0, 1, 1), STAND)])
    det = _detections([(VIDEO, 902, (0, 0, 0.5, 1), STAND, 0.9),
                       (VIDEO, 902, (0, 0, 0.5, 1), STAND, 0.8),
                       (VIDEO, 902, (0.5, 0, 1, 1), STAND, 0.7)])
    # precision (1, 1/2, 2/3) at recall (1/2, 1/2, 1): 6 of 11 points see 1, 5 see 2/3.
    assert evaluate(gt, det, metric="voc07").mAP == pytest.approx((6 + 5 * 2 / 3) / 11)
    # IoU 0.72 (box 0..0.72 against 0..1 wide): a hit at 0.50..0.70, a miss at 0.75..0.95.
    one = _groundtruth([(VIDEO, 902, FULL, STAND)])
    coco = evaluate(one, _detections([(VIDEO, 902, (0, 0, 0.72, 1), STAND, 0.9)]), metric="coco")
    assert coco.mAP == pytest.approx(0.5)
    with pytest.raises(ValueError, match="metric"):
        evaluate(one, one.assign(score=1.0), metric="map")


def test_zero_padding_and_empty_keyframes_read_from_csv(tmp_path):
    gt_csv, det_csv = tmp_path / "gt.csv", tmp_path / "det.csv"
    gt_csv.write_text(f"{VIDEO},0950,0.1,0.1,0.9,0.9,12\n{VIDEO},951\n")
    det_csv.write_text(f"{VIDEO},950,0.1,0.1,0.9,0.9,12,0.9\n{VIDEO},0951,0,0,1,1,12,0.95\n")
    result = evaluate(read_annotations(gt_csv), read_annotations(det_csv, kind="detections"))
    # 950 == 0950 matches; the 2-column keyframe 951 is annotated, so its detection is an FP.
    assert _ap(result, STAND) == 0.5
    assert result.dropped["absent_keyframes"] == 0


def test_result_outputs(tmp_path):
    gt = _groundtruth([(VIDEO, 902, FULL, WALK), (VIDEO, 902, FULL, SIT)])
    result = evaluate(gt, _detections([(VIDEO, 902, FULL, WALK, 0.9)]))
    payload = result.to_json()
    assert payload["mAP"] == 0.5 and payload["per_class"]["walk"] == 1.0
    assert payload["per_class"]["stand"] is None and payload["num_groundtruth"]["sit"] == 1
    json.dumps(payload, allow_nan=False)
    table = result.to_markdown()
    assert "| walk | 1 | 1.0000 |" in table and "**0.5000**" in table
    figure = plot_ap(result, tmp_path / "ap.png")
    assert (tmp_path / "ap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    [axes], [legend] = figure.axes, figure.legends
    renderer = figure.canvas.get_renderer()
    assert not legend.get_window_extent(renderer).overlaps(axes.get_window_extent(renderer))
    written = plot_pr_curves(result, tmp_path / "pr")
    assert sorted(p.name for p in written) == ["sit.png", "walk.png"]


# --- ava-detector evaluate ----------------------------------------------------------------

@pytest.fixture
def small_csvs(tmp_path):
    gt_csv, det_csv = tmp_path / "gt.csv", tmp_path / "det.csv"
    gt_csv.write_text(f"{VIDEO},902,0,0,1,1,14\n{VIDEO},902,0,0,0.5,0.5,11\n")
    det_csv.write_text(f"{VIDEO},902,0,0,1,1,14,0.9\n{VIDEO},902,0.2,0.2,0.6,0.6,11,0.8\n"
                       f"{VIDEO},902,0.2,0.2,0.6,0.6,11,x\n")
    return gt_csv, det_csv


def test_cli_evaluate_writes_json_plot_and_curves(small_csvs, tmp_path, capsys):
    gt_csv, det_csv = small_csvs
    out = tmp_path / "out"
    out.mkdir()
    code = main(["evaluate", "--groundtruth", str(gt_csv), "--detections", str(det_csv),
                 "--json", str(out / "ap.json"), "--plot", str(out / "ap.png"),
                 "--pr-curves", str(out / "pr")])
    captured = capsys.readouterr()
    assert code == 0
    assert "| walk | 1 | 1.0000 |" in captured.out and "| sit | 1 | 0.0000 |" in captured.out
    assert "1 rows rejected" in captured.err and f"{det_csv}:3: score" in captured.err
    payload = json.loads((out / "ap.json").read_text())
    assert set(payload) == {"mAP", "per_class", "num_groundtruth"}
    assert payload["mAP"] == 0.5 and payload["per_class"]["walk"] == 1.0
    assert (out / "ap.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (out / "pr").iterdir()) == ["sit.png", "walk.png"]


def test_cli_evaluate_metric_and_errors(small_csvs, tmp_path, capsys):
    gt_csv, det_csv = small_csvs
    assert main(["evaluate", "--groundtruth", str(gt_csv), "--detections", str(det_csv),
                 "--metric", "voc07"]) == 0
    assert "AP (voc07)" in capsys.readouterr().out
    assert main(["evaluate", "--groundtruth", str(tmp_path / "missing.csv"),
                 "--detections", str(det_csv)]) == 2
    err = capsys.readouterr().err
    assert "missing.csv" in err and "Traceback" not in err
    assert main(["evaluate", "--groundtruth", str(gt_csv)]) == 2
    assert "--detections" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["evaluate", "--groundtruth", str(gt_csv), "--detections", str(det_csv),
                 "--json", str(tmp_path / "file" / "dir" / "ap.json")]) == 2
    assert "cannot create" in capsys.readouterr().err


# A line of TensorFlow's / absl's native logging, or a Python warning.
LIBRARY_LINE = re.compile(r"^[IWEF]\d{4} |absl::|tensorflow|Warning|cuInit|oneDNN|cuda", re.I)


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    """`ava-detector ARGV` in a fresh interpreter, without TF logging settings of the caller;
    the interpreter exits with an error if TensorFlow or TFDS got imported."""
    code = ("import sys; from detector.cli import main; code = main(sys.argv[1:]); "
            "heavy = {'tensorflow', 'tensorflow_datasets'} & set(sys.modules); "
            "sys.exit(f'imported {sorted(heavy)}' if heavy else code)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    return subprocess.run([sys.executable, "-c", code, *argv],  # noqa: S603
                          capture_output=True, text=True, env=env, check=False)


def test_cli_evaluate_on_csvs_is_quiet_and_loads_no_tensorflow(small_csvs):
    gt_csv, det_csv = small_csvs
    done = run_cli("evaluate", "--groundtruth", str(gt_csv), "--detections", str(det_csv))
    assert done.returncode == 0, done.stderr
    assert "| walk | 1 | 1.0000 |" in done.stdout
    lines = done.stderr.splitlines()
    assert lines and not [line for line in lines if LIBRARY_LINE.search(line)], lines


def test_cli_refuses_what_would_score_without_meaning(small_csvs, tmp_path, capsys):
    gt_csv, det_csv = small_csvs

    def refused(gt, det, *needles):
        assert main(["evaluate", "--groundtruth", str(gt), "--detections", str(det)]) == 2
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]
        assert last.startswith("ava-detector: error: ") and "Traceback" not in err, err
        for needle in needles:
            assert needle in last, last

    # ground truth with person ids (8 columns) passed as detections: "scores" 0, 3, 5
    people = tmp_path / "people.csv"
    people.write_text(f"{VIDEO},902,0,0,1,1,14,0\n{VIDEO},902,0,0,1,1,12,3\n"
                      f"{VIDEO},902,0,0,0.5,1,12,5\n")
    refused(gt_csv, people, "people.csv", "person ids")
    refused(gt_csv, gt_csv, "both ground truth and detections")
    # a 7-column ground truth as detections: every row rejected
    copy = tmp_path / "copy.csv"
    copy.write_text(gt_csv.read_text())
    refused(gt_csv, copy, "no usable detections row", "2 of 2")
    only_crawl = tmp_path / "crawl.csv"
    only_crawl.write_text(f"{VIDEO},902,0,0,1,1,{CRAWL}\n")
    refused(only_crawl, det_csv, "nothing to score", "60 classes")
    bad = tmp_path / "bad.csv"
    bad.write_text(f"{VIDEO},9x2,0,0,1,1,14\n")
    refused(bad, det_csv, "no usable groundtruth row", "1 of 1 rejected")


def test_cli_reports_every_unused_row_and_checks_outputs_first(small_csvs, tmp_path, capsys):
    gt_csv, det_csv = small_csvs
    det_csv.write_text(det_csv.read_text() + f"{VIDEO},0904\n")
    assert main(["evaluate", "--groundtruth", str(gt_csv), "--detections", str(det_csv),
                 "--plot", str(tmp_path / "new" / "ap.svg")]) == 0
    err = capsys.readouterr().err
    assert f"{det_csv}:3: score" in err
    assert "1 rows of 2 columns (no box, no score) not scored: vid00000000,904" in err
    assert (tmp_path / "new" / "ap.svg").read_text().lstrip().startswith("<?xml")
    (tmp_path / "folder.png").mkdir()
    for plot, needle in (("x.unknown", "not a picture format"),
                         (str(tmp_path / "folder.png"), "is a folder")):
        assert main(["evaluate", "--groundtruth", str(gt_csv), "--detections", str(det_csv),
                     "--plot", plot]) == 2
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert needle in err and "\n" not in err and captured.out == "", err
