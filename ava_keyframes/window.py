"""Fetch only a video's *window*: the bytes its keyframe seconds need, as a stream copy.

AVA annotates seconds 902..1798 of each movie, about a sixth of it. Instead of downloading
the whole file, :func:`fetch_window` opens the video on the mirror through
:class:`RangeFile` (a seekable read-only file over HTTP Range requests, with read-ahead),
lets FFmpeg's demuxer (PyAV) find its way with the container's index, and copies the video
packets (never re-encoded) from the key frame at or before the first second to the frame
at or after the last second, and on to the next key frame (which shows that every frame
before it is in the file), into a file of the same container kind. Every packet keeps its
timestamp, and the copy is read back to check that they survived exactly, so the window
decodes to the same pixels at the same times as the whole file; ``origin`` (the time of the
original's first frame, in the window's timeline) keeps seconds counted from the original
video's first frame.

The cache stays honest: a window file is written under a temporary name and renamed once
whole, next to a JSON sidecar naming what it covers, the source (URL, size, ETag) and its
origin, with a digest of all that and of the file's bytes (:mod:`ava_keyframes.sidecar`);
a sidecar that does not match its file, or was edited, is ignored and the window fetched
again. A later call that needs seconds
outside the window fetches only the missing span(s), joined to the window by stream copy
(the window stays one contiguous span, so no second is ever answered by a wrong frame).
A server that ignores Range (answers 200) raises :class:`~ava_keyframes.remote.NoRanges`
before the body is read, so the caller can fall back to one whole download. Only the video
stream is kept (keyframes need no audio). All HTTP goes through :mod:`ava_keyframes.remote`.
"""

from __future__ import annotations

import errno
import io
import itertools
import os
import tempfile
import urllib.parse
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import av

from ava_keyframes.cache import CacheError, check_regular
from ava_keyframes.media import Video, VideoError, video_stream
from ava_keyframes.remote import Deadline, GaveUp, Meter, Refused, Remote, RemoteError
from ava_keyframes.sidecar import Source, Window, read_window, sidecar_path, write_sidecar

MIN_BLOCK = 16 * 1024
MAX_BLOCK = 8 * 2**20
"""Read-ahead per request: from ``MIN_BLOCK`` after a jump, growing to half the bytes read
in sequence so far, up to ``MAX_BLOCK``, and no further than the caller's estimate of where
it will stop (``RangeFile.until``)."""

_KEPT_BLOCKS = 8
_MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}
_NO_DTS = ("matroska", "webm")


