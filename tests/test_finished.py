"""Finished videos (`ava_keyframes.finished`): stored once, read back without decoding, safe
against kills and planted links; and a real `tfds build` killed with SIGKILL half way, then
rerun with the same command, equals an uninterrupted build, example for example."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from ava_keyframes import clips, plan
from ava_keyframes.cache import CacheError
from ava_keyframes.finished import FinishedStore
from ava_keyframes.frames import extract_clips
from ava_keyframes.labelmap import default_labelmap_path, read_labelmap
from ava_keyframes.media import ffmpeg_binary
from ava_keyframes.mirror import LoopbackMirror
from ava_keyframes.settings import FetchSettings
from ava_keyframes.sources import FetchResult
from ava_keyframes.stamp import read_frame_stamp, write_stamped_video

LABELMAP = read_labelmap(default_labelmap_path())
TFDS_CLI = str(Path(sys.executable).parent / "tfds")


def _encode(frame: np.ndarray) -> bytes:
    return tf.io.encode_jpeg(frame).numpy()


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """4 s at 10 fps: frame i (stamped i) at i / 10 s."""
    path = tmp_path_factory.mktemp("video") / "abcdefghijk.mp4"
    write_stamped_video(path, duration=4, fps=10, size=(160, 120))
    return path


def _job(seconds=(1, 2, 3)) -> plan.VideoJob:
    return plan.VideoJob("train", "abcdefghijk", tuple((s, ()) for s in seconds))


def _fetched(video: Path) -> FetchResult:
    return FetchResult("abcdefghijk", "cached", video, "local", None, fetch_mode="local")


def test_a_finished_video_is_stored_once_and_read_back_without_decoding(
        tmp_path, video, monkeypatch):
    store = FinishedStore(tmp_path, {"build": 1})
    work = plan.VideoWork(FetchSettings(str(tmp_path)), None, LABELMAP)
    first = store.finish(_job(), _fetched(video), work, _encode)
    frames = list(first.frames())
    assert not first.resumed and first.error is None
    assert [f.second for f in frames] == [1, 2, 3]
    assert [read_frame_stamp(tf.io.decode_jpeg(f.jpeg).numpy()) for f in frames] == [10, 20, 30]
    assert {(f.width, f.height) for f in frames} == {(160, 120)}

    def no_decoding(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(plan.VideoWork, "extract", no_decoding)
    again = store.finish(_job(), _fetched(video), work, _encode)
    assert again.resumed and list(again.frames()) == frames
    with pytest.raises(AssertionError, match="decoded again"):  # other seconds: another key
        store.finish(_job((1, 2)), _fetched(video), work, _encode)
    store.remove()
    assert not store.folder.exists()


def test_a_bt709_videos_clips_are_stored_in_its_own_colour(tmp_path, video):
    """An HD encode's matrix (BT.709) is kept, not converted through RGB: the stored stream
    is tagged with it (the stamps are grey, which every matrix reads alike: the tags'
    colours are checked in test_pixels.py), and decodes to the clip frames of RGB
    extraction."""
    tagged = tmp_path / "abcdefghijk.mp4"
    subprocess.run([ffmpeg_binary(), "-v", "error", "-i", str(video), "-c", "copy",  # noqa: S603
                    "-bsf:v", "h264_metadata=video_full_range_flag=0:matrix_coefficients=1",
                    str(tagged)], check=True)
    work = plan.VideoWork(FetchSettings(str(tmp_path)), None, LABELMAP, clip=(8, 4, 57))
    stored = FinishedStore(tmp_path, {"build": 1}).finish(_job(), _fetched(tagged), work,
                                                          _encode)
    rgb = extract_clips(tagged, [1, 2, 3], length=8, stride=4, clip_short_side=57)
    for frame, want in zip(stored.frames(), rgb, strict=True):
        (data,) = frame.clip
        assert {(f.colorspace, f.color_range) for f in clips.decode_frames(data)} == {(1, 1)}
        assert clips.psnr(clips.decode_bytes(data), want.frames) > 35


def test_a_missing_keyframe_is_stored_with_the_frames_before_it(tmp_path, video):
    store = FinishedStore(tmp_path, {"build": 1})
    work = plan.VideoWork(FetchSettings(str(tmp_path)), None, LABELMAP)
    stored = store.finish(_job((1, 2, 9)), _fetched(video), work, _encode)
    assert [f.second for f in stored.frames()] == [1, 2]
    assert "9" in stored.error


def test_a_killed_write_leaves_no_finished_file_and_links_are_refused(
        tmp_path, video, monkeypatch):
    store = FinishedStore(tmp_path, {"build": 1})
    work = plan.VideoWork(FetchSettings(str(tmp_path)), None, LABELMAP)

    def killed_midway(*args):
        yield 1, np.zeros((120, 160, 3), np.uint8), None
        raise KeyboardInterrupt  # stands for the kill

    with monkeypatch.context() as patch:
        patch.setattr(plan.VideoWork, "extract", killed_midway)
        with pytest.raises(KeyboardInterrupt):
            store.finish(_job(), _fetched(video), work, _encode)
    assert list(store.folder.iterdir()) == []  # nothing that a rerun could take as finished
    path = store._path(_job(), _fetched(video))
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CacheError, match="symbolic link"):
        store.finish(_job(), _fetched(video), work, _encode)
    path.unlink()
    path.write_bytes(b"something else")
    with pytest.raises(CacheError, match="not a finished-video file"):
        store.finish(_job(), _fetched(video), work, _encode)


# --- a real build, killed and resumed ---

VIDEOS, SECONDS = 6, 8
_HASHER = textwrap.dedent("""
    import hashlib, sys
    import tensorflow_datasets as tfds
    import ava_keyframes
    digests = []
    for split in ("train", "validation"):
        for ex in tfds.as_numpy(tfds.load("ava_keyframes/v2.2", split=split,
                                          data_dir=sys.argv[1])):
            digest = hashlib.sha256()
            for key in sorted(ex):
                values = ex[key] if key != "objects" else [ex[key][k] for k in sorted(ex[key])]
                for value in values if key == "objects" else [values]:
                    digest.update(repr(getattr(value, "shape", None)).encode())
                    digest.update(value.tobytes() if hasattr(value, "tobytes") else bytes(value))
            digests.append(split + digest.hexdigest())
    print("\\n".join(sorted(digests)))
