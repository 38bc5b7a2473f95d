"""Each source of a video as a value, one small class per source behind :class:`Source`.

- :class:`LocalFolder`: ``<manual_dir>/videos/<id>.<ext>``, used in place (never copied); an
  undecodable file there is passed over for the next source;
- :class:`Mirror`: the CVDF mirror over HTTP(S); file names come from the official list
  bundled with the package, ids not in it are tried as ``.mkv``, ``.mp4``, ``.webm``. When the
  caller names the seconds it needs and the fetch mode is "window", only the window of the
  video that they need is fetched (:mod:`ava_keyframes.window`, into ``windows/``), extended
  by what is missing when later seconds fall outside it; otherwise the whole file
  (:mod:`ava_keyframes.whole`, into ``videos/``). A window the server's answers cannot make
  (no byte ranges, a faulty ranged answer, a redirect loop, a file no window can be cut
  from) falls back to one whole-file fetch, noted as ``fetched whole: <why>``;
- :class:`YouTube`: yt-dlp's Python API on the URL made from a template, always whole.

A source says what it cannot do by raising the :class:`~ava_keyframes.remote.RemoteError`
family: Permanent when it does not have the video (local: ``not in <folder>``; mirror: HTTP
404 for every name tried), Refused for a file that does not decode or is over the limit,
Transient/GaveUp for a cause that may pass. A downloaded file enters the cache only once its
size matches, its first frame decodes and it demuxes cleanly through the last second needed
(to its end when no seconds are named). Which source is asked, and when, is
:class:`~ava_keyframes.sources.VideoCache`'s business; how files are written is
:mod:`ava_keyframes.cache`'s.
"""

from __future__ import annotations

import abc
import functools
import urllib.parse
from collections.abc import Sequence
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import ClassVar, NamedTuple

from ava_keyframes import youtube
from ava_keyframes.cache import VIDEO_EXTENSIONS, CacheDir, Partial, check_regular, video_file
from ava_keyframes.media import VideoError, check_video
from ava_keyframes.remote import (
    GaveUp,
    Meter,
    NoRanges,
    Permanent,
    Refused,
    Remote,
    RemoteError,
    ServerFault,
)
from ava_keyframes.settings import FetchSettings
from ava_keyframes.sidecar import covering_window, read_window, sidecar_path
from ava_keyframes.whole import download_whole
from ava_keyframes.window import WindowError, fetch_window


class Got(NamedTuple):
    """A file a source produced: how (``mode``: "local", "cache", "whole" or "window"), its
    origin, a note on how it was fetched, and whether it holds the video to its end."""

    path: Path
    mode: str
    origin: Fraction | None = None
    note: str | None = None
    to_end: bool = True


class Source(abc.ABC):
    """One place a video can come from. ``downloads``: it writes into the cache (the caller
    holds the video's writer lock around :meth:`get`) and its Permanent answers are worth
    recording in ``unavailable.json``."""

    name: ClassVar[str]
    downloads: ClassVar[bool] = True

    def held(self, video_id: str, seconds: Sequence[float] | None) -> Got | None:
        """What the cache already holds from this source for ``seconds``, found by reading
        alone (no lock, no write, no request)."""
        return None

    @abc.abstractmethod
    def get(self, video_id: str, seconds: Sequence[float] | None, meter: Meter) -> Got:
        """The video's file, answering ``seconds`` (None: the whole video); a RemoteError
        says why not. ``meter`` counts the bytes received."""


class LocalFolder(Source):
    """``<manual_dir>/videos/<id>.<ext>``, used in place. Two files for the id: CacheError."""

    name = "local"
    downloads = False

    def __init__(self, manual_dir: str | Path):
        self.folder = Path(manual_dir) / "videos"

    def get(self, video_id: str, seconds: Sequence[float] | None, meter: Meter) -> Got:
        path = video_file(self.folder, video_id, Path.is_file)
        if path is None:
            raise Permanent(f"not in {self.folder}")
        try:
            check_video(path, until=0)
        except VideoError as error:
            raise Refused(str(error)) from None
        return Got(path, "local")


