"""Keyframe extraction: `ava_keyframes.frames` against the ways it could be done.

On a frame-stamped, textured 640x360 H.264 video of 30 minutes (written once by
`ava_keyframes.synth` and cached), two schedules are extracted:
dense (the AVA schedule, 897 seconds 902..1798) and sparse (5 seconds spread over it), by
  ours          `extract_keyframes` (one process per run of close seconds),
  bare decode   `ffmpeg -ss 900 -t 900 -i V -f null -`: decoding the span, nothing else (floor),
  ffmpeg -ss    one `ffmpeg -ss t -i V -frames:v 1` process per keyframe,
  OpenCV        `cv2.VideoCapture` seeking with CAP_PROP_POS_MSEC per keyframe.
Every frame's stamp is checked against the rule (first frame at or after the second), on
this video and on a variable-frame-rate mkv. A sweep over the spacing of seconds shows where
one decode pass stops beating a seek per keyframe (`frames.SEEK_GAP`). All ratios come from
this run. Peak Python memory during the dense extraction shows that nothing accumulates.

Usage: python benchmarks/extract.py [--cache DIR]   (opencv-python-headless for OpenCV)
"""

from __future__ import annotations

import argparse
import bisect
import subprocess
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

import ava_keyframes.frames as frames
from ava_keyframes.media import ffmpeg_binary
from ava_keyframes.stamp import read_frame_stamp, write_stamped_video

SIZE = (640, 360)
DENSE = list(range(902, 1799))
SPARSE = [902, 1125, 1350, 1575, 1798]

Extractor = Callable[[Path, list], Iterator[tuple[float, np.ndarray]]]


def stamped_video(path: Path, **options) -> list[float]:
    """Write the video once; its frame times are cached beside it."""
    times_file = path.with_suffix(".times.npy")
    if not (path.exists() and times_file.exists()):
        started = time.perf_counter()
        times = write_stamped_video(path, size=SIZE, **options)
        np.save(times_file, np.array(times))
        print(f"wrote {path} in {time.perf_counter() - started:.0f} s")
    return np.load(times_file).tolist()


def ours(path: Path, seconds: list) -> Iterator[tuple[float, np.ndarray]]:
    return frames.extract_keyframes(path, seconds)


