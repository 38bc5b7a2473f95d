"""Frame-exact keyframe extraction with ffmpeg, at the speed of one decode pass.

The keyframe at second ``t`` is the first frame whose presentation time, counted from the
video stream's first frame, is ``>= t``: what ``ffmpeg -ss t -i VIDEO -frames:v 1`` returns
(whose ``-ss`` counts from the container's start; the two agree unless another stream starts
before the video, and then this module still counts from the video's first frame).

How: the requested seconds are split into runs wherever two neighbours are more than
``SEEK_GAP`` seconds apart; each run is one ffmpeg process that seeks accurately to the run's
first second and decodes forward. A ``select`` filter passes on only the frames that answer a
requested second (a bisection over the run's seconds, evaluated per frame), ``scale`` applies
``max_side``, and ``showinfo`` reports each passed frame's timestamp and size on stderr, from
which Python reads the frame's pixels off stdout and decides, in exact rational arithmetic,
which seconds it answers. Nothing is accumulated: frames are yielded as they arrive.

Errors: a file ffmpeg cannot open as video raises ``KeyframeError``; a run stops at ffmpeg's
first decoding error (frames after it could be damaged), and seconds left without a frame
(past the end, truncated or corrupt file) raise ``MissingKeyframes`` once every frame that
exists has been yielded. Corruption that the decoder cannot notice (VP9 reports none for
damaged inter frames) goes unnoticed here too.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import ffmpeg
import numpy as np

from ava_keyframes.media import VideoError, ffmpeg_binary

Second = int | float
"""A requested second as the caller gave it (AVA's are integers; fractions are fine)."""

SEEK_GAP = 4
"""Seconds between two requested seconds above which a fresh seek beats decoding through the
gap. A seek costs a process start plus decoding from the key frame before it; on the 640x360
H.264 video of ``benchmarks/extract.py`` (key frame every 2 s) decoding through took 0.75x
the time of seeking at 4 s spacing, 1.1x at 6 s and 1.6x at 8 s. Heavier videos (slower
decoding) move the break-even lower, longer key frame intervals move it higher."""

MAX_RUN = 1000
"""Most seconds one ffmpeg process serves: bounds the length of its filter expression."""

_EPS = 1e-9
"""Slack for ffmpeg's double-precision time arithmetic (errors near 1e-13 s) in the select
filter, which only has to pass every answering frame; Python decides exactly which seconds a
frame answers. Exact unless a frame lies less than this below a requested second without
being on it, which needs a time base finer than a nanosecond."""

_MICROSECONDS = 1_000_000
_END_OF_DATA = ("ended prematurely", "partial file")
"""ffmpeg errors saying only that the file stops early: the frames before are intact."""
_ERROR = re.compile(r"\[(?:error|fatal|panic)\] (.*)$")
_LOG_LINE = re.compile(r"^(?P<context>(?:\[[^\]]*\] )*)\[(?P<level>[a-z]+)\] (?P<text>.*)$")
_FRAME = re.compile(r"^n:\s*\d+ pts:\s*(\S+) .* s:(\d+)x(\d+) ")
_TIME_BASE = re.compile(r"^config in time_base: (\d+)/(\d+),")
_DURATION = re.compile(r"^  Duration: ([^,]+)(?:, start: (-?\d+\.\d+))?,")
_VIDEO_STREAM = re.compile(r"^  Stream #0:\d+\S*: Video: ")
_STREAM_START = re.compile(r", start (-?\d+\.\d+)")


class KeyframeError(VideoError):
    """Keyframes cannot be extracted from a video; the message names the file."""


class MissingKeyframes(KeyframeError):
    """Some requested seconds have no frame (past the end, or a truncated file).

    Raised after every frame that exists has been yielded; ``missing`` lists the seconds
    (as given) that got none.
    """

    def __init__(self, message: str, missing: list[Second]) -> None:
        super().__init__(message)
        self.missing = missing


def extract_keyframes(
    path: str | os.PathLike, seconds: Iterable[Second], *, max_side: int | None = None
) -> Iterator[tuple[Second, np.ndarray]]:
    """Yield ``(second, H x W x 3 uint8 RGB frame)`` for each requested second, ascending.

    ``seconds`` may hold duplicates and come in any order; each distinct value is yielded
    once, as given (NumPy numbers as Python ones; 2 and 2.0 are one second, given first
    wins). ``max_side`` downscales (inside ffmpeg, never upscaling) so that the longer side
    is at most that many pixels. Raises ``KeyframeError`` for a missing file or one that is
    not a decodable video, and ``MissingKeyframes`` (after yielding the frames that exist)
    for seconds with no frame.
    """
    path = Path(path)
    wanted = _sorted_unique(seconds)
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be a positive number of pixels, got {max_side}")
    if not path.is_file():
        raise KeyframeError(f"{path}: no such file")
    offset = Fraction(0)  # video stream start - container start, read from ffmpeg's header
    missing: list[_Wanted] = []
    problems: list[str] = []
    duration = "unknown"
    for run in _runs(wanted):
        while True:
            with _RunDecoder(path, run, offset, max_side) as decoder:
                yield from decoder.frames()
            if decoder.offset == offset:
                break
            offset = decoder.offset  # nothing was yielded: run again, seeking correctly
        if decoder.duration is None:
            raise KeyframeError(f"{path}: not a decodable video ({decoder.problem})")
        duration = decoder.duration
        missing += decoder.unanswered
        if decoder.unanswered and decoder.problem:
            problems.append(decoder.problem)
    if missing:
        listed = ", ".join(str(w.given) for w in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        why = (f"truncated or corrupt file: {problems[0]}" if problems
               else f"past the end of the video, which lasts {duration}")
        raise MissingKeyframes(f"{path}: no frame for second(s) {listed}{more} ({why})",
                               [w.given for w in missing])


@dataclass(frozen=True)
class _Wanted:
    exact: Fraction
    given: Second


def _sorted_unique(seconds: Iterable[Second]) -> list[_Wanted]:
    unique: dict[Fraction, _Wanted] = {}
    for second in seconds:
        if isinstance(second, bool) or not isinstance(second, (int, float, np.integer,
                                                               np.floating)):
            raise ValueError(f"a second must be a number, got {second!r}")
        if not np.isfinite(second) or second < 0:
            raise ValueError(f"a second must be finite and >= 0, got {second!r}")
        given = second.item() if isinstance(second, np.generic) else second
        exact = Fraction(given) if isinstance(given, int) else Fraction(repr(given))
        unique.setdefault(exact, _Wanted(exact, given))
    return [unique[key] for key in sorted(unique)]


def _runs(wanted: list[_Wanted]) -> Iterator[list[_Wanted]]:
    """Consecutive seconds no more than ``SEEK_GAP`` apart, at most ``MAX_RUN`` per run."""
    run: list[_Wanted] = []
    for item in wanted:
        if run and (item.exact - run[-1].exact > SEEK_GAP or len(run) == MAX_RUN):
            yield run
            run = []
        run.append(item)
    if run:
        yield run


def _count_at_most(x: str, thresholds: list[float], lo: int, hi: int) -> str:
    """ffmpeg expression counting the thresholds <= x, knowing the count is in [lo, hi]."""
    if lo == hi:
        return str(lo)
    mid = (lo + hi) // 2
    return (f"if(lt({x},{thresholds[mid]!r}),{_count_at_most(x, thresholds, lo, mid)},"
            f"{_count_at_most(x, thresholds, mid + 1, hi)})")


def _select_expression(thresholds: list[float]) -> str:
    """Pass a frame iff some threshold lies in (previous frame's t, this frame's t], or if the
    previous frame was already past the last threshold.

    Register 1 gets this frame's count of thresholds <= t, register 0 keeps the previous
    frame's (registers persist from frame to frame; 0 before the first). The second case
    passes the frame after the last answer: ffmpeg holds each output frame until the next one
    comes, so without it the last answer would only come out at the end of the file.
    """
    count = _count_at_most(f"t+{_EPS}", thresholds, 0, len(thresholds))
    return f"gt(st(1,{count}),ld(0))+eq(ld(0),{len(thresholds)})+0*st(0,ld(1))"


class _RunDecoder:
    """One ffmpeg process serving one run of requested seconds.

    ``duration`` (as ffmpeg prints it) and ``offset`` (video start minus container start) come
    from ffmpeg's header; ``duration`` stays None if ffmpeg could not open a video stream.
    ``problem`` is ffmpeg's first error. Frames that follow an error may be damaged (lost
    packets leave later frames referring to the wrong pictures), so the run stops at the first
    error, unless it only says that the data ends there (a truncated file then yields every
    frame up to the cut); ``-xerror`` makes ffmpeg itself stop there too. ``unanswered``
    holds the run's seconds that got no frame.
    """

    def __init__(self, path: Path, run: list[_Wanted], offset: Fraction,
                 max_side: int | None) -> None:
        self.unanswered = list(run)
        self.offset = self._assumed_offset = offset
        self.duration: str | None = None
        self.problem = ""
        # -ss counts from the container's start, the run's seconds from the video's start.
        seek_us = int((run[0].exact + offset) * _MICROSECONDS)
        self._origin = Fraction(seek_us, _MICROSECONDS) - offset  # video time of output pts 0
        self._time_base = Fraction(1, _MICROSECONDS)
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        thresholds = [float(w.exact - self._origin) for w in run]
        stream = ffmpeg.input(str(path.resolve()), ss=_decimal(seek_us), nostdin=None,
                              hide_banner=None, nostats=None, loglevel="level+info",
                              xerror=None)
        video = stream.video.filter("select", _select_expression(thresholds))
        # An explicit scale keeps the RGB conversion after select; with `format` alone,
        # ffmpeg would convert every decoded frame before select drops it.
        if max_side is None:
            video = video.filter("scale")
        else:
            video = video.filter("scale", f"min(iw,{max_side})", f"min(ih,{max_side})",
                                 force_original_aspect_ratio="decrease")
        video = video.filter("format", "rgb24").filter("showinfo", checksum=0)
        cmd = ffmpeg.output(video, "pipe:", format="rawvideo", pix_fmt="rgb24",
                            fps_mode="passthrough", flush_packets=1).compile(cmd=ffmpeg_binary())
        self._process = subprocess.Popen(  # noqa: S603 (argument list, no shell)
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()

    def __enter__(self) -> _RunDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._process.stdout.close()
        self._reader.join()
        self._process.stderr.close()

    def _read_log(self) -> None:
        """Turn ffmpeg's log into events (in a thread, so that neither pipe fills up).

        ffmpeg's threads log concurrently, so a message from one can land inside a showinfo
        line of another: errors are therefore looked for anywhere in a line.
        """
        container_start = video_start = duration = None
        for raw in self._process.stderr:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if error := _ERROR.search(line):
                no_video = container_start is not None and video_start is None
                self._events.put(("error", "no video stream" if no_video else error[1]))
            match = _LOG_LINE.match(line)
            if not match or match["level"] != "info":
                continue
            context, text = match["context"], match["text"]
            if context.startswith("[Parsed_showinfo_"):
                if frame := _FRAME.match(text):
                    self._events.put(("frame", frame[1], int(frame[2]), int(frame[3])))
                elif time_base := _TIME_BASE.match(text):
                    self._events.put(("time_base", Fraction(int(time_base[1]),
                                                            int(time_base[2]))))
            elif context or video_start is not None:  # past the input header
                continue
            elif header := _DURATION.match(text):
                duration, container_start = header[1], Fraction(header[2] or 0)
            elif container_start is not None and _VIDEO_STREAM.match(text):
                start = _STREAM_START.search(text)
                video_start = Fraction(start[1]) if start else Fraction(0)
                # never negative: the container starts with its earliest stream
                offset = max(video_start - container_start, Fraction(0))
                self._events.put(("header", duration, offset))
        self._events.put(("end",))

    def frames(self) -> Iterator[tuple[Second, np.ndarray]]:
        """Yield the run's answered seconds with their frames, in order.

        Returns without yielding if the header shows that the video starts later than the
        container (``offset`` then holds the difference and the run must be redone).
        """
        while (event := self._events.get())[0] != "end":
            kind, *values = event
            if kind == "header":
                self.duration, self.offset = values
                if self.offset != self._assumed_offset:
                    return
            elif kind == "time_base":
                self._time_base = values[0]
            elif kind == "error":
                self.problem = self.problem or values[0]
                if not any(phrase in values[0] for phrase in _END_OF_DATA):
                    return
            elif kind == "frame":
                pts, width, height = values
                image = self._read_image(width, height)
                if image is None or not pts.lstrip("-").isdigit():
                    self.problem = self.problem or f"unreadable frame from ffmpeg (pts {pts})"
                    return
                time = int(pts) * self._time_base + self._origin
                answers = 0
                while self.unanswered and self.unanswered[0].exact <= time:
                    # a frame answering several seconds: each gets its own array
                    yield self.unanswered.pop(0).given, image.copy() if answers else image
                    answers += 1
                if not self.unanswered:
                    return

    def _read_image(self, width: int, height: int) -> np.ndarray | None:
        image = np.empty((height, width, 3), dtype=np.uint8)
        view = memoryview(image).cast("B")
        filled = 0
        while filled < len(view):
            count = self._process.stdout.readinto(view[filled:])
            if not count:
                return None
            filled += count
        return image


def _decimal(microseconds: int) -> str:
    """Microseconds (>= 0) as the decimal seconds that ffmpeg parses exactly."""
    return f"{microseconds // _MICROSECONDS}.{microseconds % _MICROSECONDS:06d}"
