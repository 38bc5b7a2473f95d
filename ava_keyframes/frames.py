"""Frame-exact keyframes from one decoding pass, in process through FFmpeg's libraries (PyAV).

The keyframe at second ``t`` is the first frame whose presentation time, counted from the
video stream's first frame, is ``>= t``: what ``ffmpeg -ss t -i VIDEO -frames:v 1`` returns
when no other stream starts before the video. Times are exact: ``frame.pts * time_base`` as a
``Fraction``, never text. The "first frame" is the first frame the decoder outputs from the
start of the file, so edit lists, streams starting after the container (or after the audio),
negative or offset start times and open GOPs all count from the frame a player shows first.

How: the requested times are split into runs wherever two neighbours are more than
``SEEK_GAP`` seconds apart; for each run the file is seeked to the key frame at or before the
run's first time (checked on the key packet's own timestamp, and sought further back if the
index put it later) and decoded forward with frame threads. A frame answers every pending
time at or below its own; frames are handed on as they come, so memory stays flat.

Errors: a file that does not open as video raises ``KeyframeError``. An error raised by the
demuxer or the decoder, or a frame the decoder marks as corrupt, stops the run there (frames
after it could be damaged): the frames before are kept, and times left without a frame (past
the end, truncated or corrupt file) raise ``MissingKeyframes`` once every frame that exists has
been yielded. Corruption that the decoder cannot notice (VP9 reports none for damaged inter
frames) goes unnoticed here too.
"""

from __future__ import annotations

import bisect
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from ava_keyframes import media
from ava_keyframes.media import Video, VideoError

Second = int | float
"""A requested second as the caller gave it (AVA's are integers; fractions are fine)."""

SEEK_GAP = 4
"""Seconds between two requested times above which a fresh seek beats decoding through the
gap. A seek costs decoding from the key frame before it; on the 640x360 H.264 video of
``benchmarks/extract.py`` (key frame every 2 s) the break-even lay between 4 and 6 s.
Heavier videos (slower decoding) move it lower, longer key frame intervals higher."""

SKIP_UNWANTED = True
"""Leave undecoded the non-reference frames (about half of an x264 video's) that answer no
requested time: the same answers for less decoding. False decodes every frame."""

_INTERPOLATION = "BICUBIC"
"""swscale's scaler for ``max_side``: the ffmpeg command line's default, so that a frame
matches what ``ffmpeg -ss t -i V -vf scale=...`` gives (bit for bit without scaling)."""


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
    path: str | os.PathLike, seconds: Iterable[Second], *, max_side: int | None = None,
    origin: Fraction | None = None,
) -> Iterator[tuple[Second, np.ndarray]]:
    """Yield ``(second, H x W x 3 uint8 RGB frame)`` for each requested second, ascending.

    ``seconds`` may hold duplicates and come in any order; each distinct value is yielded
    once, as given (NumPy numbers as Python ones; 2 and 2.0 are one second, given first
    wins). ``max_side`` downscales (never upscaling) so that the longer side is at most that
    many pixels. ``origin`` is the presentation time, in this file's timeline, of the
    original video's first frame (a window cut from a longer video passes the original's);
    None counts from this file's own first frame. Raises ``KeyframeError`` for a missing
    file or one that is not a decodable video, and ``MissingKeyframes`` (after yielding the
    frames that exist) for seconds with no frame in this file.
    """
    wanted = sorted_unique(seconds)
    check_max_side(max_side)
    with open_video(path) as video:
        start = video.start if origin is None else Fraction(origin)
        answers = Answers(video, [start + w.exact for w in wanted],
                          origin=None if origin is None else start)
        previous = image = None
        for index, frame in answers:
            # a frame answering several seconds: each gets its own array
            image = image.copy() if frame is previous else to_rgb(frame, max_side)
            previous = frame
            yield wanted[index].given, image
        if answers.unanswered:
            missing = [wanted[i].given for i in sorted(answers.unanswered)]
            raise MissingKeyframes(f"{video.path}: no frame for second(s) "
                                   f"{_listed(missing)} ({answers.why_missing()})", missing)


def check_max_side(max_side: int | None) -> None:
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be a positive number of pixels, got {max_side}")


@dataclass(frozen=True)
class Wanted:
    exact: Fraction
    given: Second


def sorted_unique(seconds: Iterable[Second]) -> list[Wanted]:
    """Distinct seconds, ascending, each as an exact Fraction and as first given."""
    unique: dict[Fraction, Wanted] = {}
    for second in seconds:
        if isinstance(second, bool) or not isinstance(second, (int, float, np.integer,
                                                               np.floating)):
            raise ValueError(f"a second must be a number, got {second!r}")
        if not np.isfinite(second) or second < 0:
            raise ValueError(f"a second must be finite and >= 0, got {second!r}")
        given = second.item() if isinstance(second, np.generic) else second
        exact = Fraction(given) if isinstance(given, int) else Fraction(repr(given))
        unique.setdefault(exact, Wanted(exact, given))
    return [unique[key] for key in sorted(unique)]


