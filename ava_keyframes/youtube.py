"""The YouTube source: yt-dlp's Python API, into a work folder of the cache, under the same
limits as every other fetch (read timeout, deadline per file, attempts, size).

yt-dlp is called with a fixed output name (never one made from the video's metadata), so an
id that starts with ``-`` is never read as an option and nothing is written outside the folder.
"""

from __future__ import annotations

import re
from pathlib import Path

from ava_keyframes.cache import VIDEO_EXTENSIONS
from ava_keyframes.media import ffmpeg_binary
from ava_keyframes.remote import (
    Deadline,
    GaveUp,
    Meter,
    Permanent,
    Refused,
    Remote,
    RemoteError,
    Transient,
    parse_retry_after,
)

# yt-dlp reports most failures as text; these decide what is worth retrying.
_TRANSIENT = ("http error 429", "too many requests", "not a bot", "timed out",
              "connection reset", "temporarily", "try again later", "http error 5")
_PERMANENT = ("video unavailable", "private video", "has been removed", "no longer available",
              "is not available", "been terminated", "does not exist", "http error 404",
              "http error 410", "unsupported url", "copyright", "confirm your age",
              "requested format is not available")
# one file that has video (audio is not needed), so no ffmpeg merge; 720p is plenty
_FORMAT = "bv*[ext=mp4][height<=?720]/bv*[ext=mp4]/bv*[ext=webm]"


def download(remote: Remote, url: str, work: Path, meter: Meter) -> Path:
    """Download ``url`` into the folder ``work`` (kept between attempts so that yt-dlp
    resumes); returns the video file. Raises a RemoteError."""
    deadline = Deadline(remote.limits)
    return remote.retrying(lambda: _attempt(remote, url, work, meter, deadline), deadline, url)


class _Log:
    """Collects yt-dlp's messages instead of printing them (it reports a skipped download,
    such as one over max_filesize, only as a message)."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def debug(self, message: str) -> None:
        self.messages.append(message)

    info = warning = error = debug


def _attempt(remote: Remote, url: str, work: Path, meter: Meter, deadline: Deadline) -> Path:
    import yt_dlp

    remote.hosts.check(url)
    log = _Log()
    seen: dict[str, int] = {}

    def on_progress(status: dict) -> None:
        done = status.get("downloaded_bytes") or 0
        meter.add(max(0, done - seen.get(status.get("filename", ""), 0)))
        seen[status.get("filename", "")] = done
        if status.get("total_bytes"):
            deadline.expect(status["total_bytes"])
        if deadline.remaining() <= 0:
            raise yt_dlp.utils.DownloadCancelled(f"deadline of {deadline.seconds:.0f} s passed")
        if remote.cancelled:
            raise yt_dlp.utils.DownloadCancelled("cancelled")

    options = {
        "outtmpl": {"default": "video.%(ext)s"}, "paths": {"home": str(work), "temp": str(work)},
        "format": _FORMAT, "noplaylist": True, "quiet": True, "noprogress": True, "logger": log,
        "progress_hooks": [on_progress], "max_filesize": remote.limits.max_bytes,
        "socket_timeout": min(remote.limits.read_timeout, max(deadline.remaining(), 0.001)),
        "ffmpeg_location": ffmpeg_binary(), "cachedir": False, "updatetime": False,
        "continuedl": True, "retries": 0, "fragment_retries": 0, "extractor_retries": 0,
    }
    try:
        with yt_dlp.YoutubeDL(options) as ydl:
            info = ydl.extract_info(url, download=True)
    except yt_dlp.utils.DownloadCancelled as error:
        raise GaveUp(f"{url}: {error.msg}") from None
    except yt_dlp.utils.YoutubeDLError as error:
        remote.note_unreachable(url, getattr(error, "exc_info", None) and error.exc_info[1])
        raise _error(error) from None
    paths = [Path(d["filepath"]) for d in (info or {}).get("requested_downloads", [])
             if d.get("filepath")]
    files = [p for p in paths if p.resolve().parent == work.resolve()
             and p.suffix in VIDEO_EXTENSIONS and p.is_file() and not p.is_symlink()]
    if not files:
        skipped = [m for m in log.messages if "max-filesize" in m]
        raise Refused(skipped[-1] if skipped else f"{url}: yt-dlp gave no "
                      f"{'/'.join(VIDEO_EXTENSIONS)} file")
    return files[0]


def _error(error: Exception) -> RemoteError:
    from yt_dlp.networking.exceptions import HTTPError, TransportError

    message = re.sub(r"^ERROR:\s*", "", str(error))
    cause = getattr(error, "exc_info", None) and error.exc_info[1]
    if isinstance(cause, HTTPError):
        status = cause.status
        if status in (408, 429) or status >= 500:
            return Transient(message, parse_retry_after(cause.response.headers.get("Retry-After")))
        if status in (404, 410):
            return Permanent(message)
        # YouTube answers 403 to stale signatures and blocked clients: not a verdict on the video
        return GaveUp(message)
    lowered = message.lower()
    if isinstance(cause, TransportError) or any(p in lowered for p in _TRANSIENT):
        return Transient(message)
    if any(p in lowered for p in _PERMANENT):
        return Permanent(message)
    return Transient(message)
