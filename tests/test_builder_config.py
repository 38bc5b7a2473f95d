"""The TFDS builder's configs, options and one-line errors, without a build."""

from __future__ import annotations

import os
import re
import subprocess

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from builder_support import DATASET_FOLDER, LABELMAP, TFDS_CLI, UNREACHABLE_ANNOTATIONS

from ava_keyframes import ava_keyframes_dataset_builder as builder_module
from ava_keyframes import clips, plan
from ava_keyframes.finished import FinishedStore
from ava_keyframes.settings import FetchSettings
from ava_keyframes.sources import FetchResult
from ava_keyframes.stamp import read_frame_stamp

# --- unit tests ------------------------------------------------------------------------------


def test_select_keyframes_is_deterministic_spread_and_bounded():
    seconds = list(range(902, 1799))
    chosen = plan.select_keyframes(seconds, 5)
    assert chosen == plan.select_keyframes(list(seconds), 5)
    assert len(chosen) == len(set(chosen)) == 5 and chosen == sorted(chosen)
    gaps = np.diff(chosen)
    assert gaps.max() - gaps.min() <= 1  # evenly spread over the whole range
    assert chosen[0] - 902 < 100 and 1798 - chosen[-1] < 100
    assert plan.select_keyframes([902, 903], 5) == [902, 903]
    assert plan.select_keyframes([902, 903, 904], None) == [902, 903, 904]


def test_pixel_box_scales_and_clips():
    pixels = plan.pixel_box((-0.1, 0.2, 1.2, 0.5), 100, 50)
    assert pixels.dtype == np.float32
    np.testing.assert_allclose(pixels, [0, 10, 100, 25])


def test_custom_config_options_are_validated():
    with pytest.raises(ValueError, match="max_per_video"):
        builder_module.AvaKeyframesConfig(name="x", max_per_video=0)
    with pytest.raises(ValueError, match="ava_version"):
        builder_module.AvaKeyframesConfig(name="x", ava_version="3.0")
    with pytest.raises(ValueError, match="max_side must be a positive integer or null, not True"):
        builder_module.AvaKeyframesConfig(name="x", max_side=True)  # a bool is no integer
    with pytest.raises(ValueError, match="allow_missing must be true or false"):
        builder_module.AvaKeyframesConfig(name="x", allow_missing=1)
    with pytest.raises(ValueError, match="unknown config option.s. 'foo'; known: name, "):
        builder_module.AvaKeyframesConfig(name="x", foo=1)  # once a TypeError traceback


@pytest.mark.slow
def test_tfds_build_refuses_a_config_named_like_a_path_in_one_line(tmp_path):
    data_dir = tmp_path / "a" / "b" / "data"
    cmd = [TFDS_CLI, "build", "ava_keyframes", "--imports", "ava_keyframes",
           "--config", '{"name": "../../../x"}', "--data_dir", str(data_dir)]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,  # noqa: S603
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ava_keyframes: error: config name '../../../x': expected")
    assert not any(path.is_file() for path in tmp_path.rglob("*"))  # nothing written at all


def test_every_keyframe_not_written_is_counted_on_the_console_with_the_report_path():
    split = {"keyframes_annotated": 22, "keyframes_written": 10,
             "keyframes_skipped": {plan.FRAME_MISSING: 11, plan.VIDEO_UNAVAILABLE: 1}}
    report = {"dataset": "ava_keyframes/v2.2/1.0.0",
              "splits": {"train": split, "validation": {**split, "keyframes_skipped": {}}}}
    assert plan.loss_lines(report, "/data/build_report.json") == [
        f"ava_keyframes/v2.2/1.0.0 train: 12 of 22 keyframes not written (11 "
        f"{plan.FRAME_MISSING}, 1 {plan.VIDEO_UNAVAILABLE}); see /data/build_report.json"]


def test_a_second_build_into_one_data_dir_is_refused_in_one_line(tmp_path):
    import fcntl

    builder = builder_module.Builder(config="v2.2", data_dir=str(tmp_path))
    with plan.build_lock(str(tmp_path), builder.name):  # the first build, still running
        lock = tmp_path / f".{builder.name}.build.lock"
        with pytest.raises(plan.DataDirBusy, match=f"another build of ava_keyframes is writing "
                           f"into this data dir \\({re.escape(str(lock))} is locked\\)"):
            builder.download_and_prepare()
        assert not (tmp_path / builder.name).exists()  # nothing written by the second
    with open(lock) as handle:  # released when the first ends
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


