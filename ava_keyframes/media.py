"""The decoding engine: video files decoded in process through FFmpeg's libraries (PyAV).

Every decoded result (keyframes, clips, the check that a download is a video) comes from the
FFmpeg build inside the PyAV wheel, so ``pip`` gives every machine the same decoder, and
timestamps, stream starts and errors come from its API, never from text. ``decoder_info``
names that build, for build reports.

An ffmpeg command line is still run for jobs where a command line is the right tool
(encoding the synthetic corpus, yt-dlp's merging, benchmark baselines): ``ffmpeg_binary`` is
always the binary inside the ``imageio-ffmpeg`` wheel, never one found on PATH.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from av.video.reformatter import VideoReformatter

# PyAV before 19 decodes metadata strings strictly unless told otherwise (a movie with a
# non-UTF-8 title would not open); PyAV 19 dropped the argument and always replaces.
_OPEN_OPTIONS = {"metadata_errors": "replace"} if int(av.__version__.split(".")[0]) < 19 else {}

Wanted = Callable[[Fraction, Fraction], bool]
"""``wanted(lo, hi)``: whether some time in ``(lo, hi]`` needs a frame."""

THREADS = 0
"""Decoding threads per video (frame and slice threads); 0 lets FFmpeg choose from the
number of CPUs, as the ffmpeg command line does."""

REORDER = 16
"""The most places a frame is shown before frames decoded earlier: 16 in H.264 and HEVC
(their largest picture buffers); VP9 and AV1 packets come in showing order."""

LOOKAHEAD = REORDER
"""Packets held back to estimate each frame's predecessor in time."""


_REFORMATTERS = threading.local()


def reformatter(key: str) -> VideoReformatter:
    """This thread's swscale context for ``key`` (its use: a scaler's name, or a caller's),
    kept between frames: making one per frame cost as much as scaling a 455x256 clip frame
    (2.2 ms against 1.0 ms a frame). One per thread, as a context must not be shared."""
    found = getattr(_REFORMATTERS, key, None)
    if found is None:
        found = VideoReformatter()
        setattr(_REFORMATTERS, key, found)
    return found


def reformat(key: str, frame: av.VideoFrame, **options: Any) -> av.VideoFrame:
    """``frame`` scaled or converted (``VideoReformatter.reformat`` ``options``) by this
    thread's context for ``key`` (:func:`reformatter`), on this thread alone: the callers'
    threads are the parallelism (the build's encoding threads, tf.data's parallel calls).
    swscale's default, a slice per core in every call, ran 2 parallel clip decodes on
    4 threads over 2 cores, which then read clips 1.6x as fast as 1 core, not 1.9x; for one
    keyframe its threads cost more than they gave. The frame itself where nothing changes."""
    return reformatter(key).reformat(frame, threads=1, **options)


class VideoError(Exception):
    """A video file that cannot be opened or decoded; the message names the file."""


def decoder_info() -> dict[str, str]:
    """The decoding engine and its library versions, e.g. ``{"engine": "pyav", "pyav":
    "18.1.0", "ffmpeg": "8.1.2", "libavcodec": "62.28.102", ...}``: equal dicts, same
    decoder."""
    info = {"engine": "pyav", "pyav": av.__version__, "ffmpeg": av.ffmpeg_version_info}
    for library, version in sorted(av.library_versions.items()):
        info[library] = ".".join(str(part) for part in version)
    return info


@functools.cache
def ffmpeg_binary() -> str:
    """Path of the ffmpeg executable for command-line jobs: the imageio-ffmpeg wheel's own.

    ``IMAGEIO_FFMPEG_EXE`` (imageio-ffmpeg's variable) chooses another one explicitly. Where
    the wheel has no binary for this platform, imageio-ffmpeg would fall back to one on PATH:
    that stops here with a message naming it, rather than using it unasked.
    """
    import imageio_ffmpeg

    exe = imageio_ffmpeg.get_ffmpeg_exe()
    bundled = Path(imageio_ffmpeg.__file__).resolve().parent / "binaries"
    if os.environ.get("IMAGEIO_FFMPEG_EXE") or Path(exe).resolve().is_relative_to(bundled):
        return exe
    raise VideoError(f"imageio-ffmpeg has no ffmpeg binary for this platform, and {exe} "
                     "would be used instead: set IMAGEIO_FFMPEG_EXE to it (or to another "
                     "ffmpeg) to use it for encoding; decoding never uses it")


