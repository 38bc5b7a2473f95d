"""What a build of `ava_keyframes` will do, and what it did (``build_report.json``).

A split's annotations become one ``VideoJob`` per video (decided before any video is
touched); ``VideoWork`` says how a worker fetches and decodes it; each job ends as a
``VideoOutcome`` (keyframes written, and why the others were not); ``build_report`` puts
them together so that every row read and every keyframe annotated is counted once, as
written or under the reason it was not. Last, what a ``tfds build`` command asked for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import re
import sys
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ava_keyframes.annotations import Annotations, Person
from ava_keyframes.cache import open_file
from ava_keyframes.frames import Clip, clip_offsets, extract_clips, extract_keyframes
from ava_keyframes.labelmap import LabelMap
from ava_keyframes.settings import FetchSettings
from ava_keyframes.sources import FetchResult, VideoCache

# Why a keyframe of the CSVs is not in the dataset (keys of ``keyframes_skipped``).
OVER_LIMIT = "over max_per_video"
VIDEO_UNAVAILABLE = "video unavailable"
VIDEO_LOST = "video lost to a transient cause (accepted)"
FRAME_MISSING = "frame not extracted"
NOT_GENERATED = "not generated (generation stopped early)"

_VALUE_PART = re.compile(r":\s|\s'")  # where a rejection reason starts quoting the bad value


def pixel_box(box: Sequence[float], width: int, height: int) -> np.ndarray:
    """Normalized ``[x1, y1, x2, y2]`` -> float32 pixels of a ``width`` x ``height`` image,
    clipped to it. The one place where AVA boxes become pixel boxes."""
    x1, y1, x2, y2 = box
    pixels = np.array([x1 * width, y1 * height, x2 * width, y2 * height], dtype=np.float64)
    return np.clip(pixels, 0, [width, height, width, height]).astype(np.float32)


def select_keyframes(seconds: Sequence[int], limit: int | None) -> list[int]:
    """At most ``limit`` of the sorted ``seconds``, spread evenly: the middle one of each of
    ``limit`` equal runs. Deterministic, and the same whichever machine builds."""
    if limit is None or len(seconds) <= limit:
        return list(seconds)
    n = len(seconds)
    return [seconds[(2 * i + 1) * n // (2 * limit)] for i in range(limit)]


@dataclasses.dataclass(frozen=True)
class VideoJob:
    """One video of one split and the keyframes to take from it."""

    split: str
    video_id: str
    keyframes: tuple[tuple[int, tuple[Person, ...]], ...]  # (second, persons), ascending

    @property
    def seconds(self) -> list[int]:
        return [second for second, _ in self.keyframes]


@dataclasses.dataclass(frozen=True)
class VideoWork:
    """What a worker needs to turn a VideoJob into examples (picklable, for Beam)."""

    fetch: FetchSettings  # resolved on the launching side; the worker's environment is not read
    max_side: int | None
    labelmap: LabelMap
    clip: tuple[int, int, int] | None = None  # (length, stride, short side)
    clip_encoding: str = "h264"  # how an example stores its clip: ava_keyframes.clips

    @property
    def planar_clips(self) -> bool:
        """Whether clips are extracted as the planes an H.264 clip encodes
        (``clips.encode``), rather than RGB frames, each stored as a JPEG."""
        return self.clip_encoding == "h264"

    def video_cache(self, fetch: str | None = None) -> VideoCache:
        """The cache the settings describe (``fetch``: another mode for this call)."""
        return self.fetch.video_cache(fetch)

    def fetch_seconds(self, seconds: list[int]) -> list[float]:
        """The seconds a video is fetched for: its keyframes' and, for clips, the earliest
        and latest clip frame's (never before 0)."""
        if self.clip is None:
            return seconds
        offsets = clip_offsets(*self.clip[:2])
        return [max(0.0, float(seconds[0] + offsets[0])), *seconds,
                float(seconds[-1] + offsets[-1])]

    def extract(self, job: VideoJob, fetched: FetchResult
                ) -> Iterator[tuple[int, np.ndarray, Clip | None]]:
        """(second, keyframe, clip or None) for each of the job's keyframes, from one pass
        over ``fetched``'s file (see :mod:`ava_keyframes.frames`)."""
        if self.clip is None:
            for second, frame in extract_keyframes(fetched.path, job.seconds,
                                                   max_side=self.max_side, origin=fetched.origin,
                                                   to_end=fetched.to_end):
                yield second, frame, None
            return
        length, stride, short_side = self.clip
        for clip in extract_clips(fetched.path, job.seconds, length=length, stride=stride,
                                  clip_short_side=short_side, max_side=self.max_side,
                                  origin=fetched.origin, to_end=fetched.to_end,
                                  planar=self.planar_clips):
            yield clip.second, clip.keyframe, clip