""")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """VIDEOS stamped videos (the last one for validation), SECONDS keyframes each, one
    person per keyframe, served by a loopback mirror."""
    root = tmp_path_factory.mktemp("resume")
    (root / "served").mkdir()
    annotations = root / "manual" / "annotations"
    annotations.mkdir(parents=True)
    ids = [f"resumeVid{i:02d}" for i in range(VIDEOS)]
    for index, video_id in enumerate(ids):
        write_stamped_video(root / "served" / f"{video_id}.mp4", duration=SECONDS + 1, fps=10,
                            size=(320, 240))
        split = "val" if index == VIDEOS - 1 else "train"
        with open(annotations / f"ava_{split}_v2.2.csv", "a", newline="") as out:
            csv.writer(out).writerows([video_id, f"{s:04d}", 0.1, 0.2, 0.5, 0.9, 12, 0]
                                      for s in range(1, SECONDS + 1))
    for split in ("train", "val"):
        (annotations / f"ava_{split}_excluded_timestamps_v2.2.csv").write_text("")
    with LoopbackMirror(root / "served") as mirror:
        yield root, ids, mirror


def _build(root: Path, mirror: LoopbackMirror, name: str) -> subprocess.Popen:
    env = {**os.environ, "AVA_KEYFRAMES_SOURCES": "mirror", "AVA_KEYFRAMES_MIRROR": mirror.url,
           "AVA_KEYFRAMES_ANNOTATIONS_URL": "http://127.0.0.1:9/ava_v{version}.zip",
           "AVA_KEYFRAMES_CACHE": str(root / f"{name}-cache"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen(  # noqa: S603
        [TFDS_CLI, "build", "ava_keyframes", "--imports", "ava_keyframes", "--config", "v2.2",
         "--manual_dir", str(root / "manual"), "--data_dir", str(root / name)],
        env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    return output


def _digests(root: Path, name: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", _HASHER, str(root / name)],  # noqa: S603
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split()


@pytest.mark.slow
def test_a_build_killed_half_way_resumes_to_the_same_examples(corpus):
    root, ids, mirror = corpus
    _finish(_build(root, mirror, "whole"))

    finished = root / "killed-cache" / "finished"
    mirror.delay = 0.2  # per request: the build is still running when half is finished
    killed = _build(root, mirror, "killed")
    deadline = time.monotonic() + 240
    while len(done := [p.name for p in finished.glob("*/*") if not p.name.startswith(".")]
              ) < (VIDEOS - 1) // 2:
        assert killed.poll() is None and time.monotonic() < deadline, "build ended too soon"
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    mirror.delay = 0.0
    assert not (root / "killed" / "ava_keyframes" / "v2.2" / "2.0.0").exists()
    finished_ids = {p.name.split(".")[0] for p in finished.glob("*/*")
                    if not p.name.startswith(".")}
    assert len(done) <= len(finished_ids) < VIDEOS
    rerun_starts = len(mirror.requests)
    output = _finish(_build(root, mirror, "killed"))

    refetched = {r.lstrip("/").split(".")[0] for r in mirror.requests[rerun_starts:]}
    assert not refetched & finished_ids  # no finished video fetched twice
    # decoded again: only the videos not finished at the kill (the one in flight and after)
    resumed = re.findall(r"ava_keyframes/v2.2/2.0.0 train: (\d+) video\(s\) finished by an "
                         r"earlier run of this build, not decoded again", output)
    assert resumed == [str(len(finished_ids))]
    assert not finished.exists() or not any(finished.iterdir())  # removed once written
    whole, resumed_build = _digests(root, "whole"), _digests(root, "killed")
    assert len(whole) == VIDEOS * SECONDS and resumed_build == whole
