"""Video sources and the video cache: one video id in, one local, decodable video file out.

Sources are tried in order; the first that yields a file wins:

- ``local``: ``<manual_dir>/videos/<id>.<ext>``, used in place (never copied);
- ``mirror``: the CVDF mirror over HTTP(S); file names come from the official list bundled
  with the package, ids not in it are tried as ``.mkv``, ``.mp4``, ``.webm``;
- ``youtube``: yt-dlp's Python API on the URL made from a template.

A video already in the cache is returned before any source is asked. Downloads are written
under ``<cache>/partial/`` and renamed into ``<cache>/videos/`` only once whole (the size the
server announced, and ffmpeg decodes a frame), so every file in ``videos/`` is complete and a
later run makes no request for it. An interrupted HTTP download resumes with a Range request.

Failures never stop a batch. Transient ones (timeouts, resets, HTTP 5xx, 429) are retried with
exponential backoff, honouring Retry-After. Permanent ones (HTTP 404, a removed or private
YouTube video) are recorded per (id, source) in ``<cache>/unavailable.json`` and that source is
skipped for that id on later runs, unless ``retry_unavailable``. A file over the size limit or
one ffmpeg cannot decode is given up for this run only.

Ids are checked with :func:`ava_keyframes.annotations.check_video_id` before any path, URL or
process is made from them; yt-dlp is called through its Python API with a fixed output name, so
an id that starts with ``-`` is never read as an option.
"""

from __future__ import annotations

import email.utils
import functools
import http.client
import json
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

from tqdm import tqdm

from ava_keyframes.annotations import check_video_id
from ava_keyframes.media import VideoError, check_video, ffmpeg_binary

SOURCE_NAMES = ("local", "mirror", "youtube")
DEFAULT_MIRROR = "https://s3.amazonaws.com/ava-dataset/trainval/"
DEFAULT_YOUTUBE_TEMPLATE = "https://www.youtube.com/watch?v={id}"
VIDEO_EXTENSIONS = (".mkv", ".mp4", ".webm")
DEFAULT_MAX_BYTES = 8 * 2**30
SOURCES_ENV = "AVA_KEYFRAMES_SOURCES"
MIRROR_ENV = "AVA_KEYFRAMES_MIRROR"
YOUTUBE_TEMPLATE_ENV = "AVA_KEYFRAMES_YOUTUBE_TEMPLATE"
UNAVAILABLE_FILE = "unavailable.json"

_CHUNK = 1 << 20
_USER_AGENT = "ava-keyframes (video cache)"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
# yt-dlp reports most failures as text; these decide what is worth retrying.
_YTDLP_TRANSIENT = ("http error 429", "too many requests", "not a bot", "timed out",
                    "connection reset", "temporarily", "try again later", "http error 5")
_YTDLP_PERMANENT = ("video unavailable", "private video", "has been removed", "no longer available",
                    "is not available", "been terminated", "does not exist", "http error 404",
                    "http error 410", "unsupported url", "copyright", "confirm your age",
                    "requested format is not available")


@dataclass(frozen=True)
class FetchResult:
    """Where one video ended up. ``status`` is "cached", "downloaded" or "unavailable";
    ``source`` is "cache", "local", "mirror" or "youtube"; ``reason`` says why it is unavailable.
    """

    id: str
    status: str
    path: Path | None
    source: str | None
    reason: str | None

    def to_json(self) -> dict:
        return {"id": self.id, "status": self.status,
                "path": None if self.path is None else str(self.path),
                "source": self.source, "reason": self.reason}


