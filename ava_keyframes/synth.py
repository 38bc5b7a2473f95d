"""Synthetic AVA: stamped videos of moving people, with AVA-format annotations.

Corpus (``make_corpus``): videos of ``start + seconds`` seconds at a constant frame rate
whose timeline puts second t at t; every frame carries its index (``ava_keyframes.stamp``).
Frames before ``start`` show a still background (only
the stamp changes); they are encoded once per corpus and joined to every video's own
part by stream copy, which keeps a corpus of 900 s-long videos cheap. From ``start`` on,
1 to 3 people per video move in their own lane of the frame. Their look is set by their
actions: exactly one pose (11 sit: blue, seated; 12 stand: green, upright; 14 walk: red,
legs apart, moving), optionally 17 carry/hold (a yellow block at the side) and 79 talk to
(a cyan head with a white speech mark). Poses and extras change at half seconds, never
near a keyframe. The annotations hold every integer second of ``[start, start+seconds)``,
each box the tight extent of the figure in the frame that ffmpeg shows at that second.
Excluded timestamps: each split lists a few of its keyframes as excluded while its CSV
still holds their rows (real AVA leaves them unannotated), so a reader given the
excluded file must leave exactly those rows out.
"""

from __future__ import annotations

import bisect
import functools
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import numpy as np

from ava_keyframes.annotations import (
    Keyframe,
    annotation_csv_name,
    check_video_id,
    excluded_csv_name,
    write_excluded,
    write_rows,
)
from ava_keyframes.labelmap import default_labelmap_path
from ava_keyframes.media import VideoError, ffmpeg_binary
from ava_keyframes.stamp import (
    CONTAINERS,
    MAX_FRAME_INDEX,
    check_format,
    encode_frames,
    exact_fps,
    read_frame_times,
    scrolling_texture,
    stamp_band_height,
)

SIT, STAND, WALK, CARRY, TALK = 11, 12, 14, 17, 79
POSES = (SIT, STAND, WALK)
"""Pose actions: every synthetic person has exactly one of these at any time."""
EXTRAS = (CARRY, TALK)
"""Optional second (and third) actions."""

# --- people ---

_BODY = {SIT: (40, 90, 235), STAND: (30, 200, 60), WALK: (235, 50, 35)}
_SKIN, _TALKING_HEAD = (240, 170, 100), (0, 235, 235)
_OBJECT, _SPEECH = (255, 235, 0), (255, 255, 255)
_LANE_MARGIN = 4
"""Pixels kept free at each side of a person's lane, so people never touch."""
_SIT_HEIGHT = 0.7
"""Height of a seated figure, relative to the same person standing."""
# Figure parts as boxes (u0, v0, u1, v1) in fractions of the figure's width and height.
_HEAD = {SIT: (0.09, 0.0, 0.41, 0.26), STAND: (0.22, 0.0, 0.78, 0.22),
         WALK: (0.3, 0.0, 0.7, 0.22)}
_RECTS = {
    SIT: [(0.08, 0.26, 0.45, 0.68), (0.08, 0.52, 0.95, 0.68), (0.78, 0.52, 1.0, 1.0)],
    STAND: [(0.0, 0.22, 1.0, 0.6), (0.12, 0.6, 0.45, 1.0), (0.55, 0.6, 0.88, 1.0)],
    WALK: [(0.2, 0.22, 0.8, 0.62)],
}
_WIDTH = {SIT: 0.8, STAND: 0.4, WALK: 0.55}
"""Figure width relative to its own height."""
_OBJECT_AT = {SIT: (0.45, 0.3, 0.75, 0.5), STAND: (0.7, 0.42, 1.0, 0.6),
              WALK: (0.72, 0.38, 0.98, 0.56)}
_SPEECH_AT = {SIT: (0.42, 0.02, 0.62, 0.12), STAND: (0.8, 0.03, 1.0, 0.13),
              WALK: (0.74, 0.03, 0.96, 0.13)}


