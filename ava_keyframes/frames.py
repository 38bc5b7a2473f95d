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
index put it later) and decoded forward with frame threads, leaving undecoded the
non-reference frames that answer no time (``SKIP_UNWANTED``). A frame answers every pending
time at or below its own; frames are handed on as they come, so memory stays flat.
``extract_clips`` puts the same rule to the frames of a clip around each keyframe, in the
same pass.

Errors: a file that does not open as video raises ``KeyframeError``. An error raised by the
demuxer or the decoder, or a frame the decoder marks as corrupt, stops the run there (frames
after it could be damaged): the frames before are kept, and times left without a frame (past
the end, truncated or corrupt file) raise ``MissingKeyframes`` once every frame that exists has
been yielded. Corruption that the decoder cannot notice (VP9 reports none for damaged inter
frames) goes unnoticed here too.
"""

from __future__ import annotations

import bisect
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from ava_keyframes import media
from ava_keyframes.media import Video, VideoError
from ava_keyframes.pixels import (
    CLIP_SCALER,
    UNTAGGED,
    planes_colour,
    short_side_size,
    to_planes,
    to_rgb,
)

Second = int | float
"""A requested second as the caller gave it (AVA's are integers; fractions are fine)."""

SEEK_GAP = 4
"""Seconds between two requested times above which a fresh seek beats decoding through the
gap. In process a seek costs only the decoding from the key frame before the next time, so
it pays as soon as a key frame lies in the gap: on the video of ``benchmarks/extract.py``
(key frame every 2 s) a seek per second beat one pass from 1 s spacing on. Movies can hold
key frames 10 s apart, where seeking for seconds 1-2 s apart would decode each stretch
several times; 4 s keeps AVA's dense schedule (1 s apart) in one pass on any video."""

SKIP_UNWANTED = True
"""Leave undecoded the non-reference frames (about half of an x264 video's) that answer no
requested time: the same answers for less decoding. False decodes every frame."""


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
    origin: Fraction | None = None, to_end: bool = False,
) -> Iterator[tuple[Second, np.ndarray]]:
    """Yield ``(second, H x W x 3 uint8 RGB frame)`` for each requested second, ascending.

    ``seconds`` may hold duplicates and come in any order; each distinct value is yielded
    once, as given (NumPy numbers as Python ones; 2 and 2.0 are one second, given first
    wins). ``max_side`` downscales (never upscaling) so that the longer side is at most that
    many pixels. ``origin`` is the presentation time, in this file's timeline, of the
    original video's first frame (a window cut from a longer video passes the original's);
    None counts from this file's own first frame. ``to_end`` (with ``origin``): the file is
    known to hold the video through its last frame (a window that runs to the video's end),
    so its last frames are trusted as the whole file's would be. Raises ``KeyframeError``
    for a missing file or one that is not a decodable video, and ``MissingKeyframes`` (after
    yielding the frames that exist) for seconds with no frame in this file.
    """
    wanted = sorted_unique(seconds)
    check_max_side(max_side)
    with open_video(path) as video:
        start = video.start if origin is None else Fraction(origin)
        answers = Answers(video, [start + w.exact for w in wanted],
                          origin=None if origin is None else start, to_end=to_end)
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


@dataclass(frozen=True)
class Clip:
    """A keyframe and the clip of frames around it (see :func:`extract_clips`)."""

    second: Second
    keyframe: np.ndarray
    """H x W x 3 uint8 RGB: what :func:`extract_keyframes` yields for ``second``."""
    frames: np.ndarray | list[av.VideoFrame]
    """T x h x w x 3 uint8 RGB, shorter side ``clip_short_side`` (resized bilinearly); with
    ``planar``, T yuv444p frames (``pixels.to_planes``: what H.264 clips store, handed to
    the encoder as they are), each its own, padding included."""
    padded: int
    """How many of ``frames`` lie before the video's first frame or after its last, and so
    repeat the nearest frame."""
    colour: tuple[int, int] = UNTAGGED
    """With ``planar``, the planes' colour matrix and range (``pixels.planes_colour``); RGB
    frames: UNTAGGED."""


