"""The AVA-shaped synthetic world: real AVA rows rendered as articulated figures.

``make_csv_corpus`` reads an AVA ground-truth CSV (by default the real 93,399-row val subset
of the 14 movement classes in ``tests/data/ava``, found relative to the package in a source
checkout; an installed wheel does not carry it, so pass a CSV there), takes a slice (the
first ``videos`` video ids in sorted order, the keyframe seconds ``[start, start+seconds)``)
and renders each video with a figure (``ava_keyframes.pose``) at every real box: real sizes,
positions, counts and overlaps, each carrying that row's real actions, later rows drawn over
earlier ones. Persons are linked across consecutive seconds by person id where the CSV has
one, else by the best box overlap (IoU >= 0.3); a linked person's box moves linearly between
keyframes, an unlinked one stays still for half a second either side of its keyframe. The
pose switches halfway between keyframes, so every keyframe shows its own row's actions.

Timing is AVA's: keyframe second t is at t seconds in the video; the frames before the
slice are a shared still part (``ava_keyframes.synth``), and every frame carries its index
stamp, which covers the top rows of the frame (a box reaching into it is hidden there).
A video whose id is on the CVDF mirror's list is written in that file's container (mp4, mkv
or webm), as the mirror path looks it up by that name; others in ``container``.
Split by video: about 30 % of the slice's videos (at least one) are val, the rest train.
The excluded-timestamps CSVs are empty: every row of the slice is kept.
"""

from __future__ import annotations

import math
import os
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ava_keyframes.annotations import Person, read_annotations
from ava_keyframes.fetchers import mirror_file_names
from ava_keyframes.labelmap import default_labelmap_path, read_labelmap
from ava_keyframes.media import VideoError, ffmpeg_binary
from ava_keyframes.pose import RUN, WALK, Look, draw_figure, person_angles
from ava_keyframes.stamp import MAX_FRAME_INDEX, check_format, exact_fps, scrolling_texture
from ava_keyframes.synth import (
    CorpusInfo,
    _encode_videos,
    _write_rows,
    prepare_folders,
)

_REPO = Path(__file__).resolve().parents[1]
DEFAULT_CSV = _REPO / "tests" / "data" / "ava" / "ava_val_v2.1_person_movement_subset.csv"
"""The real val subset (93,399 rows, 64 videos, classes 1-14), in a source checkout."""
FOOTAGE = _REPO / "tests" / "data" / "video" / "bigbuckbunny.mp4"
"""Real footage for backgrounds (5 s of Big Buck Bunny), in a source checkout."""
_CADENCE = {WALK: 1.8, RUN: 2.8}
"""Steps per second of the animated actions; others move at 1 Hz (dance, swim, crawl)."""
_MIN_IOU = 0.3


@dataclass
class _Person:
    """One linked person: keyframe boxes and actions by second, look and stride phase."""

    look: Look
    phase: float
    keys: dict[int, tuple[tuple[float, float, float, float], tuple[int, ...]]]


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def link_persons(keyframes: dict[int, list[Person]], rng: np.random.Generator) -> list[_Person]:
    """Persons of one video, each keyframe person in exactly one, in drawing order (by first
    appearance, then row order)."""
    people: list[_Person] = []
    previous: list[tuple[Person, _Person]] = []
    for second in sorted(keyframes):
        current: list[tuple[Person, _Person]] = []
        free = list(previous) if second - 1 in keyframes else []
        for person in keyframes[second]:
            match = _best_match(person, free)
            if match is None:
                match = _Person(Look.random(rng), float(rng.uniform(0, 2 * math.pi)), {})
                people.append(match)
            else:
                free = [(p, m) for p, m in free if m is not match]
            match.keys[second] = (person.box, person.actions)
            current.append((person, match))
        previous = current
    return people


def _best_match(person: Person, free: list[tuple[Person, _Person]]) -> _Person | None:
    if person.person_id >= 0:
        same = [m for p, m in free if p.person_id == person.person_id]
        return same[0] if same else None
    scored = [(_iou(person.box, p.box), m) for p, m in free]
    best = max(scored, key=lambda s: s[0], default=(0.0, None))
    return best[1] if best[0] >= _MIN_IOU else None


