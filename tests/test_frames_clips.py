"""Clips around keyframes: every clip frame is the frame the rule names, at any frame rate."""

from __future__ import annotations

import bisect
import itertools
import threading
import tracemalloc
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from ava_keyframes import media
from ava_keyframes.frames import MissingKeyframes, extract_clips, extract_keyframes
from ava_keyframes.media import Video
from ava_keyframes.pixels import CLIP_SCALER, KEYFRAME_SCALER, to_rgb
from ava_keyframes.stamp import read_frame_stamp, write_stamped_video

SIZE = (160, 120)
DURATION = 4.0
SECONDS = [0, 1, 2.5, 3.9]  # clips at 0 and 3.9 reach past both ends

# (fps, variable frame rate, container)
KINDS = [(30, False, "mp4"), (25, False, "mkv"), (Fraction(24000, 1001), False, "mp4"),
         (30, True, "mkv")]


def _kind_id(kind: tuple) -> str:
    fps, vfr, container = kind
    return f"{container}-{float(fps):.3f}fps{'-vfr' if vfr else ''}"


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple, Path]:
    folder = tmp_path_factory.mktemp("clips")
    made = {}
    for kind in KINDS:
        fps, vfr, container = kind
        made[kind] = folder / f"{_kind_id(kind)}.{container}"
        write_stamped_video(made[kind], duration=DURATION, fps=fps, size=SIZE,
                            container=container, vfr=vfr)
    return made


def frame_times(path: Path) -> list[Fraction]:
    """Every frame's exact time from the first frame, by a plain decode from the start."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times = [frame.pts * stream.time_base for frame in container.decode(stream)]
    return [time - times[0] for time in times]


def expected_clip(times: list[Fraction], second: float, length: int, stride: int
                  ) -> tuple[list[int], int]:
    """The rule for each clip time (the last frame past the end), and the padded count."""
    indices, padded = [], 0
    for k in range(length):
        time = Fraction(repr(second)) + Fraction((k - length // 2) * stride, 30)
        index = bisect.bisect_left(times, time)
        padded += time < 0 or index == len(times)
        indices.append(min(index, len(times) - 1))
    return indices, padded


@pytest.mark.parametrize("kind", KINDS, ids=_kind_id)
@pytest.mark.parametrize("length, stride", [(8, 8), (5, 3), (32, 2)])
def test_every_clip_frame_is_the_one_the_rule_names(videos, kind, length, stride):
    path = videos[kind]
    times = frame_times(path)
    clips = list(extract_clips(path, SECONDS, length=length, stride=stride,
                               clip_short_side=SIZE[1]))
    assert [clip.second for clip in clips] == SECONDS
    keyframes = dict(extract_keyframes(path, SECONDS))
    for clip in clips:
        indices, padded = expected_clip(times, clip.second, length, stride)
        assert [read_frame_stamp(frame) for frame in clip.frames] == indices, clip.second
        assert clip.padded == padded
        assert np.array_equal(clip.keyframe, keyframes[clip.second])
    assert clips[0].padded > 0 and clips[-1].padded > 0 and clips[2].padded == 0


def test_clip_frames_are_resized_by_their_shorter_side(videos):
    path = videos[KINDS[0]]
    times = frame_times(path)
    (small,) = extract_clips(path, [2], length=4, stride=4, clip_short_side=64, max_side=80)
    assert small.frames.shape == (4, 64, 85, 3) and small.keyframe.shape == (60, 80, 3)
    (large,) = extract_clips(path, [2], length=4, stride=4, clip_short_side=240)
    assert large.frames.shape == (4, 240, 320, 3)
    assert [read_frame_stamp(f) for f in large.frames] == expected_clip(times, 2, 4, 4)[0]


def test_frames_are_scaled_by_one_context_per_thread(videos):
    """Each thread keeps one swscale context per scaler between frames (a new context per
    frame cost as much again as the scaling), and its frames equal a fresh context's."""
    with av.open(str(videos[KINDS[0]])) as container:
        frames = list(itertools.islice(container.decode(video=0), 3))
    for frame in frames:
        fresh = frame.to_ndarray(format="rgb24", width=85, height=64,
                                 interpolation=CLIP_SCALER, threads=1)
        assert np.array_equal(to_rgb(frame, size=(85, 64), scaler=CLIP_SCALER), fresh)
    kept = media.reformatter(CLIP_SCALER)
    assert media.reformatter(CLIP_SCALER) is kept
    assert media.reformatter(KEYFRAME_SCALER) is not kept
    elsewhere = []
    thread = threading.Thread(target=lambda: elsewhere.append(media.reformatter(CLIP_SCALER)))
    thread.start()
    thread.join()
    assert elsewhere[0] is not kept


def test_clips_stream_out_in_one_pass(videos, monkeypatch):
    """One decode for close seconds, and each clip is handed on before the decode ends:
    memory holds the clips in flight, not the video."""
    path = videos[KINDS[1]]
    decoded, passes = [], []
    original_decoded, original_from = Video.decoded, Video.frames_from

    def counting(self, packet, after):
        for item in original_decoded(self, packet, after):
            decoded.append(item[0])
            yield item

    def counting_from(self, time, *args):
        passes.append(time)
        return original_from(self, time, *args)

    monkeypatch.setattr(Video, "decoded", counting)
    monkeypatch.setattr(Video, "frames_from", counting_from)
    clips = extract_clips(path, [1, 1.5, 2, 2.5], length=8, stride=2, clip_short_side=60)
    first = next(clips)
    # handed on once settled (video.settle frames later: a damaged packet's error shows by then)
    assert first.second == 1 and max(decoded) < 2.5
    assert [clip.second for clip in clips] == [1.5, 2, 2.5]
    assert len(passes) == 1


def test_clips_handed_on_are_not_kept(videos):
    """Memory holds the clips in flight: what was yielded and dropped is freed."""
    path = videos[KINDS[0]]
    clip_bytes = 8 * SIZE[0] * SIZE[1] * 3
    tracemalloc.start()
    try:
        clips = extract_clips(path, [x / 4 for x in range(2, 15)], length=8, stride=2,
                              clip_short_side=SIZE[1])
        next(clips)
        before = tracemalloc.get_traced_memory()[0]
        held = [tracemalloc.get_traced_memory()[0] - before for _ in clips]
    finally:
        tracemalloc.stop()
    assert len(held) == 12 and max(held) < 4 * clip_bytes


def test_a_clip_without_its_frames_is_reported(videos, tmp_path):
    source = videos[KINDS[1]]
    truncated = tmp_path / "truncated.mkv"
    data = source.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    got = []
    with pytest.raises(MissingKeyframes) as raised:
        got.extend(clip.second for clip in extract_clips(truncated, [0.5, 3], length=4,
                                                         stride=4, clip_short_side=60))
    assert got == [0.5] and raised.value.missing == [3]
    assert str(truncated) in str(raised.value)
    with pytest.raises(ValueError, match="positive"):
        list(extract_clips(source, [1], length=0, stride=2))
