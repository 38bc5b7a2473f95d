"""`ava_keyframes.beam_run`: the launching side's checks around a Beam build (which runners
run elsewhere, local paths they cannot see, a worker that never starts, a worker's failure
in one line, --nondeterministic_order) and the staging of remote inputs on a worker."""

from __future__ import annotations

import os
import signal
import time
import types
from pathlib import Path

import pytest
import tensorflow_datasets as tfds
from apache_beam.options.pipeline_options import PipelineOptions
from etils import epath

from ava_keyframes import beam_run
from ava_keyframes.plan import VideoWork
from ava_keyframes.settings import FetchSettings

LOCAL_PATHS = {"data_dir": "/data", "manual_dir": None}


def _options(text: str) -> PipelineOptions:
    """As `tfds build --beam_pipeline_options=TEXT` makes them."""
    return PipelineOptions(flags=[f"--{option}" for option in text.split(",")])


@pytest.mark.parametrize("text", [
    "runner=FnApiRunner,direct_num_workers=2",
    "runner=DirectRunner",
    "runner=PortableRunner,job_endpoint=localhost:8099,environment_type=EXTERNAL",
    "runner=FlinkRunner,flink_master=[local]",
    "runner=SparkRunner,spark_master_url=local[4]",
    "runner=FlinkRunner",  # Flink's default master: an embedded cluster here
])
def test_runners_on_this_machine_take_local_paths(text):
    assert beam_run.runs_here(_options(text)) is None
    assert beam_run.check_reach(_options(text), None, LOCAL_PATHS) is None


@pytest.mark.parametrize("text, where", [
    ("runner=DataflowRunner,project=p,region=r", "DataflowRunner"),
    ("runner=FlinkRunner,flink_master=flink.example:8081", "FlinkRunner at flink.example:8081"),
    ("runner=SparkRunner,spark_master_url=spark://spark.example:7077",
     "SparkRunner at spark://spark.example:7077"),
    ("runner=PortableRunner,job_endpoint=jobs.example:8099", "PortableRunner at jobs.example:8099"),
])
def test_remote_runners_refuse_local_paths_in_one_line(text, where):
    message = beam_run.check_reach(_options(text), None, LOCAL_PATHS)
    assert message.startswith(f"data_dir /data is a local path, which the workers of {where} ")
    assert "\n" not in message
    remote = {"data_dir": "gs://b/data", "manual_dir": "s3://b/manual"}
    assert beam_run.check_reach(_options(text), None, remote) is None
    assert beam_run.check_reach(_options(text + ",shared_local_paths=true"), None,
                                LOCAL_PATHS) is None


def test_a_bad_option_value_is_refused():
    with pytest.raises(SystemExit):  # argparse's one line, as for Beam's own options
        _options("runner=DataflowRunner,shared_local_paths=maybe").view_as(
            beam_run.AvaBeamOptions)


def test_a_workers_failure_becomes_its_last_error_line():
    text = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
            "    import ava_keyframes\nModuleNotFoundError: No module named 'ava_keyframes'"
            " [while running 'train/Extract']\n")
    line = beam_run.failure_line(RuntimeError(text), "PortableRunner")
    assert line == ("a Beam worker of PortableRunner failed in train/Extract: "
                    "ModuleNotFoundError: No module named 'ava_keyframes' [while running "
                    "'train/Extract'] (install this package in the workers' environment: see "
                    "the Dockerfile)")
    cache = ("Traceback ...\nava_keyframes.ava_keyframes_dataset_builder.BuildError: "
             "/c: cache folder not writable\n")
    assert beam_run.failure_line(RuntimeError(cache), "FlinkRunner").endswith(
        ": BuildError: /c: cache folder not writable")


class _Config:
    """The parts of a tfds DownloadConfig that `launched` reads."""

    def __init__(self, options: str, **fields):
        self.beam_options, self.beam_runner = _options(options), None
        self.nondeterministic_order, self.num_shards, self.manual_dir = False, None, None
        self.__dict__.update(fields)

    def replace(self, **fields):
        return _Config("runner=DirectRunner", **{**self.__dict__, **fields})