def _state(person: _Person, time: float):
    """(normalized box, actions) at ``time``, or None where the person is not in view."""
    second = math.floor(time)
    after, before = person.keys.get(second + 1), person.keys.get(second)
    if before and after:
        f = time - second
        box = tuple(b + (a - b) * f for b, a in zip(before[0], after[0], strict=True))
        return box, (before[1] if f < 0.5 else after[1])
    nearest = round(time)
    if nearest in person.keys and abs(time - nearest) <= 0.5:
        return person.keys[nearest]
    return None


@dataclass
class CsvScene:
    """One video of the world: background and linked persons over the frames at ``times``."""

    people: list[_Person]
    background: np.ndarray
    """(height, width * 5 // 4, 3): wider than the frame, panned across over time."""
    times: np.ndarray
    size: tuple[int, int]

    def pixel_box(self, box: tuple[float, ...]) -> tuple[int, int, int, int]:
        width, height = self.size
        x1, y1, x2, y2 = (round(v * s) for v, s in zip(box, (width, height) * 2, strict=True))
        return x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)

    def paint(self, frame: np.ndarray, k: int) -> None:
        time = float(self.times[k])
        width = self.size[0]
        spare = self.background.shape[1] - width
        offset = round(spare * (0.5 + 0.5 * math.sin(time / 7)))
        frame[:] = self.background[:, offset : offset + width]
        image = Image.fromarray(frame)
        draw = ImageDraw.Draw(image)
        for person in self.people:
            state = _state(person, time)
            if state is None:
                continue
            box, actions = state
            cadence = max((_CADENCE.get(a, 1.0) for a in actions), default=1.0)
            angles = person_angles(actions, person.phase + 2 * math.pi * cadence * time)
            draw_figure(draw, self.pixel_box(box), person.look, angles)
        frame[:] = np.asarray(image)

    def rows(self, k: int) -> list[tuple[tuple[float, float, float, float], int, int]]:
        second = round(float(self.times[k]))  # asked for keyframe frames only
        found = []
        for number, person in enumerate(self.people):
            key = person.keys.get(second)
            if key:
                found += [(key[0], action, number) for action in key[1]]
        return found


def footage_background(size: tuple[int, int], rng: np.random.Generator,
                       footage: Path = FOOTAGE) -> np.ndarray:
    """A random crop of a random frame of ``footage``, scaled to ``size`` (5/4 as wide)."""
    width, height = size
    wide = width * 5 // 4 // 2 * 2
    zoom = rng.uniform(1.0, 2.5)
    at = rng.uniform(0, 5.0)
    crop = (f"crop=iw/{zoom:.3f}:ih/{zoom:.3f}:(iw-iw/{zoom:.3f})*{rng.random():.3f}:"
            f"(ih-ih/{zoom:.3f})*{rng.random():.3f},scale={wide}:{height}")
    cmd = [ffmpeg_binary(), "-hide_banner", "-nostdin", "-v", "error", "-ss", f"{at:.3f}",
           "-i", str(footage), "-frames:v", "1", "-vf", crop, "-f", "rawvideo",
           "-pix_fmt", "rgb24", "-"]
    result = subprocess.run(cmd, capture_output=True, timeout=120)  # noqa: S603
    expected = wide * height * 3
    if result.returncode != 0 or len(result.stdout) != expected:
        reason = (result.stderr.decode(errors="replace").strip().splitlines() or ["no frame"])[-1]
        raise VideoError(f"{footage}: could not read a background frame ({reason})")
    return np.frombuffer(result.stdout, np.uint8).reshape(height, wide, 3).copy()


