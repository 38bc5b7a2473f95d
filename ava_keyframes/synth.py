"""Synthetic AVA: videos whose every frame carries its own index, and AVA-format annotations.

Frame stamp: a band along the top edge (``STAMP_BAND`` of the height) split into
``_CELLS`` equal black/white cells across the full width:
``1 0 | 18 index bits, most significant first | 2 check bits (popcount mod 4) | 0 1``.
Cells are fractions of the image, so the stamp survives lossy coding and resizing; a cell
that is neither clearly black nor clearly white, a wrong marker or a wrong check raises
ValueError, so a wrong decode is reported rather than returned.

Corpus (``make_corpus``): videos of ``start + seconds`` seconds at a constant frame rate
whose timeline puts second t at t. Frames before ``start`` show a still background (only
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
import http.server
import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from ava_keyframes.annotations import Keyframe, check_video_id
from ava_keyframes.labelmap import default_labelmap_path
from ava_keyframes.media import VideoError, ffmpeg_binary

STAMP_BAND = 0.1
"""Fraction of the frame height, at the top, that holds the stamp (nothing else is drawn there)."""

_INDEX_BITS = 18
_CHECK_BITS = 2
_START = (1, 0)
_STOP = (0, 1)
_CELLS = len(_START) + _INDEX_BITS + _CHECK_BITS + len(_STOP)
MAX_FRAME_INDEX = 2**_INDEX_BITS - 1
_BLACK_BELOW = 85
_WHITE_ABOVE = 170

CONTAINERS = {"mp4": "mp4", "mkv": "matroska", "webm": "webm"}
GOP_SECONDS = 2
"""Keyframe interval of written videos: long enough that an exact seek must decode forward."""

# Variable frame rate: gaps between frames cycle through this pattern, in half frame periods.
_VFR_GAPS = (2, 1, 3, 2, 4, 1, 2, 3)

SIT, STAND, WALK, CARRY, TALK = 11, 12, 14, 17, 79
POSES = (SIT, STAND, WALK)
"""Pose actions: every synthetic person has exactly one of these at any time."""
EXTRAS = (CARRY, TALK)
"""Optional second (and third) actions."""

LABELMAP_NAME = "ava_action_list_v2.2.pbtxt"

Draw = Callable[[np.ndarray, int, float], None]
"""``draw(frame, index, time)`` paints frame ``index`` (H x W x 3 uint8, in place) shown at
``time`` seconds after the first frame; the stamp band is painted over afterwards."""


def exact_fps(fps: float | Fraction) -> Fraction:
    """The frame rate as an exact fraction: NTSC rates (29.97, 23.976, 59.94) are N*1000/1001."""
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"frame rate must be a positive number, got {fps}")
    if isinstance(fps, Fraction):
        return fps
    ntsc = round(fps * 1.001)
    if abs(fps - ntsc / 1.001) < 0.005 and abs(fps - round(fps)) > 0.005:
        return Fraction(ntsc * 1000, 1001)
    return Fraction(fps).limit_denominator(1001)


# --- frame stamps ---


def stamp_cells(index: int) -> np.ndarray:
    """The cell values (0 black, 1 white) that encode frame ``index``."""
    if not 0 <= index <= MAX_FRAME_INDEX:
        raise ValueError(f"frame index {index} outside 0..{MAX_FRAME_INDEX}")
    bits = [(index >> shift) & 1 for shift in range(_INDEX_BITS - 1, -1, -1)]
    check = sum(bits) % (1 << _CHECK_BITS)
    check_bits = [(check >> shift) & 1 for shift in range(_CHECK_BITS - 1, -1, -1)]
    return np.array([*_START, *bits, *check_bits, *_STOP], dtype=np.uint8)


def stamp_band_height(height: int) -> int:
    """Rows at the top of a ``height``-row frame that the stamp covers."""
    return max(2, round(height * STAMP_BAND))


def draw_stamp(frame: np.ndarray, index: int) -> None:
    """Paint the stamp of ``index`` into the top band of ``frame`` (in place)."""
    height, width = frame.shape[:2]
    cells = stamp_cells(index) * np.uint8(255)
    columns = (np.arange(width) * _CELLS) // width
    frame[: stamp_band_height(height)] = cells[columns][None, :, None]


def read_frame_stamp(image: np.ndarray) -> int:
    """Decode the frame index stamped on ``image`` (H x W x 3 uint8, any size)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 image, got shape {image.shape}")
    height, width = image.shape[:2]
    band = height * STAMP_BAND
    if width < _CELLS or band < 2:
        raise ValueError(f"image {width}x{height} too small to hold a frame stamp")
    rows = slice(int(band * 0.25), max(int(band * 0.25) + 1, int(band * 0.75)))
    gray = image[rows].astype(np.float32).mean(axis=(0, 2))
    cell = width / _CELLS
    values = np.empty(_CELLS, dtype=np.float32)
    for i in range(_CELLS):
        lo = int(cell * (i + 1 / 3))
        hi = max(lo + 1, int(np.ceil(cell * (i + 2 / 3))))
        values[i] = gray[lo:hi].mean()
    unclear = np.flatnonzero((values >= _BLACK_BELOW) & (values <= _WHITE_ABOVE))
    if unclear.size:
        raise ValueError(f"no frame stamp: cell {int(unclear[0])} is neither black nor white")
    bits = (values > _WHITE_ABOVE).astype(int)
    if tuple(bits[: len(_START)]) != _START or tuple(bits[-len(_STOP) :]) != _STOP:
        raise ValueError("no frame stamp: start/stop markers not found")
    index = int("".join(map(str, bits[len(_START) : len(_START) + _INDEX_BITS])), 2)
    if not np.array_equal(stamp_cells(index), bits):
        raise ValueError("frame stamp fails its check bits")
    return index


