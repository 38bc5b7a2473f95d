"""Video sources and the video cache: one video id in, one local, decodable video file out.

Sources are tried in order; the first that yields a file wins:

- ``local``: ``<manual_dir>/videos/<id>.<ext>``, used in place (never copied);
- ``mirror``: the CVDF mirror over HTTP(S); file names come from the official list bundled
  with the package, ids not in it are tried as ``.mkv``, ``.mp4``, ``.webm``;
- ``youtube``: yt-dlp's Python API on the URL made from a template.

A video already in the cache is returned before any source is asked. Downloads go through
:mod:`ava_keyframes.cache` (one writer per video, verified resumable partials, complete files
only in ``videos/``) and :mod:`ava_keyframes.remote` (time, size and attempt limits); a file
enters the cache only once its size matches and its first frame decodes and it demuxes cleanly
through the last second the caller needs (to its end when the caller names none).

When the caller names the seconds it needs, the mirror source fetches only the window of the
video that they need (:mod:`ava_keyframes.window`: byte ranges, a stream copy with a sidecar,
in ``windows/``), extended by what is missing when later seconds fall outside it; a whole file
in ``videos/`` still wins. ``fetch="whole"`` (``AVA_KEYFRAMES_FETCH=whole``, ``download --fetch
whole``) downloads whole files instead, as does a server that ignores byte ranges (with a
note). YouTube videos are always fetched whole.

Failures never stop a batch. Transient ones (timeouts, resets, HTTP 5xx, 429, deadlines,
unreachable hosts, a full disk) are retried within the limits, then reported with
``transient=True``; so are server faults (a redirect loop, a ranged answer that does not fit
its request: a window then falls back to one whole-file fetch, see ``_whole_instead``) and
4xx answers other than 404 and 410. Permanent ones (HTTP 404, 410, a removed or private
YouTube video) are recorded
per (id, source) in ``<cache>/unavailable.json`` and that source is skipped for that id on later
runs, unless ``retry_unavailable``. A file over the size limit or one that does not decode is
given up for this run only. A cache that cannot be used safely raises CacheError.

An undecodable local file is passed over for the next source; two files for one id (an
``.mkv`` and an ``.mp4``, locally or in the cache) are refused in one line naming both.

Ids are checked with :func:`ava_keyframes.annotations.check_video_id` before any path, URL or
process is made from them.
"""

from __future__ import annotations

import functools
import os
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

from ava_keyframes import youtube
from ava_keyframes.annotations import check_video_id
from ava_keyframes.cache import (
    VIDEO_EXTENSIONS,
    CacheDir,
    Partial,
    Unavailable,
    check_regular,
    download_whole,
    video_file,
)
from ava_keyframes.media import VideoError, check_video
from ava_keyframes.remote import (
    GaveUp,
    Hosts,
    Limits,
    Meter,
    NoRanges,
    Permanent,
    Refused,
    Remote,
    RemoteError,
    ServerFault,
)
from ava_keyframes.sidecar import covering_window, read_window, sidecar_path
from ava_keyframes.window import WindowError, fetch_window

SOURCE_NAMES = ("local", "mirror", "youtube")
DEFAULT_MIRROR = "https://s3.amazonaws.com/ava-dataset/trainval/"
DEFAULT_YOUTUBE_TEMPLATE = "https://www.youtube.com/watch?v={id}"
SOURCES_ENV = "AVA_KEYFRAMES_SOURCES"
MIRROR_ENV = "AVA_KEYFRAMES_MIRROR"
YOUTUBE_TEMPLATE_ENV = "AVA_KEYFRAMES_YOUTUBE_TEMPLATE"
FETCH_MODES = ("window", "whole")
FETCH_ENV = "AVA_KEYFRAMES_FETCH"


@dataclass(frozen=True)
class FetchResult:
    """Where one video ended up.

    ``status``: "cached", "downloaded" or "unavailable"; ``source``: "cache", "local", "mirror"
    or "youtube"; ``reason``: why it is unavailable; ``transient``: lost to a cause that may pass
    (outage, retries spent, deadline, 429, disk full), as opposed to a source not having it.
    ``fetch_mode``: "cache", "local", "whole" (the whole file was downloaded) or "window" (only
    the span its seconds need, see :mod:`ava_keyframes.window`); ``note``: why a window was not
    fetched where one was asked for; ``bytes_fetched``: bytes received over the network for it
    in this call; ``origin`` and ``to_end``: to pass to ``extract_keyframes`` (None: the
    file's own first frame; ``to_end``: the file holds the video through its last frame, as
    a window that runs to the video's end does).
    """

    id: str
    status: str
    path: Path | None
    source: str | None
    reason: str | None
    origin: Fraction | None = None
    fetch_mode: str | None = None
    bytes_fetched: int = 0
    transient: bool = False
    note: str | None = None
    to_end: bool = True

    def to_json(self) -> dict:
        return {"id": self.id, "status": self.status,
                "path": None if self.path is None else str(self.path),
                "source": self.source, "reason": self.reason,
                "origin": None if self.origin is None else str(self.origin),
                "fetch_mode": self.fetch_mode, "bytes_fetched": self.bytes_fetched,
                "transient": self.transient, "note": self.note, "to_end": self.to_end}


