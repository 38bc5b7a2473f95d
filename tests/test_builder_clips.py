"""A clip config of the TFDS builder (v2.2_clips32x2, built through the loopback mirror): the
same keyframes as v2.2, every clip frame the one the rule names, clips past the video's end
from a window that reaches it, and clips in tf.data and the detector."""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from ava_keyframes import clips
from ava_keyframes.stamp import read_frame_stamp


def _by_key(builder, split: str) -> dict[str, dict]:
    return {f"{ex['video_id'].decode()}_{int(ex['timestamp']):04d}": clips.decode_example(ex)
            for ex in tfds.as_numpy(builder.as_dataset(split=split))}


@pytest.mark.slow
def test_clip_config_keyframe_features_equal_the_keyframe_configs(clip_build):
    for split in ("train", "validation"):
        clips, keyframes = _by_key(clip_build["clips"], split), _by_key(clip_build["keyframes"],
                                                                         split)
        assert set(clips) == set(keyframes) and len(clips) > 0
        for key, example in clips.items():
            assert set(example) == {*keyframes[key], "clip", "clip_padded"}
            np.testing.assert_array_equal(example["image"], keyframes[key]["image"])
            for field, value in example["objects"].items():
                np.testing.assert_array_equal(value, keyframes[key]["objects"][field])


def _expected_clip(info, second: int, length: int, stride: int) -> tuple[list[int], int]:
    """Stamps of the clip frames the rule names (the first frame at or after each time, the
    nearest frame outside the video), and how many are padding."""
    last = math.ceil((info.start + info.seconds) * info.fps) - 1
    stamps, padded = [], 0
    for k in range(length):
        time = second + Fraction((k - length // 2) * stride, 30)
        index = math.ceil(time * info.fps)
        padded += time < 0 or index > last
        stamps.append(min(max(index, 0), last))
    return stamps, padded


@pytest.mark.slow
def test_every_clip_frame_is_the_frame_the_rule_names(e2e, clip_build):
    seen_padded = 0
    for split in ("train", "validation"):
        for key, example in _by_key(clip_build["clips"], split).items():
            stamps, padded = _expected_clip(e2e["info"], int(example["timestamp"]), 32, 2)
            assert example["clip"].shape == (32, 256, 341, 3), key  # shorter side 256
            assert [read_frame_stamp(frame) for frame in example["clip"]] == stamps, key
            assert example["clip_padded"] == padded, key
            seen_padded += padded
    assert seen_padded > 0  # the clips of 904 end past the last frame


@pytest.mark.slow
def test_clips_past_the_end_come_from_a_window_that_reaches_the_video_s_end(e2e, clip_build):
    """Issue 23: a window reaching the video's end holds it to its last frame, so clips past
    the end are served (and padded, see above) from the window, not refused or dropped."""
    report, info = clip_build["report"], e2e["info"]
    assert report["options"]["clip_length"] == 32 and report["options"]["clip_stride"] == 2
    for split, csv_split in (("train", "train"), ("validation", "val")):
        fetched_videos = report["splits"][split]["videos_fetched"]
        for video_id in info.ids[csv_split]:
            if video_id in (e2e["missing"], e2e["broken"]):
                continue
            fetched = fetched_videos[video_id]
            assert fetched["fetch_mode"] == "window" and "note" not in fetched
            assert fetched["bytes_fetched"] > 0
        assert report["splits"][split]["keyframes_skipped"].get("frame not extracted", 0) == 0


@pytest.mark.slow
def test_the_detector_reads_a_clip_configs_keyframes_and_leaves_clips_encoded(clip_build):
    from detector import data

    builder = clip_build["clips"]
    info = data.dataset_info(builder.info.full_name.rsplit("/", 1)[0], builder.data_dir_root)
    assert data.load_split(info, "train", builder.data_dir_root).element_spec["clip"].dtype \
        == tf.string  # not decoded: the detector never looks at it
    images, targets = next(iter(data.train_batches(info, "train", image_size=64, batch_size=2,
                                                   data_dir=builder.data_dir_root)))
    assert images.shape == (2, 64, 64, 3) and targets["classes"].shape[-1] == 80


@pytest.mark.slow
def test_clips_batch_in_tf_data(clip_build):
    ds = clip_build["clips"].as_dataset(split="train").map(
        functools.partial(clips.decode_clip, length=32), num_parallel_calls=2)
    assert ds.element_spec["clip"].shape.as_list() == [32, None, None, 3]
    frames, padded = next(iter(ds.map(lambda ex: (ex["clip"], ex["clip_padded"])).batch(2)))
    assert frames.shape == (2, 32, 256, 341, 3) and frames.dtype == "uint8"
    assert padded.shape == (2,)
    batch = next(iter(tfds.as_numpy(ds.padded_batch(3))))
    assert batch["clip"].shape == (3, 32, 256, 341, 3) and batch["objects"]["labels"].ndim == 3
    # the dataset card's recipe: clips cropped to one size, then batched with their targets
    cropped = ds.map(lambda ex: (tf.image.resize_with_crop_or_pad(ex["clip"], 224, 224),
                                 ex["objects"]["bbox"], ex["objects"]["labels"]))
    frames, boxes, labels = next(iter(cropped.padded_batch(3)))
    assert frames.shape == (3, 32, 224, 224, 3) and frames.dtype == "uint8"
    assert boxes.shape[::2] == (3, 4) and labels.shape[::2] == (3, 80)
