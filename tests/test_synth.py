"""Synthetic AVA: frame stamps, stamped videos as ffmpeg sees them, the corpus, its CLI."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ava_keyframes import cli
from ava_keyframes.annotations import VIDEO_ID_RE, read_annotations, read_excluded
from ava_keyframes.labelmap import default_labelmap_path, evaluation_labelmap_path, read_labelmap
from ava_keyframes.media import ffmpeg_binary
from ava_keyframes.stamp import (
    MAX_FRAME_INDEX,
    STAMP_BAND,
    draw_stamp,
    read_frame_stamp,
    read_frame_times,
    scrolling_texture,
    stamp_band_height,
    write_stamped_video,
)
from ava_keyframes.synth import EXTRAS, POSES, make_corpus

SIZE = (160, 120)
SMALL = (128, 96)  # max side 128, as frames are resized for training


def decode(path: Path, size: tuple[int, int] = SIZE) -> tuple[list[float], list[bool], np.ndarray]:
    """Every frame ffmpeg decodes from ``path``: presentation times (uncorrected), key flags,
    RGB frames scaled to ``size``."""
    width, height = size
    cmd = [ffmpeg_binary(), "-hide_banner", "-nostdin", "-copyts", "-i", str(path),
           "-map", "0:v:0", "-vf", f"showinfo,scale={width}:{height}", "-fps_mode", "passthrough",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    result = subprocess.run(cmd, capture_output=True, check=True)  # noqa: S603
    log = result.stderr.decode()
    times = [float(t) for t in re.findall(r"pts_time:\s*(\S+)", log)]
    keys = [flag == "1" for flag in re.findall(r"iskey:\s*(\d)", log)]
    frames = np.frombuffer(result.stdout, np.uint8).reshape(-1, height, width, 3)
    assert len(times) == len(keys) == len(frames)
    return times, keys, frames


# --- stamps ---


@pytest.mark.parametrize("index", [0, 1, 2**17, 54_000, MAX_FRAME_INDEX])
def test_stamp_round_trips_at_full_and_small_size(index):
    frame = np.empty((SIZE[1], SIZE[0], 3), np.uint8)
    scrolling_texture(SIZE, seed=1)(frame, 0.0)
    before = frame.copy()
    draw_stamp(frame, index)
    assert read_frame_stamp(frame) == index
    rows = np.arange(SMALL[1]) * SIZE[1] // SMALL[1]
    cols = np.arange(SMALL[0]) * SIZE[0] // SMALL[0]
    assert read_frame_stamp(frame[rows][:, cols]) == index
    band = stamp_band_height(SIZE[1])
    assert np.array_equal(frame[band:], before[band:])  # the stamp stays in its band


def test_stamp_index_out_of_range_is_refused():
    with pytest.raises(ValueError, match="outside"):
        draw_stamp(np.zeros((120, 160, 3), np.uint8), MAX_FRAME_INDEX + 1)


def test_wrong_or_missing_stamp_raises_instead_of_decoding():
    frame = np.empty((SIZE[1], SIZE[0], 3), np.uint8)
    scrolling_texture(SIZE, seed=2)(frame, 0.0)
    with pytest.raises(ValueError, match="no frame stamp"):
        read_frame_stamp(frame)  # texture, no stamp
    draw_stamp(frame, 1234)
    cell = SIZE[0] / 24
    flipped = frame.copy()
    data_cell = slice(int(cell * 5), int(cell * 6))  # one index bit
    flipped[: stamp_band_height(SIZE[1]), data_cell] ^= 255
    with pytest.raises(ValueError, match="check bits"):
        read_frame_stamp(flipped)
    flipped = frame.copy()
    flipped[: stamp_band_height(SIZE[1]), : int(cell)] = 0  # start marker
    with pytest.raises(ValueError, match="markers"):
        read_frame_stamp(flipped)


# --- stamped videos ---

VIDEO_CASES = [
    ("mp4", 30, False, 0.0),
    ("mp4", 29.97, False, 1.5),
    ("mp4", 25, True, 0.0),
    ("mp4", 24, True, 0.7),
    ("mkv", 29.97, False, 0.0),
    ("mkv", 30, True, 2.0),
    ("mkv", 25, False, 1.5),
    ("webm", 30, False, 0.0),
    ("webm", 29.97, True, 0.0),
    ("webm", 24, False, 1.5),
]


@pytest.mark.parametrize(("container", "fps", "vfr", "start_time"), VIDEO_CASES)
def test_stamped_video_as_ffmpeg_decodes_it(tmp_path, container, fps, vfr, start_time):
    path = tmp_path / f"v.{container}"
    times = write_stamped_video(path, duration=3, fps=fps, size=SIZE, container=container,
                                vfr=vfr, start_time=start_time)
    decoded, keys, frames = decode(path)
    assert [read_frame_stamp(f) for f in frames] == list(range(len(times)))
    assert decoded[0] == pytest.approx(start_time, abs=1e-3)
    assert np.allclose(np.array(decoded) - decoded[0], times, atol=1e-6, rtol=0)
    assert read_frame_times(path) == times
    _, _, small = decode(path, SMALL)
    assert [read_frame_stamp(f) for f in small] == list(range(len(times)))
    gaps = np.round(np.diff(times), 3)
    if vfr:
        assert len(set(gaps)) >= 3  # irregular spacing
        assert times[-1] > 2.5
    else:
        assert len(times) == round(3 * fps)
        assert np.allclose(gaps, 1 / fps, atol=1e-3)
    assert 1 < sum(keys) < len(keys) / 10  # seeking must decode forward from a keyframe


def test_write_stamped_video_rejects_bad_format(tmp_path):
    with pytest.raises(ValueError, match="container"):
        write_stamped_video(tmp_path / "v.avi", duration=1, container="avi")
    with pytest.raises(ValueError, match="even"):
        write_stamped_video(tmp_path / "v.mp4", duration=1, size=(161, 120))


# --- corpus ---

CORPUS_CASES = {"mp4": (30, 2), "mkv": (29.97, 3), "webm": (25, 1)}
"""container -> (fps, start second): small starts still exercise the joined still part."""
BODY = {11: (40, 90, 235), 12: (30, 200, 60), 14: (235, 50, 35)}
YELLOW, CYAN = (255, 235, 0), (0, 235, 235)
FIGURE_COLOURS = [*BODY.values(), YELLOW, CYAN, (240, 170, 100)]


@pytest.fixture(scope="module", params=sorted(CORPUS_CASES))
def corpus(request, tmp_path_factory):
    fps, start = CORPUS_CASES[request.param]
    return make_corpus(tmp_path_factory.mktemp("corpus") / "c", videos=3, seconds=3, start=start,
                       fps=fps, size=SIZE, container=request.param, seed=11)


def test_corpus_layout_and_ids(corpus):
    names = {p.name for p in corpus.annotations_dir.iterdir()}
    assert names == {"ava_train_v2.2.csv", "ava_val_v2.2.csv", "ava_action_list_v2.2.pbtxt",
                     "ava_train_excluded_timestamps_v2.2.csv",
                     "ava_val_excluded_timestamps_v2.2.csv"}
    assert corpus.labelmap.read_bytes() == default_labelmap_path().read_bytes()
    train, val = corpus.ids["train"], corpus.ids["val"]
    assert train and val and not set(train) & set(val)
    assert set(train + val) == set(corpus.videos)
    for video_id, path in corpus.videos.items():
        assert VIDEO_ID_RE.match(video_id) and not video_id.startswith("-")
        assert path == corpus.root / "videos" / f"{video_id}.{corpus.container}"
    assert sorted(p.name for p in (corpus.root / "videos").iterdir()) == sorted(
        p.name for p in corpus.videos.values())
    assert [p.name for p in corpus.root.iterdir() if p.name.startswith(".")] == []


ROW = re.compile(r"[A-Za-z0-9_-]{11},\d{4}(,[01]\.\d{3}){4},\d+,\d+")


@pytest.mark.parametrize("split", ["train", "val"])
def test_corpus_round_trips_through_read_annotations(corpus, split):
    csv = corpus.annotation_csv(split)
    lines = csv.read_text().splitlines()
    assert all(ROW.fullmatch(line) for line in lines)
    annotations = read_annotations(csv, labelmap=read_labelmap(corpus.labelmap))
    assert annotations.report == []
    assert annotations.rows_read == len(lines) == len(annotations.table)
    keyframes = annotations.keyframes()
    seconds = range(corpus.start, corpus.start + corpus.seconds)
    assert set(keyframes) == {(v, s) for v in corpus.ids[split] for s in seconds}
    evaluated = read_labelmap(evaluation_labelmap_path())
    for persons in keyframes.values():
        assert 1 <= len(persons) <= 3
        for person in persons:
            assert len(set(person.actions) & set(POSES)) == 1
            assert set(person.actions) <= set(POSES) | set(EXTRAS)
            assert all(a in evaluated for a in person.actions)
            assert person.box[1] >= STAMP_BAND  # never over the stamp


@pytest.mark.parametrize("split", ["train", "val"])
def test_excluded_keyframes_are_annotated_and_left_out_when_asked(corpus, split):
    excluded = read_excluded(corpus.excluded_csv(split))
    assert excluded == corpus.excluded[split] and excluded
    csv = corpus.annotation_csv(split)
    annotations = read_annotations(csv, excluded=excluded)
    rows = [line.split(",") for line in csv.read_text().splitlines()]
    expected = [i + 1 for i, r in enumerate(rows) if (r[0], int(r[1])) in excluded]
    assert sorted(r.line for r in annotations.report) == expected
    assert {r.reason for r in annotations.report} == {"excluded keyframe"}
    assert not set(annotations.keyframes()) & excluded


def _colour_pixels(image: np.ndarray, colour: tuple[int, int, int]) -> int:
    return int((np.abs(image.astype(int) - colour).max(axis=2) < 60).sum())


def test_corpus_frames_carry_stamps_and_match_annotations(corpus):
    rows = {}
    for split in ("train", "val"):
        rows.update(read_annotations(corpus.annotation_csv(split)).keyframes())
    width, height = SIZE
    errors = []
    for video_id, path in corpus.videos.items():
        decoded, _, frames = decode(path)
        assert [read_frame_stamp(f) for f in frames] == list(range(len(frames)))
        assert np.allclose(np.array(decoded) - decoded[0], read_frame_times(path), atol=1e-6)
        assert decoded[-1] < corpus.start + corpus.seconds <= decoded[-1] + 2 / corpus.fps
        for second in range(corpus.start, corpus.start + corpus.seconds):
            index = corpus.keyframe_frames[video_id, second]
            assert index == next(i for i, t in enumerate(decoded) if t >= second)
            frame = frames[index]
            for person in rows[video_id, second]:
                x1, y1, x2, y2 = np.round(np.array(person.box) * (width, height, width, height))
                figure = frame[int(y1) : int(y2), int(x1) : int(x2)]
                counts = {pose: _colour_pixels(figure, BODY[pose]) for pose in POSES}
                pose = next(a for a in person.actions if a in POSES)
                assert max(counts, key=counts.get) == pose
                assert (_colour_pixels(figure, YELLOW) > 4) == (17 in person.actions)
                assert (_colour_pixels(figure, CYAN) > 4) == (79 in person.actions)
                # tight: figure-coloured pixels around the box span the box, up to the few
                # pixels that lossy 4:2:0 chroma smears across an edge
                top, left = int(y1) - 3, max(int(x1) - 3, 0)
                around = frame[top : int(y2) + 3, left : int(x2) + 3].astype(int)
                near = [np.abs(around - c).max(axis=2) < 60 for c in FIGURE_COLOURS]
                ys, xs = np.nonzero(np.any(near, axis=0))
                extent = (left + xs.min(), top + ys.min(), left + xs.max() + 1, top + ys.max() + 1)
                errors.append(np.array(extent) - (x1, y1, x2, y2))
    errors = np.abs(errors)
    assert errors.max() <= 3 and errors.mean() <= 1


def test_corpus_has_every_action_and_multi_label_people(tmp_path):
    info = make_corpus(tmp_path / "c", videos=4, seconds=20, start=0, size=SIZE, seed=5)
    persons = [p for split in ("train", "val")
               for ps in read_annotations(info.annotation_csv(split)).keyframes().values()
               for p in ps]
    assert {a for p in persons for a in p.actions} == set(POSES) | set(EXTRAS)
    assert any(len(p.actions) == 3 for p in persons)
    assert len({p.person_id for p in persons}) > 1


def test_same_seed_same_corpus(tmp_path):
    first, second, other = (
        make_corpus(tmp_path / name, videos=2, seconds=2, start=0, size=SIZE, seed=seed)
        for name, seed in (("a", 1), ("b", 1), ("c", 2)))
    assert first.ids == second.ids != other.ids
    for split in ("train", "val"):
        assert first.annotation_csv(split).read_text() == second.annotation_csv(split).read_text()
    for video in first.videos.values():  # the encoder is deterministic too (one thread)
        assert video.read_bytes() == (second.root / "videos" / video.name).read_bytes()


def test_make_corpus_refuses_a_used_folder_and_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="videos >= 2"):
        make_corpus(tmp_path / "a", videos=1, seconds=2)
    with pytest.raises(ValueError, match="seconds >= 2"):
        make_corpus(tmp_path / "a", videos=2, seconds=1)
    with pytest.raises(ValueError, match="frames a stamp can number"):
        make_corpus(tmp_path / "a", videos=2, seconds=9000)
    assert not (tmp_path / "a").exists()
    (tmp_path / "b" / "videos").mkdir(parents=True)
    (tmp_path / "b" / "videos" / "old.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="not empty"):
        make_corpus(tmp_path / "b", videos=2, seconds=2)


# --- CLI ---


def test_cli_synth_writes_a_corpus(tmp_path, capsys):
    out = tmp_path / "c"
    assert cli.main(["synth", str(out), "--videos", "2", "--seconds", "2", "--start", "1",
                     "--fps", "25", "--size", "160x120", "--container", "mkv", "--seed", "3"]) == 0
    assert "2 videos (1 train, 1 val)" in capsys.readouterr().out
    videos = sorted((out / "videos").iterdir())
    assert len(videos) == 2 and all(p.suffix == ".mkv" for p in videos)
    _, _, frames = decode(videos[0])
    assert len(frames) == 75 and read_frame_stamp(frames[-1]) == 74
    annotations = read_annotations(out / "annotations" / "ava_train_v2.2.csv")
    assert {s for _, s in annotations.keyframes()} == {1, 2}


@pytest.mark.parametrize(("args", "message"), [
    (["--size", "big"], "--size: expected WxH"),
    (["--size", "161x120"], "size must be even"),
    (["--videos", "1"], "videos >= 2"),
    (["--fps", "fast"], "--fps: expected a number"),
    (["--fps", "0"], "--fps: 0 outside 1..240"),
    (["--fps", "0.001"], "--fps: 0.001 outside 1..240"),
])
def test_cli_synth_mistakes_are_one_line_errors(tmp_path, capsys, args, message):
    base = ["synth", str(tmp_path / "c"), "--videos", "2", "--seconds", "2", "--start", "0"]
    assert cli.main(base + args) == 2
    err = capsys.readouterr().err
    assert err.startswith("ava-keyframes: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_cli_synth_into_a_file_is_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("not a folder")
    assert cli.main(["synth", str(out), "--videos", "2", "--seconds", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ava-keyframes: error: ") and str(out) in err
    assert len(err.strip().splitlines()) == 1 and out.read_text() == "not a folder"