# --- encoding ---


def scrolling_texture(size: tuple[int, int], seed: int) -> Callable[[np.ndarray, float], None]:
    """A painter that fills a frame with a greyish blocky texture drifting sideways over time.

    Low saturation, so the saturated figures stand out from it.
    """
    width, height = size
    rng = np.random.default_rng(seed)
    period = 2 * width
    coarse, fine = (_blocky_noise(rng, height, period, block, 1) for block in (16, 4))
    tint = (_blocky_noise(rng, height, period, 32, 3) - 125) // 6
    base = np.clip((3 * coarse + fine) // 4 + tint, 0, 255).astype(np.uint8)
    extended = np.concatenate([base, base[:, :width]], axis=1)
    speed = width / 8  # pixels per second

    def paint(frame: np.ndarray, time: float) -> None:
        offset = int(time * speed) % period
        frame[:] = extended[:, offset : offset + width]

    return paint


def _blocky_noise(
    rng: np.random.Generator, height: int, width: int, block: int, channels: int
) -> np.ndarray:
    cells = rng.integers(60, 190, (height // block + 1, width // block + 1, channels))
    return np.repeat(np.repeat(cells, block, 0), block, 1)[:height, :width]


def _encoder_args(container: str, fps: Fraction) -> list[str]:
    gop = str(max(1, round(GOP_SECONDS * fps)))
    if container == "webm":
        return ["-c:v", "libvpx-vp9", "-crf", "32", "-b:v", "0", "-deadline", "realtime",
                "-cpu-used", "8", "-row-mt", "1", "-g", gop, "-pix_fmt", "yuv420p"]
    return ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-g", gop,
            "-pix_fmt", "yuv420p"]


def _check_format(size: tuple[int, int], container: str) -> None:
    if container not in CONTAINERS:
        raise ValueError(f"container must be one of {', '.join(CONTAINERS)}, got {container!r}")
    width, height = size
    if width % 2 or height % 2 or width < 2 * _CELLS or height < 24:
        raise ValueError(f"size must be even and at least {2 * _CELLS}x24, got {width}x{height}")


def _encode(
    path: Path,
    *,
    count: int,
    first_index: int,
    paint: Callable[[np.ndarray, int], None],
    size: tuple[int, int],
    container: str,
    fps: Fraction,
    vfr: bool = False,
    start_time: float = 0.0,
) -> None:
    """Pipe ``count`` raw RGB frames into ffmpeg; frame k is painted as, and stamped with,
    index ``first_index + k``. CFR at ``fps``, or the ``_VFR_GAPS`` pattern when ``vfr``."""
    if first_index + count - 1 > MAX_FRAME_INDEX:
        raise ValueError(f"{first_index + count} frames exceed the stamp's {MAX_FRAME_INDEX + 1}")
    width, height = size
    input_rate = 2 * fps if vfr else fps
    cmd = [ffmpeg_binary(), "-hide_banner", "-nostdin", "-nostats", "-v", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
           "-framerate", f"{input_rate.numerator}/{input_rate.denominator}", "-i", "pipe:0"]
    if vfr:
        cmd += ["-vf", _vfr_setpts(), "-fps_mode", "vfr"]
    cmd += _encoder_args(container, fps)
    if start_time:
        cmd += ["-output_ts_offset", f"{start_time:.6f}"]
    cmd += ["-f", CONTAINERS[container], str(path.resolve())]
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=errors)  # noqa: S603
        try:
            for index in range(first_index, first_index + count):
                paint(frame, index)
                draw_stamp(frame, index)
                process.stdin.write(frame.data)
            process.stdin.close()
        except BrokenPipeError:
            pass  # ffmpeg stopped early; its exit status and message tell why
        finally:
            returncode = process.wait()
        if returncode != 0:
            errors.seek(0)
            message = errors.read().decode(errors="replace").strip().splitlines() or ["failed"]
            raise VideoError(f"{path}: ffmpeg could not encode ({message[-1]})")


def _vfr_setpts() -> str:
    """setpts expression placing frame N at its ``_VFR_GAPS`` time, in half frame periods."""
    cumulative = np.concatenate([[0], np.cumsum(_VFR_GAPS)[:-1]])
    period = len(_VFR_GAPS)
    terms = "+".join(f"{int(c)}*eq(mod(N,{period}),{j})" for j, c in enumerate(cumulative) if c)
    return f"setpts='floor(N/{period})*{sum(_VFR_GAPS)}+{terms}'"


def _nominal_times(duration: float, fps: Fraction, vfr: bool) -> list[Fraction]:
    """Presentation times (from the first frame) of the frames to write."""
    end = Fraction(duration).limit_denominator(10**6)
    if not vfr:
        return [i / fps for i in range(math.ceil(end * fps))]
    tick = 1 / (2 * fps)
    times, t = [], Fraction(0)
    while t < end:
        times.append(t)
        t += _VFR_GAPS[(len(times) - 1) % len(_VFR_GAPS)] * tick
    return times


def write_stamped_video(
    path: str | os.PathLike,
    *,
    duration: float,
    fps: float | Fraction = 30,
    size: tuple[int, int] = (320, 240),
    container: str = "mp4",
    vfr: bool = False,
    start_time: float = 0.0,
    draw: Draw | None = None,
) -> list[float]:
    """Write a video whose frame i carries the stamp i; return each frame's presentation time.

    Times are relative to the first frame and read back from the written file, so they are
    what ffmpeg sees (Matroska/WebM round them to milliseconds). ``vfr`` spaces frames
    irregularly (gaps of 0.5 to 2 frame periods); ``start_time`` shifts the first timestamp.
    Without ``draw`` the frames show a drifting texture.
    """
    _check_format(size, container)
    rate = exact_fps(fps)
    times = _nominal_times(duration, rate, vfr)
    if not times:
        raise ValueError(f"duration {duration} holds no frame")
    if draw is None:
        texture = scrolling_texture(size, seed=0)

        def draw(frame: np.ndarray, _index: int, time: float) -> None:
            texture(frame, time)

    path = Path(path)
    _encode(path, count=len(times), first_index=0,
            paint=lambda frame, index: draw(frame, index, float(times[index])),
            size=size, container=container, fps=rate, vfr=vfr, start_time=start_time)
    return read_frame_times(path)


def read_frame_times(path: str | os.PathLike) -> list[float]:
    """Presentation times of the video stream's frames, from the first one, in seconds.

    Read from the container's packets without decoding: sorted packet timestamps are the
    frames' presentation order (tests check them against decoded frames).
    """
    cmd = [ffmpeg_binary(), "-hide_banner", "-nostdin", "-v", "error", "-copyts",
           "-i", str(Path(path).resolve()), "-map", "0:v:0", "-c", "copy", "-f", "framemd5", "-"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)  # noqa: S603
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["ffmpeg failed"])[-1]
        raise VideoError(f"{path}: cannot read frame times ({reason})")
    time_base = None
    pts = []
    for line in result.stdout.splitlines():
        if line.startswith("#tb 0:"):
            num, den = line.split(":", 1)[1].strip().split("/")
            time_base = Fraction(int(num), int(den))
        elif line and not line.startswith("#"):
            pts.append(int(line.split(",")[2]))
    if time_base is None or not pts:
        raise VideoError(f"{path}: no video frames")
    pts.sort()
    return [float((p - pts[0]) * time_base) for p in pts]


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
        return self.annotations_dir / LABELMAP_NAME

    def annotation_csv(self, split: str) -> Path:
        return self.annotations_dir / f"ava_{split}_v2.2.csv"

    def excluded_csv(self, split: str) -> Path:
        return self.annotations_dir / f"ava_{split}_excluded_timestamps_v2.2.csv"


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
           "-f", CONTAINERS[container], str(out.resolve())]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)  # noqa: S603
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["ffmpeg failed"])[-1]
        raise VideoError(f"{out}: could not join {first.name} and {second.name} ({reason})")