class _Transient(Exception):
    """Worth another try after a pause (``retry_after`` seconds when the server said so)."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class _Permanent(Exception):
    """The source does not have the video: recorded in unavailable.json."""


class _GaveUp(Exception):
    """Nothing from this source on this run (too large, undecodable, retries spent): not recorded,
    since another run or another configuration may succeed."""


class _Progress:
    """Two tqdm bars on stderr, bytes and videos; disabled bars cost nothing."""

    def __init__(self, videos: int, enabled: bool):
        self.videos = tqdm(total=videos, desc="videos", unit="video", position=0,
                           disable=not enabled, dynamic_ncols=True)
        self.bytes = tqdm(desc="bytes", unit="B", unit_scale=True, unit_divisor=1024, position=1,
                          disable=not enabled, dynamic_ncols=True)

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


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _http_error(status: int, reason: str, retry_after: str | None) -> Exception:
    message = f"HTTP {status} {reason}".strip()
    if status == 429 or status == 408 or status >= 500:
        return _Transient(message, _parse_retry_after(retry_after))
    return _Permanent(message)


def _ytdlp_error(error: Exception) -> Exception:
    from yt_dlp.networking.exceptions import HTTPError, TransportError

    message = re.sub(r"^ERROR:\s*", "", str(error))
    cause = getattr(error, "exc_info", None) and error.exc_info[1]
    if isinstance(cause, HTTPError):
        if cause.status in (404, 410, 429) or cause.status >= 500:
            return _http_error(cause.status, "", cause.response.headers.get("Retry-After"))
        # YouTube answers 403 to stale signatures and blocked clients: not a verdict on the video
        return _GaveUp(message)
    lowered = message.lower()
    if isinstance(cause, TransportError) or any(p in lowered for p in _YTDLP_TRANSIENT):
        return _Transient(message)
    if any(p in lowered for p in _YTDLP_PERMANENT):
        return _Permanent(message)
    return _Transient(message)


class _YtdlpLog:
    """Collects yt-dlp's messages instead of printing them (it reports a skipped download,
    such as one over max_filesize, only as a message)."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def debug(self, message: str) -> None:
        self.messages.append(message)

    info = warning = error = debug