@pytest.mark.slow
def test_tfds_build_with_an_empty_annotation_csv_is_one_line(tmp_path):
    annotations = tmp_path / "manual" / "annotations"
    annotations.mkdir(parents=True)
    for name in ("ava_train_v2.2.csv", "ava_train_excluded_timestamps_v2.2.csv",
                 "ava_val_v2.2.csv", "ava_val_excluded_timestamps_v2.2.csv"):
        (annotations / name).write_text("")
    cmd = [TFDS_CLI, "build", "ava_keyframes", "--imports", "ava_keyframes", "--config", "v2.2",
           "--manual_dir", str(tmp_path / "manual"), "--data_dir", str(tmp_path / "data")]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,  # noqa: S603
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"ava_keyframes: error: {annotations / 'ava_train_v2.2.csv'}: empty file, no AVA rows")


def test_plain_tfds_build_without_annotations_skips_each_config_in_one_line(tmp_path):
    """Not slow: the fast suite runs it on the lowest TFDS allowed too, whose CLI differs."""
    (tmp_path / "manual" / "annotations").mkdir(parents=True)
    cmd = [TFDS_CLI, "build", "ava_keyframes", "--imports", "ava_keyframes",
           "--manual_dir", str(tmp_path / "manual"), "--data_dir", str(tmp_path / "data")]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,  # noqa: S603
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
                                 "AVA_KEYFRAMES_ANNOTATIONS_URL": UNREACHABLE_ANNOTATIONS})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    skipped = [line for line in result.stdout.splitlines() if ": skipped: no v" in line]
    assert [line.split("/")[:2] for line in skipped] == [["ava_keyframes", "v2.2"],
                                                         ["ava_keyframes", "v2.1"]]
    assert "cannot be reached" in skipped[0] and "--config v2.1" in skipped[1]
    assert result.stderr.strip().splitlines()[-1].startswith(
        "ava_keyframes: error: no config built: no annotations were found for any")


def test_clip_options_are_validated():
    with pytest.raises(ValueError, match="clip_length and clip_stride go together"):
        builder_module.AvaKeyframesConfig(name="x", clip_length=8)
    with pytest.raises(ValueError, match="clip_stride must be a positive integer or null"):
        builder_module.AvaKeyframesConfig(name="x", clip_length=8, clip_stride=0)
    with pytest.raises(ValueError, match="clip_short_side must be an integer in 1..1080, not 2.5"):
        builder_module.AvaKeyframesConfig(name="x", clip_length=8, clip_stride=2,
                                          clip_short_side=2.5)
    # Bounded before anything is allocated (1000000 frames once asked for 244 GiB).
    with pytest.raises(ValueError, match="clip_length must be an integer in 1..128, not 1000000"):
        builder_module.AvaKeyframesConfig(name="x", clip_length=1_000_000, clip_stride=2)
    with pytest.raises(ValueError, match="clip_short_side .* not 100000"):
        builder_module.AvaKeyframesConfig(name="x", clip_length=8, clip_stride=2,
                                          clip_short_side=100_000)
    with pytest.raises(ValueError, match="clip_encoding must be one of h264, jpeg, not 'png'"):
        builder_module.AvaKeyframesConfig(name="x", clip_length=8, clip_stride=2,
                                          clip_encoding="png")


def test_only_clip_configs_have_clip_features(tmp_path):
    def features(config):
        return builder_module.Builder(config=config, data_dir=str(tmp_path)).info.features

    for name in ("v2.2", "v2.1"):
        assert "clip" not in features(name) and "clip_padded" not in features(name)
    for name in ("v2.2_clips8x8", "v2.2_clips32x2"):  # one H.264 stream per clip
        clip = features(name)["clip"]
        assert isinstance(clip, tfds.features.Tensor) and clip.dtype == tf.string
        assert features(name)["image"].shape == (None, None, 3)  # the keyframe, as in v2.2
        assert builder_module.Builder(config=name, data_dir=str(tmp_path)).version == "3.0.0"
    jpeg = builder_module.AvaKeyframesConfig(name="x", clip_length=8, clip_stride=8,
                                             clip_encoding="jpeg")
    clip = features(jpeg)["clip"]
    assert isinstance(clip, tfds.features.Video) and clip.shape == (8, None, None, 3)
    assert builder_module.Builder(config="v2.2", data_dir=str(tmp_path)).version == "2.0.0"
    config = builder_module.Builder.builder_configs["v2.2_clips32x2"]
    assert (config.clip_length, config.clip_stride, config.clip_short_side) == (32, 2, 256)


