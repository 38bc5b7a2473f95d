"""The Beam-specific side of a build: what the launching side checks before and while the
pipeline runs, and how a worker reaches inputs that are not on its own disk.

- :class:`AvaBeamOptions`: options this package adds to ``--beam_pipeline_options``
  (``worker_start_timeout``, ``shared_local_paths``).
- :func:`check_reach`: a runner whose workers run elsewhere cannot see the launching
  machine's local paths; such a path is refused in one line before anything runs.
- :class:`StartWatch`: a worker that never starts (its ``python`` lacks Beam: the job server
  waits for it forever) ends the build after ``worker_start_timeout`` seconds with one line;
  each worker marks its start with a file in the data dir (:func:`mark_started`).
- :func:`failure_line`: a job that failed on a worker raises the worker's whole traceback as
  text on the launching side; this is its one line.
- :func:`launched`: all of the above around the pipeline's run, and
  ``--nondeterministic_order`` given a shard count (TFDS passes None, which Beam refuses).
- :func:`staged`: a worker copies a remote video (``--manual_dir gs://...``) to local scratch
  before decoding it and removes it afterwards; a remote cache is replaced by local scratch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from apache_beam.options.pipeline_options import (
    FlinkRunnerOptions,
    PipelineOptions,
    PortableOptions,
    SparkRunnerOptions,
    StandardOptions,
)
from etils import epath

from ava_keyframes.cache import VIDEO_EXTENSIONS
from ava_keyframes.plan import VideoWork

STARTED_SUFFIX = ".worker_started"
UNORDERED_SHARDS = 32  # --nondeterministic_order without --num_shards: empty ones are removed
DEFAULT_START_TIMEOUT = 600.0
_LOCAL_RUNNERS = {"directrunner", "fnapirunner", "bundlebaseddirectrunner", "prismrunner",
                  "switchingdirectrunner", "interactiverunner"}
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[local]", "[auto]", "embed", "[collection]"}
_POLL_SECONDS = 2.0
_MARKED: set[str] = set()  # data dirs this worker process marked its start in
_PIPELINES: list[Any] = []  # the pipelines being launched here (to cancel a stuck job)


class LaunchError(RuntimeError):
    """A Beam build that cannot go on; the message (one line) says why."""


def _flag(value: str) -> bool:
    if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"expected true or false, not {value!r}")
    return value.lower() in ("true", "1")


class AvaBeamOptions(PipelineOptions):
    """``--beam_pipeline_options`` keys of this package (a subclass registers them)."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument(
            "--worker_start_timeout", type=float, default=DEFAULT_START_TIMEOUT,
            help="seconds the launching side waits for the first worker to start a video "
                 "before it ends the build (0: no bound)")
        parser.add_argument(
            "--shared_local_paths", type=_flag, default=False,
            help="true when the local data and manual dirs are on a filesystem every "
                 "worker mounts at the same place")


def runner_name(options: PipelineOptions | None, runner: Any = None) -> str:
    """The runner's name as given (``DirectRunner`` when none is)."""
    if runner is not None:
        return runner if isinstance(runner, str) else type(runner).__name__
    named = options.view_as(StandardOptions).runner if options is not None else None
    if named is None:
        return "DirectRunner"
    return named if isinstance(named, str) else type(named).__name__


def runs_here(options: PipelineOptions | None, runner: Any = None) -> str | None:
    """None when the workers run on this machine, else where they run (for messages)."""
    name = runner_name(options, runner)
    if name.lower() in _LOCAL_RUNNERS:
        return None
    options = options or PipelineOptions([])
    where = {
        "portablerunner": options.view_as(PortableOptions).job_endpoint,
        "flinkrunner": options.view_as(FlinkRunnerOptions).flink_master,
        "sparkrunner": options.view_as(SparkRunnerOptions).spark_master_url,
    }.get(name.lower(), "")
    if where is None or _host(where) in _LOCAL_HOSTS | {"local"}:  # None: a job server here
        return None
    return f"{name} at {where}" if where else name


def _host(address: str) -> str:
    if address.startswith("local["):  # Spark's local[N]
        return "local"
    if address in _LOCAL_HOSTS:
        return address
    return (urlsplit(address if "://" in address else f"//{address}").hostname or "").lower()


