"""Keyframe extraction: `ava_keyframes.frames` (in process, PyAV) against the ways it could be done.

On a frame-stamped, textured 640x360 H.264 video of 30 minutes (x264 veryfast: B-frames in
a pyramid, key frame every 2 s; written once by `ava_keyframes.stamp` and cached), two
schedules are extracted: dense (the AVA schedule, 897 seconds 902..1798) and sparse
(5 seconds spread over it), by
  ours                 `extract_keyframes` (one seek per run of close seconds, one process),
    ... every frame    the same with `frames.SKIP_UNWANTED = False` (decodes every frame),
  bare decode          `ffmpeg -ss 900 -t 900 -i V -f null -`: decoding the span, nothing else,
                       with FFmpeg's automatic thread count, as ours,
  ffmpeg -ss           one `ffmpeg -ss t -i V -frames:v 1` process per keyframe,
  OpenCV               `cv2.VideoCapture` seeking with CAP_PROP_POS_MSEC per keyframe.
Every frame's stamp is checked against the rule (first frame at or after the second), on
this video and on a variable-frame-rate mkv. For the dense schedule the script counts the
frames decoded with and without skipping. A sweep over the spacing of seconds shows where
one decode pass stops beating a seek per second (`frames.SEEK_GAP`). All ratios come from
this run. The growth of peak resident memory of a process extracting 897 seconds against
one shows that nothing accumulates.

Usage: python benchmarks/extract.py [--cache DIR]   (opencv-python-headless for OpenCV)
"""

from __future__ import annotations

import argparse
import bisect
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

import ava_keyframes.frames as frames
import ava_keyframes.media as media
from ava_keyframes.media import Video, decoder_info, ffmpeg_binary
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


@contextmanager
def skipping(skip: bool) -> Iterator[None]:
    default = frames.SKIP_UNWANTED
    frames.SKIP_UNWANTED = skip
    try:
        yield
    finally:
        frames.SKIP_UNWANTED = default


@contextmanager
def single_thread() -> Iterator[None]:
    default = media.THREADS
    media.THREADS = 1
    try:
        yield
    finally:
        media.THREADS = default


def ours(path: Path, seconds: list) -> Iterator[tuple[float, np.ndarray]]:
    return frames.extract_keyframes(path, seconds)


def ours_every_frame(path: Path, seconds: list) -> Iterator[tuple[float, np.ndarray]]:
    with skipping(False):
        yield from frames.extract_keyframes(path, seconds)


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


Timing = tuple[float, float, float]
"""(wall seconds, CPU seconds of this process and its children, share of exact answers)."""


def cpu_seconds() -> float:
    usage = os.times()
    return usage.user + usage.system + usage.children_user + usage.children_system


def timed(extract: Extractor, path: Path, times: list[float], seconds: list) -> Timing:
    started, cpu = time.perf_counter(), cpu_seconds()
    exact = exact_fraction(extract, path, times, seconds)
    return time.perf_counter() - started, cpu_seconds() - cpu, exact


def bare_decode(path: Path, threads: int = 0) -> Timing:
    cmd = [ffmpeg_binary(), "-nostdin", "-v", "error", "-threads", str(threads), "-ss", "900",
           "-t", "900", "-i", str(path), "-f", "null", "-"]
    started, cpu = time.perf_counter(), cpu_seconds()
    subprocess.run(cmd, check=True)  # noqa: S603
    return time.perf_counter() - started, cpu_seconds() - cpu, float("nan")


def decoded_frames(path: Path, seconds: list, skip: bool) -> tuple[int, list[bytes]]:
    """(frames the decoder output, the answers' pixels) for one extraction."""
    count = 0
    decoded = Video.decoded

    def counting(self, packet, after):
        nonlocal count
        for item in decoded(self, packet, after):
            count += 1
            yield item

    Video.decoded = counting
    try:
        with skipping(skip):
            answers = [image.tobytes() for _, image in frames.extract_keyframes(path, seconds)]
    finally:
        Video.decoded = decoded
    return count, answers


def rss_growth_mb(path: Path, seconds: list) -> float:
    """How much a fresh process's resident memory grows, at most, while it extracts
    ``seconds`` (frames dropped; sampled at each frame) over what it held before."""
    code = ("import sys\n"
            "from ava_keyframes.frames import extract_keyframes\n"
            "rss = lambda: int(open('/proc/self/statm').read().split()[1])\n"
            "before = most = rss()\n"
            "for _ in extract_keyframes(sys.argv[1], map(int, sys.argv[2:])):\n"
            "    most = max(most, rss())\n"
            "print((most - before) * __import__('os').sysconf('SC_PAGE_SIZE'))")
    out = subprocess.run([sys.executable, "-c", code, str(path), *map(str, seconds)],  # noqa: S603
                         capture_output=True, text=True, check=True).stdout
    return int(out) / 2**20


