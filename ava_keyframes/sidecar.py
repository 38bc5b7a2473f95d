"""A window file's sidecar, ``<window>.json``: what the window covers, where it was cut from
(the source's URL, size and ETag) and its origin, with a SHA-256 digest over those fields and
the window file's bytes. A sidecar is trusted only while the digest matches: a window file
changed in place (even with its size and mtime kept) or a sidecar edited by hand (its origin,
its end) is ignored, and the window is fetched again. Links are never followed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from stat import S_ISREG

VERSION = 2
_DESCRIBING = ("version", "url", "size", "etag", "format", "origin", "start", "end",
               "file_size")


@dataclass(frozen=True)
class Source:
    """What identifies the remote file: a window is only extended from the same one."""

    url: str
    size: int
    etag: str | None


@dataclass(frozen=True)
class Window:
    """A window file in the cache.

    ``start`` and ``end`` are the times (seconds from the original's first frame) of the
    window's first frame (a key frame) and of its last needed frame; ``end`` is None when the
    window runs to the end of the video. Every second ``t`` with ``start <= t <= end`` is
    answered by the same frame as in the whole file. ``origin`` is the time, in the window
    file's timeline, of the original video's first frame (pass it to ``extract_keyframes``).
    ``bytes_fetched`` and ``requests`` count this call's HTTP traffic (0 from the cache).
    """

    path: Path
    origin: Fraction
    start: Fraction
    end: Fraction | None
    source: Source
    bytes_fetched: int = 0
    requests: int = 0

    def covers(self, seconds: Iterable[Fraction]) -> bool:
        return all(self.start <= s and (self.end is None or s <= self.end) for s in seconds)


def sidecar_path(path: Path) -> Path:
    """The JSON file that describes the window file ``path``."""
    return path.with_name(path.name + ".json")


def read_window(path: str | os.PathLike) -> Window | None:
    """The window at ``path`` as its sidecar describes it; None if either is missing or not a
    regular file (a link is never followed), the sidecar is unreadable, or its digest does
    not match its fields and this very file."""
    path = Path(path)
    try:
        stat, side = os.lstat(path), os.lstat(sidecar_path(path))
        if not (S_ISREG(stat.st_mode) and S_ISREG(side.st_mode)):
            return None
        meta = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
        if (meta["version"], meta["file_size"]) != (VERSION, stat.st_size):
            return None
        if meta["digest"] != _digest(meta, path):
            return None
        source = Source(meta["url"], meta["size"], meta["etag"])
        end = None if meta["end"] is None else Fraction(meta["end"])
        return Window(path, Fraction(meta["origin"]), Fraction(meta["start"]), end, source)
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return None


def covering_window(folder: Path, urls: Mapping[str, str], seconds: Iterable[float]
                    ) -> Window | None:
    """The first window ``folder/<name>`` cut from ``urls[name]`` that covers ``seconds``
    (read only: no lock, no write)."""
    wanted = [Fraction(second) for second in seconds]
    for name, url in urls.items():
        window = read_window(folder / name)
        if window is not None and window.source.url == url and window.covers(wanted):
            return window
    return None


def write_sidecar(window: Window, muxer: str, partial_dir: Path) -> None:
    """Describe ``window`` beside it (written under a temporary name in ``partial_dir``,
    then renamed)."""
    meta = {"version": VERSION, "url": window.source.url, "size": window.source.size,
            "etag": window.source.etag,
            "format": muxer, "origin": str(window.origin), "start": str(window.start),
            "end": None if window.end is None else str(window.end),
            "covers_seconds": [float(window.start),
                               None if window.end is None else float(window.end)],
            "file_size": window.path.stat().st_size}
    meta["digest"] = _digest(meta, window.path)
    fd, name = tempfile.mkstemp(dir=partial_dir, prefix=f".{window.path.name}.", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(meta, handle, indent=1)
    os.replace(name, sidecar_path(window.path))


def _digest(meta: dict, path: Path) -> str:
    """SHA-256 over the describing fields (canonical JSON) and the file's bytes; the file is
    opened without following a link."""
    digest = hashlib.sha256(json.dumps({key: meta[key] for key in _DESCRIBING},
                                       sort_keys=True).encode())
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
