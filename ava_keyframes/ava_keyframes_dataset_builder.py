"""`ava_keyframes`: AVA Actions keyframes as a TFDS dataset (one example per annotated keyframe).

Generation walks video by video: each video is fetched once (``<manual_dir>/videos/``, the
CVDF mirror or YouTube, through :class:`ava_keyframes.sources.VideoCache`) and decoded in one
ffmpeg pass (:func:`ava_keyframes.frames.extract_keyframes`). Without Beam options the videos
are walked in order, the next one fetched while the current one is decoded; with
``--beam_pipeline_options`` each video is one element of a Beam pipeline.

Every build writes ``build_report.json`` next to its TFRecords: for each split the rows read
and where each went, the keyframes written and why the others were not, and the videos that
could not be had. Per-video outcomes travel with the data (a Beam side output written by the
workers), so the counts are exact on any runner.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from os import environ
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from ava_keyframes.annotations import Annotations, Person, read_annotations, read_excluded
from ava_keyframes.frames import KeyframeError, extract_keyframes
from ava_keyframes.labelmap import (
    LabelMap,
    default_labelmap_path,
    read_labelmap,
    write_classes_csv,
)
from ava_keyframes.sources import FetchResult, VideoCache

ANNOTATIONS_URL = "https://s3.amazonaws.com/ava-dataset/annotations/ava_v{version}.zip"
CACHE_ENV = "AVA_KEYFRAMES_CACHE"
REPORT_FILENAME = "build_report.json"
_OUTCOMES_SUFFIX = ".outcomes.json"
_OUTCOME_TAG = "outcome"
_VALUE_PART = re.compile(r":\s|\s'")  # where a rejection reason starts quoting the bad value

# Why a keyframe of the CSVs is not in the dataset (keys of ``keyframes_skipped``).
OVER_LIMIT = "over max_per_video"
VIDEO_UNAVAILABLE = "video unavailable"
FRAME_MISSING = "frame not extracted"
NOT_GENERATED = "not generated (generation stopped early)"

_MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Optional. Put the official annotation files (the contents of `ava_v2.2.zip`, or
`ava_v2.1.zip` for the `v2.1` config) in `<manual_dir>/annotations/`, and any videos you
already have in `<manual_dir>/videos/<video_id>.<mkv|mp4|webm>`. What is not there is
fetched: the annotations zip by TFDS, the videos through `ava_keyframes.sources`
(CVDF mirror, then YouTube; see AVA_KEYFRAMES_SOURCES, AVA_KEYFRAMES_MIRROR,
AVA_KEYFRAMES_YOUTUBE_TEMPLATE) into a cache (AVA_KEYFRAMES_CACHE, default
`<download_dir>/ava_keyframes_videos`).
"""


@dataclasses.dataclass(eq=False)
class AvaKeyframesConfig(tfds.core.BuilderConfig):
    """An AVA annotation version plus per-build options.

    A custom config (``tfds build --config '{"name": "v2.2_k5", "max_per_video": 5}'``)
    must have a name of its own: TFDS refuses a custom config named like a built-in one,
    so its data never passes for the full ``v2.2``.
    """

    ava_version: str = "2.2"
    max_per_video: int | None = None
    max_side: int | None = None

    def __post_init__(self) -> None:
        if self.ava_version not in ("2.1", "2.2"):
            raise ValueError(f"ava_version must be '2.1' or '2.2', not {self.ava_version!r}")
        for option in ("max_per_video", "max_side"):
            value = getattr(self, option)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{option} must be a positive integer or null, not {value!r}")
        if self.description is None:
            keep = (f"at most {self.max_per_video} keyframes per video" if self.max_per_video
                    else "every keyframe")
            size = f"longer side at most {self.max_side} px" if self.max_side else "full size"
            self.description = f"AVA v{self.ava_version} annotations; {keep}; images {size}."

    @property
    def annotations_url(self) -> str:
        return ANNOTATIONS_URL.format(version=self.ava_version)

    def split_files(self) -> dict[str, tuple[str, str]]:
        """Split name -> (annotation CSV, excluded-timestamps CSV), named as in the zip."""
        v = self.ava_version
        return {
            "train": (f"ava_train_v{v}.csv", f"ava_train_excluded_timestamps_v{v}.csv"),
            "validation": (f"ava_val_v{v}.csv", f"ava_val_excluded_timestamps_v{v}.csv"),
        }

    def options(self) -> dict[str, int | None]:
        return {"max_per_video": self.max_per_video, "max_side": self.max_side}


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


