"""The fetch path's settings as one value, resolved once where a build or download starts.

:meth:`FetchSettings.resolve` reads flags, then the builder config, then the environment
(``AVA_KEYFRAMES_*``), then the defaults. The value is frozen, validated when it is made and
picklable: the builder carries it into its Beam transforms, so a worker's own environment
cannot change what it fetches, from where, or under which limits. Nothing else on the fetch
path reads the environment.
"""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ava_keyframes.remote import Limits

if TYPE_CHECKING:
    from ava_keyframes.sources import VideoCache

SOURCE_NAMES = ("local", "mirror", "youtube")
FETCH_MODES = ("window", "whole")
DEFAULT_MIRROR = "https://s3.amazonaws.com/ava-dataset/trainval/"
DEFAULT_YOUTUBE_TEMPLATE = "https://www.youtube.com/watch?v={id}"
CACHE_ENV = "AVA_KEYFRAMES_CACHE"
SOURCES_ENV = "AVA_KEYFRAMES_SOURCES"
MIRROR_ENV = "AVA_KEYFRAMES_MIRROR"
YOUTUBE_TEMPLATE_ENV = "AVA_KEYFRAMES_YOUTUBE_TEMPLATE"
FETCH_ENV = "AVA_KEYFRAMES_FETCH"
ALLOW_MISSING_ENV = "AVA_KEYFRAMES_ALLOW_MISSING"


def parse_sources(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"local,mirror"`` or ``["local", "mirror"]`` -> validated tuple of source names."""
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [name.strip().lower() for name in names if name.strip()]
    unknown = [name for name in names if name not in SOURCE_NAMES]
    if unknown or not names:
        raise ValueError(f"invalid sources {value!r}: choose from {', '.join(SOURCE_NAMES)}")
    return tuple(dict.fromkeys(names))


@dataclasses.dataclass(frozen=True)
class FetchSettings:
    """Where videos come from, in which order, into which cache, under which limits.

    Checked when made (ValueError names a bad setting): sources from :data:`SOURCE_NAMES`
    (a comma-separated string is accepted), an http(s) mirror, a YouTube URL template with
    ``{id}``, a fetch mode from :data:`FETCH_MODES`. ``cache_dir`` and ``manual_dir`` may be
    given as paths; they are kept as strings.
    """

    cache_dir: str
    manual_dir: str | None = None
    sources: tuple[str, ...] = SOURCE_NAMES
    mirror: str = DEFAULT_MIRROR
    youtube_template: str = DEFAULT_YOUTUBE_TEMPLATE
    fetch: str = FETCH_MODES[0]
    limits: Limits = Limits()
    allow_missing: bool = False

    def __post_init__(self) -> None:
        normal = {"cache_dir": os.fspath(self.cache_dir),
                  "manual_dir": None if self.manual_dir is None else os.fspath(self.manual_dir),
                  "sources": parse_sources(self.sources),
                  "fetch": str(self.fetch).strip().lower()}
        for name, value in normal.items():
            object.__setattr__(self, name, value)
        if urllib.parse.urlsplit(self.mirror).scheme not in ("http", "https"):
            raise ValueError(f"invalid mirror {self.mirror!r}: expected an http(s) URL")
        if "{id}" not in self.youtube_template:
            raise ValueError(f"invalid YouTube URL template {self.youtube_template!r}: "
                             "it must contain {id}")
        if self.fetch not in FETCH_MODES:
            raise ValueError(f"invalid fetch mode {self.fetch!r}: choose from "
                             f"{', '.join(FETCH_MODES)}")

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

        return cls(
            cache_dir=str(pick("cache_dir", CACHE_ENV, cache_dir)),
            manual_dir=manual_dir,
            sources=pick("sources", SOURCES_ENV, SOURCE_NAMES),
            mirror=pick("mirror", MIRROR_ENV, DEFAULT_MIRROR),
            youtube_template=pick("youtube_template", YOUTUBE_TEMPLATE_ENV,
                                  DEFAULT_YOUTUBE_TEMPLATE),
            fetch=pick("fetch", FETCH_ENV, FETCH_MODES[0]),
            limits=_limits(given, environ),
            allow_missing=bool(given.get("allow_missing"))
            or environ.get(ALLOW_MISSING_ENV, "") == "1",
        )

    def video_cache(self, fetch: str | None = None, **hooks: Any) -> VideoCache:
        """The cache these settings describe (``fetch``: another mode for this one call);
        ``hooks`` go to :class:`~ava_keyframes.sources.VideoCache` (``sleep``, ``hosts``,
        ``retry_unavailable``)."""
        from ava_keyframes.sources import VideoCache  # the layer above; imported when used

        settings = self if fetch is None else dataclasses.replace(self, fetch=fetch)
        return VideoCache(settings, **hooks)

    def to_json(self) -> dict:
        """The settings as build_report.json records them."""
        return dataclasses.asdict(self) | {"sources": list(self.sources)}


def _limits(given: Mapping[str, Any], environ: Mapping[str, str]) -> Limits:
    """Limits from ``given`` (flags, config), then ``AVA_KEYFRAMES_<NAME>``, then defaults."""
    chosen = {}
    for field in dataclasses.fields(Limits):
        value = given.get(field.name)
        variable = f"AVA_KEYFRAMES_{field.name.upper()}"
        if value is None and environ.get(variable):
            try:
                value = (int if field.type == "int" else float)(environ[variable])
            except ValueError:
                raise ValueError(f"{variable}={environ[variable]!r}: expected a "
                                 f"{'whole ' if field.type == 'int' else ''}number") from None
        if value is not None:
            chosen[field.name] = value
    return Limits(**chosen)