@functools.lru_cache(maxsize=512)
def _figure(pose: int, carry: bool, talk: bool, stand_height: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB sprite and mask of a figure, cropped to the mask (so its shape is the tight box)."""
    height = round(stand_height * (_SIT_HEIGHT if pose == SIT else 1.0))
    width = max(4, round(height * _WIDTH[pose]))
    v = (np.arange(height)[:, None] + 0.5) / height
    u = (np.arange(width)[None, :] + 0.5) / width
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), dtype=bool)

    def fill(part: np.ndarray, colour: tuple[int, int, int]) -> None:
        rgb[part] = colour
        mask[part] = True

    def rect(box: tuple[float, float, float, float]) -> np.ndarray:
        u0, v0, u1, v1 = box
        return (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)

    for box in _RECTS[pose]:
        fill(rect(box), _BODY[pose])
    if pose == WALK:  # legs apart: an open inverted V reaching both bottom corners
        spread = np.clip((v - 0.6) / 0.4, 0, 1)
        off = np.abs(u - 0.5)
        fill((v >= 0.6) & (off <= 0.15 + 0.35 * spread) & (off >= 0.35 * spread - 0.05),
             _BODY[pose])
    u0, v0, u1, v1 = _HEAD[pose]
    ru, rv = (u1 - u0) / 2, (v1 - v0) / 2
    head = ((u - u0 - ru) / ru) ** 2 + ((v - v0 - rv) / rv) ** 2 <= 1
    fill(head, _TALKING_HEAD if talk else _SKIN)
    if carry:
        fill(rect(_OBJECT_AT[pose]), _OBJECT)
    if talk:
        fill(rect(_SPEECH_AT[pose]), _SPEECH)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    crop = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    return rgb[crop], mask[crop]


@dataclass
class _Track:
    """One person over a video's active frames: actions and pixel box per frame."""

    person_id: int
    stand_height: int
    pose: np.ndarray
    carry: np.ndarray
    talk: np.ndarray
    boxes: np.ndarray  # (frames, 4) int: x1, y1, x2, y2 (exclusive)

    def actions(self, k: int) -> list[int]:
        extras = [a for a, on in ((CARRY, self.carry[k]), (TALK, self.talk[k])) if on]
        return [int(self.pose[k]), *extras]

    def sprite(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        return _figure(int(self.pose[k]), bool(self.carry[k]), bool(self.talk[k]),
                       self.stand_height)


def _tracks(
    rng: np.random.Generator, times: np.ndarray, start: int, end: int, size: tuple[int, int]
) -> list[_Track]:
    """1 to 3 people, each in its own vertical lane, over frames at ``times`` (seconds)."""
    width, height = size
    band = stamp_band_height(height)
    count = int(rng.integers(1, 4))
    lane = width / count
    tracks = []
    widest = max(_WIDTH[WALK], _WIDTH[STAND], _WIDTH[SIT] * _SIT_HEIGHT)
    for person in range(count):
        stand_height = int(min(rng.uniform(0.45, 0.75) * (height - band), 0.8 * lane / widest))
        feet = int(rng.integers(band + 2 + stand_height, height + 1))
        # Pose and extras per segment; segments change at half seconds, away from keyframes.
        bounds = [start - 0.5]
        while bounds[-1] < end:
            bounds.append(bounds[-1] + int(rng.integers(3, 9)))
        segments = len(bounds) - 1
        pose = rng.choice(POSES, segments, p=[0.3, 0.3, 0.4])
        carry, talk = rng.random(segments) < 0.35, rng.random(segments) < 0.35
        segment = np.clip(np.searchsorted(bounds, times, side="right") - 1, 0, segments - 1)
        pose, carry, talk = pose[segment], carry[segment], talk[segment]
        shapes = np.zeros((max(POSES) + 1, 2, 2, 2), dtype=int)
        for p in POSES:
            for c in (False, True):
                for t in (False, True):
                    shapes[p, int(c), int(t)] = _figure(p, c, t, stand_height)[1].shape
        # Walkers move sideways, bouncing inside the lane; others stay where they are.
        span = max(lane - shapes[..., 1].max() - 2 * _LANE_MARGIN, 0)
        speed = rng.uniform(0.3, 0.6) * stand_height
        steps = np.where(pose == WALK, speed, 0.0) * np.diff(times, prepend=times[0])
        travel = (rng.uniform(0, 2 * span) + np.cumsum(steps)) % max(2 * span, 1)
        folded = np.where(travel <= span, travel, 2 * span - travel) if span else 0.0
        centre = (person + 0.5) * lane - span / 2 + folded
        fig_h, fig_w = shapes[pose, carry.astype(int), talk.astype(int)].T
        x1 = np.round(centre - fig_w / 2).astype(int)
        boxes = np.stack([x1, feet - fig_h, x1 + fig_w, np.full_like(x1, feet)], axis=1)
        tracks.append(_Track(person, stand_height, pose, carry, talk, boxes))
    return tracks


# --- corpus ---


@dataclass
class CorpusInfo:
    """What ``make_corpus`` wrote, for tests and the demo."""

    root: Path
    ids: dict[str, list[str]]
    """Video ids per split (``train``, ``val``)."""
    videos: dict[str, Path]
    fps: Fraction
    size: tuple[int, int]
    container: str
    start: int
    seconds: int
    keyframe_frames: dict[Keyframe, int] = field(default_factory=dict)
    """(video id, second) -> index (= stamp) of the frame shown at that second."""
    excluded: dict[str, set[Keyframe]] = field(default_factory=dict)
    """Keyframes listed in each split's excluded-timestamps CSV (their rows are in its CSV)."""

    @property
    def annotations_dir(self) -> Path:
        return self.root / "annotations"

    @property
    def labelmap(self) -> Path:
        return self.annotations_dir / default_labelmap_path().name

    def annotation_csv(self, split: str) -> Path:
        return self.annotations_dir / annotation_csv_name(split, "2.2")

    def excluded_csv(self, split: str) -> Path:
        return self.annotations_dir / excluded_csv_name(split, "2.2")


_ID_FIRST = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_ID_CHARS = _ID_FIRST + "-_"


def _video_ids(rng: np.random.Generator, count: int) -> list[str]:
    """Distinct ids of YouTube's form; none starts with '-' (which a tool could take for an
    option), but '-' and '_' occur inside as in real ids."""
    ids: list[str] = []
    while len(ids) < count:
        first = _ID_FIRST[rng.integers(len(_ID_FIRST))]
        video_id = first + "".join(rng.choice(list(_ID_CHARS), 10))
        if video_id not in ids:
            ids.append(check_video_id(video_id))
    return ids


def _join(first: Path, second: Path, out: Path, container: str) -> None:
    """Concatenate two videos encoded alike by stream copy (no re-encoding)."""
    listing = first.parent / "join.txt"
    listing.write_text(f"file '{first.name}'\nfile '{second.name}'\n", encoding="utf-8")
    cmd = [ffmpeg_binary(), "-hide_banner", "-nostdin", "-v", "error", "-y", "-f", "concat",
           "-i", str(listing.resolve()), "-map", "0:v:0", "-c", "copy",
           "-fflags", "+bitexact", "-f", CONTAINERS[container], str(out.resolve())]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)  # noqa: S603
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["ffmpeg failed"])[-1]
        raise VideoError(f"{out}: could not join {first.name} and {second.name} ({reason})")