def noise_background(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    width, height = size
    frame = np.empty((height, width * 5 // 4, 3), np.uint8)
    scrolling_texture((width * 5 // 4, height), int(rng.integers(2**31)))(frame, 0.0)
    return frame


@dataclass
class World:
    """A planned slice: what each video will show, before anything is encoded."""

    source: Path
    ids: dict[str, list[str]]
    """Video ids per split (``train``, ``val``)."""
    scenes: dict[str, CsvScene]
    rate: Fraction
    first: int
    """Index of the first rendered frame (the slice's first second)."""
    rejected: int
    """Rows of ``source`` that its reader rejected (reported, not rendered)."""


def plan_world(
    csv: str | os.PathLike | None = None,
    *,
    videos: int = 4,
    start: int = 902,
    seconds: int = 10,
    fps: float | Fraction = 30,
    size: tuple[int, int] = (320, 240),
    background: str = "footage",
    seed: int = 0,
) -> World:
    """Read ``csv``, take the slice and plan every video's scene (see the module docstring)."""
    if videos < 2 or seconds < 1 or start < 0:
        raise ValueError(f"need videos >= 2 (train and val), seconds >= 1, start >= 0; got "
                         f"{videos}, {seconds}, {start}")
    if background not in ("footage", "noise"):
        raise ValueError(f"background must be footage or noise, not {background!r}")
    source = Path(csv) if csv is not None else DEFAULT_CSV
    if not source.is_file():
        raise ValueError(f"{source}: no such AVA CSV (outside a source checkout, give one)")
    annotations = read_annotations(source, read_labelmap(default_labelmap_path()))
    by_video: dict[str, dict[int, list[Person]]] = {}
    for (video_id, second), persons in annotations.keyframes().items():
        if start <= second < start + seconds and persons:
            by_video.setdefault(video_id, {})[second] = persons
    ids = sorted(by_video)[:videos]
    if len(ids) < 2:
        raise ValueError(f"{source}: {len(ids)} video(s) have boxes in seconds "
                         f"[{start}, {start + seconds}); need at least 2")
    rate = exact_fps(fps)
    first, end = math.ceil(start * rate), math.ceil((start + seconds) * rate)
    if end - 1 > MAX_FRAME_INDEX:
        raise ValueError(f"{start + seconds} s at {float(rate):g} fps is more than the "
                         f"{MAX_FRAME_INDEX + 1} frames a stamp can number")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ids))
    val_count = min(len(ids) - 1, max(1, round(0.3 * len(ids))))
    val = sorted(ids[i] for i in order[:val_count])
    times = np.arange(first, end) / float(rate)
    paint = footage_background if background == "footage" else noise_background
    scenes = {video_id: CsvScene(link_persons(by_video[video_id], rng), paint(size, rng),
                                 times, size) for video_id in ids}
    return World(source, {"train": [v for v in ids if v not in val], "val": val}, scenes, rate,
                 first, len(annotations.report))


def make_csv_corpus(
    out: str | os.PathLike,
    csv: str | os.PathLike | None = None,
    *,
    container: str = "mp4",
    seed: int = 0,
    **slice_options,
) -> tuple[CorpusInfo, int]:
    """Write the world for a slice of ``csv`` (options of ``plan_world``) into ``out``.

    Returns the corpus and the number of rows of ``csv`` that its reader rejected (they are
    reported, not rendered)."""
    size = slice_options.get("size", (320, 240))
    check_format(size, container)
    world = plan_world(csv, seed=seed, **slice_options)
    root = Path(out)
    prepare_folders(root)
    start = slice_options.get("start", 902)
    seconds = slice_options.get("seconds", 10)
    info = CorpusInfo(root, world.ids, {}, world.rate, size, container, start, seconds)
    count = len(next(iter(world.scenes.values())).times)
    listed = mirror_file_names()  # a real id keeps its real container (mirrors look it up)
    containers = {video_id: listed[video_id].rsplit(".", 1)[1] for video_id in world.scenes
                  if video_id in listed}
    rows = _encode_videos(info, dict(world.scenes), count, world.first,
                          np.random.default_rng(seed + 1), containers)
    _write_rows(info, rows, {split: set() for split in info.ids})
    return info, world.rejected