class Mirror(Source):
    """The CVDF mirror at ``base``: windows (``mode`` "window") or whole files."""

    name = "mirror"

    def __init__(self, base: str, mode: str, store: CacheDir, remote: Remote):
        self.base = base if base.endswith("/") else base + "/"
        self.windowed = mode == "window"
        self.store = store
        self.remote = remote
        self.windows = store.root / "windows"

    def held(self, video_id: str, seconds: Sequence[float] | None) -> Got | None:
        """A window in the cache, cut from the mirror, that covers ``seconds``, so that a
        read-only cache serves what it holds."""
        if not seconds or not self.windowed:
            return None
        urls = {name: self._url(name) for name in _mirror_names(video_id)}
        window = covering_window(self.windows, urls, seconds)
        return None if window is None else Got(window.path, "cache", window.origin,
                                               to_end=window.end is None)

    def get(self, video_id: str, seconds: Sequence[float] | None, meter: Meter) -> Got:
        names = _mirror_names(video_id)
        window = bool(seconds) and self.windowed
        if window:  # a name with a window in the cache first: it may need no request
            names.sort(key=lambda name: read_window(self.windows / name) is None)
        missing = []
        for name in names:
            try:
                if window:
                    return self._window(name, meter, seconds)
                return self._whole(name, meter, seconds)
            except Permanent as error:
                missing.append(str(error))
        raise Permanent("; ".join(missing))

    def _url(self, name: str) -> str:
        return self.base + urllib.parse.quote(name)

    def _window(self, name: str, meter: Meter, seconds: Sequence[float]) -> Got:
        """The window of ``name`` that ``seconds`` need, in ``windows/<name>`` (what the cached
        window lacks, if anything); see :meth:`_whole_instead` for when it cannot be made."""
        path = self.store.folder(self.windows) / name
        try:
            window = fetch_window(self._url(name), seconds, path, remote=self.remote,
                                  meter=meter, partial_dir=self.store.folder(self.store.partial))
        except (NoRanges, ServerFault, WindowError) as error:
            if isinstance(error, WindowError) and error.transient:
                raise
            return self._whole_instead(name, meter, seconds, error)
        if not window.requests:
            return Got(path, "cache", window.origin, to_end=window.end is None)
        try:
            # a window to the video's end is checked to its end (the demuxer's, not a guess)
            _check_decodes(path, None if window.end is None else seconds, window.origin)
        except Refused:
            path.unlink(missing_ok=True)
            sidecar_path(path).unlink(missing_ok=True)
            raise
        return Got(path, "window", window.origin, to_end=window.end is None)

    def _whole_instead(self, name: str, meter: Meter, seconds: Sequence[float],
                       why: RemoteError) -> Got:
        """The fallback rule for a window the server's answers could not make (no ranges, a
        faulty ranged answer, a redirect loop, a file no window can be cut from): one
        whole-file fetch. If that fails too, the video is lost for this run (transient),
        never recorded as unavailable: a server fault is no proof that it is gone."""
        try:
            got = self._whole(name, meter, seconds)
        except RemoteError as error:
            raise GaveUp(f"no window ({why}), and the whole file failed too ({error})") from None
        return got._replace(note=f"fetched whole: {why}")

    def _whole(self, name: str, meter: Meter, seconds: Sequence[float] | None) -> Got:
        """The whole file ``name``, verified, into ``videos/<name>``."""
        partial = Partial(self.store.folder(self.store.partial), name)
        try:
            download_whole(self.remote, self._url(name), partial, meter)
            _check_decodes(partial.path, seconds)
        except RemoteError as error:
            if not error.transient or partial.length == 0:  # nothing worth resuming
                partial.discard()
            raise
        finally:
            partial.close()
        final = self.store.publish(partial.path, name)
        partial.record.unlink(missing_ok=True)
        return Got(final, "whole")


class YouTube(Source):
    """yt-dlp on ``template`` with ``{id}`` replaced, the whole file into ``videos/``."""

    name = "youtube"

    def __init__(self, template: str, store: CacheDir, remote: Remote):
        self.template = template
        self.store = store
        self.remote = remote

    def get(self, video_id: str, seconds: Sequence[float] | None, meter: Meter) -> Got:
        work = self.store.folder(self.store.partial / f"{video_id}.ytdl")
        for path in work.iterdir():
            check_regular(path)
        try:
            file = youtube.download(self.remote, self.template.replace("{id}", video_id),
                                    work, meter)
            _check_decodes(file, seconds)
        except RemoteError as error:
            if not error.transient or not any(work.iterdir()):  # nothing worth resuming
                _remove_folder(work)
            raise
        final = self.store.publish(file, video_id + file.suffix)
        _remove_folder(work)
        return Got(final, "whole")


def make_sources(settings: FetchSettings, store: CacheDir, remote: Remote
                 ) -> tuple[Source, ...]:
    """The sources ``settings`` name, in their order; the local folder only where
    ``settings`` give a manual dir."""
    made: list[Source] = []
    for name in settings.sources:
        if name == "local" and settings.manual_dir is not None:
            made.append(LocalFolder(settings.manual_dir))
        elif name == "mirror":
            made.append(Mirror(settings.mirror, settings.fetch, store, remote))
        elif name == "youtube":
            made.append(YouTube(settings.youtube_template, store, remote))
    return tuple(made)


@functools.cache
def mirror_file_names() -> dict[str, str]:
    """Video id -> file name on the CVDF mirror, from the bundled official list."""
    text = (resources.files("ava_keyframes") / "data" / "ava_file_names_trainval_v2.1.txt"
            ).read_text(encoding="utf-8")
    names = (line.strip() for line in text.splitlines())
    return {name.rsplit(".", 1)[0]: name for name in names if name}


def _mirror_names(video_id: str) -> list[str]:
    listed = mirror_file_names().get(video_id)
    return [listed] if listed else [video_id + ext for ext in VIDEO_EXTENSIONS]


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