def make_corpus(
    out: str | os.PathLike,
    *,
    videos: int,
    seconds: int,
    start: int = 902,
    fps: float | Fraction = 30,
    size: tuple[int, int] = (320, 240),
    container: str = "mp4",
    seed: int = 0,
) -> CorpusInfo:
    """Write a synthetic AVA corpus: ``OUT/videos/<id>.<ext>`` and ``OUT/annotations/``.

    Keyframes are the integer seconds of ``[start, start + seconds)``; about 30 % of the
    videos (at least one) form the val split, the rest train. Each split's excluded CSV
    lists one or two of its keyframes (see the module docstring).
    """
    if videos < 2 or seconds < 2 or start < 0:
        raise ValueError(f"need videos >= 2 (train and val), seconds >= 2 (a keyframe of each "
                         f"split is excluded), start >= 0; got {videos}, {seconds}, {start}")
    check_format(size, container)
    rate = exact_fps(fps)
    first = math.ceil(start * rate)  # frames before `start`
    end = math.ceil((start + seconds) * rate)
    if end - 1 > MAX_FRAME_INDEX:
        raise ValueError(f"{start + seconds} s at {float(rate):g} fps is more than the "
                         f"{MAX_FRAME_INDEX + 1} frames a stamp can number")
    root = Path(out)
    prepare_folders(root)
    rng = np.random.default_rng(seed)
    ids = _video_ids(rng, videos)
    val_count = min(videos - 1, max(1, round(0.3 * videos)))
    info = CorpusInfo(root, {"train": ids[: videos - val_count], "val": ids[videos - val_count :]},
                      {}, rate, size, container, start, seconds)
    times = np.arange(first, end) / float(rate)
    scenes: dict[str, Scene] = {
        video_id: _ColourScene(_tracks(rng, times, start, start + seconds, size),
                               scrolling_texture(size, int(rng.integers(2**31))), times, size)
        for video_id in ids}
    rows = _encode_videos(info, scenes, len(times), first, rng)
    _write_annotations(info, rows, rng)
    return info


