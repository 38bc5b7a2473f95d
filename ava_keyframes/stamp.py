"""Frame stamps: every frame of a synthetic video carries its own index; stamped videos.

Frame stamp: a band along the top edge (``STAMP_BAND`` of the height) split into
``_CELLS`` equal black/white cells across the full width:
``1 0 | 18 index bits, most significant first | 2 check bits (popcount mod 4) | 0 1``.
Cells are fractions of the image, so the stamp survives lossy coding and resizing; a cell
that is neither clearly black nor clearly white, a wrong marker or a wrong check raises
ValueError, so a wrong decode is reported rather than returned.

``write_stamped_video`` encodes such frames through ffmpeg (constant or variable frame rate,
mp4/mkv/webm, any start timestamp) and ``read_frame_times`` reads back the presentation
times that ffmpeg sees, so a test knows exactly which frame each second shows.
"""

from __future__ import annotations

import math
import os
import subprocess
import tempfile
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ava_keyframes.media import VideoError, ffmpeg_binary, video_stream

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
                "-cpu-used", "8", "-row-mt", "1", "-threads", "1", "-g", gop, "-pix_fmt", "yuv420p"]
    return ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-g", gop, "-threads", "1",
            "-pix_fmt", "yuv420p"]


def check_format(size: tuple[int, int], container: str) -> None:
    if container not in CONTAINERS:
        raise ValueError(f"container must be one of {', '.join(CONTAINERS)}, got {container!r}")
    width, height = size
    if width % 2 or height % 2 or width < 2 * _CELLS or height < 24:
        raise ValueError(f"size must be even and at least {2 * _CELLS}x24, got {width}x{height}")


def encode_frames(
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
    bitexact: bool = False,
) -> None:
    """Pipe ``count`` raw RGB frames into ffmpeg; frame k is painted as, and stamped with,
    index ``first_index + k``. CFR at ``fps``, or the ``_VFR_GAPS`` pattern when ``vfr``.
    ``bitexact``: no random ids (Matroska's segment UID) or version strings in the file."""
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
    if bitexact:
        cmd += ["-fflags", "+bitexact"]
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
    check_format(size, container)
    rate = exact_fps(fps)
    times = _nominal_times(duration, rate, vfr)
    if not times:
        raise ValueError(f"duration {duration} holds no frame")
    if draw is None:
        texture = scrolling_texture(size, seed=0)

        def draw(frame: np.ndarray, _index: int, time: float) -> None:
            texture(frame, time)

    path = Path(path)
    encode_frames(path, count=len(times), first_index=0,
            paint=lambda frame, index: draw(frame, index, float(times[index])),
            size=size, container=container, fps=rate, vfr=vfr, start_time=start_time)
    return read_frame_times(path)


def read_frame_times(path: str | os.PathLike) -> list[float]:
    """Presentation times of the video stream's frames, from the first one, in seconds.

    Read from the container's packets without decoding (through PyAV, as the engine reads
    them): sorted packet timestamps are the frames' presentation order (tests check them
    against decoded frames).
    """
    try:
        with av.open(str(Path(path).resolve())) as container:
            stream = video_stream(container)
            if stream is None:
                raise VideoError(f"{path}: no video stream")
            pts = sorted(packet.pts for packet in container.demux(stream)
                         if packet.pts is not None)
            time_base = Fraction(stream.time_base)
    except av.FFmpegError as error:
        raise VideoError(f"{path}: cannot read frame times ({error})") from None
    if not pts:
        raise VideoError(f"{path}: no video frames")
    return [float((p - pts[0]) * time_base) for p in pts]