@dataclasses.dataclass(frozen=True)
class VideoWork:
    """What a worker needs to turn a VideoJob into examples (picklable, for Beam)."""

    cache_dir: str
    manual_dir: str | None
    max_side: int | None
    labelmap: LabelMap

    def video_cache(self) -> VideoCache:
        return VideoCache(self.cache_dir, manual_dir=self.manual_dir)


@dataclasses.dataclass
class VideoOutcome:
    """What became of one VideoJob: keyframes written, and why the others were not."""

    split: str
    video_id: str
    selected: int
    written: int = 0
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    unavailable: str | None = None  # why the video could not be fetched
    error: str | None = None  # why decoding stopped short of the selected keyframes

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
        return cls(
            annotation_file=Path(annotations.path).name,
            rows_read=annotations.rows_read,
            rows_used=len(annotations.table),
            rows_without_boxes=annotations.rows_read - len(annotations.table)
            - len(annotations.report),
            rows_skipped=dict(Counter(_reason_kind(r.field, r.reason) for r in annotations.report)),
            rejected_rows=[str(r) for r in annotations.report],
            keyframes_annotated=sum(len(k) for k in by_video.values()),
            jobs=jobs,
        )


def _reason_kind(field: str, reason: str) -> str:
    """A rejection reason without the offending value ("not a number: '3_'" -> "not a number")."""
    return f"{field}: {_VALUE_PART.split(reason, maxsplit=1)[0]}"


def video_examples(
    job: VideoJob, fetched: FetchResult, work: VideoWork, outcome: VideoOutcome
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Examples of one video, from one extraction pass; ``outcome`` is updated as they go."""
    if fetched.path is None:
        outcome.unavailable = fetched.reason
        outcome.skipped[VIDEO_UNAVAILABLE] = outcome.selected
        return
    persons_at = dict(job.keyframes)
    try:
        for second, frame in extract_keyframes(fetched.path, list(persons_at),
                                               max_side=work.max_side):
            outcome.written += 1
            yield f"{job.video_id}_{second:04d}", _example(
                job.video_id, second, persons_at[second], frame, work.labelmap
            )
    except KeyframeError as error:  # MissingKeyframes included: the frames before it are kept
        outcome.error = str(error)
        outcome.skipped[FRAME_MISSING] = outcome.selected - outcome.written


def _example(
    video_id: str, second: int, persons: Sequence[Person], frame: np.ndarray, labelmap: LabelMap
) -> dict[str, Any]:
    height, width = frame.shape[:2]
    return {
        "image": frame,
        "video_id": video_id,
        "timestamp": second,
        "objects": [
            {
                "bbox": tfds.features.BBox(
                    ymin=person.box[1], xmin=person.box[0], ymax=person.box[3], xmax=person.box[2]
                ),
                "box_pixels": pixel_box(person.box, width, height),
                "labels": [labelmap.index_of(action) for action in person.actions],
                "person_id": person.person_id,
            }
            for person in persons
        ],
    }


def _prefetched(fetch: Callable[[str], FetchResult], ids: Iterable[str]) -> Iterator[FetchResult]:
    """``fetch(id)`` for each id in order, the next one running while the caller works."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ava-fetch") as pool:
        pending = deque()
        for video_id in ids:
            pending.append(pool.submit(fetch, video_id))
            if len(pending) > 1:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _beam_video(job: VideoJob, work: VideoWork):
    """Beam: one video -> its examples, then its VideoOutcome on the side output."""
    beam = tfds.core.lazy_imports.apache_beam
    outcome = VideoOutcome(job.split, job.video_id, len(job.keyframes))
    yield from video_examples(job, work.video_cache().fetch(job.video_id), work, outcome)
    yield beam.pvalue.TaggedOutput(_OUTCOME_TAG, outcome.to_json())