def clip_offsets(length: int, stride: int) -> list[Fraction]:
    """Offsets from the keyframe of a clip's frames: ``(k - length // 2) * stride / 30`` s."""
    if length < 1 or stride < 1:
        raise ValueError(f"clip length and stride must be positive, got {length}, {stride}")
    return [Fraction((k - length // 2) * stride, 30) for k in range(length)]


def extract_clips(
    path: str | os.PathLike, seconds: Iterable[Second], *, length: int, stride: int,
    clip_short_side: int = 256, max_side: int | None = None, origin: Fraction | None = None,
    to_end: bool = False, planar: bool = False,
) -> Iterator[Clip]:
    """Yield a :class:`Clip` for each requested second, ascending, from one decoding pass.

    Clip frame ``k`` (``k = 0 .. length - 1``) is the first frame at or after
    ``second + (k - length // 2) * stride / 30`` (the keyframe rule, so timing holds at any
    frame rate), resized to a shorter side of ``clip_short_side``. Times before the video's
    first frame take that frame and times after its last frame take the last one, counted
    in ``Clip.padded``. ``seconds``, ``max_side``, ``origin`` and ``to_end`` are as for
    :func:`extract_keyframes`; so is ``MissingKeyframes``, raised at the end for seconds
    whose keyframe or clip this file cannot give whole (a window too short, a corrupt or
    truncated file). Memory holds the clips in flight, never the video. ``planar``: clip
    frames as the yuv444p frames ``clips.encode`` takes, which most sources give 3-4x
    faster than RGB (``pixels.to_planes``).
    """
    wanted = sorted_unique(seconds)
    check_max_side(max_side)
    if clip_short_side < 1:
        raise ValueError(f"clip_short_side must be positive, got {clip_short_side}")
    offsets = clip_offsets(length, stride)
    with open_video(path) as video:
        start = video.start if origin is None else Fraction(origin)
        clips = [_ClipSlots(w, [start + w.exact + offset for offset in offsets], start)
                 for w in wanted]
        times = sorted({time for clip in clips for time in clip.times})
        answers = Answers(video, times, origin=None if origin is None else start,
                          to_end=to_end)
        filler = _ClipFiller(clips, times, max_side, clip_short_side, planar)
        for index, frame in answers:
            yield from filler.fill(index, frame)
        whole_end = origin is None or to_end
        if answers.last_frame is not None and whole_end and not answers.ends_early():
            yield from filler.pad_end(answers.unanswered, answers.last_frame,
                                      answers.last_time)
        if filler.waiting:
            missing = [clip.wanted.given for clip in filler.waiting]
            raise MissingKeyframes(f"{video.path}: no whole clip for second(s) "
                                   f"{_listed(missing)} ({answers.why_missing()})", missing)


class _ClipSlots:
    """One clip being filled: the times of its frames (the keyframe's among them)."""

    def __init__(self, wanted: Wanted, times: list[Fraction], start: Fraction) -> None:
        self.wanted = wanted
        self.times = times
        self.keyframe: np.ndarray | None = None
        self.frames: np.ndarray | list | None = None
        self.filled = 0
        self.padded = sum(time < start for time in times)

    def done(self) -> bool:
        return self.filled == len(self.times) and self.keyframe is not None


class _ClipFiller:
    """Puts each answered frame into the clips that need it and hands on finished clips in
    order of second; clips not begun hold no memory."""

    def __init__(self, clips: list[_ClipSlots], times: list[Fraction], max_side: int | None,
                 short_side: int, planar: bool) -> None:
        self.waiting = deque(clips)
        self._planar = planar
        self._colour: tuple[int, int] | None = None  # planar: from the first frame
        self._times = times
        self._max_side = max_side
        self._short_side = short_side
        self._needs: dict[int, list[tuple[_ClipSlots, int]]] = {}
        position = {time: index for index, time in enumerate(times)}
        for clip in clips:
            for slot, time in enumerate(clip.times):
                self._needs.setdefault(position[time], []).append((clip, slot))

    def fill(self, index: int, frame: av.VideoFrame, padding: bool = False
             ) -> Iterator[Clip]:
        """Put ``frame`` where time ``index`` is needed (with ``padding``, not as a
        keyframe: a keyframe past the end is missing, never padded)."""
        size = short_side_size(frame.width, frame.height, self._short_side)
        rgb = None  # RGB clip frames: one conversion, copied into each clip that needs it
        for clip, slot in self._needs.pop(index, []):
            keyframe = slot == len(clip.times) // 2
            if padding and keyframe:
                continue
            if self._planar:  # a frame of its own in each slot: the encoder takes it over
                self._colour = self._colour or planes_colour(frame)
                clip.frames = clip.frames or [None] * len(clip.times)
                clip.frames[slot] = to_planes(frame, size, self._colour)
            else:
                rgb = to_rgb(frame, size=size, scaler=CLIP_SCALER) if rgb is None else rgb
                if clip.frames is None:
                    clip.frames = np.empty((len(clip.times), *rgb.shape), np.uint8)
                clip.frames[slot] = rgb
            clip.filled += 1
            clip.padded += padding
            if keyframe:
                clip.keyframe = to_rgb(frame, self._max_side)
        while self.waiting and self.waiting[0].done():
            clip = self.waiting.popleft()
            done = Clip(clip.wanted.given, clip.keyframe, clip.frames, clip.padded,
                        self._colour or UNTAGGED)
            clip.keyframe = clip.frames = None  # handed on: the caller's to keep or drop
            yield done

    def pad_end(self, unanswered: list[int], last: av.VideoFrame, last_time: Fraction
                ) -> Iterator[Clip]:
        """Times after the video's last frame repeat that frame."""
        for index in sorted(unanswered):
            if self._times[index] > last_time:
                yield from self.fill(index, last, padding=True)


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
    rather than answered by a later frame. None: the file is the whole video. ``to_end``:
    the part runs to the video's end, so its tail is complete.

    Afterwards ``unanswered`` lists the indices that got no frame, and ``last_frame`` holds
    the file's last frame (at ``last_time``) if a run decoded to the end of the file without
    error.
    """

    def __init__(self, video: Video, times: list[Fraction], *,
                 origin: Fraction | None, to_end: bool = False) -> None:
        self.video = video
        self.times = times
        self.unanswered: list[int] = []
        self.last_frame: av.VideoFrame | None = None
        self.last_time: Fraction | None = None
        self.problems: list[str] = []
        self.origin = video.start if origin is None else origin
        part = origin is not None  # the file may hold only part of the video
        self._earliest = video.start if part and video.start > origin else None
        self._latest = video.complete_until() if part and not to_end else None

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
        """Answers for one run, each held back until it is known to be decoded without
        error (see ``media.Video.settle``): an error or corrupt frame drops every answer still
        held (its span is reported in ``problems``), so no damaged frame is handed on."""
        frame = time = None
        held: list[tuple[int, av.VideoFrame]] = []
        settling = 0  # frames decoded since the latest answer was held
        wanted = _wanted([self.times[i] for i in run]) if SKIP_UNWANTED else None
        for time, frame in self.video.frames_from(self.times[run[0]], wanted):
            settling += 1
            if frame.key_frame or settling > self.video.settle:
                yield from held  # decoded cleanly, and so were the frames they rest on
                held.clear()
            while run and self.times[run[0]] <= time:
                held.append((run.popleft(), frame))
                settling = 0
            if not run and not held:
                return
        if self.video.problem:
            self.problems.append(self._damaged(held))
            self.unanswered += [index for index, _ in held] + list(run)
            return
        yield from held
        if run and frame is not None:  # the file ended before these times
            if wanted is not None:  # the frames after the last one decoded were skipped
                end = deque(self.video.frames_from(time), maxlen=1)
                if end:
                    time, frame = end[0]
            if self.video.problem:
                self.problems.append(self.video.problem)
            else:
                self.last_frame, self.last_time = frame, time
        self.unanswered += run

    def _damaged(self, held: list[tuple[int, av.VideoFrame]]) -> str:
        """The decoder's problem, and the span of answers it cost that were already decoded
        (frames that may rest on the damaged packet)."""
        if not held:
            return self.video.problem
        first, last = (float(self.times[i] - self.origin) for i in (held[0][0], held[-1][0]))
        return (f"{self.video.problem}; frames decoded for {first:.3f} s to {last:.3f} s "
                "not stored (they may rest on the damaged data)")

    def ends_early(self) -> bool:
        """Whether the frames end early for the file's header (a truncated file)."""
        return self.video.ends_early(self.last_time)

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
        if self.ends_early():
            return (f"truncated file: frames end at {float(end - origin):.3f} s, "
                    f"its header says {float(declared - origin):.3f} s")
        lasts = "unknown" if end is None else f"{float(end - origin):.3f} s"
        return f"past the end of the video, whose last frame is at {lasts}"


def save_keyframes(path: str | os.PathLike, seconds: Mapping[Second, Sequence[str]],
                   out: str | os.PathLike, *, max_side: int | None = None,
                   image_format: str = "jpg") -> Iterator[dict[str, Any]]:
    """Write the frame at each second of ``seconds`` to ``out/<name>.<image_format>`` (JPEG at
    quality 95, or PNG), once per name given for it (``{902: ["902", "0902"]}`` writes both
    spellings), and yield ``{"second": name, "path", "width", "height"}`` per file written.
    Errors as `extract_keyframes`: on ``MissingKeyframes`` the frames before it are written."""
    from PIL import Image

    out = Path(out)
    options = {"quality": 95} if image_format == "jpg" else {}
    for second, image in extract_keyframes(path, seconds, max_side=max_side):
        for name in seconds[second]:
            target = out / f"{name}.{image_format}"
            Image.fromarray(image).save(target, **options)
            yield {"second": name, "path": str(target), "width": image.shape[1],
                   "height": image.shape[0]}