class Scene(Protocol):
    """What one video shows over its own frames (k = 0 .. count-1, at ``times[k]``)."""

    def paint(self, frame: np.ndarray, k: int) -> None:
        """Fill ``frame`` (height, width, 3) with frame k (the stamp is drawn afterwards)."""

    def rows(self, k: int) -> list[tuple[tuple[float, float, float, float], int, int]]:
        """Annotation rows of frame k: (normalized x1, y1, x2, y2), action id, person id."""


def _encode_videos(info: CorpusInfo, scenes: dict[str, Scene], count: int, first: int,
                   rng: np.random.Generator, containers: dict[str, str] | None = None
                   ) -> dict[str, list[tuple]]:
    """Write every video (the still part of its container joined to its own ``count``
    frames) in ``containers[video_id]`` (default ``info.container``); return each video's
    annotation rows."""
    rows: dict[str, list[tuple]] = {}
    container_of = {video_id: (containers or {}).get(video_id, info.container)
                    for video_id in scenes}
    with tempfile.TemporaryDirectory(dir=info.root, prefix=".synth-") as scratch_dir:
        scratch = Path(scratch_dir)
        # Two workers: the still parts and the videos' own parts encode side by side.
        pool = ThreadPoolExecutor(max_workers=2)
        try:
            still_seed = int(rng.integers(2**31))
            stills = {c: pool.submit(_encode_still, scratch / f"still.{c}", first, still_seed,
                                     info, c)
                      for c in sorted(set(container_of.values()))} if first else {}
            parts = {
                video_id: pool.submit(_encode_part, scratch / f"{video_id}.{c}",
                                      scenes[video_id], count, first, info, c)
                for video_id, c in container_of.items()
            }
            for video_id, container in container_of.items():
                path = info.root / "videos" / f"{video_id}.{container}"
                if stills:
                    joined = scratch / f"joined.{container}"
                    _join(stills[container].result(), parts[video_id].result(), joined,
                          container)
                    shutil.move(joined, path)
                else:
                    shutil.move(parts[video_id].result(), path)
                info.videos[video_id] = path
                rows[video_id] = _keyframe_rows(path, scenes[video_id], first, count, info)
        finally:
            pool.shutdown(cancel_futures=True)
    return rows