class Video:
    """One open video file: its video stream, the time of its first frame, and
    decoding forward from any time. Use :func:`open_video`; close it (``with``).

    ``start`` is the presentation time of the first frame the decoder outputs from the start
    of the file (edit lists, late or negative starts and open GOPs included): where a
    video's seconds count from. Times are exact Fractions in the file's timeline.
    """

    def __init__(self, path: Path, container: av.container.InputContainer,
                 stream: av.VideoStream) -> None:
        self.path = path
        self._container = container
        self._stream = stream
        self._stream.thread_type = "AUTO"
        self._stream.thread_count = THREADS
        self._time_base = Fraction(self._stream.time_base)  # PyAV 19: an av.AVRational
        self.problem = ""
        """The first error of the latest decode (empty if none): it ended that decode."""
        self.start, self._first_key = self._first_frame()

    def __enter__(self) -> Video:
        return self

    def __exit__(self, *exc: object) -> None:
        self._container.close()

    @property
    def declared_end(self) -> Fraction | None:
        """The end of the video stream as the file's header declares it, if it does. A
        Matroska/WebM header's duration runs from the segment's time zero, so it is the end
        itself whatever the first timestamp (a window cut from a movie starts late); other
        formats' durations count from the start."""
        stream, container = self._stream, self._container
        if stream.duration is not None and stream.start_time is not None:
            return (stream.start_time + stream.duration) * self._time_base
        if container.duration is None:
            return None
        from_zero = container.format.name.startswith("matroska")
        start = 0 if from_zero else container.start_time or 0
        return Fraction(container.duration + start, av.time_base)

    def ends_early(self, last: Fraction | None) -> bool:
        """Whether a video whose last frame (or packet) shows at ``last`` ends more than a
        second before the end its header declares: a truncated file (the slack because the
        header's end may count a longer audio track)."""
        declared = self.declared_end
        return last is not None and declared is not None and last + 1 < declared

    def complete_until(self) -> Fraction:
        """The time up to which every frame of the video is in this file, for a file that
        may be a part cut from a longer video in decoding order, whose tail then lacks
        frames shown before some it holds. Two bounds, the later counts: (1) no frame shown
        before a key frame follows it in decoding order, unless GOPs are open (frames after
        a key frame in decoding order but shown before it): the last key frame, or the one
        before with open GOPs; (2) a frame cut off is shown at most ``REORDER`` places before
        the file's last packet, so all but the last ``REORDER`` frames in showing order are
        complete (all of them if the packets come in showing order). Reads the packets."""
        self._container.seek(math.floor(self._first_key / self._time_base), stream=self._stream)
        shown, keys, open_gop = [], [], False
        for packet in self.packets():
            if packet.pts is None:
                continue
            if packet.is_keyframe:
                keys.append(packet.pts)
            elif keys and packet.pts < keys[-1]:
                open_gop = open_gop or len(keys) > 1
            shown.append(packet.pts)
        if not shown:
            return self.start
        reorder = REORDER if any(b < a for a, b in zip(shown, shown[1:], strict=False)) else 0
        shown.sort()
        by_keys = keys[-2] if open_gop else keys[-1]
        return max(by_keys, shown[max(0, len(shown) - 1 - reorder)]) * self._time_base

    @property
    def settle(self) -> int:
        """Frames decoded after a frame before an error in any packet it rests on has surely
        shown: the reordering depth plus the decoder's frame threads. A damaged packet's error
        or corrupt flag can surface that late, after frames decoded from it (a B-frame shown
        before the P-frame it refers to, or any frame while threads still work on the damaged
        one); a key frame decoded cleanly settles everything before it."""
        return REORDER + max(self._stream.codec_context.thread_count, 1)

    def _first_frame(self) -> tuple[Fraction, Fraction]:
        """(time of the first frame decoded from the file's start, time of the first packet
        with a timestamp): where seconds count from, and how to tell a seek reached the start."""
        first_key = None
        for packet in self.packets():
            if first_key is None and packet.pts is not None:
                first_key = packet.pts * self._time_base
            for time, _ in self.decoded(packet, None):
                return time, time if first_key is None else min(first_key, time)
            if self.problem:
                break
        raise VideoError(f"{self.path}: not a decodable video "
                         f"({self.problem or 'no frame decodes'})")

    def frames_from(self, time: Fraction, wanted: Wanted | None = None
                    ) -> Iterator[tuple[Fraction, av.VideoFrame]]:
        """``(time, frame)`` in presentation order, among them every frame at or after
        ``time``, until the end of the file or the first error (then in ``problem``).

        With ``wanted``, a frame that no wanted time needs (``wanted(lo, hi)`` is False for
        an interval holding every time it could answer) and that no other frame refers to
        is not decoded at all (the decoder's ``skip_frame=NONREF``, set packet by packet):
        the frames that come out are the same, minus frames nobody asked for.
        """
        key, packets, after = self._seek(time)
        if key is None:
            return
        codec = self._stream.codec_context
        for packet, skip in self._skippable(_chain(key, packets), wanted):
            codec.skip_frame = "NONREF" if skip else "DEFAULT"
            yield from self.decoded(packet, after)
            if self.problem:
                break
        codec.skip_frame = "DEFAULT"

    def _skippable(self, packets: Iterator[av.Packet], wanted: Wanted | None
                   ) -> Iterator[tuple[av.Packet, bool]]:
        """Each packet, and whether its frame may be skipped if it is not a reference.

        A frame at ``hi`` answers times in ``(previous frame's time, hi]``. The previous
        frame in time is estimated as the latest earlier timestamp among the packets
        ``LOOKAHEAD`` either side in decoding order: never later than the true one, so the
        interval asked about can only be wider than the true one (skipping less, never
        wrongly). Packets are held back ``LOOKAHEAD`` deep to see those ahead.
        """
        if wanted is None:
            yield from ((packet, False) for packet in packets)
            return
        ahead: deque[av.Packet] = deque()
        behind: deque[int] = deque(maxlen=LOOKAHEAD)
        for packet in _chain_end(packets):
            if packet is not None:
                ahead.append(packet)
                if len(ahead) <= LOOKAHEAD:
                    continue
            if not ahead:
                return
            head = ahead.popleft()
            yield head, self._unwanted(head, behind, ahead, wanted)
            if head.pts is not None:
                behind.append(head.pts)

    def _unwanted(self, packet: av.Packet, behind: deque[int], ahead: deque[av.Packet],
                  wanted: Wanted) -> bool:
        hi = packet.pts
        if hi is None or packet.size == 0 or packet.is_keyframe:
            return False
        earlier = [pts for pts in behind if pts < hi]
        earlier += [p.pts for p in ahead if p.pts is not None and p.pts < hi]
        return bool(earlier) and not wanted(max(earlier) * self._time_base,
                                            hi * self._time_base)

    def _seek(self, time: Fraction
              ) -> tuple[av.Packet | None, Iterator[av.Packet], Fraction | None]:
        """Seek to the key frame at or before ``time``: (its packet, the packets after it,
        the time before which decoded frames are not to be trusted, None at the start)."""
        self.problem = ""
        target, back = max(time, self._first_key), Fraction(1)
        while True:
            self._container.seek(math.floor(target / self._time_base), stream=self._stream)
            packets = self.packets()
            key = next((p for p in packets if p.pts is not None or p.size == 0), None)
            if key is None or key.size == 0:
                return None, packets, None
            key_time = key.pts * self._time_base
            if key_time <= self._first_key or target <= self._first_key:
                return key, packets, None
            if key_time <= time:
                return key, packets, key_time
            # the index pointed past `time` (it may hold decoding times): seek further back
            target, back = max(min(target, key_time) - back, self._first_key), back * 2

    def packets(self) -> Iterator[av.Packet]:
        """The video stream's packets from the current position; the last one (empty)
        drains the decoder. A demuxing error ends them, noted in ``problem``."""
        demuxer = self._container.demux(self._stream)
        while True:
            try:
                packet = next(demuxer)
            except StopIteration:
                return
            except av.FFmpegError as error:
                self.problem = f"demuxing failed: {error}"
                return
            yield packet

    def decoded(self, packet: av.Packet, after: Fraction | None
                ) -> Iterator[tuple[Fraction, av.VideoFrame]]:
        """Frames of one packet with their times. Frames before ``after`` (leading frames of
        an open GOP, decoded without their references) are dropped; an error or a frame the
        decoder marks corrupt ends the decode, noted in ``problem``."""
        try:
            frames = self._stream.codec_context.decode(packet)
        except av.FFmpegError as error:
            self.problem = f"decoding failed: {error}"
            return
        for frame in frames:
            if frame.pts is None or frame.is_corrupt:
                self.problem = ("a frame without a timestamp" if frame.pts is None else
                                f"corrupt frame at {float(frame.pts * self._time_base):.3f} s")
                return
            time = frame.pts * self._time_base
            if after is None or time >= after:
                yield time, frame


