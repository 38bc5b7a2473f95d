"""`ava_keyframes`: AVA Actions keyframes (with clip configs, the clips around them) as a
TFDS dataset, one example per annotated keyframe.

Generation walks video by video: each video is fetched once (``<manual_dir>/videos/``, the
CVDF mirror or YouTube, through :class:`ava_keyframes.sources.VideoCache`), only the window
its keyframes and clips need where the source allows, and decoded in one pass
(:mod:`ava_keyframes.frames`), its keyframes JPEG-encoded and kept until the build completes
(:mod:`ava_keyframes.finished`: a killed build, rerun, resumes). Without Beam options the
videos are walked in order, the next one fetched, decoded and encoded while the current one
is written; with ``--beam_pipeline_options`` each video is one element of a Beam pipeline.

Every build writes ``build_report.json`` next to its TFRecords (see :mod:`ava_keyframes.plan`).
A video lost to a cause that may pass (an outage, retries spent, a full disk) fails the build
unless the loss is accepted (``allow_missing`` or ``AVA_KEYFRAMES_ALLOW_MISSING=1``): the
failed build leaves no prepared dataset, so the next ``tfds build`` starts again.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import tensorflow_datasets as tfds
from etils import epath

# The module, not its names: `import ava_keyframes.features` first imports TFDS, whose import
# registers this builder (see __init__) while features is still half-initialized.
from ava_keyframes import clips, console, features
from ava_keyframes.annotations import (
    AnnotationError,
    keyframe_key,
    read_annotations,
    read_excluded,
)
from ava_keyframes.cache import CacheError
from ava_keyframes.config import AnnotationsMissing, AvaKeyframesConfig, BuildError, _user_error
from ava_keyframes.finished import FinishedStore, FinishedVideo, ahead
from ava_keyframes.labelmap import LabelMap, default_labelmap_path, read_labelmap
from ava_keyframes.media import decoder_info
from ava_keyframes.plan import (
    FRAME_MISSING,
    VIDEO_LOST,
    VIDEO_UNAVAILABLE,
    DataDirBusy,
    SplitPlan,
    VideoJob,
    VideoOutcome,
    VideoWork,
    build_lock,
    build_report,
    loss_lines,
    tfds_builds_every_config,
)
from ava_keyframes.settings import ALLOW_MISSING_ENV, FetchSettings
from ava_keyframes.sources import FetchResult
from ava_keyframes.writer_settings import shard_sizes, shuffle_buffer

REPORT_FILENAME = "build_report.json"
_OUTCOMES_SUFFIX = ".outcomes.json"
_OUTCOME_TAG = "outcome"
_REACH_TIMEOUT = 10.0  # seconds to connect to the annotations' host before giving up
_SKIPPED_IN_RUN: set[str] = set()  # configs a plain `tfds build` skipped in this process
# DatasetInfo.description: a summary; the full card is ava_keyframes/README.md.
_DESCRIPTION = (
    "AVA Actions keyframes: one example per annotated keyframe (integer seconds 902-1798) of "
    "the AVA train and validation videos, with every person's box and actions (multi-label, "
    "80 classes). Full dataset card: ava_keyframes/README.md in the package.")

_MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Optional. Put the official annotation files (the contents of `ava_v2.2.zip`, or
`ava_v2.1.zip` for the `v2.1` config) in `<manual_dir>/annotations/`, and any videos you
already have in `<manual_dir>/videos/<video_id>.<mkv|mp4|webm>`. What is not there is
fetched: the annotations zip by TFDS, the videos through `ava_keyframes.sources`
(CVDF mirror, then YouTube; see AVA_KEYFRAMES_SOURCES, AVA_KEYFRAMES_MIRROR,
AVA_KEYFRAMES_YOUTUBE_TEMPLATE) into a cache (AVA_KEYFRAMES_CACHE, default
`<download_dir>/ava_keyframes_videos`).
"""


