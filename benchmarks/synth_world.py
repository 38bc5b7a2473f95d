"""Rendering speed of the AVA-shaped world against the colour world, in one run.

Plans a slice of the real val subset (``--videos`` x ``--seconds``, 320x240, noise or footage
backgrounds) and paints every frame of it in memory (no encoding), then paints as many frames
of the colour world (``make_corpus``'s scenes, 1-3 sprites); prints frames/s of both, their
ratio and the mean persons per annotated keyframe. Encoding (x264) is not included: both worlds
share it.

    python benchmarks/synth_world.py [--videos 8] [--seconds 10] [--background footage]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ava_keyframes.csvworld import plan_world
from ava_keyframes.stamp import scrolling_texture
from ava_keyframes.synth import _ColourScene, _tracks

SIZE = (320, 240)


def _paint_all(scenes, count: int) -> float:
    frame = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
    started = time.perf_counter()
    for scene in scenes:
        for k in range(count):
            scene.paint(frame, k)
    return len(scenes) * count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--background", choices=("footage", "noise"), default="footage")
    args = parser.parse_args()
    world = plan_world(videos=args.videos, seconds=args.seconds, size=SIZE,
                       background=args.background)
    scenes = list(world.scenes.values())
    count = len(scenes[0].times)
    step = round(float(world.rate))
    persons = np.mean([len({row[2] for row in s.rows(k)}) for s in scenes
                       for k in range(0, count, step) if s.rows(k)])
    ava_fps = _paint_all(scenes, count)
    rng = np.random.default_rng(0)
    times = scenes[0].times
    colour = [_ColourScene(_tracks(rng, times, 902, 902 + args.seconds, SIZE),
                           scrolling_texture(SIZE, i), times, SIZE) for i in range(len(scenes))]
    colour_fps = _paint_all(colour, count)
    print(f"{len(scenes)} videos x {count} frames, {persons:.2f} persons per annotated keyframe")
    print(f"AVA-shaped world: {ava_fps:.0f} frames/s; colour world: {colour_fps:.0f} frames/s; "
          f"ratio {ava_fps / colour_fps:.2f}")


if __name__ == "__main__":
    main()