def ffmpeg_seek_each(path: Path, seconds: list) -> Iterator[tuple[float, np.ndarray]]:
    for second in seconds:
        cmd = [ffmpeg_binary(), "-nostdin", "-v", "error", "-ss", str(second), "-i", str(path),
               "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
        raw = subprocess.run(cmd, capture_output=True, check=True).stdout  # noqa: S603
        yield second, np.frombuffer(raw, np.uint8).reshape(SIZE[1], SIZE[0], 3)


def opencv_seek_each(path: Path, seconds: list) -> Iterator[tuple[float, np.ndarray]]:
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        for second in seconds:
            capture.set(cv2.CAP_PROP_POS_MSEC, second * 1000)
            ok, frame = capture.read()
            if ok:
                yield second, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()


def exact_fraction(extract: Extractor, path: Path, times: list[float], seconds: list) -> float:
    """Share of seconds whose returned frame is the first frame at or after them."""
    right = 0
    for second, image in extract(path, seconds):
        try:
            right += read_frame_stamp(image) == bisect.bisect_left(times, second)
        except ValueError:  # no readable stamp: not the right frame either
            pass
    return right / len(seconds)


def timed(extract: Extractor, path: Path, times: list[float], seconds: list
          ) -> tuple[float, float]:
    started = time.perf_counter()
    exact = exact_fraction(extract, path, times, seconds)
    return time.perf_counter() - started, exact


def bare_decode(path: Path) -> float:
    cmd = [ffmpeg_binary(), "-nostdin", "-v", "error", "-ss", "900", "-t", "900", "-i",
           str(path), "-f", "null", "-"]
    started = time.perf_counter()
    subprocess.run(cmd, check=True)  # noqa: S603
    return time.perf_counter() - started


def peak_memory_mb(path: Path, seconds: list) -> float:
    tracemalloc.start()
    for _ in frames.extract_keyframes(path, seconds):
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def gap_sweep(path: Path, times: list[float]) -> list[tuple[float, float, float]]:
    """(spacing, one pass time, seek-each time) for 12 seconds spaced that far apart."""
    rows = []
    default = frames.SEEK_GAP
    try:
        for spacing in (0.5, 1, 2, 4, 6, 8, 16):
            seconds = [902 + spacing * i for i in range(12)]
            frames.SEEK_GAP = 10**9
            one_pass = timed(ours, path, times, seconds)[0]
            frames.SEEK_GAP = 0
            seek_each = timed(ours, path, times, seconds)[0]
            rows.append((spacing, one_pass, seek_each))
    finally:
        frames.SEEK_GAP = default
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "ava_keyframes_bench",
                        help="where the generated videos are kept between runs")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    video = args.cache / "textured_640x360_30min.mp4"
    times = stamped_video(video, duration=1800, fps=30)
    vfr_video = args.cache / "textured_640x360_vfr_60s.mkv"
    vfr_times = stamped_video(vfr_video, duration=60, fps=30, container="mkv", vfr=True)

    floor = min(bare_decode(video) for _ in range(2))
    results = {}
    for name, extract in (("ours", ours), ("ffmpeg -ss per keyframe", ffmpeg_seek_each),
                          ("OpenCV POS_MSEC per keyframe", opencv_seek_each)):
        for schedule, seconds in (("dense", DENSE), ("sparse", SPARSE)):
            runs = 2 if name == "ours" else 1
            measured = [timed(extract, video, times, seconds) for _ in range(runs)]
            results[name, schedule] = min(measured)
        vfr_seconds = [s + 0.5 for s in range(50)] + list(range(1, 50))
        results[name, "vfr"] = (None, exact_fraction(extract, vfr_video, vfr_times,
                                                     vfr_seconds))

    seek_dense = results["ffmpeg -ss per keyframe", "dense"][0]
    seek_sparse = results["ffmpeg -ss per keyframe", "sparse"][0]
    print(f"\nbare decode of 900 s (floor): {floor:.2f} s\n")
    print("| method | dense 897 s: time | / bare decode | / ffmpeg -ss each | exact "
          "| sparse 5 s: time | / ffmpeg -ss each | exact | VFR mkv: exact |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in ("ours", "ffmpeg -ss per keyframe", "OpenCV POS_MSEC per keyframe"):
        dense_time, dense_exact = results[name, "dense"]
        sparse_time, sparse_exact = results[name, "sparse"]
        vfr_exact = results[name, "vfr"][1]
        print(f"| {name} | {dense_time:.2f} s | {dense_time / floor:.2f}x "
              f"| {dense_time / seek_dense:.3f}x | {dense_exact:.1%} | {sparse_time:.3f} s "
              f"| {sparse_time / seek_sparse:.2f}x | {sparse_exact:.0%} | {vfr_exact:.1%} |")

    print(f"\npeak Python memory while extracting the dense schedule: "
          f"{peak_memory_mb(video, DENSE):.1f} MB (one 640x360 frame is "
          f"{SIZE[0] * SIZE[1] * 3 / 2**20:.2f} MB)")
    print(f"\nspacing sweep (12 seconds; SEEK_GAP = {frames.SEEK_GAP} s):\n")
    print("| spacing | one pass | seek each | one pass / seek each |")
    print("|---|---|---|---|")
    for spacing, one_pass, seek_each in gap_sweep(video, times):
        print(f"| {spacing} s | {one_pass:.2f} s | {seek_each:.2f} s "
              f"| {one_pass / seek_each:.2f} |")


if __name__ == "__main__":
    main()
