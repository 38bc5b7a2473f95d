"""Clips stored as one H.264 stream (issue 27): every decoded frame is still the frame the
rule names, the quality stays within 1 dB of JPEG q95 frames, and tf.data reads them."""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from av.video.reformatter import VideoReformatter

from ava_keyframes import clips, features
from ava_keyframes.finished import EncodedFrame
from ava_keyframes.frames import extract_clips
from ava_keyframes.labelmap import default_labelmap_path, read_labelmap
from ava_keyframes.stamp import read_frame_stamp, write_stamped_video

SECONDS = [0, 1.5, 2.9]  # the first and last clips reach past the video's ends
SHORT_SIDE = 103  # 183 x 103: odd sizes, as 455 x 256 clip frames of 16:9 films


@pytest.fixture(scope="module")
def stamped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clips") / "stamped.mp4"
    write_stamped_video(path, duration=3.0, fps=30, size=(320, 180))
    return Path(path)


def _clips(path: Path, planar: bool) -> dict[tuple[int, int], list]:
    return {(length, stride): list(extract_clips(path, SECONDS, length=length, stride=stride,
                                                 clip_short_side=SHORT_SIDE, planar=planar))
            for length, stride in ((8, 8), (32, 2))}


@pytest.fixture(scope="module")
def source_clips(stamped: Path) -> dict[tuple[int, int], list]:
    """RGB clips: the source's frames as the reference."""
    return _clips(stamped, planar=False)


@pytest.fixture(scope="module")
def encoded(stamped: Path) -> dict[tuple[int, int], list[bytes]]:
    """The same clips as the H.264 build stores them (from planar clip frames)."""
    return {shape: [clips.encode(clip.frames, clip.colour) for clip in planar]
            for shape, planar in _clips(stamped, planar=True).items()}


@pytest.mark.parametrize("shape", [(8, 8), (32, 2)])
def test_every_decoded_frame_is_the_frame_extracted(source_clips, encoded, shape):
    padded = 0
    for clip, stream in zip(source_clips[shape], encoded[shape], strict=True):
        decoded = clips.decode_bytes(stream)
        assert decoded.shape == clip.frames.shape == (shape[0], 103, 183, 3)
        assert [read_frame_stamp(f) for f in decoded] == [read_frame_stamp(f)
                                                          for f in clip.frames]
        padded += clip.padded
    stamps = [read_frame_stamp(f) for f in clips.decode_bytes(encoded[shape][0])]
    assert stamps[0] == 0 and padded > 0  # padding repeats frame 0, and is still counted


def test_quality_within_1_db_of_jpeg_q95_clips(source_clips, encoded):
    jpeg = tfds.features.Video(shape=(None, None, None, 3), encoding_format="jpeg")
    for clip, stream in zip(source_clips[(32, 2)] + source_clips[(8, 8)],
                            encoded[(32, 2)] + encoded[(8, 8)], strict=True):
        h264 = clips.psnr(clips.decode_bytes(stream), clip.frames)
        from_jpeg = np.stack([tf.io.decode_jpeg(data).numpy()
                              for data in jpeg.encode_example(clip.frames)])
        assert h264 >= clips.psnr(from_jpeg, clip.frames) - 1.0, clip.second
        assert h264 > 35.0  # a sanity floor: the bar is relative, so a broken JPEG path
                            # must not drag it down


def _slices(stream: bytes) -> tuple[list[int], list[int]]:
    """The NAL unit types of a raw H.264 stream: (all, those of coded frames)."""
    types = [unit[0] & 31 for unit in stream.split(b"\x00\x00\x01")[1:]]
    return types, [kind for kind in types if kind in (1, 5)]


def _in_new_thread(frames: list[av.VideoFrame]) -> bytes:
    with ThreadPoolExecutor(1) as thread:  # a new thread: a new encoder
        return thread.submit(clips.encode, frames).result()