def gap_sweep(path: Path, times: list[float]) -> list[tuple[float, float, float]]:
    """(spacing, one pass time, seek-each time) for 12 seconds spaced that far apart."""
    rows = []
    default = frames.SEEK_GAP
    try:
        for spacing in (1, 2, 4, 6, 8, 16):
            # off the key frames (every 2 s on whole seconds), as a movie's seconds fall
            seconds = [902.37 + spacing * i for i in range(12)]
            frames.SEEK_GAP = 10**9
            one_pass = timed(ours, path, times, seconds)[0]
            frames.SEEK_GAP = 0
            seek_each = timed(ours, path, times, seconds)[0]
            rows.append((spacing, one_pass, seek_each))
    finally:
        frames.SEEK_GAP = default
    return rows


METHODS = {"ours": ours, "ours, every frame decoded": ours_every_frame,
           "ffmpeg -ss per keyframe": ffmpeg_seek_each,
           "OpenCV POS_MSEC per keyframe": opencv_seek_each}


def best(timings: list[Timing]) -> Timing:
    """Least wall and least CPU time over repeats (the machine is shared), and exactness."""
    return (min(t[0] for t in timings), min(t[1] for t in timings), min(t[2] for t in timings))


def measure(video: Path, times: list[float]) -> dict[tuple[str, str], Timing]:
    """Every method on both schedules, in interleaved rounds so that the load of other jobs
    falls on all alike; the dense schedule is not run per keyframe (897 processes)."""
    runs: dict[tuple[str, str], list[Timing]] = {}
    for _ in range(3):
        runs.setdefault(("bare decode", "dense"), []).append(bare_decode(video))
        for name, extract in METHODS.items():
            if not name.endswith("per keyframe"):
                runs.setdefault((name, "dense"), []).append(timed(extract, video, times, DENSE))
        # one decoding thread each: the other jobs on the machine then take no more from
        # one side than from the other (the scheduler shares CPUs out by thread)
        runs.setdefault(("bare decode", "1 thread"), []).append(bare_decode(video, 1))
        for name, extract in list(METHODS.items())[:2]:
            with single_thread():
                runs.setdefault((name, "1 thread"), []).append(
                    timed(extract, video, times, DENSE))
    for _ in range(5):
        for name, extract in METHODS.items():
            runs.setdefault((name, "sparse"), []).append(timed(extract, video, times, SPARSE))
    return {key: best(timings) for key, timings in runs.items()}


def report(results: dict[tuple[str, str], Timing], vfr: dict[str, float]) -> None:
    floor = results["bare decode", "dense"]
    seek = results["ffmpeg -ss per keyframe", "sparse"]
    print(f"\nbare decode of 900 s: {floor[0]:.2f} s wall, {floor[1]:.2f} s CPU\n")
    print("| method | dense 897 s: wall | / bare decode | CPU / bare decode | exact "
          "| sparse 5 s: wall | ffmpeg -ss each / this (wall) | (CPU) | exact | VFR mkv: exact |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in METHODS:
        dense = results.get((name, "dense"))
        dense_cells = (f"{dense[0]:.2f} s | {dense[0] / floor[0]:.2f}x "
                       f"| {dense[1] / floor[1]:.2f}x | {dense[2]:.1%}"
                       if dense else "not run | | | ")
        sparse = results[name, "sparse"]
        print(f"| {name} | {dense_cells} | {sparse[0]:.3f} s | {seek[0] / sparse[0]:.2f}x "
              f"| {seek[1] / max(sparse[1], 1e-3):.2f}x | {sparse[2]:.0%} | {vfr[name]:.1%} |")
    single = results["bare decode", "1 thread"]
    for name in list(METHODS)[:2]:
        one = results[name, "1 thread"]
        print(f"\n{name}, one decoding thread (bare decode {single[0]:.2f} s): {one[0]:.2f} s, "
              f"{one[0] / single[0]:.2f}x wall, {one[1] / single[1]:.2f}x CPU")


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
    print(f"decoder: {decoder_info()}")

    results = measure(video, times)
    vfr_seconds = [s + 0.5 for s in range(50)] + list(range(1, 50))
    vfr = {name: exact_fraction(extract, vfr_video, vfr_times, vfr_seconds)
           for name, extract in METHODS.items()}
    report(results, vfr)

    all_frames, every_answer = decoded_frames(video, DENSE, skip=False)
    skipped_frames, skip_answers = decoded_frames(video, DENSE, skip=True)
    print(f"\ndense schedule: {all_frames} frames decoded without skipping, {skipped_frames} "
          f"with: {1 - skipped_frames / all_frames:.1%} skipped; answers identical: "
          f"{every_answer == skip_answers}")
    print(f"\ngrowth of peak resident memory while a process extracts: the dense schedule "
          f"{rss_growth_mb(video, DENSE):.1f} MB, one second {rss_growth_mb(video, [902]):.1f} "
          f"MB (one 640x360 RGB frame is {SIZE[0] * SIZE[1] * 3 / 2**20:.2f} MB)")
    print(f"\nspacing sweep (12 seconds; SEEK_GAP = {frames.SEEK_GAP} s):\n")
    print("| spacing | one pass | seek each | one pass / seek each |")
    print("|---|---|---|---|")
    for spacing, one_pass, seek_each in gap_sweep(video, times):
        print(f"| {spacing} s | {one_pass:.2f} s | {seek_each:.2f} s "
              f"| {one_pass / seek_each:.2f} |")


if __name__ == "__main__":
    main()