def _dummy_job(video_id: str, seconds: tuple[int, ...]) -> plan.VideoJob:
    return plan.VideoJob("train", video_id, tuple((second, ()) for second in seconds))


def test_clips_are_padded_and_counted_at_both_edges(tmp_path):
    """dummy_data's videos: 10 fps, frame i (stamped i) at i/10 s, last frame 3.9 s. Clips of
    8 frames 16/30 s apart reach 2.13 s before and 1.6 s after their keyframe."""
    video = DATASET_FOLDER / "dummy_data" / "videos" / "0ogRTCEBL0p.mp4"
    work = plan.VideoWork(FetchSettings(str(tmp_path / "cache")), None, LABELMAP,
                          clip=(8, 16, 72))
    outcome = plan.VideoOutcome("train", "0ogRTCEBL0p", 3)
    fetched = FetchResult("0ogRTCEBL0p", "cached", video, "local", None, fetch_mode="local")
    job = _dummy_job("0ogRTCEBL0p", (1, 3))
    store = FinishedStore(tmp_path / "cache", {"test": "clips"})
    stored = store.finish(job, fetched, work, builder_module.Builder(
        config="v2.2_clips8x8", data_dir=tmp_path / "data").info.features["image"].encode_example)
    examples = {key: _decoded(example) for key, example in
                builder_module.video_examples(job, fetched, stored, work, outcome)}
    first, last = examples["0ogRTCEBL0p_0001"], examples["0ogRTCEBL0p_0003"]
    # times 1 + (k - 4) * 16/30: -1.13, -0.6, -0.07 (before the first frame), 0.47, 1.0, ...
    assert [read_frame_stamp(f) for f in first["clip"]] == [0, 0, 0, 5, 10, 16, 21, 26]
    assert first["clip_padded"] == 3 and read_frame_stamp(first["image"]) == 10
    # times 3 + (k - 4) * 16/30: ... 3.53, 4.07 and 4.6 (after the last frame, 3.9 s)
    assert [read_frame_stamp(f) for f in last["clip"]] == [9, 14, 20, 25, 30, 36, 39, 39]
    assert last["clip_padded"] == 2 and first["clip"].shape == (8, 72, 96, 3)
    assert outcome.written == 2 and not outcome.skipped


def _decoded(example: dict) -> dict:
    """``example`` with its stored JPEG and H.264 clip decoded to arrays."""
    return clips.decode_example({**example,
                                 "image": tf.io.decode_jpeg(example["image"]).numpy()})


def test_an_unusable_cache_is_a_one_line_build_error(tmp_path, monkeypatch):
    monkeypatch.setenv("AVA_KEYFRAMES_SOURCES", "local")
    planted = tmp_path / "cache" / "videos" / "0ogRTCEBL0p.mp4"
    planted.parent.mkdir(parents=True)
    planted.symlink_to(tmp_path / "victim.mp4")  # a link planted in the cache
    work = plan.VideoWork(FetchSettings(str(tmp_path / "cache")), None, LABELMAP)
    with pytest.raises(builder_module.BuildError) as error:
        builder_module._fetch_job(_dummy_job("0ogRTCEBL0p", (1,)), work)
    assert str(error.value) == f"{planted}: a symbolic link in the video cache, refused (remove it)"


@pytest.mark.slow
def test_tfds_build_with_an_unusable_cache_is_one_line(tmp_path):
    """The error comes from the thread that fetches videos; under `tfds build` it is still
    one line and a non-zero exit code."""
    planted = tmp_path / "cache" / "videos" / "0ogRTCEBL0p.mp4"
    planted.parent.mkdir(parents=True)
    planted.symlink_to(tmp_path / "victim.mp4")
    cmd = [TFDS_CLI, "build", "ava_keyframes", "--imports", "ava_keyframes", "--config", "v2.2",
           "--manual_dir", str(DATASET_FOLDER / "dummy_data"), "--data_dir", str(tmp_path)]
    env = {**os.environ, "AVA_KEYFRAMES_SOURCES": "local", "TF_CPP_MIN_LOG_LEVEL": "3",
           "AVA_KEYFRAMES_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,  # noqa: S603
                            env=env)
    assert result.returncode != 0 and "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip().splitlines()[-1].endswith(
        f"ava_keyframes: error: {planted}: a symbolic link in the video cache, refused (remove it)")


@pytest.mark.parametrize("name", ["../../../x", "a/b", "..", ".hidden", "", "x" * 65, "v2.2\n"])
def test_config_names_are_checked_like_ids(name):
    with pytest.raises(ValueError, match="config name"):
        builder_module.AvaKeyframesConfig(name=name)
