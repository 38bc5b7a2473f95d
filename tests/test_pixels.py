"""Clip frames as Y, Cb, Cr planes (what H.264 clips store): once converted to RGB, the
picture ``to_rgb`` gives, whatever the source's colour matrix and range."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from ava_keyframes import clips, media
from ava_keyframes.frames import extract_clips
from ava_keyframes.pixels import CLIP_SCALER, to_planes, to_rgb
from ava_keyframes.stamp import write_stamped_video

SIZE = (100, 57)  # odd, as the 455 x 256 clip frames of 16:9 films


def _as_rgb(planes: np.ndarray) -> np.ndarray:
    """BT.601 limited-range planes to RGB, as ``clips.decode_bytes`` converts them."""
    frame = av.VideoFrame.from_ndarray(planes, format="yuv444p")
    return media.reformatter("test").reformat(frame, format="rgb24").to_ndarray()


def _source(colorspace: int, color_range: int) -> av.VideoFrame:
    """A 4:2:0 frame of smooth colour ramps, tagged with ``colorspace`` (AVCOL_SPC) and
    ``color_range`` (AVCOL_RANGE), its samples written for that matrix and range."""
    y, x = np.mgrid[0:90, 0:160]
    rgb = np.stack([x * 255 // 160, y * 255 // 90, 255 - x * 255 // 160], -1).astype(np.uint8)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
        format="yuv420p", dst_colorspace="ITU709" if colorspace == 1 else "ITU601",
        dst_color_range="JPEG" if color_range == 2 else "MPEG")
    frame.colorspace, frame.color_range = colorspace, color_range
    return frame


@pytest.mark.parametrize(("colorspace", "color_range"), [(2, 0), (6, 1), (1, 0), (2, 2)],
                         ids=["untagged", "bt601", "bt709", "full-range"])
def test_planes_are_the_rgb_picture_for_any_matrix_and_range(colorspace, color_range):
    frame = _source(colorspace, color_range)
    want = to_rgb(frame, size=SIZE, scaler=CLIP_SCALER)
    got = _as_rgb(to_planes(frame, SIZE))
    assert got.shape == want.shape == (57, 100, 3)
    # BT.709 or full-range samples read as BT.601 limited range are off by 20-65 levels;
    # the chroma interpolation of the direct path (untagged, bt601) by up to 6
    assert np.abs(got.astype(int) - want).max() <= 8
    assert clips.psnr(got[None], want[None]) > 40


def test_planar_clips_hold_the_rgb_clips_frames(tmp_path: Path):
    path = tmp_path / "stamped.mp4"
    write_stamped_video(path, duration=2.0, fps=30, size=(320, 180))
    rgb = list(extract_clips(path, [0, 1.5], length=8, stride=4, clip_short_side=57))
    planar = list(extract_clips(path, [0, 1.5], length=8, stride=4, clip_short_side=57,
                                planar=True))
    for a, b in zip(rgb, planar, strict=True):
        assert b.frames.shape == (8, 3, 57, 101) and a.frames.shape == (8, 57, 101, 3)
        assert (a.second, a.padded) == (b.second, b.padded)
        np.testing.assert_array_equal(a.keyframe, b.keyframe)
        assert clips.psnr(np.stack([_as_rgb(p) for p in b.frames]), a.frames) > 45
    assert rgb[0].padded > 0  # the clip at 0 s repeats the first frame
