"""The AVA-shaped world (``ava_keyframes.csvworld``, ``ava_keyframes.pose``): figures fill the
real boxes, pose not colour tells the action, identity and timing, determinism, TFDS labels."""

from __future__ import annotations

import csv
import dataclasses
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ava_keyframes import cli
from ava_keyframes.annotations import Person
from ava_keyframes.csvworld import DEFAULT_CSV, link_persons, make_csv_corpus, plan_world
from ava_keyframes.media import ffmpeg_binary
from ava_keyframes.pose import MOVEMENT, STAND, WALK, Look, draw_figure, person_angles
from ava_keyframes.stamp import read_frame_stamp, stamp_band_height

SIZE = (320, 240)


def _extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return cols[0], rows[0], cols[-1] + 1, rows[-1] + 1


@pytest.mark.parametrize("box", [(10, 20, 60, 150), (5, 5, 120, 45), (30, 30, 42, 50)])
def test_every_pose_fills_its_box(box):
    rng = np.random.default_rng(0)
    for action in MOVEMENT:
        for phase in (0.0, 2.0):
            image = Image.new("RGB", (160, 160))
            draw_figure(ImageDraw.Draw(image), box, Look.random(rng),
                        person_angles((action,), phase))
            extent = _extent(np.asarray(image).any(2))
            assert np.abs(np.subtract(extent, box)).max() <= 1, (action, extent, box)


def _drawn(look: Look, actions: tuple[int, ...], phase: float = 0.5) -> np.ndarray:
    image = Image.new("RGB", (80, 120))
    draw_figure(ImageDraw.Draw(image), (10, 10, 70, 110), look, person_angles(actions, phase))
    return np.asarray(image)


def test_same_action_in_two_colours_and_different_actions_in_one():
    look = Look.random(np.random.default_rng(1))
    recoloured = dataclasses.replace(look, shirt=(250, 10, 10), trousers=(10, 10, 250),
                                     skin=(90, 60, 40))
    a, b = _drawn(look, (WALK,)), _drawn(recoloured, (WALK,))
    assert np.array_equal(a.any(2), b.any(2))  # the same figure ...
    colours = [{tuple(c) for c in x.reshape(-1, 3)} - {(0, 0, 0)} for x in (a, b)]
    assert not colours[0] & colours[1]  # ... in other colours
    assert not np.array_equal(a.any(2), _drawn(look, (STAND,)).any(2))  # pose differs
    assert not np.array_equal(a.any(2), _drawn(look, (WALK,), phase=2.0).any(2))  # animated
    # two movement actions: the second's arms on the first's body, unlike either alone
    both = _drawn(look, (STAND, WALK), phase=1.5).any(2)
    assert not np.array_equal(both, _drawn(look, (STAND,), phase=1.5).any(2))
    assert not np.array_equal(both, _drawn(look, (WALK,), phase=1.5).any(2))


def test_persons_are_linked_by_overlap_then_by_id():
    def person(box, pid=-1):
        return Person(box, pid, (12,))

    rng = np.random.default_rng(0)
    keyframes = {
        902: [person((0.1, 0.1, 0.3, 0.9)), person((0.6, 0.1, 0.8, 0.9))],
        903: [person((0.62, 0.1, 0.82, 0.9)), person((0.12, 0.1, 0.32, 0.9))],
        905: [person((0.12, 0.1, 0.32, 0.9))],  # a gap: a new person
    }
    people = link_persons(keyframes, rng)
    assert [sorted(p.keys) for p in people] == [[902, 903], [902, 903], [905]]
    assert people[0].keys[903][0] == (0.12, 0.1, 0.32, 0.9)
    by_id = {902: [person((0.1, 0.1, 0.3, 0.9), 4)], 903: [person((0.6, 0.1, 0.8, 0.9), 4)]}
    assert len(link_persons(by_id, rng)) == 1  # the id wins over no overlap


@pytest.fixture(scope="module")
def world():
    """12 videos x 20 s of the real val subset, on noise (rendered in memory, not encoded)."""
    return plan_world(videos=12, start=902, seconds=20, size=SIZE, background="noise", seed=3)


def _keyframes(world, video_id):
    """Each keyframe of ``video_id`` that has boxes: (frame, rows)."""
    scene = world.scenes[video_id]
    frame = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
    for k in range(0, len(scene.times), round(float(world.rate))):
        rows = scene.rows(k)
        if rows:
            scene.paint(frame, k)
            yield frame, rows


def test_boxes_are_the_csv_rows_and_figures_fill_them(world):
    real = {}
    with open(DEFAULT_CSV, newline="") as handle:
        for video_id, second, *box, action in csv.reader(handle):
            real.setdefault((video_id, int(second)), set()).add(
                (*(float(v) for v in box), int(action)))
    scene = world.scenes[world.ids["train"][0]]
    for k in range(0, len(scene.times), 30):
        second = round(float(scene.times[k]))
        rows = {(*box, action) for box, action, _ in scene.rows(k)}
        assert rows == real.get((world.ids["train"][0], second), set())
    band = stamp_band_height(SIZE[1])
    video_id = world.ids["val"][0]
    scene = world.scenes[video_id]
    checked = 0
    for k in range(0, len(scene.times), 30):
        second = round(float(scene.times[k]))
        for person in scene.people:
            if second not in person.keys:
                continue
            alone, empty = (np.zeros((SIZE[1], SIZE[0], 3), np.uint8) for _ in range(2))
            dataclasses.replace(scene, people=[person]).paint(alone, k)
            dataclasses.replace(scene, people=[]).paint(empty, k)
            drawn = (alone != empty).any(2)
            drawn[:band] = False  # the stamp covers the top rows
            x1, y1, x2, y2 = scene.pixel_box(person.keys[second][0])
            if y2 - band < 4:
                continue
            extent = _extent(drawn)
            assert np.abs(np.subtract(extent, (x1, max(y1, band), x2, y2))).max() <= 1
            checked += 1
    assert checked >= 10


