"""Throughput of the `ava_keyframes` TFDS build against extraction alone, and on Beam runners.

On a synthetic corpus (``make_corpus``: ``--videos`` videos, ``--seconds`` keyframes each, at
``--size``, videos in the manual dir), this times, in one run:

1. extraction alone: ``extract_keyframes`` over every video's non-excluded keyframes (the
   frames the build needs), frames consumed and dropped;
2. a whole plain build (``download_and_prepare``: annotations, one extraction pass per video,
   JPEG encoding, TFRecord writing and shuffling, dataset info, build report);
3. the same build as a Beam pipeline on the local FnApiRunner (what DirectRunner runs batch
   pipelines on; naming it skips DirectRunner's attempt to download its Prism runner), with
   ``direct_running_mode=multi_processing`` and 1, then 2 workers (each worker is a Python
   process that imports TensorFlow and this package: a start-up cost per build);
4. the same pipeline on Beam's portable runner, out of process as on a cluster: a Python job
   server and an external SDK worker pool (``ava_keyframes.portable.LocalCluster``, started
   for each run), with the default ``sdk_worker_parallelism`` (1) and with 2; the pool's log
   says how many workers the job server asked it for. Wall time is the build's (the servers
   start before the clock); CPU time includes the servers and their workers, whole.

Runs are interleaved and repeated (best of ``--repeat``) because the machines this was
written on are shared.

Printed: keyframes per second of each (and CPU milliseconds per keyframe, this process and
its children, steadier than wall time on a shared machine), the build's throughput as a
fraction of extraction's (target >= 0.8), and the Beam speed-up of 2 workers over 1.
TensorFlow's start-up (a fixed cost of any build process, paid before the first JPEG is
encoded) is timed apart and printed with the ratio it gives when counted. Every build is
checked to hold every keyframe.

Usage: python benchmarks/build.py [--videos 4] [--seconds 30] [--size 640x360] [--repeat 2]
                                  [--out DIR] [--no-portable]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from ava_keyframes.annotations import read_annotations, read_excluded
from ava_keyframes.ava_keyframes_dataset_builder import Builder
from ava_keyframes.frames import extract_keyframes
from ava_keyframes.portable import LocalCluster
from ava_keyframes.synth import make_corpus


def needed_keyframes(info) -> dict[str, list[int]]:
    """Video id -> the seconds the build extracts (annotated, not excluded)."""
    seconds: dict[str, list[int]] = {}
    for split in ("train", "val"):
        excluded = read_excluded(info.excluded_csv(split))
        for video_id, second in read_annotations(info.annotation_csv(split),
                                                 excluded=excluded).keyframes():
            seconds.setdefault(video_id, []).append(second)
    return seconds


class Clock:
    """Wall time and CPU time (this process and its finished children: ffmpeg, Beam
    workers) between ``start`` and ``stop``."""

    def start(self) -> None:
        self._wall, self._cpu = time.perf_counter(), self._cpu_now()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self._wall, self._cpu_now() - self._cpu

    @staticmethod
    def _cpu_now() -> float:
        times = os.times()
        return times.user + times.system + times.children_user + times.children_system


def time_extraction(info, seconds: dict[str, list[int]]) -> tuple[float, float]:
    clock = Clock()
    clock.start()
    for video_id, wanted in seconds.items():
        count = sum(1 for _ in extract_keyframes(info.videos[video_id], wanted))
        assert count == len(wanted), f"{video_id}: {count} of {len(wanted)} frames"
    return clock.stop()


def time_build(
    manual: Path, data_dir: Path, beam_flags: list[str] | None, expected: int,
    parallelism: int | None = None,
) -> tuple[float, float]:
    """(wall, CPU) of one build; ``parallelism``: on a fresh LocalCluster with that
    ``sdk_worker_parallelism`` (its workers are counted from the pool's log)."""
    config = tfds.download.DownloadConfig(manual_dir=str(manual))
    clock = Clock()
    with contextlib.ExitStack() as servers:
        if parallelism is not None:
            data_dir.mkdir(parents=True)
            python_first = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # workers'
            cluster = servers.enter_context(LocalCluster(data_dir, {**os.environ,
                                                                    "PATH": python_first}))
            beam_flags = [f"--{option}" for option in cluster.options(
                f"sdk_worker_parallelism={parallelism}", "worker_start_timeout=180").split(",")]
        if beam_flags is not None:
            beam = tfds.core.lazy_imports.apache_beam
            config.beam_options = beam.options.pipeline_options.PipelineOptions(
                flags=beam_flags)
        clock.start()
        builder = Builder(config="v2.2", data_dir=str(data_dir))
        builder.download_and_prepare(download_config=config)
        wall, _ = clock.stop()
    _, cpu = clock.stop()  # the servers stopped: their CPU time is in the children's
    count = sum(split.num_examples for split in builder.info.splits.values())
    assert count == expected, f"{data_dir.name}: {count} examples, expected {expected}"
    if parallelism is not None:
        workers = sum(log.read_text().count("Starting worker with command")
                      for log in data_dir.glob("worker_pool_main-*.log"))
        print(f"  portable, sdk_worker_parallelism={parallelism}: the job server asked the "
              f"pool for {workers} worker(s)")
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--repeat", type=int, default=2, help="best of N runs (default 2)")
    parser.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--no-portable", action="store_true",
                        help="leave out the portable runner's runs")
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))

    with tempfile.TemporaryDirectory() as scratch:
        root = args.out or Path(scratch)
        os.environ["AVA_KEYFRAMES_SOURCES"] = "local"
        os.environ["AVA_KEYFRAMES_CACHE"] = str(root / "cache")
        started = time.perf_counter()
        info = make_corpus(root / "corpus", videos=args.videos, seconds=args.seconds,
                           size=(width, height), fps=30, seed=0)
        print(f"corpus: {args.videos} videos x {args.seconds} s at {width}x{height}, 30 fps "
              f"({time.perf_counter() - started:.1f} s to make)")
        seconds = needed_keyframes(info)
        total = sum(map(len, seconds.values()))
        clock = Clock()
        clock.start()
        tfds.features.Image(encoding_format="jpeg").encode_example(
            np.zeros((8, 8, 3), np.uint8))  # TensorFlow's start-up, once per build process
        startup, _ = clock.stop()

        beam = {
            f"beam, {n} worker{'s' * (n > 1)}": [
                "--runner=FnApiRunner", "--direct_running_mode=multi_processing",
                f"--direct_num_workers={n}"]
            for n in (1, 2)
        }
        portable = {} if args.no_portable else {
            f"portable, parallelism {n}": n for n in (1, 2)}
        runs: dict[str, list[tuple[float, float]]] = {}
        for attempt in range(args.repeat):  # interleaved, so that load changes hit all alike
            runs.setdefault("extraction alone", []).append(time_extraction(info, seconds))
            for name, flags in {"plain build": None, **beam, **portable}.items():
                data_dir = root / f"{name.replace(' ', '_').replace(',', '')}-{attempt}"
                runs.setdefault(name, []).append(time_build(
                    info.root, data_dir, None if name in portable else flags, total,
                    portable.get(name)))

    best = {name: min(times) for name, times in runs.items()}  # by wall time
    print(f"{total} keyframes; best of {args.repeat} runs each (wall time; CPU time of this "
          "process and its children)")
    for name, (wall, cpu) in best.items():
        print(f"  {name:<22} {wall:7.2f} s {total / wall:7.1f} keyframes/s   "
              f"CPU {cpu:7.2f} s {1000 * cpu / total:6.1f} ms/keyframe")
    print(f"  (TensorFlow start-up, once per build process, not in the times above: "
          f"{startup:.1f} s)")
    (extract_wall, extract_cpu), (build_wall, build_cpu) = (best["extraction alone"],
                                                            best["plain build"])
    print(f"plain build / extraction alone throughput: {extract_wall / build_wall:.2f} "
          f"(target >= 0.8); {extract_wall / (build_wall + startup):.2f} counting TensorFlow's "
          f"start-up; CPU per keyframe, extraction / build: {extract_cpu / build_cpu:.2f}")
    speedup = best["beam, 1 worker"][0] / best["beam, 2 workers"][0]
    print(f"beam, 2 workers / 1 worker throughput: {speedup:.2f}")
    for name in portable:
        print(f"{name} / plain build throughput: {build_wall / best[name][0]:.2f}")


if __name__ == "__main__":
    main()