class _Got(NamedTuple):
    """A file a source produced, with how (fetch_mode) and its origin."""

    path: Path
    mode: str
    origin: Fraction | None = None
    note: str | None = None
    to_end: bool = True


class _Progress:
    """Two tqdm bars on stderr, bytes and videos, when it is a terminal; disabled bars cost
    nothing."""

    def __init__(self, videos: int, enabled: bool):
        disable = None if enabled else True  # None: tqdm shows them only on a terminal
        self.videos = tqdm(total=videos, desc="videos", unit="video", position=0,
                           disable=disable, dynamic_ncols=True)
        self.bytes = tqdm(desc="bytes", unit="B", unit_scale=True, unit_divisor=1024, position=1,
                          disable=disable, dynamic_ncols=True)

    def close(self) -> None:
        self.bytes.close()
        self.videos.close()


def parse_sources(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"local,mirror"`` or ``["local", "mirror"]`` -> validated tuple of source names."""
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [name.strip().lower() for name in names if name.strip()]
    unknown = [name for name in names if name not in SOURCE_NAMES]
    if unknown or not names:
        raise ValueError(f"invalid sources {value!r}: choose from {', '.join(SOURCE_NAMES)}")
    return tuple(dict.fromkeys(names))


@functools.cache
def mirror_file_names() -> dict[str, str]:
    """Video id -> file name on the CVDF mirror, from the bundled official list."""
    text = (resources.files("ava_keyframes") / "data" / "ava_file_names_trainval_v2.1.txt"
            ).read_text(encoding="utf-8")
    names = (line.strip() for line in text.splitlines())
    return {name.rsplit(".", 1)[0]: name for name in names if name}


class VideoCache:
    """Resolve AVA video ids to local files through local folder, CVDF mirror and YouTube.

    ``None`` for ``sources``, ``mirror``, ``youtube_template`` or ``fetch`` reads the environment
    variables AVA_KEYFRAMES_SOURCES, AVA_KEYFRAMES_MIRROR, AVA_KEYFRAMES_YOUTUBE_TEMPLATE and
    AVA_KEYFRAMES_FETCH, then the defaults. ``fetch``: "window" (default) fetches from the
    mirror only the window of a video that the given seconds need, into ``windows/``;
    "whole" downloads whole files as before; ``limits`` None reads :meth:`Limits.from_env`.
    ``sleep`` is how waiting between attempts is done (tests pass a recorder); ``hosts``
    remembers unreachable hosts (the process's by default). Nothing is written until a
    download starts, and nothing outside ``cache_dir``.
    """

    def __init__(self, cache_dir: str | os.PathLike, sources: str | Sequence[str] | None = None,
                 mirror: str | None = None, youtube_template: str | None = None,
                 manual_dir: str | os.PathLike | None = None, retry_unavailable: bool = False, *,
                 limits: Limits | None = None, sleep: Callable[[float], object] = time.sleep,
                 hosts: Hosts | None = None, fetch: str | None = None):
        self.store = CacheDir(cache_dir)
        self.cache_dir = self.store.root
        self.sources = parse_sources(sources or os.environ.get(SOURCES_ENV) or SOURCE_NAMES)
        self.mirror = mirror or os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR
        if urllib.parse.urlsplit(self.mirror).scheme not in ("http", "https"):
            raise ValueError(f"invalid mirror {self.mirror!r}: expected an http(s) URL")
        self.mirror = self.mirror if self.mirror.endswith("/") else self.mirror + "/"
        self.youtube_template = (youtube_template or os.environ.get(YOUTUBE_TEMPLATE_ENV)
                                 or DEFAULT_YOUTUBE_TEMPLATE)
        if "{id}" not in self.youtube_template:
            raise ValueError(f"invalid YouTube URL template {self.youtube_template!r}: "
                             "it must contain {id}")
        self.manual_dir = None if manual_dir is None else Path(manual_dir)
        self.retry_unavailable = retry_unavailable
        self.fetch_mode = (fetch or os.environ.get(FETCH_ENV) or FETCH_MODES[0]).strip().lower()
        if self.fetch_mode not in FETCH_MODES:
            raise ValueError(f"invalid fetch mode {self.fetch_mode!r}: choose from "
                             f"{', '.join(FETCH_MODES)}")
        self.windows = self.store.root / "windows"
        self.remote = Remote(limits or Limits.from_env(), sleep=sleep, hosts=hosts)
        self.unavailable = Unavailable(self.store, ("mirror", "youtube"))

    # --- public ---

    def fetch(self, video_id: str, seconds: Sequence[float] | None = None) -> FetchResult:
        """Return the video's local file, downloading it if needed. ``seconds``: the keyframe
        seconds the caller needs (None: the whole video). Raises ValueError for an invalid id
        and CacheError for a cache that cannot be used; an unavailable video is a result."""
        return self._fetch(check_video_id(video_id), seconds, _Progress(0, enabled=False))

    def fetch_many(self, ids: Iterable[str], jobs: int = 4, progress: bool = True,
                   seconds: Mapping[str, Sequence[float]] | None = None) -> list[FetchResult]:
        """Fetch each distinct id (first-seen order) with ``jobs`` threads; all ids are
        validated before anything is fetched. ``seconds``: the seconds needed per id (an id
        not in it: the whole video)."""
        unique = list(dict.fromkeys(check_video_id(video_id) for video_id in ids))
        if jobs < 1:
            raise ValueError(f"jobs must be at least 1, not {jobs}")
        bars = _Progress(len(unique), enabled=progress)

        def one(video_id: str) -> FetchResult:
            result = self._fetch(video_id, (seconds or {}).get(video_id), bars)
            bars.videos.update(1)
            return result

        pool = ThreadPoolExecutor(max_workers=jobs)
        try:
            return list(pool.map(one, unique))
        except BaseException:  # Ctrl-C: running downloads stop; partial files stay for later
            self.remote.cancel()
            raise
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            bars.close()

    # --- resolution ---

    def _fetch(self, video_id: str, seconds: Sequence[float] | None, bars: _Progress
               ) -> FetchResult:
        cached = self.store.cached(video_id)
        if cached is not None:
            return FetchResult(video_id, "cached", cached, "cache", None, fetch_mode="cache")
        meter = Meter(bars.bytes.update)
        reasons, transient = [], False
        for source in self.sources:
            if source == "local":
                local, why = self._from_local(video_id)
                if local is not None:
                    return FetchResult(video_id, "cached", local, "local", None,
                                       fetch_mode="local")
                if why is not None:
                    reasons.append(f"local: {why}")
                continue
            known = self.unavailable.get(video_id, source)
            if known is not None and not self.retry_unavailable:
                reasons.append(f"{source}: {known['reason']} (recorded {known['time']})")
                continue
            try:
                got = self._from_remote(source, video_id, seconds, meter)
            except Permanent as error:
                self.unavailable.record(video_id, source, str(error))
                reasons.append(f"{source}: {error}")
            except RemoteError as error:
                reasons.append(f"{source}: {error}")
                transient = transient or error.transient
            else:
                if known is not None:
                    self.unavailable.record(video_id, source, None)
                status, source = ("cached", "cache") if got.mode == "cache" else (
                    "downloaded", source)
                return FetchResult(video_id, status, got.path, source, None, got.origin,
                                   got.mode, meter.bytes, note=got.note, to_end=got.to_end)
        return FetchResult(video_id, "unavailable", None, None, "; ".join(reasons),
                           bytes_fetched=meter.bytes, transient=transient)

    def _from_local(self, video_id: str) -> tuple[Path | None, str | None]:
        """(the local file, None), or (None, why not): not there, or not decodable (its
        first frame), in which case the next source is tried. Two files for the id:
        CacheError."""
        if self.manual_dir is None:
            return None, None
        folder = self.manual_dir / "videos"
        path = video_file(folder, video_id, Path.is_file)
        if path is None:
            return None, f"not in {folder}"
        try:
            check_video(path, until=0)
        except VideoError as error:
            return None, str(error)
        return path, None

    def _from_remote(self, source: str, video_id: str, seconds: Sequence[float] | None,
                     meter: Meter) -> _Got:
        """One writer per video: under its lock, a file another writer finished meanwhile
        is taken as it is. A window that covers ``seconds`` needs no lock."""
        held = self._held_window(video_id, seconds) if source == "mirror" else None
        if held is not None:
            return held
        with self.store.writer(video_id):
            cached = self.store.cached(video_id)
            if cached is not None:
                return _Got(cached, "cache")
            if source == "mirror":
                return self._from_mirror(video_id, seconds, meter)
            return self._from_youtube(video_id, seconds, meter)

    # --- mirror ---

    def _from_mirror(self, video_id: str, seconds: Sequence[float] | None, meter: Meter
                     ) -> _Got:
        names = self._mirror_names(video_id)
        window = bool(seconds) and self.fetch_mode == "window"
        if window:  # a name with a window in the cache first: it may need no request
            names.sort(key=lambda name: read_window(self.windows / name) is None)
        missing = []
        for name in names:
            url = self.mirror + urllib.parse.quote(name)
            try:
                if window:
                    return self._window(url, name, meter, seconds)
                return self._whole(url, name, meter, seconds)
            except Permanent as error:
                missing.append(str(error))
        raise Permanent("; ".join(missing))

    @staticmethod
    def _mirror_names(video_id: str) -> list[str]:
        listed = mirror_file_names().get(video_id)
        return [listed] if listed else [video_id + ext for ext in VIDEO_EXTENSIONS]

    def _held_window(self, video_id: str, seconds: Sequence[float] | None) -> _Got | None:
        """A window in the cache, cut from the mirror, that covers ``seconds``: found by
        reading alone (no lock, no write), so that a read-only cache serves what it holds."""
        if not seconds or self.fetch_mode != "window":
            return None
        urls = {name: self.mirror + urllib.parse.quote(name)
                for name in self._mirror_names(video_id)}
        window = covering_window(self.windows, urls, seconds)
        return None if window is None else _Got(window.path, "cache", window.origin,
                                                to_end=window.end is None)

    def _window(self, url: str, name: str, meter: Meter, seconds: Sequence[float]) -> _Got:
        """The window of ``url`` that ``seconds`` need, in ``windows/<name>`` (what the cached
        window lacks, if anything). A server that ignores byte ranges, or a file that no
        window can be cut from, is downloaded whole instead, with a note."""
        path = self.store.folder(self.windows) / name
        try:
            window = fetch_window(url, seconds, path, remote=self.remote, meter=meter,
                                  partial_dir=self.store.folder(self.store.partial))
        except (NoRanges, ServerFault, WindowError) as error:
            if isinstance(error, WindowError) and error.transient:
                raise
            return self._whole_instead(url, name, meter, seconds, error)
        if not window.requests:
            return _Got(path, "cache", window.origin, to_end=window.end is None)
        try:
            # a window to the video's end is checked to its end (the demuxer's, not a guess)
            _check_decodes(path, None if window.end is None else seconds, window.origin)
        except Refused:
            path.unlink(missing_ok=True)
            sidecar_path(path).unlink(missing_ok=True)
            raise
        return _Got(path, "window", window.origin, to_end=window.end is None)

    def _whole_instead(self, url: str, name: str, meter: Meter, seconds: Sequence[float],
                       why: RemoteError) -> _Got:
        """The fallback rule for a window the server's answers could not make (no ranges, a
        faulty ranged answer, a redirect loop, a file no window can be cut from): one
        whole-file fetch. If that fails too, the video is lost for this run (transient),
        never recorded as unavailable: a server fault is no proof that it is gone."""
        try:
            got = self._whole(url, name, meter, seconds)
        except RemoteError as error:
            raise GaveUp(f"no window ({why}), and the whole file failed too ({error})") from None
        return got._replace(note=f"fetched whole: {why}")

    def _whole(self, url: str, name: str, meter: Meter, seconds: Sequence[float] | None
               ) -> _Got:
        """The whole file at ``url``, verified, into ``videos/<name>``."""
        partial = Partial(self.store.folder(self.store.partial), name)
        try:
            download_whole(self.remote, url, partial, meter)
            _check_decodes(partial.path, seconds)
        except RemoteError as error:
            if not error.transient or partial.length == 0:  # nothing worth resuming
                partial.discard()
            raise
        finally:
            partial.close()
        final = self.store.publish(partial.path, name)
        partial.record.unlink(missing_ok=True)
        return _Got(final, "whole")

    # --- youtube ---

    def _from_youtube(self, video_id: str, seconds: Sequence[float] | None, meter: Meter
                      ) -> _Got:
        work = self.store.folder(self.store.partial / f"{video_id}.ytdl")
        for path in work.iterdir():
            check_regular(path)
        url = self.youtube_template.replace("{id}", video_id)
        try:
            file = youtube.download(self.remote, url, work, meter)
            _check_decodes(file, seconds)
        except RemoteError as error:
            if not error.transient or not any(work.iterdir()):  # nothing worth resuming
                _remove_folder(work)
            raise
        final = self.store.publish(file, video_id + file.suffix)
        _remove_folder(work)
        return _Got(final, "whole")


def _check_decodes(path: Path, seconds: Sequence[float] | None,
                   origin: Fraction | None = None) -> None:
    """Refused unless the first frame decodes and the file demuxes cleanly through the last
    of ``seconds`` (None: to its end; counted from ``origin``, see ``check_video``). A file
    cut short before a needed second fails here even when the server announced that short
    size."""
    try:
        check_video(path, until=max(seconds) if seconds else None, origin=origin)
    except VideoError as error:
        raise Refused(str(error)) from None


def _remove_folder(folder: Path) -> None:
    """Remove a work folder of the cache and the regular files in it (nothing else)."""
    for path in folder.iterdir():
        if check_regular(path):
            path.unlink()
    folder.rmdir()
