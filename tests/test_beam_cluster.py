"""The Beam build out of process, as on a cluster: Beam's Python job server and an external
SDK worker pool started as separate processes (the Fn API that Flink, Spark and Dataflow
workers speak), the pool with a clean environment (no AVA_KEYFRAMES_* variables, another
working directory). The launching side (`tfds build`) alone knows where the videos are (a
loopback mirror, named in its environment): the workers learn it through the pipeline.

A pool whose `python` has Beam but not this package fails on its first bundle: the build
ends with that worker's error in one line. A pool whose `python` lacks Beam (this interpreter
without its site-packages) never starts a worker: the build must end with one
line (worker_start_timeout) instead of waiting forever.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

from ava_keyframes.mirror import LoopbackMirror
from ava_keyframes.portable import LocalCluster
from ava_keyframes.synth import make_corpus

WORKTREE = Path(__file__).resolve().parents[1]
TFDS_CLI = str(Path(sys.executable).parent / "tfds")
BUILD_TIMEOUT = 420  # a safety net for a hang; the no-Beam case ends after its 5 s bound

pytestmark = pytest.mark.slow


_HIDE_PACKAGE = """import sys


class _NoAvaKeyframes:  # a worker machine where this package was never installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "ava_keyframes":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, _NoAvaKeyframes())
"""


def _clean_env(python_dir: Path, python_path: Path = WORKTREE) -> dict[str, str]:
    """What a worker machine has: `python` first on PATH, ``python_path`` importable, and no
    AVA_KEYFRAMES_* setting."""
    env = {"PATH": f"{python_dir}:/usr/bin:/bin", "PYTHONPATH": str(python_path),
           "HOME": os.environ.get("HOME", "/tmp"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    assert not any(name.startswith("AVA_KEYFRAMES_") for name in env)
    return env


@pytest.fixture
def cluster(tmp_path_factory, request) -> Iterator[LocalCluster]:
    """A job server and a worker pool whose `python` is this interpreter (``request.param``
    "venv"), it unable to import this package ("no_package"), or it without site-packages, so
    without Beam ("no_beam"), in another working directory; both are stopped whatever
    happens."""
    worker_home = tmp_path_factory.mktemp("worker_home")
    python_dir = Path(sys.executable).parent  # a venv's `python` finds its packages from here
    python_path = WORKTREE
    if request.param == "no_package":
        python_path = worker_home / "site"
        python_path.mkdir()
        (python_path / "sitecustomize.py").write_text(_HIDE_PACKAGE)
    if request.param == "no_beam":
        python_dir = worker_home / "bin"
        python_dir.mkdir()
        (python_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
        (python_dir / "python").chmod(0o755)
    with LocalCluster(worker_home, _clean_env(python_dir, python_path)) as started:
        yield started


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two short videos served only by a loopback mirror; the manual dir holds the
    annotations alone."""
    root = tmp_path_factory.mktemp("cluster_corpus")
    info = make_corpus(root / "corpus", videos=2, seconds=3, size=(96, 72), fps=10, seed=3)
    shutil.move(root / "corpus" / "videos", root / "served")
    with LoopbackMirror(root / "served") as mirror:
        yield {"root": root, "manual": root / "corpus", "mirror": mirror, "info": info}


_SIGINT_IGNORED = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                   "os.execv(sys.argv[1], sys.argv[1:])")
"""Runs its arguments with SIGINT ignored, as a script's ``tfds build ... &`` does."""


def _build(corpus, name: str, *extra: str, sigint_ignored: bool = False
           ) -> subprocess.CompletedProcess:
    """`tfds build` with the mirror and cache named in the launching side's environment."""
    root = corpus["root"]
    env = {**os.environ, "AVA_KEYFRAMES_SOURCES": "mirror",
           "AVA_KEYFRAMES_MIRROR": corpus["mirror"].url,
           "AVA_KEYFRAMES_CACHE": str(root / f"cache-{name}"), "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": str(WORKTREE)}
    command = [TFDS_CLI, "build", "ava_keyframes", "--imports", "ava_keyframes", "--config",
               "v2.2", "--manual_dir", str(corpus["manual"]), "--data_dir",
               str(root / name), *extra]
    if sigint_ignored:
        command = [sys.executable, "-c", _SIGINT_IGNORED, *command]
    return subprocess.run(command, env=env, cwd=root, capture_output=True,  # noqa: S603
                           text=True, timeout=BUILD_TIMEOUT)