def _colour_features(world, split):
    band = stamp_band_height(SIZE[1])
    features, labels = [], []
    for video_id in world.ids[split]:
        scene = world.scenes[video_id]
        for frame, rows in _keyframes(world, video_id):
            for box, action, _ in rows:
                x1, y1, x2, y2 = scene.pixel_box(box)
                pixels = frame[max(y1, band) : y2, x1:x2].reshape(-1, 3).astype(float)
                if len(pixels):
                    features.append([*pixels.mean(0), *pixels.std(0)])
                    labels.append(action)
    return np.array(features), np.array(labels)


def _nearest_centroid(x_train, y_train, x_test):
    mean, scale = x_train.mean(0), x_train.std(0) + 1e-9
    classes = np.unique(y_train)
    centroids = np.stack([((x_train[y_train == c] - mean) / scale).mean(0) for c in classes])
    distances = (((x_test - mean) / scale)[:, None] - centroids[None]) ** 2
    return classes[distances.sum(2).argmin(1)]


def _balanced_accuracy(truth, predicted):
    return float(np.mean([(predicted[truth == c] == c).mean() for c in np.unique(truth)]))


def test_colour_alone_does_not_tell_the_action(world):
    x_train, y_train = _colour_features(world, "train")
    x_val, y_val = _colour_features(world, "val")
    keep = np.isin(y_val, y_train)
    x_val, y_val = x_val[keep], y_val[keep]
    assert len(np.unique(y_train)) >= 3 and len(y_val) >= 50
    score = _balanced_accuracy(y_val, _nearest_centroid(x_train, y_train, x_val))
    rng = np.random.default_rng(0)
    shuffled = [_balanced_accuracy(y_val, _nearest_centroid(x_train, rng.permutation(y_train),
                                                            x_val)) for _ in range(100)]
    print(f"colour-only balanced accuracy {score:.3f}, shuffled-label p99 "
          f"{np.percentile(shuffled, 99):.3f}, {len(np.unique(y_val))} classes")
    assert score <= max(np.percentile(shuffled, 99), 0.6), (score, np.percentile(shuffled, 99))


# --- encoded corpora (slow) ---


def _decode_at(path, second, fps):
    cmd = [ffmpeg_binary(), "-hide_banner", "-nostdin", "-v", "error", "-ss", str(second),
           "-i", str(path), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    out = subprocess.run(cmd, capture_output=True, check=True).stdout  # noqa: S603
    return np.frombuffer(out, np.uint8).reshape(SIZE[1], SIZE[0], 3)


@pytest.mark.slow
def test_same_seed_same_bytes_and_keyframes_at_their_seconds(tmp_path):
    options = dict(videos=2, start=1059, seconds=2, fps=4, size=SIZE, seed=5)
    one, rejected = make_csv_corpus(tmp_path / "a", **options)
    two, _ = make_csv_corpus(tmp_path / "b", **options)
    assert rejected == 0
    for video_id, path in one.videos.items():
        assert path.read_bytes() == two.videos[video_id].read_bytes()
        frame = _decode_at(path, 1059, 4)
        assert read_frame_stamp(frame) == one.keyframe_frames[video_id, 1059] == 1059 * 4
    assert (tmp_path / "a/annotations/ava_train_v2.2.csv").read_bytes() == (
        tmp_path / "b/annotations/ava_train_v2.2.csv").read_bytes()


@pytest.mark.slow
def test_both_actions_of_one_person_reach_the_tfds_labels(tmp_path):
    import tensorflow_datasets as tfds

    import ava_keyframes.ava_keyframes_dataset_builder as builder_module

    rows = [r for r in DEFAULT_CSV.read_text().splitlines()
            if r.split(",")[1] == "1059" and r.split(",")[0] in ("_dBTTYDRdRQ", "1j20qq1JyX4")]
    source = tmp_path / "two.csv"
    source.write_text("\n".join(rows) + "\n")
    info, _ = make_csv_corpus(tmp_path / "corpus", source, videos=2, start=1059, seconds=1,
                              fps=2, size=SIZE, seed=0)
    manual = tmp_path / "manual"
    shutil.copytree(info.annotations_dir, manual / "annotations")
    shutil.copytree(info.root / "videos", manual / "videos")
    builder = builder_module.Builder(config="v2.2", data_dir=str(tmp_path / "data"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AVA_KEYFRAMES_SOURCES", "local")
        patch.setenv("AVA_KEYFRAMES_CACHE", str(tmp_path / "cache"))
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    labels = [np.flatnonzero(person) for split in ("train", "validation")
              for example in tfds.as_numpy(builder.as_dataset(split=split))
              for person in example["objects"]["labels"]]
    assert any(set(classes) == {10, 11} for classes in labels)  # 11 sit and 12 stand


def test_cli_from_csv_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("not,a,row\n")
    assert cli.main(["synth", str(tmp_path / "out"), "--from-csv", str(bad)]) != 0
    err = capsys.readouterr().err
    assert "bad.csv" in err and "Traceback" not in err
    assert cli.main(["synth", str(tmp_path / "out2"), "--from-csv", str(tmp_path / "none.csv")]
                    ) != 0
    assert "none.csv" in capsys.readouterr().err
