"""Finished videos: each video's decoded, JPEG-encoded frames, kept between runs of a build.

TFDS restarts a killed ``tfds build`` from scratch (its temporary folder is discarded). So
that the rerun of a build killed at hour three redoes only the videos that were in flight,
the builder writes each video's frames here as soon as they are decoded and encoded, and
reads them back instead of fetching and decoding again. The JPEGs are made by the
dataset's own image feature, so a stored frame is byte for byte what TFDS would have
written from the decoded one.

One folder per build (a key of the dataset's full name, its options, the decoder's versions
and the clip encoder's settings: ``<cache>/finished/<key>/``), one file per video inside,
named by the video id and a key of its keyframe seconds and of the fetched file (name, size,
modification time, origin). A file is written under a temporary name and renamed once
complete, so a kill leaves a whole file or none; links are refused. The builder removes the
build's folder once the dataset is written.

File: the JPEGs in order, then a JSON trailer ``{"format": ..., "error": ..., "frames":
[[second, width, height, clip_padded, [jpeg sizes: keyframe, clip frames...]], ...]}``,
then the trailer's length (8 bytes, big-endian).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from ava_keyframes import clips
from ava_keyframes.cache import CacheDir, CacheError, check_regular, open_file
from ava_keyframes.frames import KeyframeError
from ava_keyframes.plan import VideoJob, VideoWork
from ava_keyframes.sources import FetchResult

_FORMAT = "ava-keyframes-finished-1"
ENCODE_THREADS = os.cpu_count() or 2
"""Threads that JPEG- and H.264-encode a video's frames while the next ones decode (libjpeg
and libx264 run without the GIL): one per core, as the decoder (``media.THREADS``) and
Python's share of the work leave cores idle (a JPEG clip build uses about 1.3 of 2 cores;
with half the cores encoding, an H.264 one 1.5)."""
_TRAILER_BYTES = 8


@dataclasses.dataclass(frozen=True)
class EncodedFrame:
    """One keyframe as stored: its JPEG, its size, and its clip (clip configs): the clip
    frames' JPEGs, or one H.264 stream (``VideoWork.clip_encoding``)."""

    second: int
    jpeg: bytes
    width: int
    height: int
    clip: list[bytes] | None = None
    clip_padded: int = 0


@dataclasses.dataclass
class FinishedVideo:
    """A video's stored frames (read lazily, one at a time) and why decoding stopped short
    (``error``: a KeyframeError's message, the frames before it kept)."""

    path: Path
    error: str | None
    index: list[list[Any]]
    resumed: bool = False  # stored by an earlier run of the build

    def frames(self) -> Iterator[EncodedFrame]:
        fd = open_file(self.path, os.O_RDONLY)
        with os.fdopen(fd, "rb") as handle:
            for second, width, height, padded, sizes in self.index:
                blobs = [handle.read(size) for size in sizes]
                yield EncodedFrame(second, blobs[0], width, height,
                                   blobs[1:] if len(sizes) > 1 else None, padded)


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:32]