@pytest.mark.parametrize("sigint", ["python's", "ignored"])
def test_no_worker_started_ends_the_wait_with_one_line(tmp_path, monkeypatch, sigint):
    """Also where SIGINT is ignored (a build started with ``&`` by a script, or nohup'd):
    the watch still ends the wait, another SIGINT is still ignored, and the disposition is
    given back."""
    monkeypatch.setattr(beam_run, "_POLL_SECONDS", 0.05)
    before = signal.signal(signal.SIGINT, signal.SIG_IGN if sigint == "ignored"
                           else signal.default_int_handler)
    config = _Config("runner=PortableRunner,job_endpoint=localhost:1,worker_start_timeout=0.5")
    try:
        with pytest.raises(beam_run.LaunchError, match=r"^no Beam worker of PortableRunner "
                           r"started a video within 0.5 s \(worker_start_timeout\)"):
            with beam_run.launched(config, str(tmp_path)):
                if sigint == "ignored":
                    os.kill(os.getpid(), signal.SIGINT)  # not the watch's: still ignored
                for _ in range(200):  # the job server waiting for a worker that never comes
                    time.sleep(0.05)
        assert signal.getsignal(signal.SIGINT) == (signal.SIG_IGN if sigint == "ignored"
                                                   else signal.default_int_handler)
    finally:
        signal.signal(signal.SIGINT, before)
    assert not list(tmp_path.iterdir())


def test_a_started_worker_disarms_the_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(beam_run, "_POLL_SECONDS", 0.05)
    config = _Config("runner=PortableRunner,worker_start_timeout=0.5")
    with beam_run.launched(config, str(tmp_path)):
        beam_run.mark_started(str(tmp_path))
        time.sleep(1.0)
    assert not list(tmp_path.iterdir())  # markers removed


def test_a_remote_runner_is_refused_local_paths_before_it_runs(tmp_path):
    config = _Config("runner=FlinkRunner,flink_master=flink.example:8081",
                     manual_dir=Path("/ava"))
    with pytest.raises(beam_run.LaunchError, match=r"^data_dir /data is a local path"):
        with beam_run.launched(config, "/data"):
            raise AssertionError("the pipeline ran")
    with pytest.raises(beam_run.LaunchError, match=r"^manual_dir /ava is a local path"):
        with beam_run.launched(config, "gs://bucket/data"):
            raise AssertionError("the pipeline ran")


def test_errors_of_the_launching_side_pass_through(tmp_path):
    with pytest.raises(ValueError, match="^bad row$"):
        with beam_run.launched(_Config("runner=DirectRunner"), str(tmp_path)):
            raise ValueError("bad row")


def test_nondeterministic_order_gets_a_shard_count_or_is_refused(tmp_path, monkeypatch):
    config = _Config("runner=DirectRunner", nondeterministic_order=True)
    try:
        import google_crc32c  # noqa: F401
    except ImportError:
        with pytest.raises(beam_run.LaunchError, match="needs google-crc32c"):
            with beam_run.launched(config, str(tmp_path)):
                pass
        monkeypatch.setitem(__import__("sys").modules, "google_crc32c", object())
    with beam_run.launched(config, str(tmp_path)) as used:
        assert used.num_shards == beam_run.UNORDERED_SHARDS
    with beam_run.launched(config.replace(num_shards=3), str(tmp_path)) as used:
        assert used.num_shards == 3


def test_tfds_download_config_has_what_launched_reads():
    config = tfds.download.DownloadConfig(nondeterministic_order=True)
    assert config.replace(num_shards=4).num_shards == 4 and config.num_shards is None


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
    """gs://bucket/... read from tmp_path/bucket: the remote filesystem mocked where beam_run
    opens it (etils.epath), so nothing leaves the machine."""
    root = tmp_path / "bucket"
    monkeypatch.setattr(beam_run, "epath", types.SimpleNamespace(
        Path=lambda path: epath.Path(os.fspath(path).replace("gs://bucket", str(root)))))
    return root


def test_a_remote_video_is_staged_on_local_scratch_and_removed(fake_gcs, tmp_path):
    (fake_gcs / "manual" / "videos").mkdir(parents=True)
    (fake_gcs / "manual" / "videos" / "abcdefghijk.mkv").write_bytes(b"video bytes")
    work = VideoWork(fetch=FetchSettings(cache_dir="gs://bucket/cache",
                                         manual_dir="gs://bucket/manual"),
                     max_side=None, labelmap=None)
    with beam_run.staged(work, "abcdefghijk") as local:
        staged = Path(local.fetch.manual_dir) / "videos" / "abcdefghijk.mkv"
        assert staged.read_bytes() == b"video bytes"
        assert not beam_run.is_remote(local.fetch.cache_dir)
        assert Path(local.fetch.cache_dir).parent.is_dir()
        assert local.fetch.mirror == work.fetch.mirror  # the other settings travel unchanged
    assert not staged.exists() and not staged.parent.parent.parent.exists()
    with beam_run.staged(work, "zzzzzzzzzzz") as local:  # not there: other sources are tried
        assert not any(Path(local.fetch.manual_dir, "videos").iterdir())


def test_local_inputs_are_used_in_place(tmp_path):
    work = VideoWork(fetch=FetchSettings(cache_dir=str(tmp_path), manual_dir=str(tmp_path)),
                     max_side=None, labelmap=None)
    with beam_run.staged(work, "abcdefghijk") as local:
        assert local is work