def video_examples(job: VideoJob, fetched: FetchResult, finished: FinishedVideo | None,
                   work: VideoWork, outcome: VideoOutcome) -> Iterator[tuple[str, dict[str, Any]]]:
    """Examples of one video, from its stored frames; ``outcome`` is updated as they go."""
    outcome.fetch_mode, outcome.bytes_fetched = fetched.fetch_mode, fetched.bytes_fetched
    outcome.note = fetched.note
    if fetched.path is None or finished is None:
        outcome.unavailable, outcome.transient = fetched.reason, fetched.transient
        outcome.skipped[VIDEO_LOST if fetched.transient else VIDEO_UNAVAILABLE] = outcome.selected
        return
    persons_at = dict(job.keyframes)
    for frame in finished.frames():
        outcome.written += 1
        yield keyframe_key(job.video_id, frame.second), features.example(
            job.video_id, persons_at[frame.second], frame, work.labelmap, work.clip_encoding)
    if finished.error is not None:  # MissingKeyframes included: the frames before it are kept
        outcome.error = finished.error
        outcome.skipped[FRAME_MISSING] = outcome.selected - outcome.written


def _finished_job(job: VideoJob, work: VideoWork, store: FinishedStore,
                  encode: Callable[[Any], bytes]) -> tuple[FetchResult, FinishedVideo | None]:
    """The job's video fetched, then its frames decoded and JPEG-encoded into ``store`` (or
    found there, from an earlier run of the same build: then nothing is decoded again)."""
    fetched = _fetch_job(job, work)
    if fetched.path is None:
        return fetched, None
    try:
        return fetched, store.finish(job, fetched, work, encode)
    except CacheError as error:
        raise _user_error(BuildError(str(error))) from None


def _fetch_job(job: VideoJob, work: VideoWork) -> FetchResult:
    """The job's video, fetched for what its examples need. The last clip frames may lie
    past the video's end, which a fetch refuses (they are padding): such a video is then
    fetched whole for its keyframes, so that its end is known. A cache that cannot be used
    (or a bad AVA_KEYFRAMES_* setting) is a one-line error."""
    try:
        fetched = work.video_cache().fetch(job.video_id, work.fetch_seconds(job.seconds))
        if fetched.path is None and not fetched.transient and work.clip is not None:
            whole = work.video_cache(fetch="whole").fetch(job.video_id, job.seconds)
            if whole.path is not None:
                note = f"fetched whole for its keyframes: its clips' span was refused " \
                       f"({fetched.reason})"
                return dataclasses.replace(
                    whole, note=note, bytes_fetched=fetched.bytes_fetched + whole.bytes_fetched)
        return fetched
    except (CacheError, ValueError) as error:
        raise _user_error(BuildError(str(error))) from None


def _beam_video(job: VideoJob, work: VideoWork, data_dir: str, store: FinishedStore,
                encode: Callable[[Any], bytes]):
    """Beam: one video -> its examples, then its VideoOutcome on the side output. Remote
    inputs are staged on the worker's disk for the video's time (see beam_run)."""
    from ava_keyframes import beam_run

    beam = tfds.core.lazy_imports.apache_beam
    beam_run.mark_started(data_dir)
    outcome = VideoOutcome(job.split, job.video_id, len(job.keyframes))
    with beam_run.staged(work, job.video_id) as local:
        yield from video_examples(job, *_finished_job(job, local, store, encode), local,
                                  outcome)
    yield beam.pvalue.TaggedOutput(_OUTCOME_TAG, outcome.to_json())


def _write_outcomes(outcomes: list[dict[str, Any]], path: str) -> None:
    epath.Path(path).write_text(json.dumps(outcomes))


def _beam_split(pipeline, jobs: list[VideoJob], work: VideoWork, store: FinishedStore,
                encode: Callable[[Any], bytes], outcomes_path: str):
    """Beam: fan the videos out, one element each; outcomes are written to ``outcomes_path``."""
    from ava_keyframes import beam_run

    beam = tfds.core.lazy_imports.apache_beam
    beam_run.note_pipeline(pipeline.pipeline)
    data_dir = str(epath.Path(outcomes_path).parent)
    results = (
        pipeline
        | "Videos" >> beam.Create(jobs)
        | "Spread" >> beam.Reshuffle()
        | "Extract" >> beam.FlatMap(_beam_video, work, data_dir, store, encode)
        .with_outputs(_OUTCOME_TAG, main="examples")
    )
    _ = (
        results[_OUTCOME_TAG]
        | "Gather" >> beam.combiners.ToList()
        | "Record" >> beam.Map(_write_outcomes, outcomes_path)
    )
    return results.examples