def is_remote(path: str | None) -> bool:
    """Whether ``path`` names a remote filesystem (``gs://``, ``s3://``, ...)."""
    return path is not None and "://" in path and not path.startswith("file://")


def check_reach(options: PipelineOptions | None, runner: Any, paths: dict[str, str | None]
                ) -> str | None:
    """Why a worker of this runner could not see one of ``paths`` (name -> path), or None."""
    where = runs_here(options, runner)
    if where is None or (options is not None
                         and options.view_as(AvaBeamOptions).shared_local_paths):
        return None
    for name, path in paths.items():
        if path is not None and not is_remote(path):
            return (f"{name} {path} is a local path, which the workers of {where} cannot see: "
                    f"use a path they reach (gs://..., s3://...), or add "
                    f"shared_local_paths=true to --beam_pipeline_options if every worker "
                    f"mounts it at the same place")
    return None


def mark_started(data_dir: str) -> None:
    """Record in ``data_dir`` that a worker (this process) started; once per process."""
    if data_dir not in _MARKED:
        (epath.Path(data_dir) / f"{uuid.uuid4().hex}{STARTED_SUFFIX}").write_text("")
        _MARKED.add(data_dir)


class StartWatch:
    """Ends the launching side's wait when no worker has marked its start in ``data_dir``
    within ``timeout`` seconds (the main thread gets a KeyboardInterrupt, also where SIGINT
    is ignored; :attr:`fired` tells it apart from Ctrl-C). Used as a context manager around
    the pipeline's run."""

    def __init__(self, data_dir: str, timeout: float):
        self.data_dir, self.timeout, self.fired = epath.Path(data_dir), timeout, False
        self._done = threading.Event()
        self._handler: Any = None  # SIGINT's disposition the watch replaced, if any
        self._thread = threading.Thread(target=self._watch, name="ava-worker-start",
                                        daemon=True)

    def __enter__(self) -> StartWatch:
        if self.timeout > 0 and threading.current_thread() is threading.main_thread():
            handler = signal.getsignal(signal.SIGINT)
            if handler in (signal.SIG_IGN, signal.SIG_DFL):  # no Python handler: ignored
                self._handler = handler  # (``tfds build ... &`` in a script) or default
                signal.signal(signal.SIGINT, self._interrupt)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        if self._handler is not None:
            signal.signal(signal.SIGINT, self._handler)
        for marker in self._markers():
            marker.unlink(missing_ok=True)

    def _markers(self) -> list[epath.Path]:
        try:
            return list(self.data_dir.glob(f"*{STARTED_SUFFIX}"))
        except OSError:  # the data dir is not there (yet, or any more)
            return []

    def _interrupt(self, signum: int, frame: Any) -> None:
        """SIGINT's handler while watching where Python had none: the watch's own signal
        interrupts; any other is ignored, or ends the build as Ctrl-C does, as before."""
        if self.fired or self._handler == signal.SIG_DFL:
            raise KeyboardInterrupt

    def _watch(self) -> None:
        deadline = time.monotonic() + self.timeout
        while not self._done.wait(_POLL_SECONDS):
            if self._markers():
                return
            if time.monotonic() > deadline:
                self.fired = True
                os.kill(os.getpid(), signal.SIGINT)  # a real signal: it wakes a blocked wait
                return

    def message(self, runner: str) -> str:
        return (f"no Beam worker of {runner} started a video within {self.timeout:g} s "
                f"(worker_start_timeout): check that the workers' python has apache-beam, "
                f"tensorflow-datasets and ava-keyframes installed (see the Dockerfile) and "
                f"can reach {self.data_dir}; the worker pool's log says why")


_ERROR_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception|Exit)): (.+?)\s*$", re.M)
_STAGE = re.compile(r"\[while running '([^']+)'\]")


