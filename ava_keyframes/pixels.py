"""Decoded frames as arrays: RGB (keyframes, JPEG clip frames) or Y, Cb, Cr planes (the
frames of H.264 clips), scaled by swscale with one kept context per thread
(``media.reformat``); and the sizes they are scaled to."""

from __future__ import annotations

import math
from fractions import Fraction

import av
import numpy as np

from ava_keyframes import media

KEYFRAME_SCALER = "BICUBIC"
"""swscale's scaler for keyframes (``max_side``): the ffmpeg command line's default, so that
a keyframe matches what ``ffmpeg -ss t -i V -vf scale=...`` gives (bit for bit unscaled)."""

CLIP_SCALER = "BILINEAR"
"""swscale's scaler for clip frames: bilinear, as video models' input pipelines resize
(about 4x faster than bicubic here, where resizing bounds the speed of clip extraction)."""


def short_side_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """``(width, height)`` scaled (up or down) so that the shorter side is ``short_side``."""
    if width <= height:
        return short_side, max(1, _round_half_up(Fraction(height * short_side, width)))
    return max(1, _round_half_up(Fraction(width * short_side, height))), short_side


def fitted_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """``(width, height)`` shrunk to fit ``max_side`` with the aspect ratio kept, rounded as
    ffmpeg's ``scale=min(iw,M):min(ih,M):force_original_aspect_ratio=decrease`` rounds."""
    if max_side is None:
        return width, height
    box_w, box_h = min(width, max_side), min(height, max_side)
    return (max(1, min(box_w, _round_half_up(Fraction(box_h * width, height)))),
            max(1, min(box_h, _round_half_up(Fraction(box_w * height, width)))))


def _round_half_up(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))


def to_rgb(frame: av.VideoFrame, max_side: int | None = None,
           size: tuple[int, int] | None = None, scaler: str = KEYFRAME_SCALER) -> np.ndarray:
    """The frame as an H x W x 3 uint8 RGB array, at ``size`` or fitted to ``max_side``.
    Scaled on one thread by this thread's kept context (``media.reformat``)."""
    width, height = size or fitted_size(frame.width, frame.height, max_side)
    return media.reformat(scaler, frame, format="rgb24", width=width, height=height,
                          interpolation=scaler).to_ndarray()


_PLANAR_SOURCES = {"yuv410p", "yuv411p", "yuv420p", "yuv422p", "yuv440p", "yuv444p"}
_MATRICES = {1, 2, 4, 5, 6, 7, 9, 10}
"""AVCOL_SPC values swscale converts to RGB by: BT.709, unspecified (read as BT.601), FCC,
BT.470BG and SMPTE 170M (BT.601), SMPTE 240M, BT.2020."""
UNTAGGED = (2, 0)
"""(AVCOL_SPC, AVCOL_RANGE) of planes with no colour tags: read as BT.601, limited range."""


def _own_planes(frame: av.VideoFrame) -> bool:
    return frame.format.name in _PLANAR_SOURCES and frame.colorspace in _MATRICES


def planes_colour(frame: av.VideoFrame) -> tuple[int, int]:
    """The colour matrix and range (AVCOL_SPC, AVCOL_RANGE) of the planes :func:`to_planes`
    gives a video whose first frame is ``frame``: an 8-bit YUV source's own (its samples are
    only scaled), else :data:`UNTAGGED` (converted through RGB). H.264 clips carry them in
    the stream (``clips.encode``), and decoding converts by them."""
    if _own_planes(frame):
        return int(frame.colorspace), int(frame.color_range)
    return UNTAGGED


def to_planes(frame: av.VideoFrame, size: tuple[int, int], colour: tuple[int, int]
              ) -> av.VideoFrame:
    """The frame at ``size`` as a new yuv444p frame (Y, Cb, Cr planes) of matrix and range
    ``colour`` (:func:`planes_colour`): the picture ``to_rgb(frame, size=size,
    scaler=CLIP_SCALER)`` gives, once converted to RGB by ``colour``. A source already of
    that colour (an 8-bit YUV video's frames, as a rule) is only scaled, 3-4x faster than
    scaling it to RGB (the two RGBs differ by swscale's chroma interpolation and rounding:
    PSNR 51-53 dB on film and synthetic frames); any other goes through ``to_rgb``. Never
    ``frame`` itself, so that its user may change its timestamp (``clips.encode`` does)."""
    width, height = size
    if _own_planes(frame) and (frame.colorspace, frame.color_range) == colour:
        scaled = media.reformat("planes", frame, format="yuv444p", width=width, height=height,
                                interpolation=CLIP_SCALER)
    else:
        rgb = av.VideoFrame.from_ndarray(to_rgb(frame, size=size, scaler=CLIP_SCALER),
                                         format="rgb24")
        scaled = media.reformat("rgb_planes", rgb, format="yuv444p", dst_colorspace=colour[0],
                                dst_color_range=colour[1])
    if scaled is frame:  # nothing to change (a yuv444p source at ``size``): swscale returned it
        scaled = av.VideoFrame.from_ndarray(frame.to_ndarray(), format="yuv444p")
    return scaled