class LocalInfo(tfds.core.DatasetInfo):
    """A DatasetInfo that never looks for pre-computed info on GCS."""

    def initialize_from_bucket(self) -> None:
        """Nothing: TFDS looks on GCS for pre-computed info whenever a builder is made before
        its data exists, and leaves an empty ``/tmp/tmp*tfds`` folder each time; there is no
        such info for this dataset (and TFDS's GCS access is off)."""


class Builder(tfds.core.GeneratorBasedBuilder):
    """AVA Actions v2.2 / v2.1: keyframes with multi-label person boxes."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: AVA v2.2 and v2.1 keyframes.",
        "2.0.0": "objects/labels is a multi-hot bool[80] per person (MultiHotClassLabel, "
                 "class names as in a ClassLabel) instead of a ragged Sequence(ClassLabel): "
                 "examples batch with padded_batch; build_report.json records the decoder, "
                 "each video's fetch mode and bytes, and videos lost to transient causes.",
    }
    BUILDER_CONFIGS = [
        AvaKeyframesConfig(name="v2.2", ava_version="2.2"),
        AvaKeyframesConfig(name="v2.1", ava_version="2.1"),
        AvaKeyframesConfig(name="v2.2_clips8x8", clip_length=8, clip_stride=8),
        AvaKeyframesConfig(name="v2.2_clips32x2", clip_length=32, clip_stride=2),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "v2.2"
    MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_DOWNLOAD_INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        # Not dataset_info_from_configs: it would make the whole card (README.md, ~200 lines)
        # the description, which `tfds build` prints once per config.
        return LocalInfo(
            builder=self,
            description=_DESCRIPTION,
            features=features.keyframe_features(_labelmap().names,
                                              self.builder_config.clip_length,
                                              self.builder_config.clip_encoding),
            homepage="https://research.google.com/ava/",
            citation=self.get_metadata().citation,
        )

    def download_and_prepare(self, **kwargs: Any) -> None:
        """TFDS's, except that under a plain ``tfds build`` (every config) a config whose
        annotations cannot be found is skipped with one line rather than failing the run,
        and the clip configs are left out (built only when named: the same videos again)."""
        console.plain_tfds_bars()
        every_config = tfds_builds_every_config()
        if every_config and self.builder_config.clip_length:
            print(f"{self.info.full_name}: not built: clip configs are built only when named "
                  f"(--config {self.builder_config.name})", flush=True)
            return
        try:
            with build_lock(str(self._data_dir_root), self.name):
                super().download_and_prepare(**kwargs)
        except DataDirBusy as busy:
            raise _user_error(busy) from None
        except AnnotationsMissing as missing:
            if not every_config:
                raise _user_error(missing) from None
            print(f"{self.info.full_name}: skipped: {missing}", flush=True)
            _remove_empty_folders(Path(self.data_dir), Path(self.data_dir).parent)
            _SKIPPED_IN_RUN.add(self.builder_config.name)
            if _SKIPPED_IN_RUN >= {c.name for c in self.BUILDER_CONFIGS if not c.clip_length}:
                raise SystemExit("ava_keyframes: error: no config built: no annotations were "
                                 "found for any (see the lines above)") from None

    def _download_and_prepare(self, dl_manager, download_config) -> None:
        self._use_beam = bool(download_config.beam_options or download_config.beam_runner)
        self._manual_folder = Path(download_config.manual_dir or
                                   Path(dl_manager.download_dir) / "manual")
        self._plans: dict[str, SplitPlan] = {}
        self._outcomes: list[VideoOutcome] = []
        download_dir = Path(dl_manager.download_dir)
        try:
            with shuffle_buffer():
                config = shard_sizes(download_config)
                if self._use_beam:
                    self._beam_download_and_prepare(dl_manager, config)
                else:
                    super()._download_and_prepare(dl_manager, config)
        finally:  # TFDS makes them whether or not anything is downloaded
            _remove_empty_folders(download_dir / "extracted", download_dir)
        if not self._plans:  # max_examples_per_split=0: nothing generated, nothing to report
            return
        data_dir = epath.Path(self.data_dir)
        for part in sorted(data_dir.glob(f"*{_OUTCOMES_SUFFIX}")):
            self._outcomes += [VideoOutcome(**o) for o in json.loads(part.read_text())]
            part.unlink()
        report = build_report(self.info.full_name, self.builder_config.options(), self._plans,
                              self._outcomes, decoder_info())
        report["fetch_settings"] = self._settings.to_json()
        if download_config.max_examples_per_split is None:
            self._check_counts(report)
        self._finish_report(report, data_dir)
        self._finished.remove()  # the dataset is complete: a rerun has nothing to resume

    def _beam_download_and_prepare(self, dl_manager, download_config) -> None:
        from ava_keyframes import beam_run

        try:
            with beam_run.launched(download_config, str(self.data_dir)) as config:
                super()._download_and_prepare(dl_manager, config)
        except beam_run.LaunchError as error:
            raise _user_error(BuildError(str(error))) from error

    def _check_counts(self, report: dict[str, Any]) -> None:
        for split, counts in report["splits"].items():
            stored = self.info.splits[split].num_examples
            if stored != counts["keyframes_written"]:  # seen once with Beam multi_threading
                raise BuildError(
                    f"split {split!r}: {counts['keyframes_written']} examples were generated "
                    f"but {stored} were written; the runner lost or duplicated examples"
                )

    def _finish_report(self, report: dict[str, Any], data_dir: epath.Path) -> None:
        """Write the report; fail on unaccepted transient losses (the report then goes beside
        the version folder, which TFDS removes); list the unavailable videos."""
        lost = {v: r for s in report["splits"].values() for v, r in s["videos_lost"].items()}
        failed_report = data_dir.parent / f"{self.info.version}.failed_{REPORT_FILENAME}"
        report["missing_accepted"] = bool(lost) and self._settings.allow_missing
        if lost and not report["missing_accepted"]:
            failed_report.write_text(json.dumps(report, indent=2) + "\n")
            raise _user_error(BuildError(
                f"{len(lost)} video(s) lost to a transient cause, nothing written: "
                f"{', '.join(sorted(lost))} (see {failed_report}); build again once the cause "
                f"is gone, or accept the loss with {ALLOW_MISSING_ENV}=1"))
        failed_report.unlink(missing_ok=True)
        (data_dir / REPORT_FILENAME).write_text(json.dumps(report, indent=2) + "\n")
        lines = loss_lines(report, str(data_dir / REPORT_FILENAME))
        lines += [f"{self.info.full_name} {split}: video {video_id} missing: {reason}"
                  for split, counts in report["splits"].items()
                  for video_id, reason in sorted({**counts["videos_unavailable"],
                                                  **counts["videos_lost"]}.items())]
        if lost:
            lines.append(f"{self.info.full_name}: built without {len(lost)} video(s) lost to a "
                         f"transient cause ({ALLOW_MISSING_ENV} / allow_missing), recorded in "
                         f"{REPORT_FILENAME}")
        console.summary(lines)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config: AvaKeyframesConfig = self.builder_config
        manual_dir = _manual_dir(dl_manager)
        annotations_dir = self._annotations_dir(dl_manager, manual_dir)
        labelmap = _labelmap()
        self._settings = FetchSettings.resolve(
            cache_dir=dl_manager.download_dir / "ava_keyframes_videos", manual_dir=manual_dir,
            config={"allow_missing": config.allow_missing})
        self._finished = FinishedStore(self._settings.cache_dir, {
            "dataset": self.info.full_name, "options": config.options(),
            "decoder": decoder_info(), "clip_encoder": clips.X264_OPTIONS})
        work = VideoWork(
            fetch=self._settings,
            max_side=config.max_side,
            labelmap=labelmap,
            clip=(config.clip_length, config.clip_stride, config.clip_short_side)
            if config.clip_length else None,
            clip_encoding=config.clip_encoding,
        )
        generators = {}
        for split, (csv_name, excluded_name) in config.split_files().items():
            try:
                excluded = read_excluded(annotations_dir / excluded_name)
                annotations = read_annotations(annotations_dir / csv_name, labelmap, excluded)
            except AnnotationError as error:  # empty, unreadable, too large: one line
                raise _user_error(error) from None
            plan = SplitPlan.from_annotations(split, annotations, config.max_per_video)
            self._plans[split] = plan
            generators[split] = self._generate_examples(split=split, jobs=plan.jobs, work=work)
        return generators

    def _generate_examples(self, split: str, jobs: list[VideoJob], work: VideoWork):
        if self._use_beam:
            beam = tfds.core.lazy_imports.apache_beam
            outcomes_path = epath.Path(self.data_dir) / f"{split}{_OUTCOMES_SUFFIX}"
            return beam.ptransform_fn(_beam_split)(jobs, work, self._finished, self._encode,
                                                   str(outcomes_path))
        return self._walk_videos(split, jobs, work)

    @property
    def _encode(self) -> Callable[[Any], bytes]:  # array -> JPEG, as the feature stores it
        return self.info.features["image"].encode_example

    def _walk_videos(self, split: str, jobs: list[VideoJob], work: VideoWork):
        finished = ahead(functools.partial(
            _finished_job, work=work, store=self._finished, encode=self._encode), jobs)
        outcomes, resumed = [], 0
        progress = console.VideoProgress(f"{self.info.full_name} {split}", len(jobs))
        try:
            for job, (fetched, stored) in zip(jobs, finished, strict=True):
                outcomes.append(VideoOutcome(job.split, job.video_id, len(job.keyframes)))
                self._outcomes.append(outcomes[-1])
                resumed += stored is not None and stored.resumed
                yield from video_examples(job, fetched, stored, work, outcomes[-1])
                progress.update(outcomes[-1])
        finally:
            progress.close()
        if resumed:
            print(f"{self.info.full_name} {split}: {resumed} video(s) finished by an earlier "
                  f"run of this build, not decoded again", flush=True)
        if not any(outcome.written for outcome in outcomes):  # TFDS cannot write an empty split
            problems = [f"{o.video_id}: {o.unavailable or o.error}" for o in outcomes]
            raise _user_error(BuildError(
                f"no keyframe of split {split!r} could be written: "
                + ("; ".join(problems) or "no annotated keyframes")
            ))

    def _annotations_dir(self, dl_manager, manual_dir: epath.Path | None) -> epath.Path:
        """``<manual_dir>/annotations/`` if it holds this config's files, else the official
        zip, downloaded; AnnotationsMissing when neither is possible (checked in seconds)."""
        config: AvaKeyframesConfig = self.builder_config
        names = [name for pair in config.split_files().values() for name in pair]
        folder = (manual_dir or self._manual_folder) / "annotations"
        absent = [name for name in names if not (folder / name).is_file()]
        if len(absent) < len(names):
            if absent:
                raise _user_error(BuildError(f"{folder}: missing {', '.join(absent)} (the "
                                             f"files of ava_v{config.ava_version}.zip)"))
            return folder
        url = config.annotations_url
        if tfds_builds_every_config() and config.name != self.DEFAULT_BUILDER_CONFIG_NAME:
            raise AnnotationsMissing(
                f"no v{config.ava_version} annotations in {folder} (ava_v{config.ava_version}"
                f".zip is downloaded only when asked for: --config {config.name})")
        unreachable = _unreachable(url)
        if unreachable:
            raise AnnotationsMissing(
                f"no v{config.ava_version} annotations in {folder} and {url} cannot be "
                f"reached ({unreachable}); put the files of ava_v{config.ava_version}.zip there")
        extracted = Path(dl_manager.download_and_extract(url))
        for candidate in (extracted, *sorted(p for p in extracted.iterdir() if p.is_dir())):
            if all((candidate / name).is_file() for name in names):
                return candidate
        raise _user_error(BuildError(f"{url}: no {', '.join(names)} inside"))


def _unreachable(url: str) -> str | None:
    """Why ``url``'s host cannot be connected to now (one try, seconds), or None."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=_REACH_TIMEOUT).close()
    except OSError as error:
        return str(error) or type(error).__name__
    return None


def _remove_empty_folders(*folders: Path) -> None:
    """Remove each of ``folders`` in turn while it is an empty folder (never a link)."""
    for folder in folders:
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:  # not empty, or not a folder
            return


@functools.cache
def _labelmap() -> LabelMap:
    """The 80-class label map bundled with the package: the ClassLabel names."""
    return read_labelmap(default_labelmap_path())


def _manual_dir(dl_manager: tfds.download.DownloadManager) -> epath.Path | None:
    """The manual dir when it exists and holds something (it is optional here); it may be
    remote (gs://...)."""
    try:
        return epath.Path(dl_manager.manual_dir)
    except AssertionError:
        return None