def failure_line(error: BaseException, runner: str) -> str:
    """One line for a job that failed on a worker: the last ``SomeError: message`` of the
    traceback text the runner raises, with the step it ran and a hint for a missing module."""
    text = str(error)
    found = _ERROR_LINE.findall(text)
    kind, message = found[-1] if found else (type(error).__name__, text.strip().splitlines()
                                             [-1] if text.strip() else "no message")
    stage = _STAGE.search(text)
    line = f"a Beam worker of {runner} failed" + (f" in {stage.group(1)}" if stage else "")
    line += f": {kind}: {message}"
    if kind == "ModuleNotFoundError":
        line += " (install this package in the workers' environment: see the Dockerfile)"
    return line


def note_pipeline(pipeline: Any) -> None:
    """Called while the pipeline is built, so that a stuck job can be cancelled."""
    _PIPELINES.append(pipeline)


@contextlib.contextmanager
def launched(download_config: Any, data_dir: str) -> Iterator[Any]:
    """Around a Beam build on the launching side: yields the download config to build with.
    Local paths that the workers cannot see, and a worker that never starts or fails, are a
    :class:`LaunchError` (one line). (A local cache is each worker's own folder.)"""
    options, runner = download_config.beam_options, download_config.beam_runner
    name = runner_name(options, runner)
    manual_dir = download_config.manual_dir and os.fspath(download_config.manual_dir)
    unreachable = check_reach(options, runner, {"data_dir": data_dir, "manual_dir": manual_dir})
    if unreachable:
        raise LaunchError(unreachable)
    timeout = (options or PipelineOptions([])).view_as(AvaBeamOptions).worker_start_timeout
    watch = StartWatch(data_dir, timeout)
    try:
        with watch:
            yield _unordered_ready(download_config)
    except KeyboardInterrupt:
        if not watch.fired:
            raise
        for pipeline in _PIPELINES:
            with contextlib.suppress(Exception):
                pipeline.result.cancel()
        raise LaunchError(watch.message(name)) from None
    except Exception as error:
        text = str(error)
        if "[while running" not in text and "Traceback (most recent call last)" not in text:
            raise  # not from a worker: the launching side's own error, already one line
        raise LaunchError(failure_line(error, name)) from error
    finally:
        _PIPELINES.clear()


def _unordered_ready(download_config: Any) -> Any:
    """``--nondeterministic_order`` writes with Beam's WriteToTFRecord, which needs a shard
    count (TFDS passes None) and google-crc32c."""
    if not download_config.nondeterministic_order:
        return download_config
    try:
        import google_crc32c  # noqa: F401
    except ImportError:
        raise LaunchError("--nondeterministic_order needs google-crc32c (Beam's TFRecord "
                          "writer checksums with it): pip install 'ava-keyframes[beam]'"
                          ) from None
    if download_config.num_shards is None:
        return download_config.replace(num_shards=UNORDERED_SHARDS)
    return download_config


@contextlib.contextmanager
def staged(work: VideoWork, video_id: str) -> Iterator[VideoWork]:
    """``work`` with its remote parts made local for one video: a video in a remote manual
    dir is copied to local scratch, a remote cache is replaced by local scratch; the scratch
    is removed when the block ends. ``work`` itself when nothing is remote."""
    settings = work.fetch
    if not (is_remote(settings.manual_dir) or is_remote(settings.cache_dir)):
        yield work
        return
    scratch = Path(tempfile.mkdtemp(prefix="ava_keyframes_"))
    try:
        manual_dir = settings.manual_dir
        if is_remote(manual_dir):
            manual_dir = str(scratch / "manual")
            _copy_video(epath.Path(settings.manual_dir) / "videos", video_id,
                        Path(manual_dir) / "videos")
        cache_dir = str(scratch / "cache") if is_remote(settings.cache_dir) else \
            settings.cache_dir
        yield dataclasses.replace(work, fetch=dataclasses.replace(
            settings, manual_dir=manual_dir, cache_dir=cache_dir))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _copy_video(remote: epath.Path, video_id: str, local: Path) -> None:
    """``<remote>/<video_id>.<ext>`` to ``local`` if it is there (else the other sources are
    tried, as for a local manual dir)."""
    local.mkdir(parents=True)
    for ext in VIDEO_EXTENSIONS:
        source = remote / f"{video_id}{ext}"
        if source.is_file():
            source.copy(local / source.name)
            return