class WindowError(RemoteError):
    """A window could not be made from a file the server does serve (a container or muxer
    that does not allow it, a file replaced mid-fetch); ``transient`` says whether another
    try may succeed. A caller can still fetch the whole file."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class RangeFile(io.RawIOBase):
    """A remote file as a seekable, read-only binary file, read with HTTP Range requests
    through ``remote`` (its limits, retries and deadline; bytes counted in ``meter``).

    Reads are served from the last few blocks fetched; a read elsewhere fetches a block
    starting there (see ``MIN_BLOCK``). ``requests`` and ``bytes_fetched`` count the ranges
    read; more than ``remote.limits.max_bytes`` is Refused. Each answer must name the size and
    ETag of the first, so a file replaced on the server mid-fetch is noticed. A server that
    ignores Range raises :class:`~ava_keyframes.remote.NoRanges` on the first read.
    """

    def __init__(self, url: str, remote: Remote, meter: Meter | None = None) -> None:
        super().__init__()
        self.url, self.remote = url, remote
        self.meter = Meter() if meter is None else meter
        self.deadline = Deadline(remote.limits)
        self.requests = self.bytes_fetched = 0
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._pos = self._run = self._last_end = 0
        self.until: int | None = None
        """Where the caller expects to stop reading, if it knows: read-ahead ends there."""
        self.source: Source | None = None
        self.failure: RemoteError | None = None
        self._fetch(0)  # learns the size and identity (and whether ranges work at all)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.source.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int = -1) -> bytes:
        """After a failed request every read is the end of the file: FFmpeg retries after
        an error, and each further exception would be printed by PyAV as "dropped"; the
        first one is what PyAV raises, and ``failure`` keeps it for the caller."""
        if self._pos >= self.source.size or size == 0 or self.failure is not None:
            return b""
        found = next(((start, data) for start, data in self._blocks.items()
                      if start <= self._pos < start + len(data)), None)
        if found is None:
            try:
                found = self._pos, self._fetch(self._pos)
            except RemoteError as error:
                self.failure = error
                raise
        start, data = found
        self._blocks.move_to_end(start)
        offset = self._pos - start
        chunk = data[offset:] if size < 0 else data[offset:offset + size]
        self._run = self._run + len(chunk) if self._pos == self._last_end else len(chunk)
        self._pos += len(chunk)
        self._last_end = self._pos
        return chunk

    def _fetch(self, start: int) -> bytes:
        length = min(MAX_BLOCK, max(MIN_BLOCK, self._run // 2))
        if self.until is not None:
            length = min(length, max(MIN_BLOCK, self.until - start))
        if self.source is not None:
            length = min(length, self.source.size - start)
        got = self.remote.read_range(self.url, start, start + length, self.meter, self.deadline)
        self.requests += 1
        source = Source(self.url, got.total, got.etag)
        if self.source is None:
            self.deadline.expect(got.total)
        elif source != self.source:
            raise WindowError(f"{self.url}: the file changed on the server during the fetch",
                              transient=True)
        self.source = source
        self.bytes_fetched += len(got.data)
        if self.bytes_fetched > self.remote.limits.max_bytes:
            raise Refused(f"{self.url}: over the limit of {self.remote.limits.max_bytes} bytes")
        self._blocks[start] = got.data
        while len(self._blocks) > _KEPT_BLOCKS:
            self._blocks.popitem(last=False)
        return got.data


def fetch_window(url: str, seconds: Iterable[int | float | Fraction], path: str | os.PathLike,
                 *, remote: Remote, partial_dir: str | os.PathLike,
                 meter: Meter | None = None) -> Window:
    """Make ``path`` a window of the video at ``url`` that answers every second in ``seconds``
    (counted from the video's first frame), fetching only what the window at ``path`` (if
    any) lacks. Temporary files go to ``partial_dir`` (those a killed fetch left are removed);
    both it and ``path``'s folder must exist (the cache creates and checks its folders, and
    lets one writer at a time work on a video). The file keeps the container kind of
    ``path``'s suffix (.mp4, .mkv, .webm). HTTP goes through ``remote`` (bytes counted in
    ``meter``). Raises CacheError if anything but a regular file stands where the window,
    its sidecar or a temporary goes, ValueError for no or negative seconds, NoRanges if the
    server ignores Range, the other RemoteErrors of ``remote``, and WindowError if no window
    can be made of this file; the window at ``path`` is then left as it was.
    """
    path = Path(path)
    wanted = sorted({Fraction(s) for s in seconds})
    if not wanted or wanted[0] < 0:
        raise ValueError(f"a window needs one or more seconds >= 0, got {wanted[:3]}")
    muxer = _MUXERS.get(path.suffix.lower())
    if muxer is None:
        raise ValueError(f"{path}: unsupported container {path.suffix!r} for a window")
    for place in (path, sidecar_path(path)):
        check_regular(place)  # a folder, link or special file there: CacheError, one line
    existing = read_window(path)
    if existing is not None and existing.source.url == url and existing.covers(wanted):
        return existing
    with RangeFile(url, remote, meter) as reader:
        try:
            window = _fetch_into(reader, wanted[0], wanted[-1], path, muxer, existing,
                                 Path(partial_dir))
        except (av.FFmpegError, OSError) as error:
            raise _failure(url, path, error) from None
    return replace(window, bytes_fetched=reader.bytes_fetched, requests=reader.requests)


def _failure(url: str, path: Path, error: av.FFmpegError | OSError) -> Exception:
    """What a failed cut means: a full disk is "no space left" (transient, and no reason
    to download more), another write error a cache that cannot be used, an FFmpeg error
    a file no window can be cut from (which a whole-file fetch may still serve)."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return GaveUp(f"{path}: no space left on the device ({error.strerror})")
    if not isinstance(error, av.FFmpegError):
        return CacheError(f"{path}: cannot use the video cache ({error.strerror or error})")
    return WindowError(f"{url}: no window can be cut from it ({error})")