@dataclasses.dataclass
class VideoOutcome:
    """What became of one VideoJob: keyframes written, why the others were not, and how the
    video was fetched."""

    split: str
    video_id: str
    selected: int
    written: int = 0
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    unavailable: str | None = None  # why the video could not be fetched
    transient: bool = False  # ... and that cause may pass (a rebuild may get it)
    error: str | None = None  # why decoding stopped short of the selected keyframes
    fetch_mode: str | None = None
    bytes_fetched: int = 0
    note: str | None = None  # how the fetch differed from what was asked (FetchResult.note)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class SplitPlan:
    """A split's annotation counts (everything decided before any video is touched)."""

    annotation_file: str
    rows_read: int
    rows_used: int
    rows_without_boxes: int
    rows_skipped: dict[str, int]
    rejected_rows: list[str]
    keyframes_annotated: int
    jobs: list[VideoJob]

    @classmethod
    def from_annotations(
        cls, split: str, annotations: Annotations, max_per_video: int | None
    ) -> SplitPlan:
        by_video: dict[str, list[tuple[int, tuple[Person, ...]]]] = {}
        for (video_id, second), persons in annotations.keyframes().items():
            by_video.setdefault(video_id, []).append((second, tuple(persons)))
        jobs = []
        for video_id, keyframes in by_video.items():
            persons_at = dict(keyframes)
            chosen = select_keyframes([second for second, _ in keyframes], max_per_video)
            jobs.append(VideoJob(split, video_id, tuple((s, persons_at[s]) for s in chosen)))
        rows_used = len(annotations.columns["video_id"])
        return cls(
            annotation_file=Path(annotations.path).name,
            rows_read=annotations.rows_read,
            rows_used=rows_used,
            rows_without_boxes=annotations.rows_read - rows_used - len(annotations.report),
            rows_skipped=dict(Counter(_reason_kind(r.field, r.reason) for r in annotations.report)),
            rejected_rows=[str(r) for r in annotations.report],
            keyframes_annotated=sum(len(k) for k in by_video.values()),
            jobs=jobs,
        )


def _reason_kind(field: str, reason: str) -> str:
    """A rejection reason without the offending value ("not a number: '3_'" -> "not a number")."""
    return f"{field}: {_VALUE_PART.split(reason, maxsplit=1)[0]}"


def build_report(
    name: str, options: dict[str, Any], plans: dict[str, SplitPlan],
    outcomes: list[VideoOutcome], decoder: dict[str, str],
) -> dict[str, Any]:
    """The content of ``build_report.json``. Per split, ``rows_read`` = ``rows_used`` +
    ``rows_without_boxes`` + the ``rows_skipped``, and ``keyframes_annotated`` =
    ``keyframes_written`` + the ``keyframes_skipped``: every keyframe is counted once, as
    written or under the reason it was not. ``videos_unavailable``: videos their sources do
    not have; ``videos_lost``: videos lost to a cause that may pass (a rebuild may get them)."""
    report: dict[str, Any] = {"dataset": name, "options": options, "decoder": decoder,
                              "splits": {}}
    done = {(o.split, o.video_id): o for o in outcomes}
    for split, plan in plans.items():
        report["splits"][split] = _split_report(plan, [done.get((split, j.video_id))
                                                       for j in plan.jobs])
    return report


def loss_lines(report: dict[str, Any], report_path: str) -> list[str]:
    """One console line per split that did not write every annotated keyframe: how many
    were not, by reason, and where ``report_path`` has the details (so no loss is told in
    the report alone)."""
    lines = []
    for split, counts in report["splits"].items():
        skipped = counts["keyframes_skipped"]
        if skipped:
            reasons = ", ".join(f"{n} {reason}" for reason, n in skipped.items())
            lines.append(f"{report['dataset']} {split}: {sum(skipped.values())} of "
                         f"{counts['keyframes_annotated']} keyframes not written ({reasons}); "
                         f"see {report_path}")
    return lines


