"""Clips around keyframes: `extract_clips` against `extract_keyframes` on the same video.

On the frame-stamped 640x360 H.264 video of `benchmarks/extract.py` (30 minutes, 30 fps,
cached), the dense AVA schedule over 60 seconds (902..961) is extracted three ways, in three
interleaved rounds (each keeps its least time): keyframes alone, clips of 8 frames at
stride 8, clips of 32 frames at stride 2 (shorter side 256; SlowFast's two recipes). For
each: keyframes per second, the peak resident memory of a fresh process doing it, and the
bytes one keyframe's example would take with its frames stored as JPEG (quality 95) or PNG,
as `tfds.features.Image` / `Video` store them. Every clip frame's stamp is checked against
the rule.

Usage: python benchmarks/clips.py [--cache DIR] [--seconds 60]
"""

from __future__ import annotations

import argparse
import bisect
import io
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from ava_keyframes.frames import clip_offsets, extract_clips, extract_keyframes
from ava_keyframes.stamp import read_frame_stamp

RECIPES = {"keyframes only": None, "clips 8 x stride 8": (8, 8), "clips 32 x stride 2": (32, 2)}


def extract(path: Path, seconds: list[int], recipe: tuple[int, int] | None
            ) -> Iterator[list[np.ndarray]]:
    """Each example's frames: [keyframe] or [keyframe, *clip frames], per second."""
    if recipe is None:
        yield from ([image] for _, image in extract_keyframes(path, seconds))
        return
    length, stride = recipe
    for clip in extract_clips(path, seconds, length=length, stride=stride):
        yield [clip.keyframe, *clip.frames]


def encoded_bytes(images: list[np.ndarray], format_: str) -> int:
    total = 0
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format=format_,
                                    **({"quality": 95} if format_ == "JPEG" else {}))
        total += buffer.tell()
    return total


def is_exact(frames: list[np.ndarray], second: int, times: list[float],
             recipe: tuple[int, int] | None) -> bool:
    wanted = [Fraction(second)] + [second + offset for offset in
                                   (clip_offsets(*recipe) if recipe else [])]
    return [read_frame_stamp(f) for f in frames] == [
        min(bisect.bisect_left(times, float(t)), len(times) - 1) for t in wanted]


def peak_rss_mb(path: Path, seconds: list[int], name: str) -> float:
    """Peak resident memory of a fresh process running one recipe (frames dropped)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "import clips, resource\n"
            "for _ in clips.extract(clips.Path(sys.argv[2]), list(range(int(sys.argv[3]), "
            "int(sys.argv[4]))), clips.RECIPES[sys.argv[5]]): pass\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    args = [str(Path(__file__).parent), str(path), str(seconds[0]), str(seconds[-1] + 1), name]
    out = subprocess.run([sys.executable, "-c", code, *args],  # noqa: S603
                         capture_output=True, text=True, check=True).stdout
    return int(out) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "ava_keyframes_bench")
    parser.add_argument("--seconds", type=int, default=60)
    args = parser.parse_args()
    video = args.cache / "textured_640x360_30min.mp4"
    if not video.exists():
        sys.exit(f"{video}: run benchmarks/extract.py first (it writes the video)")
    times = np.load(video.with_suffix(".times.npy")).tolist()
    seconds = list(range(902, 902 + args.seconds))
    print(f"{len(seconds)} keyframes, 640x360 H.264 30 fps\n")
    print("| recipe | keyframes/s | / keyframes only | peak RSS | JPEG q95 per keyframe "
          "| PNG per keyframe | exact |")
    print("|---|---|---|---|---|---|---|")
    best: dict[str, float] = {}
    for _ in range(3):  # interleaved rounds, least time kept: the machine is shared
        for name, recipe in RECIPES.items():
            started = time.perf_counter()
            for _ in extract(video, seconds, recipe):
                pass
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - started)
    base = len(seconds) / best["keyframes only"]
    for name, recipe in RECIPES.items():
        rate = len(seconds) / best[name]
        right, jpeg, png, sampled = 0, 0, 0, 0
        for index, frames in enumerate(extract(video, seconds, recipe)):
            right += is_exact(frames, seconds[index], times, recipe)
            if index % 12 == 0:
                jpeg += encoded_bytes(frames, "JPEG")
                png += encoded_bytes(frames, "PNG")
                sampled += 1
        print(f"| {name} | {rate:.1f} | {rate / base:.2f}x "
              f"| {peak_rss_mb(video, seconds, name):.0f} MB "
              f"| {jpeg / sampled / 1024:.0f} KiB | {png / sampled / 1024:.0f} KiB "
              f"| {right / len(seconds):.0%} |")


if __name__ == "__main__":
    main()