def _examples_digest(data_dir: Path) -> dict[str, str]:
    """Split -> a hash of its decoded examples, in key order."""
    builder = tfds.builder("ava_keyframes/v2.2", data_dir=str(data_dir))
    digests = {}
    for split in builder.info.splits:
        rows = []
        for example in tfds.as_numpy(builder.as_dataset(split=split)):
            objects = example["objects"]
            rows.append((example["video_id"], int(example["timestamp"]), hashlib.sha256(
                b"".join(a.tobytes() for a in (example["image"], objects["bbox"],
                                               objects["labels"], objects["person_id"]))
            ).hexdigest()))
        digests[split] = hashlib.sha256(repr(sorted(rows)).encode()).hexdigest()
    return digests


@pytest.mark.parametrize("cluster", ["venv"], indirect=True)
def test_external_worker_pool_builds_what_a_plain_build_does(corpus, cluster):
    plain = _build(corpus, "plain")
    assert plain.returncode == 0, plain.stderr[-3000:]
    served_before = len(corpus["mirror"].requests)
    portable = _build(corpus, "portable", f"--beam_pipeline_options={cluster.options()}")
    assert portable.returncode == 0, portable.stderr[-3000:]
    digests = _examples_digest(corpus["root"] / "portable")
    assert digests == _examples_digest(corpus["root"] / "plain")
    assert set(digests) == {"train", "validation"}
    # the workers fetched from the mirror they only knew through the pipeline
    assert len(corpus["mirror"].requests) > served_before
    report = json.loads(next((corpus["root"] / "portable").glob(
        "ava_keyframes/v2.2/*/build_report.json")).read_text())
    assert report["fetch_settings"]["mirror"] == corpus["mirror"].url
    assert report["fetch_settings"]["sources"] == ["mirror"]


@pytest.mark.parametrize("cluster", ["no_package"], indirect=True)
def test_worker_without_the_package_ends_the_build_with_its_error_in_one_line(corpus, cluster):
    result = _build(corpus, "no_package", f"--beam_pipeline_options={cluster.options()}")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ava_keyframes: error: a Beam worker of PortableRunner failed in "), \
        result.stderr[-3000:]
    assert "ModuleNotFoundError: No module named 'ava_keyframes" in last
    assert last.endswith("(install this package in the workers' environment: see the "
                         "Dockerfile)")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("cluster", ["no_beam"], indirect=True)
def test_worker_pool_without_beam_ends_the_build_with_one_line(corpus, cluster):
    """Started with SIGINT ignored (``&`` in a script): the watch ends the wait all the same."""
    result = _build(corpus, "no_beam", "--beam_pipeline_options="
                    + cluster.options("worker_start_timeout=5"), sigint_ignored=True)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "no Beam worker of PortableRunner" in last and "worker_start_timeout" in last, \
        result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not (corpus["root"] / "no_beam" / "ava_keyframes" / "v2.2").exists() or not any(
        (corpus["root"] / "no_beam" / "ava_keyframes" / "v2.2").glob("*/*.tfrecord*"))


def test_nondeterministic_order_builds_or_is_refused_in_one_line(corpus):
    """TFDS passes Beam no shard count for it: the build gives one; google-crc32c (the
    beam extra) is needed by Beam's TFRecord writer, and without it the build is refused."""
    try:
        import google_crc32c  # noqa: F401
    except ImportError:
        result = _build(corpus, "unordered", "--nondeterministic_order",
                        "--beam_pipeline_options=runner=FnApiRunner")
        assert result.returncode != 0
        assert result.stderr.strip().splitlines()[-1] == (
            "ava_keyframes: error: --nondeterministic_order needs google-crc32c (Beam's "
            "TFRecord writer checksums with it): pip install 'ava-keyframes[beam]'")
        return
    result = _build(corpus, "unordered", "--nondeterministic_order",
                    "--beam_pipeline_options=runner=FnApiRunner")
    assert result.returncode == 0, result.stderr[-3000:]
    builder = tfds.builder("ava_keyframes/v2.2", data_dir=str(corpus["root"] / "unordered"))
    assert builder.info.nondeterministic_order
    assert all(split.num_examples > 0 for split in builder.info.splits.values())