@dataclass(frozen=True)
class _Piece:
    """A window file being assembled; ``first`` and ``end`` are times in its own timeline
    (the original's) of its first packet (a key frame) and its last needed frame."""

    path: Path
    first: Fraction
    end: Fraction | None


def _fetch_into(reader: RangeFile, lo: Fraction, hi: Fraction, path: Path, muxer: str,
                existing: Window | None, partial_dir: Path) -> Window:
    for stale in partial_dir.glob(f".{path.name}.*"):  # left by a fetch that was killed
        if check_regular(stale):  # anything else there: CacheError, one line
            stale.unlink()
    temps: list[Path] = []

    def temp() -> Path:
        fd, name = tempfile.mkstemp(dir=partial_dir, prefix=f".{path.name}.", suffix=path.suffix)
        os.close(fd)
        temps.append(Path(name))
        return temps[-1]

    try:
        with av.open(reader, "r") as container:
            stream = video_stream(container)  # the engine's choice (never cover art)
            if stream is None:
                raise WindowError(f"{reader.url}: no video stream")
            origin = _first_frame_time(container, stream, reader.url)
            if existing is not None and (existing.source != reader.source
                                         or existing.origin != origin):
                existing = None  # a different file now: start over
            old = None if existing is None else _Piece(
                existing.path, existing.start + origin,
                None if existing.end is None else existing.end + origin)
            pieces = [_copy_span(reader, container, stream, origin + a, origin + b, temp(), muxer)
                      for a, b in _missing_spans(existing, lo, hi)]
        pieces = sorted(pieces + ([old] if old else []), key=lambda piece: piece.first)
        whole = pieces[0] if len(pieces) == 1 else _join(pieces, temp(), muxer)
        if reader.failure is not None:  # never a window cut short by a failed read
            raise reader.failure
        os.replace(whole.path, path)
        window = Window(path, origin, whole.first - origin,
                        None if whole.end is None else whole.end - origin, reader.source)
        write_sidecar(window, muxer, partial_dir)
        return window
    finally:
        for name in temps:
            name.unlink(missing_ok=True)


def _missing_spans(existing: Window | None, lo: Fraction, hi: Fraction
                   ) -> list[tuple[Fraction, Fraction]]:
    """Spans (seconds from the first frame) to fetch so that one contiguous window covers
    ``existing`` and ``lo..hi``: each new span overlaps the window at its edge frame."""
    if existing is None:
        return [(lo, hi)]
    spans = []
    if lo < existing.start:
        spans.append((lo, existing.start))
    if existing.end is not None and hi > existing.end:
        spans.append((existing.end, hi))
    return spans


def _time(packet_or_frame_pts: int, stream: av.VideoStream) -> Fraction:
    return packet_or_frame_pts * Fraction(stream.time_base)


def _first_frame_time(container: av.container.InputContainer, stream: av.VideoStream,
                      url: str) -> Fraction:
    """Where the original's seconds count from: its first frame, found by the decoding
    engine itself (:class:`ava_keyframes.media.Video`), so that both agree exactly."""
    try:
        return Video(Path(urllib.parse.urlsplit(url).path), container, stream).start
    except VideoError as error:
        raise WindowError(f"{url}: no window can be cut from it ({error})") from None