def _split_report(plan: SplitPlan, outcomes: list[VideoOutcome | None]) -> dict[str, Any]:
    skipped: Counter[str] = Counter()
    unavailable, lost, errors, fetched = {}, {}, {}, {}
    for job, outcome in zip(plan.jobs, outcomes, strict=True):
        if outcome is None:  # generation cut short (e.g. --max_examples_per_split)
            skipped[NOT_GENERATED] += len(job.keyframes)
            continue
        skipped.update(outcome.skipped)
        unaccounted = outcome.selected - outcome.written - sum(outcome.skipped.values())
        skipped[NOT_GENERATED] += unaccounted
        if outcome.unavailable:
            (lost if outcome.transient else unavailable)[job.video_id] = outcome.unavailable
        if outcome.error:
            errors[job.video_id] = outcome.error
        if outcome.fetch_mode:
            fetched[job.video_id] = {"fetch_mode": outcome.fetch_mode,
                                     "bytes_fetched": outcome.bytes_fetched}
            if outcome.note:
                fetched[job.video_id]["note"] = outcome.note
    skipped[OVER_LIMIT] = plan.keyframes_annotated - sum(len(j.keyframes) for j in plan.jobs)
    return {
        "annotation_file": plan.annotation_file,
        "rows_read": plan.rows_read,
        "rows_used": plan.rows_used,
        "rows_without_boxes": plan.rows_without_boxes,
        "rows_skipped": dict(sorted(plan.rows_skipped.items())),
        "keyframes_annotated": plan.keyframes_annotated,
        "keyframes_written": sum(o.written for o in outcomes if o is not None),
        "keyframes_skipped": dict(sorted((k, v) for k, v in skipped.items() if v)),
        "videos": len(plan.jobs),
        "videos_unavailable": dict(sorted(unavailable.items())),
        "videos_lost": dict(sorted(lost.items())),
        "video_errors": dict(sorted(errors.items())),
        "videos_fetched": dict(sorted(fetched.items())),
        "bytes_fetched": sum(f["bytes_fetched"] for f in fetched.values()),
        "fetch_modes": dict(sorted(Counter(f["fetch_mode"] for f in fetched.values()).items())),
        "rejected_rows": plan.rejected_rows,
    }


class DataDirBusy(RuntimeError):
    """Another build holds the data dir's lock."""


@contextlib.contextmanager
def build_lock(root: str, name: str) -> Iterator[None]:
    """Hold ``<data dir>/.<name>.build.lock`` for a build, refusing a second build into the
    same data dir (``DataDirBusy``, one line) while the first runs: it would otherwise end
    in a FileExistsError traceback when TFDS moves its finished folder into place. Local
    data dirs only (a ``gs://`` one has no file locks)."""
    if "://" in root:
        yield
        return
    Path(root).mkdir(parents=True, exist_ok=True)
    path = Path(root) / f".{name}.build.lock"
    fd = open_file(path, os.O_RDWR | os.O_CREAT)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataDirBusy(f"{root}: another build of {name} is writing into this data "
                              f"dir ({path} is locked); run this one when it has ended") from None
        yield
    finally:
        os.close(fd)


@dataclasses.dataclass(frozen=True)
class TfdsBuild:
    """What the running ``tfds build`` command was asked for."""

    config: str | None
    """``--config``, or None."""
    config_idx: int | None
    """``--config_idx``, or None."""
    datasets: list[str]
    """The dataset names given (``name/config`` among them)."""


def tfds_build_args() -> TfdsBuild | None:
    """The ``tfds build`` command running this code, or None outside it: found by its
    function on the main thread's call stack (so a helper thread, such as the one fetching
    the next video, counts too). TFDS 4.9.10 runs ``Args.execute``, whose
    ``self.generation`` holds the config options; 4.9.8 and 4.9.9 run
    ``_build_datasets(args)``, with them on an argparse namespace."""
    build = sys.modules.get("tensorflow_datasets.scripts.cli.build")
    runners = (getattr(getattr(build, "Args", None), "execute", None),
               getattr(build, "_build_datasets", None))
    codes = {runner.__code__ for runner in runners if runner is not None}
    frame = sys._current_frames().get(threading.main_thread().ident)
    while frame is not None and codes:
        if frame.f_code in codes:
            local = frame.f_locals
            options = local["self"].generation if "self" in local else local["args"]
            return TfdsBuild(options.config, options.config_idx,
                             list(local.get("datasets") or []))
        frame = frame.f_back
    return None


def tfds_builds_every_config() -> bool:
    """True inside ``tfds build`` run without ``--config``, ``--config_idx`` or
    ``name/config``: TFDS then builds each of BUILDER_CONFIGS in turn, and a config that
    cannot be built is skipped rather than fatal (the builder leaves clip configs out)."""
    found = tfds_build_args()
    return (found is not None and found.config is None and found.config_idx is None
            and not any("/" in name for name in found.datasets))