def _listed(values: list) -> str:
    more = f" and {len(values) - 10} more" if len(values) > 10 else ""
    return ", ".join(str(v) for v in values[:10]) + more


def fitted_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """``(width, height)`` shrunk to fit ``max_side`` with the aspect ratio kept, rounded as
    ffmpeg's ``scale=min(iw,M):min(ih,M):force_original_aspect_ratio=decrease`` rounds."""
    if max_side is None:
        return width, height
    box_w, box_h = min(width, max_side), min(height, max_side)
    return (max(1, min(box_w, _round_half_up(Fraction(box_h * width, height)))),
            max(1, min(box_h, _round_half_up(Fraction(box_w * height, width)))))


def _round_half_up(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))


def to_rgb(frame: av.VideoFrame, max_side: int | None = None,
           size: tuple[int, int] | None = None) -> np.ndarray:
    """The frame as an H x W x 3 uint8 RGB array, at ``size`` or fitted to ``max_side``."""
    width, height = size or fitted_size(frame.width, frame.height, max_side)
    return frame.to_ndarray(format="rgb24", width=width, height=height,
                            interpolation=_INTERPOLATION)


def open_video(path: str | os.PathLike) -> Video:
    """:func:`ava_keyframes.media.open_video`, raising KeyframeError."""
    try:
        return media.open_video(path)
    except VideoError as error:
        raise KeyframeError(str(error)) from None


def _wanted(times: list[Fraction]) -> Callable[[Fraction, Fraction], bool]:
    """Whether some of ``times`` (ascending) lies in ``(lo, hi]``."""
    def wanted(lo: Fraction, hi: Fraction) -> bool:
        index = bisect.bisect_right(times, lo)
        return index < len(times) and times[index] <= hi
    return wanted


class Answers:
    """Iterate ``(index, frame)``: for each of ``times`` (ascending, in the file's timeline)
    the first frame at or after it, in order of index, from one decode per run of close
    times. ``origin``: where the video starts in the file's timeline if the file may hold
    only a part of it (a window): times outside the part it holds surely go unanswered
    rather than answered by a later frame. None: the file is the whole video.

    Afterwards ``unanswered`` lists the indices that got no frame, and ``last_frame`` holds
    the file's last frame if a run decoded to the end of the file without error.
    """

    def __init__(self, video: Video, times: list[Fraction], *,
                 origin: Fraction | None) -> None:
        self.video = video
        self.times = times
        self.unanswered: list[int] = []
        self.last_frame: av.VideoFrame | None = None
        self.last_time: Fraction | None = None
        self.problems: list[str] = []
        self.origin = video.start if origin is None else origin
        part = origin is not None  # the file may hold only part of the video
        self._earliest = video.start if part and video.start > origin else None
        self._latest = video.complete_until() if part else None

    def __iter__(self) -> Iterator[tuple[int, av.VideoFrame]]:
        for run in self._runs():
            yield from self._run(run)

    def _runs(self) -> Iterator[deque[int]]:
        """Indices whose times are no more than ``SEEK_GAP`` apart; times before the first
        frame of a file that does not start the video go to ``unanswered``."""
        run: deque[int] = deque()
        for index, time in enumerate(self.times):
            if (self._earliest is not None and time < self._earliest
                    or self._latest is not None and time > self._latest):
                self.unanswered.append(index)
                continue
            if run and time - self.times[run[-1]] > SEEK_GAP:
                yield run
                run = deque()
            run.append(index)
        if run:
            yield run

    def _run(self, run: deque[int]) -> Iterator[tuple[int, av.VideoFrame]]:
        frame = time = None
        wanted = _wanted([self.times[i] for i in run]) if SKIP_UNWANTED else None
        for time, frame in self.video.frames_from(self.times[run[0]], wanted):
            while run and self.times[run[0]] <= time:
                yield run.popleft(), frame
            if not run:
                return
        if self.video.problem:
            self.problems.append(self.video.problem)
        elif frame is not None:
            self.last_frame, self.last_time = frame, time
        self.unanswered += run

    def why_missing(self) -> str:
        """Why ``unanswered`` got no frame, for a message (times counted from ``origin``)."""
        if self.problems:
            return f"truncated or corrupt file: {self.problems[0]}"
        origin, first = self.origin, self.times[min(self.unanswered)]
        if (self._earliest is not None and first < self._earliest
                or self._latest is not None and self.times[max(self.unanswered)] > self._latest):
            held_from = self.video.start if self._earliest is None else self._earliest
            return (f"this file holds the video from {float(held_from - origin):.3f} s to "
                    f"{float(self._latest - origin):.3f} s")
        end, declared = self.last_time, self.video.declared_end
        if end is not None and declared is not None and end + 1 < declared:
            return (f"truncated file: frames end at {float(end - origin):.3f} s, "
                    f"its header says {float(declared - origin):.3f} s")
        lasts = "unknown" if end is None else f"{float(end - origin):.3f} s"
        return f"past the end of the video, whose last frame is at {lasts}"