class FinishedStore:
    """The finished videos of one build (picklable, for Beam workers)."""

    def __init__(self, cache_dir: str | os.PathLike, build: dict[str, Any]) -> None:
        self.folder = CacheDir(cache_dir).root / "finished" / _digest([_FORMAT, build])

    def _path(self, job: VideoJob, fetched: FetchResult) -> Path:
        status = os.stat(fetched.path)
        key = _digest([job.seconds, fetched.path.name, status.st_size, status.st_mtime_ns,
                       str(fetched.origin)])
        return self.folder / f"{job.video_id}.{key}"

    def finish(self, job: VideoJob, fetched: FetchResult, work: VideoWork,
               encode: Callable[[Any], bytes]) -> FinishedVideo:
        """The video's stored frames: those of an earlier run, or extracted now (``encode``:
        array -> JPEG bytes) and stored first."""
        path = self._path(job, fetched)
        resumed = check_regular(path)
        if not resumed:
            self._store(path, job, fetched, work, encode)
        return dataclasses.replace(_read(path), resumed=resumed)

    def _store(self, path: Path, job: VideoJob, fetched: FetchResult, work: VideoWork,
               encode: Callable[[Any], bytes]) -> None:
        CacheDir(self.folder.parent.parent).folder(self.folder)
        try:
            fd, temp = tempfile.mkstemp(dir=self.folder, prefix=f".{path.name}.")
        except OSError as failure:
            raise CacheError(f"{self.folder}: cannot store finished videos ({failure})") from None
        try:
            with os.fdopen(fd, "wb") as body:
                index, error = _write_frames(body, job, fetched, work, encode)
                trailer = json.dumps({"format": _FORMAT, "error": error, "frames": index})
                body.write(trailer.encode())
                body.write(len(trailer.encode()).to_bytes(_TRAILER_BYTES, "big"))
            check_regular(path)
            os.replace(temp, path)
        finally:
            Path(temp).unlink(missing_ok=True)  # gone already when renamed

    def remove(self) -> None:
        """Forget this build's finished videos (its dataset is written)."""
        if os.path.islink(self.folder):
            raise CacheError(f"{self.folder}: a symbolic link in the video cache, refused")
        if os.path.isdir(self.folder):
            shutil.rmtree(self.folder)


def _write_frames(body: BinaryIO, job: VideoJob, fetched: FetchResult, work: VideoWork,
                  encode: Callable[[Any], bytes]) -> tuple[list[list[Any]], str | None]:
    """Decode the video's keyframes (and clips) in this thread, encode them in
    ``ENCODE_THREADS`` others, and write their blobs to ``body`` in order: the index, and
    the message of a KeyframeError that ended decoding early (the frames before it kept)."""
    index: list[list[Any]] = []
    pending: deque = deque()

    def write_first() -> None:
        second, (height, width), padded, blobs = pending.popleft()
        blobs = blobs.result()
        for blob in blobs:
            body.write(blob)
        index.append([second, width, height, padded, [len(blob) for blob in blobs]])

    error = None
    with ThreadPoolExecutor(ENCODE_THREADS, thread_name_prefix="ava-encode") as pool:
        try:
            for second, frame, clip in work.extract(job, fetched):
                pending.append((second, frame.shape[:2], clip.padded if clip is not None else 0,
                                pool.submit(_encoded, frame, clip, encode, work.planar_clips)))
                if len(pending) > 2 * ENCODE_THREADS:
                    write_first()
        except KeyframeError as failure:  # the frames before it are kept
            error = str(failure)
        while pending:
            write_first()
    return index, error


def _encoded(frame: Any, clip: Any, encode: Callable[[Any], bytes], planar: bool
             ) -> list[bytes]:
    """A keyframe's blobs: its JPEG, then its clip's one H.264 stream (``planar``,
    ``VideoWork.planar_clips``) or its frames' JPEGs."""
    blobs = [encode(frame)]
    if clip is not None:
        blobs += ([clips.encode(clip.frames, clip.colour)] if planar
                  else [encode(image) for image in clip.frames])
    return blobs


def _read(path: Path) -> FinishedVideo:
    fd = open_file(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as handle, contextlib.suppress(ValueError, OSError):
        handle.seek(-_TRAILER_BYTES, os.SEEK_END)
        length = int.from_bytes(handle.read(_TRAILER_BYTES), "big")
        handle.seek(-_TRAILER_BYTES - length, os.SEEK_END)
        trailer = json.loads(handle.read(length))
        if trailer.get("format") == _FORMAT:
            return FinishedVideo(path, trailer["error"], trailer["frames"])
    raise CacheError(f"{path}: not a finished-video file of this version (remove it)")


def ahead(work: Callable[[VideoJob], Any], jobs: Iterable[VideoJob]) -> Iterator[Any]:
    """``work(job)`` for each job in order, the next one running (fetched, decoded, encoded,
    stored) in a thread while the caller writes the current one's examples."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ava-video") as pool:
        pending = deque()
        for job in jobs:
            pending.append(pool.submit(work, job))
            if len(pending) > 1:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
