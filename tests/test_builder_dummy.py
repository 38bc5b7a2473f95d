"""The TFDS builder built in process: TFDS's own dummy-data test, options, and examples or
videos lost during a build (the build fails, or with AVA_KEYFRAMES_ALLOW_MISSING records it)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from builder_support import DATASET_FOLDER, build_in_process, expected_keyframes

from ava_keyframes import ava_keyframes_dataset_builder as builder_module
from ava_keyframes import plan
from ava_keyframes.sources import FetchResult

# --- TFDS's own dataset test, on dummy_data/ --------------------------------------------------
# dummy_data/ was written by `ava-keyframes synth dummy_data --videos 2 --seconds 3 --start 1
# --fps 10 --size 96x72 --seed 0`, with the four CSVs also copied under their v2.1 names.


@pytest.mark.slow
class AvaKeyframesDummyDataTest(tfds.testing.DatasetBuilderTestCase):
    """Both configs on dummy_data/: 3 keyframes per video, 1 of them excluded."""

    DATASET_CLASS = builder_module.Builder
    SPLITS = {"train": 2, "validation": 2}

    @pytest.fixture(autouse=True)
    def _videos_from_dummy_data_only(self, tmp_path, monkeypatch):
        monkeypatch.setenv("AVA_KEYFRAMES_SOURCES", "local")
        monkeypatch.setenv("AVA_KEYFRAMES_CACHE", str(tmp_path / "cache"))


# --- in-process builds: options, nothing to write ---------------------------------------------


@pytest.mark.slow
def test_options_keep_one_keyframe_per_video_at_max_side(tmp_path):
    config = builder_module.AvaKeyframesConfig(name="v2.2_k1_s48", max_per_video=1, max_side=48)
    builder = build_in_process(tmp_path, DATASET_FOLDER / "dummy_data", config)
    report = json.loads((Path(builder.data_dir) / "build_report.json").read_text())
    assert report["options"] == {"max_per_video": 1, "max_side": 48}
    # the settings resolved at launch, from the environment set around the build
    assert report["fetch_settings"]["sources"] == ["local"]
    assert report["fetch_settings"]["cache_dir"] == str(tmp_path / "cache")
    for split, csv_split in (("train", "train"), ("validation", "val")):
        examples = list(tfds.as_numpy(builder.as_dataset(split=split)))
        excluded = (DATASET_FOLDER / "dummy_data" / "annotations" /
                    f"ava_{csv_split}_excluded_timestamps_v2.2.csv").read_text()
        kept = [s for s in (1, 2, 3) if f",{s:04d}" not in excluded]  # 2 of keyframes 1..3
        assert [int(e["timestamp"]) for e in examples] == [kept[1]]  # K=1: the middle of 2
        assert examples[0]["image"].shape[:2] == (36, 48)
        bbox, pixels = examples[0]["objects"]["bbox"], examples[0]["objects"]["box_pixels"]
        np.testing.assert_allclose(pixels, bbox[:, [1, 0, 3, 2]] * [48, 36, 48, 36], atol=1e-3)
        counts = report["splits"][split]
        assert counts["keyframes_annotated"] == 2 and counts["keyframes_written"] == 1
        assert counts["keyframes_skipped"] == {plan.OVER_LIMIT: 1}


@pytest.mark.slow
def test_a_build_leaves_nothing_in_the_temp_folder(tmp_path, monkeypatch):
    """Only the data and cache folders are written: TFDS's look for pre-computed info on GCS
    left an empty ``tmp*tfds`` folder there at every builder made before its data existed."""
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    for config in builder_module.Builder.BUILDER_CONFIGS:
        builder_module.Builder(config=config.name, data_dir=str(tmp_path / "data"))
    build_in_process(tmp_path, DATASET_FOLDER / "dummy_data", "v2.2")
    assert sorted(temp.iterdir()) == []


@pytest.mark.slow
def test_examples_lost_after_generation_fail_the_build(tmp_path, monkeypatch):
    """What a runner that drops an example looks like: generated, counted, never stored."""
    generate = builder_module.video_examples

    def dropping_the_first(*args):
        yield from list(generate(*args))[1:]

    monkeypatch.setattr(builder_module, "video_examples", dropping_the_first)
    with pytest.raises(RuntimeError, match="2 examples were generated but 1 were written"):
        build_in_process(tmp_path, DATASET_FOLDER / "dummy_data", "v2.2")
    assert not (tmp_path / "data" / "ava_keyframes" / "v2.2" / "2.0.0").exists()


def _losing(video_id: str):
    """A fetch that loses ``video_id`` to a transient cause (as a cache does after an outage,
    spent retries or a full disk) and fetches the others as usual."""
    fetch = builder_module._fetch_job

    def fetch_job(job, work):
        if job.video_id == video_id:
            return FetchResult(video_id, "unavailable", None, "mirror",
                               "connection reset (retries spent)", transient=True)
        return fetch(job, work)

    return fetch_job


@pytest.mark.slow
def test_transient_loss_fails_the_build_then_a_rebuild_is_complete(
        e2e, local_corpus, tmp_path, monkeypatch):
    lost = e2e["info"].ids["train"][0]
    expected = len(expected_keyframes(e2e["info"], "train"))
    with monkeypatch.context() as patch:
        patch.setattr(builder_module, "_fetch_job", _losing(lost))
        with pytest.raises(builder_module.BuildError) as failure:
            build_in_process(tmp_path, local_corpus, "v2.2")
    message = str(failure.value)
    config_dir = tmp_path / "data" / "ava_keyframes" / "v2.2"
    failed_report = config_dir / "2.0.0.failed_build_report.json"
    assert "\n" not in message and lost in message and str(failed_report) in message
    assert json.loads(failed_report.read_text())["splits"]["train"]["videos_lost"] == {
        lost: "connection reset (retries spent)"}
    assert not builder_module.Builder(config="v2.2", data_dir=str(tmp_path / "data")).is_prepared()
    assert not (config_dir / "2.0.0").exists()
    # the cause is gone: the same build now gets every video (nothing was kept from the failure)
    builder = build_in_process(tmp_path, local_corpus, "v2.2")
    assert builder.info.splits["train"].num_examples == expected
    report = json.loads((Path(builder.data_dir) / "build_report.json").read_text())
    train = report["splits"]["train"]
    assert train["videos_lost"] == {} and not report["missing_accepted"]
    assert not failed_report.exists()
    assert report["decoder"]["engine"] and train["fetch_modes"] == {"local": 4}
    assert train["videos_fetched"][lost] == {"fetch_mode": "local", "bytes_fetched": 0}


@pytest.mark.slow
def test_accepted_transient_loss_builds_and_is_recorded(
        e2e, local_corpus, tmp_path, monkeypatch, capsys):
    lost = e2e["info"].ids["train"][0]
    expected = expected_keyframes(e2e["info"], "train")
    monkeypatch.setattr(builder_module, "_fetch_job", _losing(lost))
    monkeypatch.setenv(builder_module.ALLOW_MISSING_ENV, "1")
    builder = build_in_process(tmp_path, local_corpus, "v2.2")
    report = json.loads((Path(builder.data_dir) / "build_report.json").read_text())
    train = report["splits"]["train"]
    assert report["missing_accepted"] and list(train["videos_lost"]) == [lost]
    lost_keyframes = sum(video_id == lost for video_id, _ in expected)
    assert train["keyframes_skipped"] == {plan.VIDEO_LOST: lost_keyframes}
    assert builder.info.splits["train"].num_examples == len(expected) - lost_keyframes
    out = capsys.readouterr().out
    assert f"train: video {lost} missing: connection reset" in out
    assert "built without 1 video(s) lost to a transient cause" in out


@pytest.mark.slow
def test_split_without_any_video_is_a_clear_error(tmp_path):
    manual = tmp_path / "manual"
    shutil.copytree(DATASET_FOLDER / "dummy_data" / "annotations", manual / "annotations")
    with pytest.raises(RuntimeError, match=r"no keyframe of split 'train'.*0ogRTCEBL0p: local"):
        build_in_process(tmp_path, manual, "v2.2")