def _chain(first: av.Packet, rest: Iterator[av.Packet]) -> Iterator[av.Packet]:
    yield first
    yield from rest


def _chain_end(packets: Iterator[av.Packet]) -> Iterator[av.Packet | None]:
    """The packets, then None forever (to empty a look-ahead buffer)."""
    yield from packets
    while True:
        yield None


def video_stream(container: av.container.InputContainer) -> av.VideoStream | None:
    """The video stream keyframes come from: the first that is not cover art (ffmpeg's
    ``-map 0:V:0``); None if there is none."""
    return next((stream for stream in container.streams.video
                 if not stream.disposition & av.stream.Disposition.attached_pic), None)


# PyAV before 19 decodes container tags as strict UTF-8 and refuses a whole file over one
# mis-encoded title unless told to replace; PyAV 19 dropped the argument (tags are always
# read with surrogateescape), so it is passed only to the versions that take it.
_OPEN_OPTIONS = {"metadata_errors": "replace"} if int(av.__version__.split(".")[0]) < 19 else {}


def open_video(path: str | os.PathLike) -> Video:
    """Open ``path``'s video stream and decode its first frame, or raise VideoError."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    try:
        container = av.open(str(path), **_OPEN_OPTIONS)
    except av.FFmpegError as error:
        raise VideoError(f"{path}: not a decodable video ({error})") from None
    stream = video_stream(container)
    if stream is None:
        container.close()
        raise VideoError(f"{path}: not a decodable video (no video stream)")
    try:
        return Video(path, container, stream)
    except BaseException:
        container.close()
        raise


def check_video(path: str | os.PathLike, *, until: float | Fraction | None = None,
                origin: Fraction | None = None) -> None:
    """Raise VideoError unless ``path``'s first frame decodes and its video packets demux
    without error through ``until`` seconds (counted from ``origin``, the original video's
    first frame in this file's timeline; None = this file's first frame), or through the
    end of the file if ``until`` is None. A file that ends before ``until``, or (without
    ``until``) more than a second before the end its header declares, fails too."""
    with open_video(path) as video:
        start = video.start if origin is None else Fraction(origin)
        end = None if until is None else start + Fraction(until)
        last = None
        for packet in video.packets():
            if packet.pts is not None:
                last = packet.pts * packet.time_base
                if end is not None and last >= end:
                    return
        if video.problem:
            raise VideoError(f"{path}: {video.problem}")
        if end is None and video.ends_early(last):
            raise VideoError(f"{path}: truncated: the video ends at {float(last - start):.3f} s, "
                             f"its header says {float(video.declared_end - start):.3f} s")
        if end is not None:
            reached = "no packet" if last is None else f"{float(last - start):.3f} s"
            raise VideoError(f"{path}: the video ends at {reached}, before second {until}")