def test_each_clip_decodes_alone_and_the_same_whatever_its_encoder_did_before(stamped):
    """A thread's encoder is kept between clips: every stream starts with its parameter sets
    and an IDR frame, then P frames, and decodes to the frames a fresh encoder's stream gives,
    after clips of another shape and size went through the same encoder."""
    planar = _clips(stamped, planar=True)
    small = [[av.VideoFrame.from_ndarray(np.ascontiguousarray(f.to_ndarray()[:, :40, :60]),
                                         format="yuv444p") for f in clip.frames]
             for clip in planar[(8, 8)]]
    for clip, other in zip(planar[(32, 2)], small, strict=True):
        reused, other_size = clips.encode(clip.frames), clips.encode(other)
        types, frames = _slices(reused)
        assert types[:2] == [7, 8] and frames == [5] + [1] * 31
        again = _in_new_thread(clip.frames)  # the same frames, taken over again
        np.testing.assert_array_equal(clips.decode_bytes(reused), clips.decode_bytes(again))
        assert clips.decode_bytes(other_size).shape == (8, 40, 60, 3)
        assert _slices(other_size)[1] == [5] + [1] * 7


def _threads_started_by_decoding(stream: bytes) -> int:
    """Threads of this process that decoding ``stream`` in a new thread (so with new scalers)
    leaves running while that thread lives."""
    def decode() -> int:
        before = len(os.listdir("/proc/self/task"))
        clips.decode_bytes(stream)
        return len(os.listdir("/proc/self/task")) - before

    with ThreadPoolExecutor(1) as thread:
        return thread.submit(decode).result()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="swscale's auto is 1 thread")
def test_decoding_starts_no_threads_of_its_own(encoded):
    """tf.data's parallel calls are the parallelism: a decode that also sliced its RGB
    conversion over every core (swscale's default) ran 2 calls on 4 threads, and 2 cores read
    clips 1.6x as fast as 1, not 1.9x (``benchmarks/build_clips.py``)."""
    assert _threads_started_by_decoding(encoded[(8, 8)][0]) == 0


@pytest.mark.parametrize("colour", [(2, 0), (1, 1), (1, 2), (5, 1)],
                         ids=["untagged", "bt709", "bt709-full-range", "bt601"])
def test_rgb_frames_are_swscales_packed_rgb(colour):
    """Planar GBR interleaved by NumPy: the same pixels as swscale's own packed RGB output,
    out-of-gamut samples (noise over the whole 8-bit range) clamped the same, at an odd size
    and a line padded past the width."""
    samples = np.random.default_rng(0).integers(0, 256, (2, 3, SHORT_SIDE, 183), np.uint8)
    frames = []
    for planes in samples:
        frame = av.VideoFrame.from_ndarray(planes, format="yuv444p")
        frame.colorspace, frame.color_range = colour
        frames.append(frame)
    assert frames[0].planes[0].line_size > 183
    packed = [VideoReformatter().reformat(f, format="rgb24", threads=1).to_ndarray()
              for f in frames]
    np.testing.assert_array_equal(clips.rgb_frames(frames), np.stack(packed))


def test_clip_bytes_are_a_fraction_of_jpeg_frames(source_clips, encoded):
    jpeg = tfds.features.Video(shape=(None, None, None, 3), encoding_format="jpeg")
    for clip, stream in zip(source_clips[(32, 2)], encoded[(32, 2)], strict=True):
        jpeg_bytes = sum(len(data) for data in jpeg.encode_example(clip.frames))
        assert len(stream) < 0.3 * jpeg_bytes


def _stored(spec, clip, stream: bytes | None = None) -> EncodedFrame:
    """``clip`` as the finished store keeps it: JPEG keyframe, and its H.264 ``stream`` or
    (None) its frames' JPEGs."""
    encode = spec["image"].encode_example
    frames = [encode(frame) for frame in clip.frames] if stream is None else [stream]
    height, width = clip.keyframe.shape[:2]
    return EncodedFrame(int(clip.second), encode(clip.keyframe), width, height, frames,
                        clip.padded)


