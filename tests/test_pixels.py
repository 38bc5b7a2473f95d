"""Clip frames as Y, Cb, Cr planes (what H.264 clips store): once converted to RGB, the
picture ``to_rgb`` gives, whatever the source's colour matrix and range."""

from __future__ import annotations

import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from ava_keyframes import clips
from ava_keyframes.frames import extract_clips
from ava_keyframes.media import ffmpeg_binary
from ava_keyframes.pixels import CLIP_SCALER, UNTAGGED, planes_colour, to_planes, to_rgb
from ava_keyframes.stamp import write_stamped_video

SIZE = (100, 57)  # odd, as the 455 x 256 clip frames of 16:9 films
FILM = Path(__file__).parent / "data" / "video" / "bigbuckbunny.mp4"
TAGGED = {  # real film re-encoded as other programs tag their videos: (file, ffmpeg options)
    "vp9-webm-bt709": ("film.webm", ["-c:v", "libvpx-vp9", "-deadline", "realtime",
                                     "-cpu-used", "8", "-colorspace", "bt709",
                                     "-color_primaries", "bt709", "-color_trc", "bt709",
                                     "-color_range", "tv"]),
    "h264-mkv-bt709-full-range": ("film.mkv", ["-c:v", "libx264", "-preset", "veryfast",
                                               "-pix_fmt", "yuv420p", "-colorspace", "bt709",
                                               "-color_range", "pc"]),
    "mjpeg-avi-yuvj": ("film.avi", ["-c:v", "mjpeg", "-pix_fmt", "yuvj420p", "-q:v", "2"]),
}


def _as_rgb(planes: av.VideoFrame, colour: tuple[int, int] = UNTAGGED) -> np.ndarray:
    """Planes of matrix and range ``colour`` to RGB, as ``clips.decode_bytes`` converts the
    frames of a stream tagged so."""
    planes.colorspace, planes.color_range = colour
    return clips.rgb_frames([planes])[0]


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


def _close(got: np.ndarray, want: np.ndarray) -> None:
    """The same picture: BT.709 or full-range samples read as BT.601 limited range are off
    by 20-65 levels; swscale's chroma interpolation differs between routes by up to 6."""
    assert got.shape == want.shape == (57, 100, 3)
    assert np.abs(got.astype(int) - want).max() <= 8
    assert clips.psnr(got[None], want[None]) > 40


@pytest.mark.parametrize(("colorspace", "color_range"),
                         [(2, 0), (6, 1), (1, 0), (2, 2), (1, 2)],
                         ids=["untagged", "bt601", "bt709", "full-range", "bt709-full-range"])
def test_a_yuv_source_keeps_its_matrix_and_range(colorspace, color_range):
    frame = _source(colorspace, color_range)
    colour = planes_colour(frame)
    assert colour == (colorspace, color_range)  # its samples are only scaled
    _close(_as_rgb(to_planes(frame, SIZE, colour), colour),
           to_rgb(frame, size=SIZE, scaler=CLIP_SCALER))


@pytest.mark.parametrize(("source", "colour"), [((1, 0), UNTAGGED), ((2, 0), (1, 2)),
                                                (None, UNTAGGED)],
                         ids=["bt709-in-untagged", "untagged-in-bt709-full", "rgb"])
def test_a_frame_of_another_colour_is_converted_to_the_clips(source, colour):
    """A frame unlike the video's first (a stream whose tags change), or an RGB source,
    goes through RGB to the planes' colour."""
    frame = (_source(*source) if source else
             av.VideoFrame.from_ndarray(to_rgb(_source(2, 0)), format="rgb24"))
    if source is None:
        assert planes_colour(frame) == UNTAGGED
    _close(_as_rgb(to_planes(frame, SIZE, colour), colour),
           to_rgb(frame, size=SIZE, scaler=CLIP_SCALER))


def test_planes_are_always_a_frame_of_their_own():
    """A 4:4:4 source already at the clip size has nothing to scale, and swscale hands back
    the frame itself: ``to_planes`` copies it, as ``clips.encode`` sets the frames' times."""
    source = _source(2, 1).reformat(format="yuv444p", width=SIZE[0], height=SIZE[1])
    source.colorspace, source.color_range = 2, 1
    planes = to_planes(source, SIZE, planes_colour(source))
    assert planes is not source
    np.testing.assert_array_equal(planes.to_ndarray(), source.to_ndarray())


@pytest.mark.parametrize("color_range", [1, 2], ids=["bt709", "bt709-full-range"])
def test_a_clip_decodes_by_its_sources_tags(color_range):
    """The stream carries the planes' matrix and range, and ``decode_bytes`` converts by
    them (BT.709 planes in an untagged stream, read as BT.601: 29 dB)."""
    frame = _source(1, color_range)
    colour = planes_colour(frame)
    data = clips.encode([to_planes(frame, SIZE, colour) for _ in range(4)], colour)
    assert [(f.colorspace, f.color_range) for f in clips.decode_frames(data)] == [colour] * 4
    want = to_rgb(frame, size=SIZE, scaler=CLIP_SCALER)
    assert clips.psnr(clips.decode_bytes(data), np.stack([want] * 4)) > 35  # untagged: 29


def test_planar_clips_hold_the_rgb_clips_frames(tmp_path: Path):
    path = tmp_path / "stamped.mp4"
    write_stamped_video(path, duration=2.0, fps=30, size=(320, 180))
    rgb = list(extract_clips(path, [0, 1.5], length=8, stride=4, clip_short_side=57))
    planar = list(extract_clips(path, [0, 1.5], length=8, stride=4, clip_short_side=57,
                                planar=True))
    for a, b in zip(rgb, planar, strict=True):
        assert a.frames.shape == (8, 57, 101, 3) and len(b.frames) == 8
        assert {(f.format.name, f.width, f.height) for f in b.frames} == {("yuv444p", 101, 57)}
        assert len({id(f) for f in b.frames}) == 8  # each slot its own, padding included
        assert (a.second, a.padded) == (b.second, b.padded)
        np.testing.assert_array_equal(a.keyframe, b.keyframe)
        assert clips.psnr(np.stack([_as_rgb(p) for p in b.frames]), a.frames) > 45
    assert rgb[0].padded > 0  # the clip at 0 s repeats the first frame


@pytest.mark.parametrize("name", list(TAGGED))
def test_h264_clips_of_tagged_film_decode_to_its_rgb_clips(tmp_path: Path, name: str):
    """Whatever the source's codec, container and colour tags, a stored H.264 clip decodes
    to the frames of RGB extraction (38-39 dB at the clips' 455 x 256)."""
    file, options = TAGGED[name]
    video = tmp_path / file
    subprocess.run([ffmpeg_binary(), "-v", "error", "-i", str(FILM), "-t", "2.5", "-an",  # noqa: S603
                    "-vf", "scale=640:360", *options, str(video)], check=True)
    rgb = list(extract_clips(video, [1, 2], length=8, stride=4))
    planar = list(extract_clips(video, [1, 2], length=8, stride=4, planar=True))
    for a, b in zip(rgb, planar, strict=True):
        assert clips.psnr(clips.decode_bytes(clips.encode(b.frames, b.colour)), a.frames) > 36
