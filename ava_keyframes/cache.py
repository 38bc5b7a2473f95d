"""The cache folder: ``videos/`` (complete files only), ``partial/`` (downloads in progress),
``locks/`` and ``unavailable.json``.

- One writer per video, across threads, processes and machines sharing the folder: a writer
  holds ``fcntl.flock`` on ``locks/<id>.lock`` (Linux NFS clients emulate it with byte-range
  locks; on a filesystem without working locks, give each machine its own cache) and looks in
  ``videos/`` again once it has it, so a second writer finds the first one's file. The wait
  for another writer is bounded by that writer's own limits.
- A file enters ``videos/`` by an atomic rename, only once its size is known and matches, and
  its MD5 matches where the server published one (an ETag without ``-``, as S3 gives for
  single-part uploads).
- A download in progress is ``partial/<name>`` plus ``partial/<name>.json``: the remote file's
  URL, size and ETag, and the length and SHA-256 of what was written. A partial is resumed
  only when its bytes still hash to that record (a longer tail, written after the last record,
  is cut off first); otherwise it starts over.
- Symbolic links, hard-linked files, folders in file places and special files are refused
  anywhere in the cache (files are opened with ``O_NOFOLLOW`` and must have one link; new
  files are fresh temporaries renamed into place); the cache folder itself may be a link. A
  cache that cannot be written, or holds such a thing, is a :class:`CacheError`: one line
  naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from ava_keyframes.annotations import check_video_id
from ava_keyframes.remote import GaveUp, Refused, Transient

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mkv", ".mp4", ".webm")
UNAVAILABLE_FILE = "unavailable.json"
_CHECKPOINT = 32 << 20  # bytes written between two records of a partial's state
_MD5_ETAG = re.compile(r'"?([0-9a-fA-F]{32})"?')
_warned: set[str] = set()


class CacheError(Exception):
    """The cache cannot be used safely (unwritable, or holding a link): path and reason."""


def _cache_error(path: Path, error: OSError) -> CacheError:
    return CacheError(f"{path}: cannot use the video cache ({error.strerror or error})")


def check_regular(path: Path) -> bool:
    """True for a regular file, False when nothing is there; CacheError for anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    except OSError as error:
        raise _cache_error(path, error) from None
    if not stat.S_ISREG(mode):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
        raise CacheError(f"{path}: {kind} in the video cache, refused (remove it)")
    return True


def video_file(folder: Path, video_id: str, present: Callable[[Path], bool]) -> Path | None:
    """The one file ``folder/<video_id>.<ext>`` that ``present`` accepts, if any. Two (an
    ``.mkv`` and an ``.mp4``) are a CacheError naming both: which one is that video cannot
    be told, and taking either silently could store another video's frames."""
    found = [folder / (video_id + ext) for ext in VIDEO_EXTENSIONS
             if present(folder / (video_id + ext))]
    if len(found) > 1:
        raise CacheError(f"{found[0]} and {found[1]}: two files for video {video_id}; "
                         "remove the one that is not it")
    return found[0] if found else None