class _Span:
    """The packets of ``stream`` from the key frame at or before time ``t0`` to the frame at
    or after ``t1`` (``end``; None if the file ends first), in decode order.

    Copying goes on to the first key frame after ``end``, included, so that the file itself
    shows that every frame shown before that key frame is in it (nothing shown before a key
    frame follows it in decode order); with open GOPs (frames that follow a key frame in
    decode order but are shown before it) to the key frame after that one. As packets
    arrive, the span's end in bytes is estimated from its bit rate so far and handed to
    ``reader`` (``until``), which then reads no further ahead than that.
    """

    def __init__(self, reader: RangeFile, container: av.container.InputContainer,
                 stream: av.VideoStream, t0: Fraction, t1: Fraction) -> None:
        self.reader, self.container, self.stream = reader, container, stream
        self.t0, self.t1 = t0, t1
        self.first: Fraction | None = None
        self.end: Fraction | None = None
        self._first_pos: int | None = None

    def packets(self) -> Iterator[av.Packet]:
        key: Fraction | None = None
        open_gop, keys_after = False, 0
        for packet in self._from_key_frame():
            time = _time(packet.pts, self.stream)
            if self.first is None:
                self.first = time
            if packet.is_keyframe:
                key = time
            elif time < key:
                open_gop = True
            if time >= self.t1 and (self.end is None or time < self.end):
                self.end = time
            if packet.pos is not None and packet.pos >= 0:
                self._estimate_end(packet.pos, time)
            yield packet
            if self.end is not None and packet.is_keyframe and time > self.end:
                keys_after += 1
                if keys_after == 1 + open_gop:
                    return
        self.end = None  # ran to the end of the file

    def _estimate_end(self, pos: int, time: Fraction) -> None:
        """Byte offset where the span should end: its bytes per second so far times the
        seconds left, plus a second and a tenth (a short guess costs one more request)."""
        if self._first_pos is None:
            self._first_pos = pos
        elif time > self.first:
            rate = (pos - self._first_pos) / float(time - self.first)
            self.reader.until = pos + int(1.1 * rate * (max(float(self.t1 - time), 0) + 1))

    def _from_key_frame(self) -> Iterator[av.Packet]:
        """Packets from the last key frame at or before ``t0``: seek there (earlier and
        earlier if the index lands after it)."""
        back = Fraction(0)
        while True:
            target = max(Fraction(0), self.t0 - back)
            self.container.seek(int(target / Fraction(self.stream.time_base)),
                                stream=self.stream, backward=True)
            packets = (p for p in self.container.demux(self.stream)
                       if p.size and p.pts is not None)
            head = next((p for p in packets if p.is_keyframe), None)
            if head is not None and (_time(head.pts, self.stream) <= self.t0 or target == 0):
                return itertools.chain([head], packets)
            if target == 0:
                raise WindowError(f"no key frame at or before {float(self.t0)} s")
            back = max(2 * back, Fraction(1))


def _copy_span(reader: RangeFile, container: av.container.InputContainer,
               stream: av.VideoStream, t0: Fraction, t1: Fraction, out: Path, muxer: str
               ) -> _Piece:
    span = _Span(reader, container, stream, t0, t1)
    try:
        _write(span.packets(), stream, out, muxer)
    finally:
        reader.until = None
    return _Piece(out, span.first, span.end)


def _join(pieces: list[_Piece], out: Path, muxer: str) -> _Piece:
    """One window from overlapping pieces (sorted by start): each piece's packets up to the
    key frame where the next begins, then the next's."""

    def packets() -> Iterator[av.Packet]:
        for piece, following in zip(pieces, [*pieces[1:], None], strict=True):
            with av.open(str(piece.path)) as container:
                stream = container.streams.video[0]
                for packet in container.demux(stream):
                    if not packet.size or packet.pts is None:
                        continue
                    if (following is not None and packet.is_keyframe
                            and _time(packet.pts, stream) == following.first):
                        break
                    yield packet
                else:
                    if following is not None:
                        raise WindowError(f"{piece.path}: window pieces do not overlap")

    with av.open(str(pieces[0].path)) as template:
        _write(packets(), template.streams.video[0], out, muxer)
    ends = [piece.end for piece in pieces]
    return _Piece(out, pieces[0].first, None if None in ends else max(ends))


def _write(packets: Iterable[av.Packet], template: av.VideoStream, out: Path, muxer: str) -> None:
    """Stream-copy ``packets`` into ``out``, then check that the file holds them at exactly
    their times (a muxer that rounded a timestamp would move a frame across a second)."""
    written = []
    with av.open(str(out), "w", format=muxer) as output:
        stream = output.add_stream_from_template(template)
        for packet in packets:
            written.append((_time(packet.pts, template), packet.is_keyframe, packet.size))
            if muxer in _NO_DTS:
                packet.dts = None  # the muxer derives them, as the demuxer did (not stored)
            packet.stream = stream
            output.mux(packet)
    with av.open(str(out)) as check:
        video = check.streams.video[0]
        read = [(_time(p.pts, video), p.is_keyframe, p.size) for p in check.demux(video)
                if p.size and p.pts is not None]
    if read != written:
        raise WindowError(f"{out}: the {muxer} muxer did not keep the packets' timestamps")