def _write_annotations(info: CorpusInfo, rows: dict[str, list[tuple]],
                       rng: np.random.Generator) -> None:
    """Each split's CSV and excluded-timestamps CSV (one or two of its keyframes, chosen with
    ``rng``), and the label map."""
    excluded = {}
    for split, split_ids in info.ids.items():
        keyframes = sorted({(video_id, row[0]) for video_id in split_ids for row in rows[video_id]})
        chosen = rng.choice(len(keyframes), min(2, len(keyframes) // 2), replace=False)
        excluded[split] = {keyframes[i] for i in chosen}
    _write_rows(info, rows, excluded)


def _write_rows(info: CorpusInfo, rows: dict[str, list[tuple]],
                excluded: dict[str, set[Keyframe]]) -> None:
    """Each split's CSV (rows ``(second, normalized box, action, person)`` in video, second,
    person, action order) and ``excluded`` CSV, and the label map; records ``excluded`` in
    ``info``."""
    for split, split_ids in info.ids.items():
        info.excluded[split] = excluded[split]
        write_rows(info.annotation_csv(split), (
            (video_id, second, *box, action, person)
            for video_id in sorted(split_ids)
            for second, box, action, person in sorted(rows[video_id],
                                                      key=lambda r: (r[0], r[3], r[2]))))
        write_excluded(info.excluded_csv(split), info.excluded[split])
    shutil.copyfile(default_labelmap_path(), info.labelmap)


def prepare_folders(root: Path) -> None:
    """Make ``root/videos`` and ``root/annotations``, refusing non-empty ones."""
    for folder in (root / "videos", root / "annotations"):
        if folder.exists() and any(folder.iterdir()):
            raise ValueError(f"{folder} is not empty; make the corpus in a new folder")
        folder.mkdir(parents=True, exist_ok=True)


def _encode_still(path: Path, count: int, seed: int, info: CorpusInfo, container: str) -> Path:
    """The frames before the first keyframe: one still picture, stamped 0 .. count-1."""
    still = np.empty((info.size[1], info.size[0], 3), dtype=np.uint8)
    scrolling_texture(info.size, seed)(still, 0.0)
    encode_frames(path, count=count, first_index=0,
                  paint=lambda frame, _index: np.copyto(frame, still),
                  size=info.size, container=container, fps=info.fps, bitexact=True)
    return path


def _encode_part(path: Path, scene: Scene, count: int, first: int, info: CorpusInfo,
                 container: str) -> Path:
    """A video's own frames, stamped from ``first`` on."""
    encode_frames(path, count=count, first_index=first,
                  paint=lambda frame, index: scene.paint(frame, index - first), size=info.size,
                  container=container, fps=info.fps, bitexact=True)
    return path


@dataclass
class _ColourScene:
    """The colour world: figures on a drifting texture."""

    tracks: list[_Track]
    texture: Callable[[np.ndarray, float], None]
    times: np.ndarray
    size: tuple[int, int]

    def paint(self, frame: np.ndarray, k: int) -> None:
        self.texture(frame, self.times[k])
        for track in self.tracks:
            rgb, mask = track.sprite(k)
            x1, y1, x2, y2 = track.boxes[k]
            np.copyto(frame[y1:y2, x1:x2], rgb, where=mask[..., None])

    def rows(self, k: int) -> list[tuple[tuple[float, float, float, float], int, int]]:
        width, height = self.size
        return [(tuple(track.boxes[k] / (width, height, width, height)), action,
                 track.person_id) for track in self.tracks for action in track.actions(k)]


def _keyframe_rows(
    path: Path, scene: Scene, first: int, count: int, info: CorpusInfo
) -> list[tuple[int, tuple[float, float, float, float], int, int]]:
    """Annotation rows (second, normalized box, action, person) of the frames that ffmpeg
    shows at each keyframe second of the written video; records those frames in ``info``."""
    frame_times = read_frame_times(path)
    rows = []
    for second in range(info.start, info.start + info.seconds):
        index = bisect.bisect_left(frame_times, second)
        if not first <= index < first + count:
            raise VideoError(f"{path}: no frame of its own at second {second}")
        info.keyframe_frames[path.stem, second] = index
        rows += [(second, *row) for row in scene.rows(index - first)]
    return rows