class CacheDir:
    """The folders of one cache; nothing is created until something is written."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).absolute()
        self.videos = self.root / "videos"
        self.partial = self.root / "partial"
        self.locks = self.root / "locks"

    def cached(self, video_id: str) -> Path | None:
        """The complete file of ``video_id`` in ``videos/``, if there is one."""
        return video_file(self.videos, video_id, check_regular)

    def folder(self, path: Path) -> Path:
        """Create ``path`` (one of the cache's folders) and check that it is a real folder."""
        try:
            with contextlib.suppress(FileExistsError):  # judged by lstat below
                path.mkdir(parents=True, exist_ok=True)
            mode = os.lstat(path).st_mode
        except OSError as error:
            raise _cache_error(path, error) from None
        if not stat.S_ISDIR(mode):
            raise CacheError(f"{path}: not a folder (a link or file) in the video cache, refused")
        return path

    @contextlib.contextmanager
    def writer(self, name: str) -> Iterator[None]:
        """Hold the exclusive lock ``locks/<name>.lock`` (blocking until it is free)."""
        fd = open_file(self.folder(self.locks) / f"{name}.lock", os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def publish(self, path: Path, name: str) -> Path:
        """Move a verified file into ``videos/`` atomically."""
        final = self.folder(self.videos) / name
        check_regular(final)
        try:
            os.replace(path, final)
        except OSError as error:
            raise _cache_error(final, error) from None
        return final


def open_file(path: Path, flags: int) -> int:
    """``os.open`` that refuses links (O_NOFOLLOW), anything but a regular file, and a file
    with more than one hard link (writing to it would change the file it is linked to,
    perhaps outside the cache)."""
    check_regular(path)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise CacheError(f"{path}: a symbolic link in the video cache, refused") from None
        raise _cache_error(path, error) from None
    opened = os.fstat(fd)
    if not stat.S_ISREG(opened.st_mode) or opened.st_nlink != 1:
        os.close(fd)
        kind = ("not a regular file" if not stat.S_ISREG(opened.st_mode)
                else f"a file with {opened.st_nlink} hard links")
        raise CacheError(f"{path}: {kind} in the video cache, refused (remove it)")
    return fd


class Partial:
    """``partial/<name>`` and its record ``partial/<name>.json``; see the module docstring."""

    def __init__(self, folder: Path, name: str):
        self.path = folder / name
        self.record = folder / f"{name}.json"
        self.url: str | None = None
        self.total: int | None = None
        self.etag: str | None = None
        self.length = 0
        self._sha256 = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._fd = open_file(self.path, os.O_RDWR | os.O_CREAT)
        self._recorded = 0

    def close(self) -> None:
        if self._fd >= 0:
            self.checkpoint()
            os.close(self._fd)
            self._fd = -1

    def resume(self, url: str) -> int:
        """Length of the verified prefix to resume from (0: start over)."""
        state = self._read_record()
        if state is None or state.get("url") != url or not self._verify(state):
            self.restart(None, None, url)
            return 0
        self.url, self.total, self.etag = url, state["total"], state["etag"]
        return self.length

    def restart(self, total: int | None, etag: str | None, url: str | None = None) -> None:
        """Empty the file, for a new download of ``total`` bytes."""
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        self.url = url or self.url
        self.total, self.etag, self.length, self._recorded = total, etag, 0, -1
        self._sha256, self._md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
        self.checkpoint()

    def write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise GaveUp(f"{self.path}: {error.strerror}") from None
            raise _cache_error(self.path, error) from None
        self.length += len(chunk)
        self._sha256.update(chunk)
        self._md5.update(chunk)
        if self.length - self._recorded >= _CHECKPOINT:
            self.checkpoint()

    def verify_complete(self) -> None:
        """Raise unless the file has the announced size and, where published, MD5."""
        if self.total is None:
            raise Refused(f"{self.url}: size unknown (no Content-Length), not accepted")
        if self.length != self.total:
            raise Transient(f"{self.url}: connection closed at byte {self.length} of {self.total}")
        match = _MD5_ETAG.fullmatch(self.etag or "")
        if match and match[1].lower() != self._md5.hexdigest():
            self.restart(None, None)
            raise Transient(f"{self.url}: MD5 differs from the server's ETag, starting over")

    def checkpoint(self) -> None:
        """Record url, size, ETag, and length and SHA-256 of what was written."""
        if self._recorded == self.length:
            return
        state = {"url": self.url, "total": self.total, "etag": self.etag,
                 "length": self.length, "sha256": self._sha256.hexdigest()}
        write_json_atomically(self.record, state)
        self._recorded = self.length

    def discard(self) -> None:
        os.close(self._fd)
        self._fd = -1
        for path in (self.path, self.record):
            path.unlink(missing_ok=True)

    def _read_record(self) -> dict | None:
        if not check_regular(self.record):
            return None
        try:
            state = json.loads(self.record.read_text(encoding="utf-8"))
            valid = (isinstance(state, dict) and isinstance(state.get("length"), int)
                     and isinstance(state.get("sha256"), str)
                     and isinstance(state.get("total"), (int, type(None)))
                     and isinstance(state.get("etag"), (str, type(None))))
        except (OSError, ValueError):
            return None
        return state if valid else None

    def _verify(self, state: dict) -> bool:
        """Hash the first ``state["length"]`` bytes; keep them (and only them) if they match."""
        length = state["length"]
        if os.fstat(self._fd).st_size < length:
            return False
        os.lseek(self._fd, 0, os.SEEK_SET)
        done = 0
        while done < length:
            chunk = os.read(self._fd, min(1 << 20, length - done))
            if not chunk:
                return False
            self._sha256.update(chunk)
            self._md5.update(chunk)
            done += len(chunk)
        if self._sha256.hexdigest() != state["sha256"]:
            return False
        os.ftruncate(self._fd, length)
        os.lseek(self._fd, length, os.SEEK_SET)
        self.length = self._recorded = length
        return True


def write_json_atomically(path: Path, value: object) -> None:
    """Write ``value`` to a new temporary file beside ``path``, then rename it over ``path``."""
    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as error:
        raise _cache_error(path, error) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(value, out, indent=1)
        check_regular(path)
        os.replace(temp, path)
    except OSError as error:
        raise _cache_error(path, error) from None
    finally:
        Path(temp).unlink(missing_ok=True)  # gone already when renamed


class Unavailable:
    """``unavailable.json``: (id, source) pairs a source does not have, with reason and time.
    Invalid entries are ignored with one warning; updates are merged under a lock and
    replace the file atomically."""

    def __init__(self, cache: CacheDir, sources: tuple[str, ...]):
        self.cache = cache
        self.path = cache.root / UNAVAILABLE_FILE
        self._sources = sources
        self._lock = threading.Lock()
        self.entries = self._read()

    def get(self, video_id: str, source: str) -> dict | None:
        return self.entries.get((video_id, source))

    def record(self, video_id: str, source: str, reason: str | None) -> None:
        """Add (or with ``reason=None`` remove) an entry."""
        with self._lock, self.cache.writer(UNAVAILABLE_FILE):
            entries = self._read()
            if reason is None:
                entries.pop((video_id, source), None)
            else:
                entries[(video_id, source)] = {
                    "id": video_id, "source": source, "reason": reason,
                    "time": datetime.now(UTC).isoformat(timespec="seconds")}
            write_json_atomically(self.path, [entries[key] for key in sorted(entries)])
            self.entries = entries

    def _read(self) -> dict[tuple[str, str], dict]:
        if not check_regular(self.path):
            return {}
        try:
            entries = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise CacheError(f"{self.path}: unreadable ({error})") from None
        if not isinstance(entries, list):
            raise CacheError(f"{self.path}: expected a JSON list of "
                             '{"id", "source", "reason", "time"} objects')
        valid, problems = {}, []
        for number, entry in enumerate(entries, 1):
            problem = self._problem(entry)
            if problem:
                problems.append(f"entry {number}: {problem}")
            else:
                valid[(entry["id"], entry["source"])] = entry
        if problems:
            _warn_once(f"{self.path}: ignored {len(problems)} invalid entr"
                       f"{'y' if len(problems) == 1 else 'ies'} ({'; '.join(problems[:3])})")
        return valid

    def _problem(self, entry: object) -> str | None:
        if not isinstance(entry, dict):
            return "not an object"
        for field in ("id", "source", "reason", "time"):
            if not isinstance(entry.get(field), str) or not entry[field]:
                return f"no {field!r}"
        try:
            check_video_id(entry["id"])
        except ValueError as error:
            return str(error)
        if entry["source"] not in self._sources:
            return f"unknown source {entry['source']!r}"
        return None


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)