def _write_outcomes(outcomes: list[dict[str, Any]], path: str) -> None:
    epath.Path(path).write_text(json.dumps(outcomes))


def _beam_split(pipeline, jobs: list[VideoJob], work: VideoWork, outcomes_path: str):
    """Beam: fan the videos out, one element each; outcomes are written to ``outcomes_path``."""
    beam = tfds.core.lazy_imports.apache_beam
    results = (
        pipeline
        | "Videos" >> beam.Create(jobs)
        | "Spread" >> beam.Reshuffle()
        | "Extract" >> beam.FlatMap(_beam_video, work).with_outputs(_OUTCOME_TAG, main="examples")
    )
    _ = (
        results[_OUTCOME_TAG]
        | "Gather" >> beam.combiners.ToList()
        | "Record" >> beam.Map(_write_outcomes, outcomes_path)
    )
    return results.examples


def build_report(
    name: str, options: dict[str, Any], plans: dict[str, SplitPlan], outcomes: list[VideoOutcome]
) -> dict[str, Any]:
    """The content of ``build_report.json``. Per split, ``rows_read`` = ``rows_used`` +
    ``rows_without_boxes`` + the ``rows_skipped``, and ``keyframes_annotated`` =
    ``keyframes_written`` + the ``keyframes_skipped``: every keyframe is counted once, as
    written or under the reason it was not."""
    report: dict[str, Any] = {"dataset": name, "options": options, "splits": {}}
    done = {(o.split, o.video_id): o for o in outcomes}
    for split, plan in plans.items():
        skipped: Counter[str] = Counter()
        written = 0
        unavailable, errors = {}, {}
        for job in plan.jobs:
            outcome = done.get((split, job.video_id))
            if outcome is None:  # generation cut short (e.g. --max_examples_per_split)
                skipped[NOT_GENERATED] += len(job.keyframes)
                continue
            written += outcome.written
            skipped.update(outcome.skipped)
            unaccounted = outcome.selected - outcome.written - sum(outcome.skipped.values())
            if unaccounted:
                skipped[NOT_GENERATED] += unaccounted
            if outcome.unavailable:
                unavailable[job.video_id] = outcome.unavailable
            if outcome.error:
                errors[job.video_id] = outcome.error
        skipped[OVER_LIMIT] = plan.keyframes_annotated - sum(len(j.keyframes) for j in plan.jobs)
        skipped = Counter({k: v for k, v in skipped.items() if v})
        report["splits"][split] = {
            "annotation_file": plan.annotation_file,
            "rows_read": plan.rows_read,
            "rows_used": plan.rows_used,
            "rows_without_boxes": plan.rows_without_boxes,
            "rows_skipped": dict(sorted(plan.rows_skipped.items())),
            "keyframes_annotated": plan.keyframes_annotated,
            "keyframes_written": written,
            "keyframes_skipped": dict(sorted(skipped.items())),
            "videos": len(plan.jobs),
            "videos_unavailable": dict(sorted(unavailable.items())),
            "video_errors": dict(sorted(errors.items())),
            "rejected_rows": plan.rejected_rows,
        }
    return report