def _row(video_id: str, second: int, box: np.ndarray, action: int, person_id: int,
         size: tuple[int, int]) -> str:
    width, height = size
    x1, y1, x2, y2 = box / (width, height, width, height)
    return f"{video_id},{second:04d},{x1:.3f},{y1:.3f},{x2:.3f},{y2:.3f},{action},{person_id}\n"


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
    _check_format(size, container)
    rate = exact_fps(fps)
    first = math.ceil(start * rate)  # frames before `start`
    end = math.ceil((start + seconds) * rate)
    if end - 1 > MAX_FRAME_INDEX:
        raise ValueError(f"{start + seconds} s at {float(rate):g} fps is more than the "
                         f"{MAX_FRAME_INDEX + 1} frames a stamp can number")
    root = Path(out)
    for folder in (root / "videos", root / "annotations"):
        if folder.exists() and any(folder.iterdir()):
            raise ValueError(f"{folder} is not empty; make the corpus in a new folder")
        folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = _video_ids(rng, videos)
    val_count = min(videos - 1, max(1, round(0.3 * videos)))
    info = CorpusInfo(root, {"train": ids[: videos - val_count], "val": ids[videos - val_count :]},
                      {}, rate, size, container, start, seconds)
    times = np.arange(first, end) / float(rate)
    tracks = {video_id: _tracks(rng, times, start, start + seconds, size) for video_id in ids}
    rows: dict[str, list[tuple]] = {}
    with tempfile.TemporaryDirectory(dir=root, prefix=".synth-") as scratch_dir:
        scratch = Path(scratch_dir)
        # Two workers: the still part and the videos' own parts encode side by side.
        pool = ThreadPoolExecutor(max_workers=2)
        try:
            still_seed = int(rng.integers(2**31))
            still = pool.submit(_encode_still, scratch / f"still.{container}", first, still_seed,
                                info) if first else None
            parts = {
                video_id: pool.submit(_encode_part, scratch / f"{video_id}.{container}",
                                      tracks[video_id], int(rng.integers(2**31)), times, first,
                                      info)
                for video_id in ids
            }
            for video_id in ids:
                path = root / "videos" / f"{video_id}.{container}"
                if still:
                    joined = scratch / f"joined.{container}"
                    _join(still.result(), parts[video_id].result(), joined, container)
                    shutil.move(joined, path)
                else:
                    shutil.move(parts[video_id].result(), path)
                info.videos[video_id] = path
                rows[video_id] = _keyframe_rows(path, tracks[video_id], first, len(times), info)
        finally:
            pool.shutdown(cancel_futures=True)
    for split, split_ids in info.ids.items():
        keyframes = sorted({(video_id, row[0]) for video_id in split_ids for row in rows[video_id]})
        chosen = rng.choice(len(keyframes), min(2, len(keyframes) // 2), replace=False)
        info.excluded[split] = {keyframes[i] for i in chosen}
        with open(info.annotation_csv(split), "w", encoding="utf-8", newline="") as handle:
            for video_id in sorted(split_ids):
                handle.writelines(_row(video_id, *row, size) for row in sorted(rows[video_id],
                                  key=lambda r: (r[0], r[3], r[2])))
        with open(info.excluded_csv(split), "w", encoding="utf-8", newline="") as handle:
            handle.writelines(f"{v},{s:04d}\n" for v, s in sorted(info.excluded[split]))
    shutil.copyfile(default_labelmap_path(), info.labelmap)
    return info


def _encode_still(path: Path, count: int, seed: int, info: CorpusInfo) -> Path:
    """The frames before the first keyframe: one still picture, stamped 0 .. count-1."""
    still = np.empty((info.size[1], info.size[0], 3), dtype=np.uint8)
    scrolling_texture(info.size, seed)(still, 0.0)
    _encode(path, count=count, first_index=0, paint=lambda frame, _index: np.copyto(frame, still),
            size=info.size, container=info.container, fps=info.fps)
    return path


def _encode_part(
    path: Path, tracks: list[_Track], seed: int, times: np.ndarray, first: int, info: CorpusInfo
) -> Path:
    """A video's own frames (people on a drifting background), stamped from ``first`` on."""
    texture = scrolling_texture(info.size, seed)

    def paint(frame: np.ndarray, index: int) -> None:
        k = index - first
        texture(frame, times[k])
        for track in tracks:
            rgb, mask = track.sprite(k)
            x1, y1, x2, y2 = track.boxes[k]
            np.copyto(frame[y1:y2, x1:x2], rgb, where=mask[..., None])

    _encode(path, count=len(times), first_index=first, paint=paint, size=info.size,
            container=info.container, fps=info.fps)
    return path


def _keyframe_rows(
    path: Path, tracks: list[_Track], first: int, count: int, info: CorpusInfo
) -> list[tuple[int, np.ndarray, int, int]]:
    """Annotation rows (second, pixel box, action, person) of the frames that ffmpeg shows at
    each keyframe second of the written video; records those frames in ``info``."""
    frame_times = read_frame_times(path)
    rows = []
    for second in range(info.start, info.start + info.seconds):
        index = bisect.bisect_left(frame_times, second)
        if not first <= index < first + count:
            raise VideoError(f"{path}: no frame of its own at second {second}")
        info.keyframe_frames[path.stem, second] = index
        rows += [(second, track.boxes[index - first], action, track.person_id)
                 for track in tracks for action in track.actions(index - first)]
    return rows


# --- a loopback mirror, so tests and the demo exercise the real download path ---


class LoopbackMirror:
    """Serves ``folder`` over HTTP on 127.0.0.1 the way the CVDF mirror serves videos
    (``<url><file name>``; whole files only, as ``http.server`` ignores Range); records
    request paths. A context manager: the server thread stops on exit."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.requests: list[str] = []
        self.delay = 0.0  # seconds to wait before each answer (to slow a build down)
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                mirror.requests.append(self.path)
                time.sleep(mirror.delay)
                super().do_GET()

            def log_message(self, *args) -> None:
                pass

        handler = functools.partial(Handler, directory=str(folder))
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LoopbackMirror:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
