"""The fetch path's settings as one value, resolved once where a build or download starts.

:meth:`FetchSettings.resolve` reads flags, then the builder config, then the environment
(``AVA_KEYFRAMES_*``), then the defaults. The value is frozen and picklable: the builder
carries it into its Beam transforms, so a worker's own environment cannot change what it
fetches, from where, or under which limits.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from ava_keyframes.remote import Limits
from ava_keyframes.sources import (
    DEFAULT_MIRROR,
    DEFAULT_YOUTUBE_TEMPLATE,
    FETCH_ENV,
    FETCH_MODES,
    MIRROR_ENV,
    SOURCE_NAMES,
    SOURCES_ENV,
    YOUTUBE_TEMPLATE_ENV,
    VideoCache,
    parse_sources,
)

CACHE_ENV = "AVA_KEYFRAMES_CACHE"
ALLOW_MISSING_ENV = "AVA_KEYFRAMES_ALLOW_MISSING"


@dataclasses.dataclass(frozen=True)
class FetchSettings:
    """Where videos come from, in which order, into which cache, under which limits."""

    cache_dir: str
    manual_dir: str | None = None
    sources: tuple[str, ...] = tuple(SOURCE_NAMES)
    mirror: str = DEFAULT_MIRROR
    youtube_template: str = DEFAULT_YOUTUBE_TEMPLATE
    fetch: str = FETCH_MODES[0]
    limits: Limits = Limits()
    allow_missing: bool = False

    @classmethod
    def resolve(cls, *, cache_dir: str | os.PathLike, manual_dir: str | os.PathLike | None = None,
                config: Mapping[str, Any] | None = None, flags: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] = os.environ) -> FetchSettings:
        """The settings from ``flags``, then ``config``, then ``environ``, then the defaults
        (a None value counts as not given). ``cache_dir``: used unless AVA_KEYFRAMES_CACHE or
        a ``cache_dir`` flag names another. ValueError names a bad setting."""
        given = {**{k: v for k, v in (config or {}).items() if v is not None},
                 **{k: v for k, v in (flags or {}).items() if v is not None}}

        def pick(name: str, variable: str, default: Any) -> Any:
            return given.get(name) or environ.get(variable) or default

        limit_names = {field.name for field in dataclasses.fields(Limits)}
        limits = Limits.from_env(environ, **{k: v for k, v in given.items() if k in limit_names})
        settings = cls(
            cache_dir=str(pick("cache_dir", CACHE_ENV, cache_dir)),
            manual_dir=None if manual_dir is None else str(manual_dir),
            sources=parse_sources(pick("sources", SOURCES_ENV, SOURCE_NAMES)),
            mirror=pick("mirror", MIRROR_ENV, DEFAULT_MIRROR),
            youtube_template=pick("youtube_template", YOUTUBE_TEMPLATE_ENV,
                                  DEFAULT_YOUTUBE_TEMPLATE),
            fetch=str(pick("fetch", FETCH_ENV, FETCH_MODES[0])).strip().lower(),
            limits=limits,
            allow_missing=bool(given.get("allow_missing"))
            or environ.get(ALLOW_MISSING_ENV, "") == "1",
        )
        settings.video_cache()  # validates mirror, template and mode; writes nothing
        return settings

    def video_cache(self, fetch: str | None = None, **kwargs: Any) -> VideoCache:
        """The cache these settings describe (``fetch``: another mode for this one call);
        ``kwargs`` go to :class:`VideoCache` (``sleep``, ``hosts``, ``retry_unavailable``)."""
        return VideoCache(self.cache_dir, sources=self.sources, mirror=self.mirror,
                          youtube_template=self.youtube_template, manual_dir=self.manual_dir,
                          limits=self.limits, fetch=fetch or self.fetch, **kwargs)

    def to_json(self) -> dict:
        """The settings as build_report.json records them."""
        return dataclasses.asdict(self) | {"sources": list(self.sources)}