def test_stored_clips_decode_in_a_parallel_padded_batch_pipeline(source_clips, encoded):
    names = read_labelmap(default_labelmap_path()).names
    spec = features.keyframe_features(names, clip_length=8)
    labelmap = read_labelmap(default_labelmap_path())
    stored = [spec.serialize_example(features.example("v", [], _stored(spec, clip, stream),
                                                      labelmap))
              for clip, stream in zip(source_clips[(8, 8)], encoded[(8, 8)], strict=True)]
    ds = tf.data.Dataset.from_tensor_slices(stored).map(spec.deserialize_example)
    assert ds.element_spec["clip"].dtype == tf.string
    ds = ds.map(functools.partial(clips.decode_clip, length=8), num_parallel_calls=2)
    assert ds.element_spec["clip"].shape.as_list() == [8, None, None, 3]
    (batch,) = list(tfds.as_numpy(ds.padded_batch(3)))
    assert batch["clip"].shape == (3, 8, 103, 183, 3) and batch["clip"].dtype == np.uint8
    for frames, clip in zip(batch["clip"], source_clips[(8, 8)], strict=True):
        assert [read_frame_stamp(f) for f in frames] == [read_frame_stamp(f)
                                                         for f in clip.frames]
    assert list(batch["clip_padded"]) == [clip.padded for clip in source_clips[(8, 8)]]
    # tfds.as_numpy users decode an example with decode_example: the same arrays
    example = next(iter(tfds.as_numpy(tf.data.Dataset.from_tensor_slices(stored[:1])
                                      .map(spec.deserialize_example))))
    np.testing.assert_array_equal(clips.decode_example(example)["clip"], batch["clip"][0])


def test_jpeg_clip_configs_store_and_read_frames_as_before(source_clips):
    names = read_labelmap(default_labelmap_path()).names
    spec = features.keyframe_features(names, clip_length=8, clip_encoding="jpeg")
    clip = source_clips[(8, 8)][1]
    stored = spec.serialize_example(features.example(
        "v", [], _stored(spec, clip), read_labelmap(default_labelmap_path()), "jpeg"))
    example = spec.deserialize_example(tf.constant(stored))
    assert clips.decode_clip(example)["clip"] is example["clip"]  # already frames
    keyframe_only = {"image": example["image"]}
    assert clips.decode_clip(keyframe_only) is keyframe_only
    assert clips.decode_example(keyframe_only) is keyframe_only
    assert [read_frame_stamp(f) for f in example["clip"].numpy()] == [
        read_frame_stamp(f) for f in clip.frames]


def test_bytes_that_are_not_a_clip_are_one_line_errors():
    with pytest.raises(ValueError, match=r"^not an H.264 clip \(5 bytes\)"):
        clips.decode_bytes(b"junk!")
    rgb = av.VideoFrame.from_ndarray(np.zeros((8, 8, 3), np.uint8), format="rgb24")
    with pytest.raises(ValueError, match=r"^clip frames must be yuv444p frames of one size"):
        clips.encode([rgb])
    with pytest.raises(ValueError, match=r"^clip frames must be yuv444p frames of one size"):
        clips.encode([])


def test_a_clip_whose_colour_swscale_cannot_convert_is_a_one_line_error():
    """BT.2020 constant luminance (AVCOL_SPC 10): swscale has no conversion to RGB."""
    grey = [av.VideoFrame.from_ndarray(np.full((3, 16, 16), 128, np.uint8), format="yuv444p")
            for _ in range(2)]
    with pytest.raises(ValueError, match=r"^H.264 clip \(\d+ bytes\) of colour matrix and "
                                         r"range \[\(10, 1\)\]: not convertible to RGB"):
        clips.decode_bytes(clips.encode(grey, (10, 1)))
