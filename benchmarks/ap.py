"""Speed of `detector.ap` (official AVA frame-mAP) on the real 93,399-row ground-truth subset.

Generates detections of every kind the official scorer must handle (jittered true boxes,
wrong labels, random boxes, keyframes with more than 50 rows, invalid boxes, keyframes absent
from the ground truth, seconds with and without zero padding; distinct scores), writes them
as an AVA CSV, then times reading both CSVs and scoring: about 120k detections, and 1M.

Printed ratios, all from this run: scoring time over CSV-reading time (what the evaluation
adds to parsing), the whole `ava-detector evaluate` command (a fresh interpreter: imports,
reading, scoring, printing) over reading + scoring in this process, 1M over 120k time per
detection and peak memory per detection (linear scaling is 1.0), and with `--official DIR`
(a local copy of ActivityNet's `Evaluation/` folder, patched to run on NumPy 2) the official
scorer's time over ours, plus the largest per-class difference when its `run_evaluation`
returns the metrics dictionary.

Usage: python benchmarks/ap.py [--out DIR] [--official DIR] [--sizes 120000,1000000]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from ava_keyframes.annotations import read_annotations
from ava_keyframes.labelmap import evaluation_labelmap_path
from detector.ap import evaluate

ROOT = Path(__file__).resolve().parents[1]
SUBSET = ROOT / "tests" / "data" / "ava" / "ava_val_v2.1_person_movement_subset.csv"


def generate_detections(groundtruth_csv: Path, out: Path, size: int, seed: int = 0) -> int:
    """Write about ``size`` detection rows of every kind for ``groundtruth_csv``; returns the
    number written. Deterministic for a seed; scores are distinct."""
    rng = np.random.default_rng(seed)
    table = read_annotations(groundtruth_csv, None, kind="groundtruth").table
    truth = np.stack([table[c].to_numpy() for c in ("x1", "y1", "x2", "y2")])
    keys = table[["video_id", "second"]].drop_duplicates().to_numpy(object)
    parts = []

    def add(videos, seconds, boxes, actions):
        parts.append((np.asarray(videos, object), np.asarray(seconds, np.int64), *boxes,
                      np.asarray(actions, np.int64)))

    def true_boxes(n, spread):
        rows = rng.integers(0, len(table), n)
        boxes = np.clip(truth[:, rows] + rng.normal(0.0, spread, (4, n)), 0.0, 1.0)
        return (table["video_id"].to_numpy(object)[rows], table["second"].to_numpy()[rows],
                boxes, table["action_id"].to_numpy()[rows])

    def random_boxes(n):
        corners = np.sort(rng.random((2, 2, n)), axis=0)
        return corners[0, 0], corners[0, 1], corners[1, 0], corners[1, 1]

    # Jittered true boxes with their right label.
    videos, seconds, boxes, actions = true_boxes(int(0.6 * size), 0.04)
    add(videos, seconds, boxes, actions)
    # True boxes with a wrong label (any of the 80 AVA ids, so some fall outside the 60).
    videos, seconds, boxes, _ = true_boxes(int(0.15 * size), 0.02)
    add(videos, seconds, boxes, rng.integers(1, 81, len(videos)))
    # Random boxes on random keyframes.
    k = keys[rng.integers(0, len(keys), int(0.13 * size))]
    add(k[:, 0], k[:, 1], random_boxes(len(k)), rng.integers(1, 15, len(k)))
    # Keyframes with 60 rows each (the official cap keeps the 50 best).
    crowded = keys[rng.choice(len(keys), int(0.09 * size / 60), replace=False)]
    k = np.repeat(crowded, 60, axis=0)
    add(k[:, 0], k[:, 1], random_boxes(len(k)), rng.integers(1, 15, len(k)))
    # Invalid boxes (x2 <= x1 or y2 <= y1, half of them flat), half on crowded keyframes.
    n = int(0.015 * size)
    k = np.concatenate([keys[rng.integers(0, len(keys), n // 2)],
                        crowded[rng.integers(0, len(crowded), n - n // 2)]])
    low, high = np.sort(rng.random((2, n)), axis=0)
    wrong_end = np.where(rng.random(n) < 0.5, high, low)
    in_x = rng.random(n) < 0.7
    add(k[:, 0], k[:, 1], (np.where(in_x, high, low), np.where(in_x, low, high),
                           np.where(in_x, wrong_end, high), np.where(in_x, high, wrong_end)),
        rng.integers(1, 15, n))
    # Keyframes absent from the ground truth (2000 s later than annotated ones).
    k = keys[rng.integers(0, len(keys), int(0.015 * size))]
    add(k[:, 0], k[:, 1].astype(np.int64) + 2000, random_boxes(len(k)),
        rng.integers(1, 15, len(k)))

    return _write_shuffled(parts, out, rng)


def _write_shuffled(parts: list[tuple], out: Path, rng: np.random.Generator) -> int:
    """The rows of ``parts`` in random order, with distinct scores and mixed zero padding."""
    videos, seconds, x1, y1, x2, y2, actions = (np.concatenate(c) for c in zip(*parts,
                                                                             strict=True))
    order = rng.permutation(len(videos))
    scores = rng.permutation(len(videos)) / len(videos) + 0.5 / len(videos)
    padding = rng.choice(["{:d}", "{:04d}", "{:05d}"], len(videos))
    with open(out, "w", encoding="utf-8") as handle:
        for i in order:
            handle.write(f"{videos[i]},{padding[i].format(seconds[i])},{x1[i]:.3f},{y1[i]:.3f},"
                         f"{x2[i]:.3f},{y2[i]:.3f},{actions[i]},{scores[i]:.9f}\n")
    return len(videos)


def timed_evaluation(groundtruth_csv: Path, detections_csv: Path):
    """Read both CSVs, then evaluate; returns (read, evaluate) as (wall, CPU) seconds pairs
    (CPU time is the steadier figure on a shared machine) and the result."""
    wall, cpu = time.perf_counter(), time.process_time()
    groundtruth = read_annotations(groundtruth_csv, None, kind="groundtruth")
    detections = read_annotations(detections_csv, None, kind="detections")
    read = (time.perf_counter() - wall, time.process_time() - cpu)
    wall, cpu = time.perf_counter(), time.process_time()
    result = evaluate(groundtruth, detections)
    return read, (time.perf_counter() - wall, time.process_time() - cpu), result


def command_time(groundtruth_csv: Path, detections_csv: Path) -> float:
    """Wall seconds of the whole `ava-detector evaluate` command in a fresh interpreter."""
    command = [sys.executable, "-m", "detector.cli", "evaluate", "--groundtruth",
               str(groundtruth_csv), "--detections", str(detections_csv)]
    wall = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)  # noqa: S603
    return time.perf_counter() - wall


def peak_memory(groundtruth_csv: Path, detections_csv: Path) -> int:
    """Peak bytes traced by tracemalloc (NumPy reports its buffers) over read + evaluate."""
    tracemalloc.start()
    timed_evaluation(groundtruth_csv, detections_csv)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def official_time(official_dir: Path, groundtruth_csv: Path, detections_csv: Path):
    spec = importlib.util.spec_from_file_location(
        "get_ava_performance", official_dir / "get_ava_performance.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(official_dir))
    spec.loader.exec_module(module)
    wall, cpu = time.perf_counter(), time.process_time()
    with (open(evaluation_labelmap_path()) as labelmap, open(groundtruth_csv) as gt,
          open(detections_csv) as det, contextlib.redirect_stdout(io.StringIO())):
        metrics = module.run_evaluation(labelmap, gt, det, None)
    return (time.perf_counter() - wall, time.process_time() - cpu), metrics


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for the generated CSVs (default: temp)")
    parser.add_argument("--official", type=Path, help="local copy of ActivityNet's Evaluation/")
    parser.add_argument("--sizes", default="120000,1000000", help="detection counts to time")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        per_detection = {}
        for size in sizes:
            csv_path = out / f"detections_{size}.csv"
            n = generate_detections(SUBSET, csv_path, size)
            read, scoring, result = timed_evaluation(SUBSET, csv_path)
            total = read[0] + scoring[0]
            peak = peak_memory(SUBSET, csv_path)
            per_detection[size] = ((read[1] + scoring[1]) / n, peak / n)
            print(f"{n:>9,} detections: read {read[0]:.2f} s + evaluate {scoring[0]:.2f} s = "
                  f"{total:.2f} s wall (CPU {read[1]:.2f} + {scoring[1]:.2f} = "
                  f"{read[1] + scoring[1]:.2f} s); evaluate/read {scoring[1] / read[1]:.2f} "
                  f"(CPU); peak memory {peak / 2**20:.0f} MiB; mAP {result.mAP:.4f}")
            print(f"{'':>11}not scored: {result.dropped}")
            command = command_time(SUBSET, csv_path)
            print(f"{'':>11}whole `ava-detector evaluate` command: {command:.2f} s wall = "
                  f"{command / total:.2f}x read + evaluate in this process")
            if args.official:
                seconds, metrics = official_time(args.official, SUBSET, csv_path)
                line = (f"{'':>11}official scorer {seconds[0]:.1f} s wall, {seconds[1]:.1f} s CPU: "
                        f"{seconds[0] / total:.0f}x our wall time, "
                        f"{seconds[1] / (read[1] + scoring[1]):.0f}x our CPU time")
                if isinstance(metrics, dict):
                    prefix = "PascalBoxes_PerformanceByCategory/AP@0.5IOU/"
                    diffs = [abs(v - result.per_class[k[len(prefix):]])
                             for k, v in metrics.items() if k.startswith(prefix) and v == v]
                    line += f"; largest per-class difference {max(diffs):.1e}"
                print(line)
        if len(sizes) > 1:
            small, large = min(sizes), max(sizes)
            print(f"scaling {large:,} vs {small:,}: CPU time per detection ratio "
                  f"{per_detection[large][0] / per_detection[small][0]:.2f}, peak memory per "
                  f"detection ratio {per_detection[large][1] / per_detection[small][1]:.2f} "
                  "(1.0 = linear; the fixed 93k ground truth makes both fall below 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