def keyframe_features(class_names: Sequence[str]) -> tfds.features.FeaturesDict:
    """The features of one example: a keyframe with its persons (declared once, here)."""
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        "video_id": tfds.features.Text(),
        "timestamp": tfds.features.Scalar(dtype=np.int32),
        "objects": tfds.features.Sequence({
            "bbox": tfds.features.BBoxFeature(),
            "box_pixels": tfds.features.Tensor(shape=(4,), dtype=np.float32),
            "labels": tfds.features.Sequence(tfds.features.ClassLabel(names=list(class_names))),
            "person_id": tfds.features.Scalar(dtype=np.int32),
        }),
    })


class Builder(tfds.core.GeneratorBasedBuilder):
    """AVA Actions v2.2 / v2.1: keyframes with multi-label person boxes."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: AVA v2.2 and v2.1 keyframes."}
    BUILDER_CONFIGS = [
        AvaKeyframesConfig(name="v2.2", ava_version="2.2"),
        AvaKeyframesConfig(name="v2.1", ava_version="2.1"),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "v2.2"
    MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_DOWNLOAD_INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=keyframe_features(_labelmap().names),
            homepage="https://research.google.com/ava/",
        )

    def _download_and_prepare(self, dl_manager, download_config) -> None:
        self._use_beam = bool(download_config.beam_options or download_config.beam_runner)
        self._plans: dict[str, SplitPlan] = {}
        self._outcomes: list[VideoOutcome] = []
        super()._download_and_prepare(dl_manager, download_config)
        if not self._plans:  # max_examples_per_split=0: nothing generated, nothing to report
            return
        data_dir = epath.Path(self.data_dir)
        for part in sorted(data_dir.glob(f"*{_OUTCOMES_SUFFIX}")):
            self._outcomes += [VideoOutcome(**o) for o in json.loads(part.read_text())]
            part.unlink()
        report = build_report(
            self.info.full_name, self.builder_config.options(), self._plans, self._outcomes
        )
        if download_config.max_examples_per_split is None:
            for split, counts in report["splits"].items():
                stored = self.info.splits[split].num_examples
                if stored != counts["keyframes_written"]:  # seen once with Beam multi_threading
                    raise RuntimeError(
                        f"split {split!r}: {counts['keyframes_written']} examples were generated "
                        f"but {stored} were written; the runner lost or duplicated examples"
                    )
        (data_dir / REPORT_FILENAME).write_text(json.dumps(report, indent=2) + "\n")

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config: AvaKeyframesConfig = self.builder_config
        manual_dir = _manual_dir(dl_manager)
        annotations_dir = self._annotations_dir(dl_manager, manual_dir)
        labelmap = _labelmap()
        cache_dir = environ.get(CACHE_ENV) or dl_manager.download_dir / "ava_keyframes_videos"
        work = VideoWork(
            cache_dir=str(cache_dir),
            manual_dir=str(manual_dir) if manual_dir else None,
            max_side=config.max_side,
            labelmap=labelmap,
        )
        generators = {}
        for split, (csv_name, excluded_name) in config.split_files().items():
            excluded = read_excluded(annotations_dir / excluded_name)
            annotations = read_annotations(annotations_dir / csv_name, labelmap, excluded)
            plan = SplitPlan.from_annotations(split, annotations, config.max_per_video)
            self._plans[split] = plan
            generators[split] = self._generate_examples(split=split, jobs=plan.jobs, work=work)
        return generators

    def _generate_examples(self, split: str, jobs: list[VideoJob], work: VideoWork):
        if self._use_beam:
            beam = tfds.core.lazy_imports.apache_beam
            outcomes_path = epath.Path(self.data_dir) / f"{split}{_OUTCOMES_SUFFIX}"
            return beam.ptransform_fn(_beam_split)(jobs, work, str(outcomes_path))
        return self._walk_videos(split, jobs, work)

    def _walk_videos(self, split: str, jobs: list[VideoJob], work: VideoWork):
        cache = work.video_cache()
        fetched = _prefetched(cache.fetch, [job.video_id for job in jobs])
        outcomes = []
        for job, result in zip(jobs, fetched, strict=True):
            outcomes.append(VideoOutcome(job.split, job.video_id, len(job.keyframes)))
            self._outcomes.append(outcomes[-1])
            yield from video_examples(job, result, work, outcomes[-1])
        if not any(outcome.written for outcome in outcomes):  # TFDS cannot write an empty split
            problems = [f"{o.video_id}: {o.unavailable or o.error}" for o in outcomes]
            raise RuntimeError(
                f"no keyframe of split {split!r} could be written: "
                + ("; ".join(problems) or "no annotated keyframes")
            )

    def _annotations_dir(self, dl_manager, manual_dir: Path | None) -> Path:
        """``<manual_dir>/annotations/`` if there, else the official zip, downloaded."""
        train_csv = self.builder_config.split_files()["train"][0]
        if manual_dir is not None and (manual_dir / "annotations").is_dir():
            return manual_dir / "annotations"
        extracted = Path(dl_manager.download_and_extract(self.builder_config.annotations_url))
        for folder in (extracted, *sorted(p for p in extracted.iterdir() if p.is_dir())):
            if (folder / train_csv).is_file():
                return folder
        raise FileNotFoundError(f"{self.builder_config.annotations_url}: no {train_csv} inside")


@functools.cache
def _labelmap() -> LabelMap:
    """The 80-class label map bundled with the package: the ClassLabel names."""
    return read_labelmap(default_labelmap_path())


def _manual_dir(dl_manager: tfds.download.DownloadManager) -> Path | None:
    """The manual dir when it exists and holds something (it is optional here)."""
    try:
        return Path(dl_manager.manual_dir)
    except AssertionError:
        return None


def export_retinanet_csv(
    data_dir: str | Path, split: str, out: str | Path, config: str = "v2.2"
) -> dict[str, int]:
    """Write a built split for keras-retinanet: ``OUT/images/<key>.jpg`` (the stored JPEG
    bytes), ``OUT/annotations.csv`` (``path,x1,y1,x2,y2,class_name``: one row per person and
    action, ``box_pixels`` rounded to integers and at least 1 px wide and high; a keyframe
    without persons gets keras-retinanet's ``path,,,,,`` row) and ``OUT/classes.csv``.
    Returns the counts of images and rows.

    Raises FileNotFoundError when the dataset is not built in ``data_dir``, ValueError for a
    split it does not have.
    """
    name = f"ava_keyframes/{config}"
    try:
        builder = tfds.builder(name, data_dir=str(data_dir))
    except tfds.core.registered.DatasetNotFoundError:
        builder = None
    if builder is None or not builder.is_prepared():
        raise FileNotFoundError(
            f"{data_dir}: no built {name} (build it with `tfds build ava_keyframes --imports "
            f"ava_keyframes --config {config} --data_dir {data_dir}`)"
        )
    if split not in builder.info.splits:
        raise ValueError(f"{name} has no split {split!r} (it has {', '.join(builder.info.splits)})")
    labelmap = _labelmap()
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images = rows = 0
    dataset = builder.as_dataset(
        split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
    )
    with (out / "annotations.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        for example in dataset:
            video_id = example["video_id"].numpy().decode()
            path = f"images/{video_id}_{int(example['timestamp']):04d}.jpg"
            (out / path).write_bytes(example["image"].numpy())
            images += 1
            objects = example["objects"]
            if not len(objects["person_id"]):
                writer.writerow([path, "", "", "", "", ""])
                rows += 1
            for box, labels in zip(objects["box_pixels"].numpy(), objects["labels"].to_list(),
                                   strict=True):
                x1, y1, x2, y2 = (round(float(v)) for v in box)
                corners = [x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)]  # never an empty box
                for label in labels:
                    writer.writerow([path, *corners, labelmap.names[label]])
                    rows += 1
    write_classes_csv(labelmap, out / "classes.csv")
    return {"images": images, "rows": rows}
