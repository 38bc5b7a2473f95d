"""Clips stored as one short H.264 video each, and the step that decodes them (issue 27).

A clip config stores its ``T`` clip frames either as ``T`` JPEGs (``clip_encoding:
"jpeg"``, a ``tfds.features.Video``) or, by default, as one H.264 stream (``"h264"``):
libx264 from PyAV's wheel, 4:4:4 chroma (any frame size, odd widths included: clip frames
are 455 px wide for 16:9 films), one IDR frame then P frames, constant QP 20, CAVLC, no
deblocking, ``tune`` psnr, preset ``superfast``. The build hands the encoder Y, Cb, Cr planes
(``pixels.to_planes``): an 8-bit YUV source's own samples, only scaled, the stream tagged
with the source's colour matrix and range, by which decoding converts (no conversion to RGB
and back). Each encoding thread keeps one encoder and starts every clip with a forced IDR
frame, so each stream decodes alone (see ``encode``).
Measured in ``benchmarks/build_clips.py``: a 32 x 2 clip takes 0.16-0.17x (720p film and
synthetic corpus) the bytes of its JPEG q95 frames (8 x 8: 0.25-0.29x) at a PSNR against the
source within 1 dB of theirs (frame stamps survive: ``stamp.py``); ``clip_encoder.py`` per
clip.

Reading: ``ds.map(clips.decode_clip, num_parallel_calls=...)`` turns the stored bytes into
``uint8 [T, H, W, 3]`` inside tf.data (PyAV decodes with the GIL released, so parallel
calls use several cores); ``clips.decode_example`` does the same for an example of
``tfds.as_numpy``. Both leave an example of a JPEG clip config, or of a keyframe config,
as it is.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import av
import numpy as np
import tensorflow as tf
from av.video.frame import PictureType

from ava_keyframes import media
from ava_keyframes.pixels import UNTAGGED

ENCODINGS = ("h264", "jpeg")
"""``clip_encoding`` values: one H.264 stream per clip, or one JPEG per clip frame."""

X264_OPTIONS = {"qp": "20", "tune": "psnr,zerolatency", "preset": "superfast", "threads": "1",
                "forced-idr": "1",
                "x264-params": "cabac=0:no-deblock=1:scenecut=0:weightp=0:keyint=infinite"}
"""libx264 settings, chosen by measurement (``benchmarks/README.md``, ``build_clips.py``):
a constant QP (no rate control, so nothing carries from one clip to the next in a reused
encoder; without a rate control, scene cuts and weighted prediction, x264 makes no
low-resolution copy of each frame to analyse); ``tune`` zerolatency (no B-frames, no
lookahead: each frame's packet comes out as it goes in, so a clip needs no draining) and psnr
(no psycho-visual tuning: it spends bits that PSNR does not reward); CAVLC (``cabac=0``)
decodes in about 0.6x the time of CABAC; no deblocking filter (encodes and decodes in about
0.8x the time, for 0.2-0.3 dB); QP 20 keeps every measured clip within 1 dB of JPEG q95;
``superfast``: ``ultrafast`` doubles the bytes, ``veryfast`` encodes slower for a few
percent; one thread: a clip's 8-32 small frames gave x264's frame threads no clear gain;
``keyint`` infinite: an IDR frame only where ``encode`` forces one, at each clip's start."""

VERSION = "3.0.0"
"""The version of the clip configs (``v2.2`` and ``v2.1`` stay at the builder's)."""
RELEASE_NOTES = {
    "3.0.0": "clip configs: clip_encoding, by default \"h264\": each clip one short H.264 "
             "stream (about 0.16x the bytes of JPEG frames at 32 x 2), decoded by "
             "ava_keyframes.clips; \"jpeg\" keeps the JPEG frames of 2.0.0.",
}

_RATE = 30  # nominal: a clip's frames carry no times, only their order
_TIME_BASE = Fraction(1, _RATE)
_ENCODERS = threading.local()


def open_encoder(width: int, height: int, colour: tuple[int, int],
                 options: dict[str, str] = X264_OPTIONS) -> av.CodecContext:
    """A libx264 encoder, opened, of yuv444p frames of this size, its stream tagged with
    ``colour``; ``options`` other than the build's are for measuring them
    (``benchmarks/clip_encoder.py``)."""
    context = av.CodecContext.create("libx264", "w")
    context.width, context.height, context.pix_fmt = width, height, "yuv444p"
    context.time_base, context.framerate = _TIME_BASE, _RATE
    context.colorspace, context.color_range = colour
    context.options = options
    context.open()
    return context


def _encoder(width: int, height: int, colour: tuple[int, int]) -> Any:
    """This thread's libx264 encoder for frames of this size and colour, kept between clips:
    making one costs about 2 ms, against 13 ms to encode an 8 x 8 clip. Its state: the
    context and the next frame's timestamp (they only rise)."""
    key = (width, height, colour)
    if getattr(_ENCODERS, "key", None) != key:
        _ENCODERS.key, _ENCODERS.context, _ENCODERS.pts = key, open_encoder(*key), 0
    return _ENCODERS


def encode(frames: Sequence[av.VideoFrame], colour: tuple[int, int] = UNTAGGED) -> bytes:
    """``T`` yuv444p frames of one size (``extract_clips(..., planar=True)``), of colour
    matrix and range ``colour`` (AVCOL_SPC, AVCOL_RANGE: ``Clip.colour``) -> one raw H.264
    stream (Annex B) of ``T`` frames, tagged with ``colour`` (its VUI). The frames are taken
    over as they are (no copy): their timestamps and picture types are set here.

    The stream starts with an IDR frame and its parameter sets, so it decodes alone, and its
    frames decode the same whatever this thread's encoder encoded before; its bytes may not
    be: x264 writes its version note into the encoder's first stream only, and alternates
    the IDR frames' ``idr_pic_id``."""
    sizes = {(frame.format.name, frame.width, frame.height) for frame in frames}
    if len(sizes) != 1 or next(iter(sizes))[0] != "yuv444p":
        raise ValueError(f"clip frames must be yuv444p frames of one size, not {sorted(sizes)}")
    state = _encoder(frames[0].width, frames[0].height, colour)
    packets = []
    for index, frame in enumerate(frames):
        frame.pts, frame.time_base, state.pts = state.pts, _TIME_BASE, state.pts + 1
        frame.pict_type = PictureType.I if index == 0 else PictureType.NONE  # I: an IDR
        packets += state.context.encode(frame)
    if len(packets) != len(frames):  # zerolatency: never, as no frame is held back
        raise RuntimeError(f"libx264 returned {len(packets)} packets for {len(frames)} frames")
    return b"".join(bytes(packet) for packet in packets)


def decode_frames(data: bytes) -> list[av.VideoFrame]:
    """One stored H.264 clip -> its frames as decoded (planes, and the colour tags that
    ``encode`` wrote); ValueError for bytes that are not one. The raw stream goes straight
    to the decoder (no container to probe)."""
    try:
        context = av.CodecContext.create("h264", "r")
        context.thread_type = "NONE"  # parallelism comes from tf.data's parallel calls
        frames = []
        for packet in [*context.parse(data), *context.parse(b"")]:  # b"": the parser's last
            frames += context.decode(packet)
        frames += context.decode(None)
    except av.FFmpegError as error:
        raise ValueError(f"not an H.264 clip ({len(data)} bytes): {error}") from None
    if not frames:
        raise ValueError(f"not an H.264 clip ({len(data)} bytes): no frame decoded")
    return frames


def rgb_frames(frames: Sequence[av.VideoFrame]) -> np.ndarray:
    """YUV frames of one size -> ``uint8 [T, H, W, 3]`` RGB, converted by their colour tags.
    swscale converts each frame to planar GBR, on this thread alone (``media.reformat``), and
    NumPy interleaves the planes: the pixels of swscale's packed RGB output
    (``tests/test_clips.py``) in about 0.75x the time, as swscale writes planar GBR from
    4:4:4 in about half the time of packed RGB (``benchmarks/README.md``)."""
    clip = np.empty((len(frames), frames[0].height, frames[0].width, 3), np.uint8)
    for frame, rgb in zip(frames, clip, strict=True):
        planes = media.reformat("rgb_frames", frame, format="gbrp").planes
        for channel, plane in zip((1, 2, 0), planes, strict=True):  # G, B, R
            rgb[..., channel] = np.frombuffer(plane, np.uint8).reshape(
                frame.height, plane.line_size)[:, :frame.width]
    return clip


def decode_bytes(data: bytes) -> np.ndarray:
    """One stored H.264 clip -> ``uint8 [T, H, W, 3]`` RGB (:func:`rgb_frames`); ValueError
    for bytes that are not one, or whose colour tags swscale cannot convert (BT.2020
    constant luminance)."""
    frames = decode_frames(data)
    try:
        return rgb_frames(frames)
    except av.FFmpegError as error:
        tags = sorted({(frame.colorspace, frame.color_range) for frame in frames})
        raise ValueError(f"H.264 clip ({len(data)} bytes) of colour matrix and range {tags}: "
                         f"not convertible to RGB: {error}") from None


def decode(data: tf.Tensor, length: int | None = None) -> tf.Tensor:
    """The tf.data step: a scalar ``tf.string`` clip -> ``uint8 [T, H, W, 3]`` (``T`` static
    when ``length`` is given). Runs PyAV through ``tf.numpy_function``, so it works in
    ``ds.map(..., num_parallel_calls=...)``, several clips decoding at once."""
    frames = tf.numpy_function(decode_bytes, [data], tf.uint8, stateful=False)
    frames.set_shape([length, None, None, 3])
    return frames


def decode_clip(example: dict[str, Any], length: int | None = None) -> dict[str, Any]:
    """For ``ds.map``: the example with its ``clip`` decoded (a JPEG config's, or an example
    without a clip, unchanged); ``length`` (``clip_length``) makes the first dimension static."""
    clip = example.get("clip")
    if clip is None or clip.dtype != tf.string:
        return example
    return {**example, "clip": decode(clip, length)}


def decode_example(example: dict[str, Any]) -> dict[str, Any]:
    """For ``tfds.as_numpy`` examples: the same arrays as :func:`decode_clip` gives."""
    clip = example.get("clip")
    if not isinstance(clip, bytes):
        return example
    return {**example, "clip": decode_bytes(clip)}


def psnr(decoded: np.ndarray, source: np.ndarray) -> float:
    """Mean over frames of each frame's PSNR (dB) against ``source``: the quality bar of
    ``clip_encoding`` (``benchmarks/build_clips.py``, ``tests/test_clips.py``); an
    identical frame counts as 100 dB."""
    error = np.mean((decoded.astype(np.float64) - source) ** 2, axis=(1, 2, 3))
    return float(np.mean(10 * np.log10(255.0**2 / np.maximum(error, 255.0**2 / 1e10))))