class VideoCache:
    """Resolve AVA video ids to local files through local folder, CVDF mirror and YouTube.

    ``None`` for ``sources``, ``mirror`` or ``youtube_template`` reads the environment variables
    AVA_KEYFRAMES_SOURCES, AVA_KEYFRAMES_MIRROR and AVA_KEYFRAMES_YOUTUBE_TEMPLATE, then the
    defaults. ``timeout`` bounds each request (seconds), ``max_bytes`` each file; a failure is
    retried ``retries`` times after ``backoff * 2**n`` seconds (``max_wait`` at most), or after
    the server's Retry-After. ``sleep`` is how waiting is done (tests pass a recorder).
    Nothing is written until a download starts, and nothing outside ``cache_dir``.
    """

    def __init__(self, cache_dir: str | os.PathLike, sources: str | Sequence[str] | None = None,
                 mirror: str | None = None, youtube_template: str | None = None,
                 manual_dir: str | os.PathLike | None = None, retry_unavailable: bool = False, *,
                 timeout: float = 60.0, max_bytes: int = DEFAULT_MAX_BYTES, retries: int = 5,
                 backoff: float = 2.0, max_wait: float = 300.0,
                 sleep: Callable[[float], None] = time.sleep):
        self.cache_dir = Path(cache_dir).absolute()
        self.videos_dir = self.cache_dir / "videos"
        self.partial_dir = self.cache_dir / "partial"
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
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.retries = retries
        self.backoff = backoff
        self.max_wait = max_wait
        self._sleep = sleep
        self._lock = threading.Lock()
        self._unavailable = self._read_unavailable()

    # --- public ---

    def fetch(self, video_id: str) -> FetchResult:
        """Return the video's local file, downloading it if needed. Raises ValueError for an
        invalid id; an unavailable video is a result, not an exception."""
        return self._fetch(check_video_id(video_id), _Progress(0, enabled=False))

    def fetch_many(self, ids: Iterable[str], jobs: int = 4, progress: bool = True
                   ) -> list[FetchResult]:
        """Fetch each distinct id (first-seen order) with ``jobs`` threads; all ids are
        validated before anything is fetched."""
        unique = list(dict.fromkeys(check_video_id(video_id) for video_id in ids))
        if jobs < 1:
            raise ValueError(f"jobs must be at least 1, not {jobs}")
        bars = _Progress(len(unique), enabled=progress)

        def one(video_id: str) -> FetchResult:
            result = self._fetch(video_id, bars)
            bars.videos.update(1)
            return result

        pool = ThreadPoolExecutor(max_workers=jobs)
        try:
            return list(pool.map(one, unique))
        finally:  # on Ctrl-C, start nothing new; partial files stay for the next run
            pool.shutdown(wait=False, cancel_futures=True)
            bars.close()

    # --- resolution ---

    def _fetch(self, video_id: str, progress: _Progress) -> FetchResult:
        cached = _first_file(self.videos_dir, video_id)
        if cached is not None:
            return FetchResult(video_id, "cached", cached, "cache", None)
        reasons = []
        for source in self.sources:
            if source == "local":
                if self.manual_dir is None:
                    continue
                local = _first_file(self.manual_dir / "videos", video_id)
                if local is not None:
                    return FetchResult(video_id, "cached", local, "local", None)
                reasons.append(f"local: not in {self.manual_dir / 'videos'}")
                continue
            known = self._unavailable.get((video_id, source))
            if known is not None and not self.retry_unavailable:
                reasons.append(f"{source}: {known['reason']} (recorded {known['time']})")
                continue
            download = self._from_mirror if source == "mirror" else self._from_youtube
            try:
                path = download(video_id, progress)
            except _Permanent as error:
                self._record_unavailable(video_id, source, str(error))
                reasons.append(f"{source}: {error}")
            except (_GaveUp, _Transient) as error:
                reasons.append(f"{source}: {error}")
            else:
                if known is not None:
                    self._record_unavailable(video_id, source, None)
                return FetchResult(video_id, "downloaded", path, source, None)
        return FetchResult(video_id, "unavailable", None, None, "; ".join(reasons))

    def _retrying(self, attempt: Callable[[], Path], done_bytes: Callable[[], int]) -> Path:
        """Run ``attempt`` until it returns, waiting between transient failures; an attempt
        that got further (more bytes on disk) resets the count, so a long download over a
        flaky link is not abandoned while it is making progress."""
        failures = 0
        while True:
            before = done_bytes()
            try:
                return attempt()
            except _Transient as error:
                failures = 1 if done_bytes() > before else failures + 1
                if failures > self.retries:
                    raise _GaveUp(f"{error} (gave up after {failures} failed attempts)") from None
                wait = error.retry_after
                if wait is None:
                    wait = self.backoff * 2 ** (failures - 1)
                self._sleep(min(wait, self.max_wait))

    def _finish(self, part: Path, final: Path) -> Path:
        """Move a complete download into the cache once ffmpeg decodes it."""
        try:
            check_video(part)
        except VideoError as error:
            part.unlink(missing_ok=True)
            raise _GaveUp(str(error)) from None
        self.videos_dir.mkdir(parents=True, exist_ok=True)
        os.replace(part, final)
        return final

    # --- mirror ---

    def _from_mirror(self, video_id: str, progress: _Progress) -> Path:
        listed = mirror_file_names().get(video_id)
        names = [listed] if listed else [video_id + ext for ext in VIDEO_EXTENSIONS]
        missing = []
        for name in names:
            url = self.mirror + urllib.parse.quote(name)
            part = self.partial_dir / name
            try:
                self._retrying(lambda url=url, part=part: self._http_get(url, part, progress),
                               lambda part=part: part.stat().st_size if part.exists() else 0)
            except _Permanent as error:
                missing.append(f"{name}: {error}")
                continue
            return self._finish(part, self.videos_dir / name)
        raise _Permanent("; ".join(missing))

    def _http_get(self, url: str, part: Path, progress: _Progress) -> Path:
        """One request: append to ``part`` from where it ends (Range), or start it over
        when the server ignores the range. Raises _Transient for anything a retry may fix."""
        offset = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": _USER_AGENT}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            response = urllib.request.urlopen(  # noqa: S310 (scheme checked in __init__)
                urllib.request.Request(url, headers=headers), timeout=self.timeout)
        except urllib.error.HTTPError as error:
            with error:
                if error.code == 416 and offset:
                    part.unlink()
                    raise _Transient(f"{url}: range not satisfiable, starting over") from None
                raise _http_error(error.code, error.reason, error.headers.get("Retry-After")
                                  ) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            raise _Transient(f"{url}: {getattr(error, 'reason', error)}") from None
        with response:
            start, total = 0, response.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            if response.status == 206:
                match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
                if not match or int(match[1]) != offset:
                    part.unlink(missing_ok=True)
                    raise _Transient(f"{url}: unusable Content-Range, starting over")
                start = offset
                total = int(match[3]) if match[3] != "*" else None
            if total is not None and total > self.max_bytes:
                part.unlink(missing_ok=True)
                raise _GaveUp(f"{url}: {total} bytes is over the limit of {self.max_bytes}")
            part.parent.mkdir(parents=True, exist_ok=True)
            size = start
            with open(part, "ab" if start else "wb") as out:
                try:
                    while chunk := response.read(_CHUNK):
                        size += len(chunk)
                        if size > self.max_bytes:
                            break
                        out.write(chunk)
                        progress.bytes.update(len(chunk))
                except (OSError, http.client.HTTPException) as error:
                    raise _Transient(f"{url}: interrupted at byte {size} ({error!r})") from None
            if size > self.max_bytes:
                part.unlink()
                raise _GaveUp(f"{url}: over the limit of {self.max_bytes} bytes")
            if total is not None and size != total:
                raise _Transient(f"{url}: connection closed at byte {size} of {total}")
        return part

    # --- youtube ---

    def _from_youtube(self, video_id: str, progress: _Progress) -> Path:
        work = self.partial_dir / f"{video_id}.ytdl"
        url = self.youtube_template.replace("{id}", video_id)
        try:
            file = self._retrying(lambda: self._ytdlp_get(url, work, progress),
                                  lambda: sum(p.stat().st_size for p in work.glob("*")))
            final = self._finish(file, self.videos_dir / (video_id + file.suffix))
        except (_Permanent, _GaveUp):
            if work.is_dir() and not any(work.iterdir()):  # else kept for yt-dlp to resume
                work.rmdir()
            raise
        shutil.rmtree(work, ignore_errors=True)
        return final

    def _ytdlp_get(self, url: str, work: Path, progress: _Progress) -> Path:
        import yt_dlp

        work.mkdir(parents=True, exist_ok=True)
        log = _YtdlpLog()
        seen: dict[str, int] = {}

        def on_progress(status: dict) -> None:
            done = status.get("downloaded_bytes") or 0
            progress.bytes.update(max(0, done - seen.get(status.get("filename", ""), 0)))
            seen[status.get("filename", "")] = done

        options = {
            "outtmpl": {"default": "video.%(ext)s"},  # not from the video's metadata
            "paths": {"home": str(work), "temp": str(work)},
            # one file that has video (audio is not needed), so no ffmpeg merge; 720p is plenty
            "format": "bv*[ext=mp4][height<=?720]/bv*[ext=mp4]/bv*[ext=webm]",
            "noplaylist": True, "quiet": True, "noprogress": True, "logger": log,
            "progress_hooks": [on_progress], "socket_timeout": self.timeout,
            "max_filesize": self.max_bytes, "ffmpeg_location": ffmpeg_binary(),
            "cachedir": False, "updatetime": False, "continuedl": True,
            "retries": 0, "fragment_retries": 0, "extractor_retries": 0,
        }
        try:
            with yt_dlp.YoutubeDL(options) as ydl:
                info = ydl.extract_info(url, download=True)
        except yt_dlp.utils.YoutubeDLError as error:
            raise _ytdlp_error(error) from None
        paths = [Path(d["filepath"]) for d in (info or {}).get("requested_downloads", [])
                 if d.get("filepath")]
        files = [p for p in paths if p.resolve().parent == work.resolve()
                 and p.suffix in VIDEO_EXTENSIONS and p.is_file()]
        if not files:
            skipped = [m for m in log.messages if "max-filesize" in m]
            raise _GaveUp(skipped[-1] if skipped else f"{url}: yt-dlp gave no "
                          f"{'/'.join(VIDEO_EXTENSIONS)} file")
        return files[0]

    # --- unavailable.json ---

    @property
    def _unavailable_path(self) -> Path:
        return self.cache_dir / UNAVAILABLE_FILE

    def _read_unavailable(self) -> dict[tuple[str, str], dict]:
        try:
            entries = json.loads(self._unavailable_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            raise ValueError(f"{self._unavailable_path}: unreadable ({error})") from None
        try:
            return {(entry["id"], entry["source"]): entry for entry in entries}
        except (KeyError, TypeError):
            raise ValueError(f"{self._unavailable_path}: expected a JSON list of "
                             '{"id", "source", "reason", "time"} objects') from None

    def _record_unavailable(self, video_id: str, source: str, reason: str | None) -> None:
        """Add (or with ``reason=None`` remove) an entry; merged with the file's current
        content and replaced atomically, so concurrent runs lose at most a race, never the file.
        """
        with self._lock:
            entries = self._read_unavailable()
            if reason is None:
                entries.pop((video_id, source), None)
            else:
                entries[(video_id, source)] = {
                    "id": video_id, "source": source, "reason": reason,
                    "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=self.cache_dir, prefix=".unavailable.")
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump([entries[key] for key in sorted(entries)], out, indent=1)
            os.replace(temp, self._unavailable_path)
            self._unavailable = entries


def _first_file(folder: Path, video_id: str) -> Path | None:
    for ext in VIDEO_EXTENSIONS:
        path = folder / (video_id + ext)
        if path.is_file():
            return path
    return None
