"""detector.evaluate: the library behind `ava-detector evaluate`, called directly."""

from __future__ import annotations

import json

import pytest

from ava_keyframes.annotations import AnnotationError
from detector.ap_inputs import EvaluationError
from detector.evaluate import (
    DEFAULT_EXCLUSIONS,
    evaluate_files,
    exclusions_of,
    not_scored_lines,
    write_outputs,
)

VIDEO = "vid00000000"


@pytest.fixture
def split(tmp_path):
    """An official split's file names: ground truth, its excluded timestamps beside it, and
    detections with one rejected row and one 2-column (boxless) row."""
    gt, det = tmp_path / "ava_val_v2.2.csv", tmp_path / "det.csv"
    gt.write_text(f"{VIDEO},902,0,0,1,1,14,0\n{VIDEO},903,0,0,1,1,14,0\n")
    det.write_text(f"{VIDEO},902,0,0,1,1,14,0.9\n{VIDEO},903,0,0,1,1,12,0.95\n"
                   f"{VIDEO},904,0,0,1,1,14,high\n{VIDEO},905\n")
    excluded = tmp_path / "ava_val_excluded_timestamps_v2.2.csv"
    excluded.write_text(f"{VIDEO},0903\n")
    return gt, det, excluded


def test_evaluate_files_scores_and_returns_what_was_not_scored(split):
    gt, det, excluded = split
    evaluation = evaluate_files(gt, det)
    assert evaluation.exclusions == excluded
    assert evaluation.exclusions_note.startswith(f"exclusions: {excluded}")
    assert evaluation.result.per_class["walk"] == 1.0
    assert list(evaluation.rejected) == [str(det)]
    (rejection,) = evaluation.rejected[str(det)]
    assert rejection.line == 3
    assert evaluation.boxless_detections == [(VIDEO, 905)]
    lines = not_scored_lines(evaluation)
    assert lines[0] == f"{det}: 1 rows rejected" and lines[1].startswith(f"  {det}:3")
    assert f"{det}: 1 rows of 2 columns (no box, no score) not scored: {VIDEO},905" in lines
    assert "excluded keyframes: 1 ground-truth rows and 1 detections left out" in lines

    scored_all = evaluate_files(gt, det, exclusions=None)
    assert scored_all.exclusions is None and scored_all.exclusions_note is None
    assert scored_all.result.per_class["walk"] == 0.5


def test_exclusions_of_says_why_none_apply(tmp_path):
    gt = tmp_path / "my_groundtruth.csv"
    path, note = exclusions_of(DEFAULT_EXCLUSIONS, gt)
    assert path is None and note.startswith("exclusions: none (no ava_<split>_excluded")
    assert exclusions_of("NONE", gt) == (None, None)
    assert exclusions_of(tmp_path / "x.csv", gt) == (tmp_path / "x.csv", None)


def test_evaluate_files_refuses_unusable_inputs(split, tmp_path):
    gt, det, _ = split
    with pytest.raises(EvaluationError, match="both ground truth and detections"):
        evaluate_files(gt, gt)
    with pytest.raises(EvaluationError, match="unknown metric 'map'"):
        evaluate_files(gt, det, metric="map")
    with pytest.raises(AnnotationError, match="missing.csv"):
        evaluate_files(tmp_path / "missing.csv", det)


def test_write_outputs_writes_the_full_table(split, tmp_path):
    gt, det, _ = split
    result = evaluate_files(gt, det).result
    write_outputs(result, json_path=tmp_path / "ap.json", plot=tmp_path / "ap.png")
    assert len(json.loads((tmp_path / "ap.json").read_text())["per_class"]) == 60
    assert (tmp_path / "ap.png").read_bytes()[:4] == b"\x89PNG"
