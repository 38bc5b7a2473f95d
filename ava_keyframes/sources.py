"""The video cache: one video id in, one local, decodable video file out.

:class:`VideoCache` holds the orchestration only: a video already in the cache is returned
before any source is asked; then the sources (:mod:`ava_keyframes.fetchers`: local folder,
CVDF mirror, YouTube) are tried in the order the settings give, and the first that yields a
file wins. All it uses comes from one :class:`~ava_keyframes.settings.FetchSettings` value
(sources, mirror, template, cache location, fetch mode, limits); it never reads the
environment. Downloads go through :mod:`ava_keyframes.cache` (one writer per video, verified
resumable partials, complete files only in ``videos/``) and :mod:`ava_keyframes.remote` (time,
size and attempt limits).

Failures never stop a batch. Transient ones (timeouts, resets, HTTP 5xx, 429, deadlines,
unreachable hosts, a full disk) are retried within the limits, then reported with
``transient=True``; so are server faults (a redirect loop, a ranged answer that does not fit
its request: a window then falls back to one whole-file fetch) and 4xx answers other than 404
and 410. Permanent ones (HTTP 404, 410, a removed or private YouTube video) are recorded per
(id, source) in ``<cache>/unavailable.json`` and that source is skipped for that id on later
runs, unless ``retry_unavailable``. A file over the size limit or one that does not decode is
given up for this run only. A cache that cannot be used safely raises CacheError; two files
for one id (an ``.mkv`` and an ``.mp4``, locally or in the cache) are refused in one line
naming both.

Ids are checked with :func:`ava_keyframes.annotations.check_video_id` before any path, URL or
process is made from them. :func:`download` is ``ava-keyframes download`` as a library call:
the videos of an id list or an annotation CSV into the cache.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from tqdm import tqdm

from ava_keyframes.annotations import check_video_id, read_annotations
from ava_keyframes.cache import CacheDir, Unavailable
from ava_keyframes.fetchers import Got, Source, make_sources
from ava_keyframes.remote import Hosts, Meter, Permanent, Remote, RemoteError
from ava_keyframes.settings import FetchSettings


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


class VideoCache:
    """Resolve AVA video ids to local files through the sources ``settings`` name.

    ``retry_unavailable``: ask a source again for an id it was recorded not to have.
    ``sleep`` is how waiting between attempts is done (tests pass a recorder); ``hosts``
    remembers unreachable hosts (the process's by default). Nothing is written until a
    download starts, and nothing outside ``settings.cache_dir``. The usual way to get one is
    :meth:`FetchSettings.video_cache`.
    """

    def __init__(self, settings: FetchSettings, *, retry_unavailable: bool = False,
                 sleep: Callable[[float], object] = time.sleep, hosts: Hosts | None = None):
        self.settings = settings
        self.store = CacheDir(settings.cache_dir)
        self.cache_dir = self.store.root
        self.retry_unavailable = retry_unavailable
        self.remote = Remote(settings.limits, sleep=sleep, hosts=hosts)
        self.sources: tuple[Source, ...] = make_sources(settings, self.store, self.remote)
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
            known = self.unavailable.get(video_id, source.name) if source.downloads else None
            if known is not None and not self.retry_unavailable:
                reasons.append(f"{source.name}: {known['reason']} (recorded {known['time']})")
                continue
            try:
                got = self._get(source, video_id, seconds, meter)
            except Permanent as error:
                if source.downloads:
                    self.unavailable.record(video_id, source.name, str(error))
                reasons.append(f"{source.name}: {error}")
            except RemoteError as error:
                reasons.append(f"{source.name}: {error}")
                transient = transient or error.transient
            else:
                if known is not None:
                    self.unavailable.record(video_id, source.name, None)
                return _result(video_id, source, got, meter)
        return FetchResult(video_id, "unavailable", None, None, "; ".join(reasons),
                           bytes_fetched=meter.bytes, transient=transient)

    def _get(self, source: Source, video_id: str, seconds: Sequence[float] | None,
             meter: Meter) -> Got:
        """One writer per video: under its lock, a file another writer finished meanwhile
        is taken as it is. What a source already holds for ``seconds`` needs no lock."""
        if not source.downloads:
            return source.get(video_id, seconds, meter)
        held = source.held(video_id, seconds)
        if held is not None:
            return held
        with self.store.writer(video_id):
            cached = self.store.cached(video_id)
            if cached is not None:
                return Got(cached, "cache")
            return source.get(video_id, seconds, meter)


def _result(video_id: str, source: Source, got: Got, meter: Meter) -> FetchResult:
    """The result for a file ``source`` produced (or found in the cache on its behalf)."""
    status = "downloaded" if got.mode in ("whole", "window") else "cached"
    where = "cache" if got.mode == "cache" else source.name
    return FetchResult(video_id, status, got.path, where, None, got.origin, got.mode,
                       meter.bytes, note=got.note, to_end=got.to_end)


@dataclass(frozen=True)
class Downloaded:
    """What :func:`download` did: one result per distinct id, in first-seen order."""

    results: tuple[FetchResult, ...]
    cache_dir: Path

    @property
    def counts(self) -> dict[str, int]:
        """Videos per status: cached, downloaded, unavailable."""
        return {status: sum(r.status == status for r in self.results)
                for status in ("cached", "downloaded", "unavailable")}

    @property
    def transient(self) -> int:
        """Videos lost to a cause that may pass: worth running again."""
        return sum(r.transient for r in self.results)

    @property
    def bytes_fetched(self) -> int:
        return sum(r.bytes_fetched for r in self.results)


def download(settings: FetchSettings, *, ids: Iterable[str] | None = None,
             csv: str | os.PathLike | None = None, jobs: int = 4, retry_unavailable: bool = False,
             progress: bool = True) -> Downloaded:
    """Fetch the videos ``ids`` names, or those of the AVA annotation CSV ``csv`` (each only
    for the keyframe seconds it needs, checked to decode through the last of them), into the
    cache ``settings`` describe, e.g. ``download(FetchSettings.resolve(cache_dir="cache"),
    csv="ava_val_v2.2.csv")``. Raises ValueError for no or invalid ids (a CSV row with an
    invalid id is named by file and line), AnnotationError for an unreadable CSV and
    CacheError for a cache that cannot be used; a video not fetched is a result."""
    if (ids is None) == (csv is None):
        raise ValueError("give either ids or csv")
    wanted, seconds = (list(ids), None) if csv is None else _csv_videos(csv)
    if not wanted:
        raise ValueError("no video ids given" if csv is None else f"{csv}: no valid rows "
                         f"(`ava-keyframes inspect {csv}` lists the rejected ones)")
    cache = settings.video_cache(retry_unavailable=retry_unavailable)
    results = cache.fetch_many(wanted, jobs=jobs, progress=progress, seconds=seconds)
    return Downloaded(tuple(results), cache.cache_dir)


def _csv_videos(csv: str | os.PathLike) -> tuple[list[str], dict[str, list[int]]]:
    """The distinct ids of ``csv`` in file order and the keyframe seconds each needs."""
    annotations = read_annotations(csv)
    bad_ids = [str(r) for r in annotations.report if r.field == "video_id"]
    if bad_ids:
        raise ValueError("; ".join(bad_ids))
    seconds: dict[str, list[int]] = {}
    for video_id, second in annotations.keyframes():
        seconds.setdefault(video_id, []).append(second)
    ids = list(annotations.table["video_id"].unique())
    return ids + sorted(set(seconds) - set(ids)), seconds
