"""`ava-detector train / evaluate --model / predict / export` end to end on tiny data."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from detector_support import build, examples
from PIL import Image

from ava_keyframes.annotations import read_annotations
from ava_keyframes.stamp import write_stamped_video
from detector import model as M
from detector.cli import main
from detector.predict import detect_images

TINY = ["--backbone", "resnet18", "--backbone-width", "0.25", "--image-size", "96",
        "--fpn-channels", "8", "--head-channels", "8", "--head-depth", "1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tfds")
    build(str(path))
    return str(path)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, data_dir) -> str:
    """A tiny model on the toy AVA classes whose decoder keeps scores from 0.001, so that even
    untrained it detects plenty (what is tested here is the plumbing, not the learning)."""
    from detector.data import dataset_info

    info = dataset_info("detector_toy_ava", data_dir)
    model = M.build_model(info.num_classes, backbone="resnet18", image_size=96,
                          backbone_width=0.25, fpn_channels=8, head_channels=8, head_depth=1,
                          class_names=info.class_names, class_ids=info.class_ids,
                          confidence_threshold=0.001, max_detections=20)
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    M.compile_model(model).save(path)
    return str(path)


def one_line_error(capsys, argv: list[str], *needles: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ava-detector: error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.mark.slow
def test_train_snapshots_evaluates_and_resumes(data_dir, tmp_path, capsys):
    snapshots = tmp_path / "snapshots"
    argv = ["train", "--dataset", "detector_toy_ava", "--data-dir", data_dir, *TINY,
            "--epochs", "2", "--steps", "2", "--batch-size", "4", "--lr", "1e-3",
            "--random-transform", "--eval-every", "2", "--snapshot-path", str(snapshots)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "validation mAP@0.5 = " in out and "| carry/hold (an object) | " in out
    assert sorted(p.name for p in snapshots.iterdir()) == ["resnet18_01.keras",
                                                           "resnet18_02.keras"]
    # --snapshot resumes after epoch 2 with the saved optimizer: one more epoch, number 3
    resume = ["train", "--dataset", "detector_toy_ava", "--data-dir", data_dir, "--steps", "2",
              "--batch-size", "4", "--snapshot-path", str(snapshots), "--epochs", "3",
              "--snapshot", str(snapshots / "resnet18_02.keras"), "--val-split", "none"]
    assert main(resume) == 0
    out = capsys.readouterr().out
    assert "Epoch 3/3" in out and "Epoch 2/3" not in out
    assert (snapshots / "resnet18_03.keras").is_file()
    assert M.load_model(str(snapshots / "resnet18_03.keras")).optimizer.iterations.numpy() == 6


def test_evaluate_model_writes_detections_and_scores_them(model_path, data_dir, tmp_path,
                                                          capsys):
    detections, report = tmp_path / "det.csv", tmp_path / "ap.json"
    assert main(["evaluate", "--model", model_path, "--dataset", "detector_toy_ava",
                 "--data-dir", data_dir, "--split", "validation",
                 "--detections-out", str(detections), "--json", str(report)]) == 0
    table, err = capsys.readouterr()
    assert "**mAP**" in table and "detector_toy_ava:validation: 4/4 images" in err
    result = json.loads(report.read_text())
    truth = result["num_groundtruth"]
    assert truth["carry/hold (an object)"] > 0 and sum(truth.values()) > 4
    assert 0 <= result["mAP"] <= 1
    rows = read_annotations(detections, kind="detections")
    assert not rows.report and len(rows.table) == 4 * 20  # 4 keyframes, 20 detections each
    assert set(rows.table["video_id"]) == {"validvideo0"}
    assert set(rows.table["second"]) == {902, 903, 904, 905}


def test_detect_split_scores_any_detector_on_the_same_ground_truth(model_path, data_dir):
    """benchmarks/peers.py scores another implementation through detect_split: its
    detections come back as given (cut at num_detections) beside detect_dataset's truth."""
    from detector.data import dataset_info
    from detector.predict import detect_dataset, detect_split

    info = dataset_info("detector_toy_ava", data_dir)

    def constant(images, content):
        batch = tf.shape(images)[0]
        box = tf.constant([[[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]]])
        return {"boxes": tf.tile(box, [batch, 1, 1]),
                "scores": tf.tile([[0.9, 0.4]], [batch, 1]),
                "classes": tf.tile([[3, 7]], [batch, 1]),
                "num_detections": tf.fill([batch], 1)}

    truth, keyframes = detect_split(constant, info, "validation", image_size=96,
                                    data_dir=data_dir)
    expected, _ = detect_dataset(M.load_model(model_path), info, "validation",
                                 data_dir=data_dir)
    assert truth.table.equals(expected.table) and len(truth.table) > 4
    assert sorted((k.second, k.classes.tolist()) for k in keyframes) == [
        (s, [3]) for s in (902, 903, 904, 905)]
    np.testing.assert_allclose(keyframes[0].boxes, [[0.1, 0.2, 0.5, 0.6]])
    np.testing.assert_allclose(keyframes[0].scores, [0.9])


def test_evaluate_model_leaves_out_excluded_keyframes(model_path, data_dir, tmp_path, capsys):
    excluded = tmp_path / "excluded.csv"
    excluded.write_text("validvideo0,902\nvalidvideo0,0903\n")
    totals = []
    for extra in ([], ["--exclusions", str(excluded)]):
        assert main(["evaluate", "--model", model_path, "--dataset", "detector_toy_ava",
                     "--data-dir", data_dir, "--detections-out", str(tmp_path / "det.csv"),
                     "--json", str(tmp_path / "ap.json"), *extra]) == 0
        totals.append(sum(json.loads((tmp_path / "ap.json").read_text())["num_groundtruth"]
                          .values()))
    assert "and 40 detections left out" in capsys.readouterr().err  # 20 per keyframe
    assert 0 < totals[1] < totals[0]


def test_predict_images_and_video(model_path, tmp_path, capsys):
    images = [image for _, _, image in examples(seed=5, count=2)]
    named, other = tmp_path / "AbCdEfGhIjK_0910.png", tmp_path / "photo.png"
    Image.fromarray(images[0]).save(named)
    Image.fromarray(images[1]).save(other)
    out = tmp_path / "out"
    assert main(["predict", "--model", model_path, str(named), str(other), "--out", str(out),
                 "--min-score", "0"]) == 0
    capsys.readouterr()
    lines = (out / "detections.csv").read_text().splitlines()
    keys = {tuple(line.split(",")[:2]) for line in lines}
    assert keys == {("AbCdEfGhIjK", "0910"), ("photo", "0000")}  # seconds as AVA writes them
    assert all(len(line.split(",")) == 8 for line in lines)
    assert (out / "AbCdEfGhIjK_0910.png").is_file() and (out / "photo_0000.png").is_file()
    drawn = np.asarray(Image.open(out / "photo_0000.png").convert("RGB"))
    assert drawn.shape == images[1].shape and not np.array_equal(drawn, images[1])

    video = tmp_path / "Video_id-01.mp4"
    write_stamped_video(video, duration=3, fps=10, size=(96, 64))
    out = tmp_path / "video"
    assert main(["predict", "--model", model_path, "--video", str(video), "--seconds", "0,1-2",
                 "--out", str(out), "--no-pictures"]) == 0
    rows = read_annotations(out / "detections.csv", kind="detections")
    assert not rows.report
    assert set(rows.table["video_id"]) == {"Video_id-01"}
    assert set(rows.table["second"]) == {0, 1, 2}
    assert not list(out.glob("*.png"))

    movie = video.rename(tmp_path / "movie.mp4")  # any name: the README's own example
    capsys.readouterr()
    assert main(["predict", "--model", model_path, "--video", str(movie), "--seconds", "1",
                 "--out", str(out), "--no-pictures"]) == 0
    err = capsys.readouterr().err
    assert "detections written as unnamed_vid" in err and f"predict {movie}: 1/1 images" in err
    rows = read_annotations(out / "detections.csv", kind="detections")
    assert set(rows.table["video_id"]) == {"unnamed_vid"} and not rows.report


@pytest.mark.slow
def test_export_saved_model_is_callable_and_matches_keras(model_path, tmp_path, capsys):
    assert main(["export", "--model", model_path, "--out", str(tmp_path / "export")]) == 0
    capsys.readouterr()
    assert (tmp_path / "export" / "model.keras").is_file()
    loaded = tf.saved_model.load(str(tmp_path / "export" / "saved_model"))
    image = next(examples(seed=6, count=1))[2]
    out = loaded.signatures["serving_default"](images=tf.constant(np.stack([image, image])))
    assert out["boxes"].shape == (2, 20, 4) and out["num_detections"].numpy().tolist() == [20, 20]
    names = loaded.signatures["class_names"]()["names"].numpy()
    assert names[16].decode() == "carry/hold (an object)"
    model = M.load_model(model_path)
    _, expected = next(detect_images(model, [("x" * 11, 0, image)]))
    np.testing.assert_allclose(out["boxes"][0].numpy(), expected.boxes, atol=1e-5)
    np.testing.assert_allclose(out["scores"][0].numpy(), expected.scores, atol=1e-5)
    np.testing.assert_array_equal(out["classes"][0].numpy(), expected.classes)
    np.testing.assert_array_equal(out["class_ids"][0].numpy(),
                                  [model.class_ids[c] for c in expected.classes])


def test_user_mistakes_are_one_line_errors(model_path, data_dir, tmp_path, capsys):
    one_line_error(capsys, ["predict", "--model", str(tmp_path / "nope.keras"), "x.png",
                            "--out", str(tmp_path)], "nope.keras")
    one_line_error(capsys, ["predict", "--model", model_path, str(tmp_path / "missing.png"),
                            "--out", str(tmp_path)], "missing.png", "no such file")
    one_line_error(capsys, ["predict", "--model", model_path, "--video", "clip.mp4",
                            "--video-id", "clip", "--seconds", "1", "--out", str(tmp_path)],
                   "--video-id", "invalid video id")
    one_line_error(capsys, ["predict", "--model", model_path, "--video", "abcdefghijk.mp4",
                            "--seconds", "9x", "--out", str(tmp_path)], "--seconds")
    one_line_error(capsys, ["train", "--dataset", "no_such_dataset", "--data-dir", data_dir],
                   "no_such_dataset")
    one_line_error(capsys, ["train", "--dataset", "detector_toy_ava", "--data-dir", data_dir,
                            "--backbone", "vgg"], "unknown backbone 'vgg'")
    one_line_error(capsys, ["train", "--dataset", "detector_toy_ava", "--data-dir", data_dir,
                            "--preset", "nope"], "unknown KerasCV preset 'nope'")
    one_line_error(capsys, ["train", "--dataset", "detector_toy_ava", "--data-dir", data_dir,
                            "--split", "test"], "no split 'test'")
    one_line_error(capsys, ["train", "--dataset", "detector_toy_voc", "--data-dir", data_dir,
                            "--val-split", "validation"], "no split 'validation' to evaluate")
    one_line_error(capsys, ["evaluate", "--model", model_path], "--dataset")
    one_line_error(capsys, ["evaluate", "--model", model_path, "--dataset", "detector_toy_voc",
                            "--data-dir", data_dir, "--split", "test"],
                   "not those of detector_toy_voc")
    one_line_error(capsys, ["export", "--model", str(tmp_path / "none.keras"), "--out",
                            str(tmp_path)], "none.keras")


def test_pictures_show_truth_in_white_and_one_label_per_box():
    from detector.plots import draw_keyframe
    from detector.predict import Keyframe

    image = np.full((60, 80, 3), 100, np.uint8)
    keyframe = Keyframe("x" * 11, 902, boxes=np.array([[0.5, 0.5, 0.9, 0.9]] * 2),
                        scores=np.array([0.9, 0.8]), classes=np.array([0, 1]))
    picture = draw_keyframe(image, keyframe, ["sit", "carry"], truth_pixels=np.array(
        [[10.0, 10.0, 30.0, 50.0]]))
    assert picture.shape == image.shape and picture.dtype == np.uint8
    assert (picture[10, 10:31] == 255).all() and (picture[30, 10] == 255).all()
    untouched = draw_keyframe(image, keyframe, ["sit", "carry"], min_score=0.95)
    np.testing.assert_array_equal(untouched, image)  # nothing above 0.95: nothing drawn


@pytest.mark.slow
def test_verbs_that_run_tensorflow_are_quiet_unless_verbose(model_path, tmp_path):
    """No TensorFlow, absl, CUDA or warning line on stderr, whatever TF_* the caller set;
    `-v` lets them through."""
    image = tmp_path / "AbCdEfGhIjK_0902.png"
    Image.fromarray(next(examples(seed=7, count=1))[2]).save(image)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    argv = [sys.executable, "-m", "detector.cli", "predict", "--model", model_path, str(image),
            "--out", str(tmp_path / "out")]
    quiet = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)  # noqa: S603
    assert quiet.returncode == 0, quiet.stderr
    # stderr holds predict's own progress (plain lines: not a terminal) and nothing else
    assert quiet.stderr == "predict: 1/1 images\n" and quiet.stdout.startswith("1 keyframes, "), \
        quiet
    verbose = subprocess.run([*argv, "-v"],  # noqa: S603
                             capture_output=True, text=True, env=env, check=False)
    assert verbose.returncode == 0 and "] " in verbose.stderr  # TF's native log lines


def test_bad_numbers_and_outputs_are_one_line_errors(model_path, data_dir, tmp_path, capsys):
    train = ["train", "--dataset", "detector_toy_ava", "--data-dir", data_dir]
    for flag, value in (("--lr", "nan"), ("--lr", "-1e-3"), ("--lr", "inf"),
                        ("--backbone-width", "0"), ("--epochs", "0"), ("--eval-every", "-1")):
        one_line_error(capsys, [*train, f"{flag}={value}"], f"argument {flag}", repr(value))
    image = tmp_path / "photo.png"
    Image.fromarray(next(examples(seed=8, count=1))[2]).save(image)
    predict = ["predict", "--model", model_path, str(image)]
    one_line_error(capsys, [*predict, "--out", str(tmp_path), "--min-score", "2"], "--min-score")
    one_line_error(capsys, ["predict", "--model", model_path, "--video", "abcdefghijk.mp4",
                            "--seconds", "0-99999999999", "--out", str(tmp_path)],
                   "--seconds", "more than 86400 seconds")
    one_line_error(capsys, [*predict, "--out", str(image)], str(image), "not a folder")
    one_line_error(capsys, [*train, "--snapshot-path", str(image)], str(image), "not a folder")
    one_line_error(capsys, ["export", "--model", model_path, "--out", str(image / "x")],
                   str(image), "cannot create")


def test_damaged_model_and_decompression_bomb_are_one_line_errors(model_path, tmp_path, capsys,
                                                                   monkeypatch):
    import zipfile

    from PIL import Image as PILImage

    data = bytearray(open(model_path, "rb").read())
    with zipfile.ZipFile(model_path) as archive:
        info = max(archive.infolist(), key=lambda i: i.compress_size)
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + 100] ^= 0xFF
    damaged = tmp_path / "damaged.keras"
    damaged.write_bytes(bytes(data))
    image = tmp_path / "photo.png"
    Image.fromarray(next(examples(seed=9, count=1))[2]).save(image)
    out = str(tmp_path / "out")
    one_line_error(capsys, ["predict", "--model", str(damaged), str(image), "--out", out],
                   "damaged.keras", "damaged model file", "CRC")
    one_line_error(capsys, ["export", "--model", str(damaged), "--out", out], "damaged.keras")
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)  # the image has 96 x 96 pixels
    one_line_error(capsys, ["predict", "--model", model_path, str(image), "--out", out],
                   "photo.png", "refused", "decompression bomb")


@pytest.mark.slow
def test_training_that_diverges_stops_with_an_error_and_no_snapshot(data_dir, tmp_path,
                                                                    capsys):
    snapshots = tmp_path / "snapshots"
    one_line_error(capsys, ["train", "--dataset", "detector_toy_ava", "--data-dir", data_dir,
                            *TINY, "--epochs", "2", "--steps", "3", "--batch-size", "4",
                            "--lr", "1e30", "--val-split", "none",
                            "--snapshot-path", str(snapshots)],
                   "training stopped in epoch 1", "loss became nan", "lower --lr")
    assert not list(snapshots.iterdir())


def test_pictures_colour_by_class_scale_with_the_image_and_keep_labels_inside():
    from detector.plots import class_colour, draw_keyframe, keyframe_grid
    from detector.predict import Keyframe

    names = ["sit", "a class with a long name, for a long label"]
    corner = Keyframe("x" * 11, 902, boxes=np.array([[0.9, 0.0, 1.0, 0.1], [0.1, 0.5, 0.3, 0.9]]),
                      scores=np.array([0.9, 0.8]), classes=np.array([1, 0]))
    small = draw_keyframe(np.full((240, 320, 3), 100, np.uint8), corner, names)
    for index in (0, 1):  # each class's colour is on the picture, whatever the order
        assert (small == class_colour(index)).all(axis=-1).any()
    label = np.flatnonzero((small == class_colour(1)).all(axis=-1).any(axis=0))
    assert label.max() == 319 and label.min() < 320 - 150  # pushed inside, not cut at the edge
    truth = np.array([[100.0, 100.0, 600.0, 800.0]])
    widths = []
    for height, width in ((240, 320), (960, 1280)):
        picture = draw_keyframe(np.full((height, width, 3), 100, np.uint8), corner, names,
                                min_score=1.0, truth_pixels=truth * height / 960)
        column = picture[:, width // 4, 0]
        widths.append(int(np.count_nonzero(column == 255)) // 2)  # top and bottom edges
    assert widths == [1, 4]
    tiles = [(np.full((240, 320, 3), (10 * n, 200, 50), np.uint8), f"tile {n}") for n in range(5)]
    grid = keyframe_grid(tiles, [("sit", 0)])
    for n, _ in enumerate(tiles):  # every tile whole, at its own resolution
        assert (grid == (10 * n, 200, 50)).all(axis=-1).sum() == 240 * 320
    assert grid.shape[1] >= 4 * 320


@pytest.mark.slow
def test_seeded_training_repeats_and_logs_map_only_when_it_evaluated(data_dir, tmp_path):
    from detector.train import TrainOptions, train

    options = TrainOptions(
        dataset="detector_toy_ava", data_dir=data_dir, backbone="resnet18", backbone_width=0.25,
        image_size=96, fpn_channels=8, head_channels=8, head_depth=1, epochs=3, steps=2,
        batch_size=4, lr=1e-3, random_transform=True, eval_every=2, snapshots=False, seed=3,
        snapshot_path=str(tmp_path / "never"), verbose=0,
    )
    first, second = train(options), train(options)
    assert first.history["loss"] == second.history["loss"]  # same seed, same run
    assert len(first.history["loss"]) == 3 and len(first.history["mAP"]) == 2  # epochs 2, 3
    assert first.last_snapshot is None and not (tmp_path / "never").exists()


def test_a_video_of_any_name_gets_an_id():
    from detector.predict import UNNAMED_VIDEO, InputError, video_id_of

    assert video_id_of("/films/Video_id-01.mkv") == "Video_id-01"
    assert video_id_of("/films/movie.mkv") == UNNAMED_VIDEO
    assert video_id_of("/films/my, movie.mkv", "AbCdEfGhIjK") == "AbCdEfGhIjK"
    with pytest.raises(InputError, match="--video-id"):
        video_id_of("movie.mkv", "movie")


@pytest.mark.slow
def test_library_functions_behind_predict_and_evaluate(model_path, data_dir, tmp_path):
    """The verbs are thin shells: the same work through `predict_images`, `predict_video`
    and `evaluate_split` called directly."""
    from detector.evaluate import evaluate_split
    from detector.predict import predict_images, predict_video

    model = M.load_model(model_path)
    image = tmp_path / "AbCdEfGhIjK_0910.png"
    Image.fromarray(next(examples(seed=5, count=1))[2]).save(image)
    found = predict_images(model, [image], pictures=tmp_path, min_score=0)
    assert [(k.video_id, k.second) for k in found.keyframes] == [("AbCdEfGhIjK", 910)]
    assert len(found.table) == 20 and found.missing is None
    assert (tmp_path / "AbCdEfGhIjK_0910.png").is_file()

    video = tmp_path / "movie.mp4"
    write_stamped_video(video, duration=2, fps=10, size=(96, 64))
    found = predict_video(model, video, [1, 5], video_id="AbCdEfGhIjK")
    assert [(k.video_id, k.second) for k in found.keyframes] == [("AbCdEfGhIjK", 1)]
    assert "5" in found.missing and set(found.table["video_id"]) == {"AbCdEfGhIjK"}

    evaluation = evaluate_split(model, "detector_toy_ava", "validation", data_dir=data_dir,
                                detections_csv=tmp_path / "det.csv", limit=4)
    assert 0 <= evaluation.result.mAP <= 1 and evaluation.exclusions is None
    assert read_annotations(tmp_path / "det.csv", kind="detections").table.shape[0] > 0


@pytest.mark.slow
def test_stock_keras_loads_a_model_after_import_detector_and_export_points_to_ours(
        model_path, tmp_path):
    """A fresh interpreter: `import detector` loads no Keras, yet `keras.models.load_model`
    then finds `MultiLabelRetinaNet`; Keras's own `export` is refused with a pointer."""
    code = ("import sys, detector; assert 'keras' not in sys.modules, 'keras loaded'; "
            "import keras; model = keras.models.load_model(sys.argv[1]); "
            "print(type(model).__name__, len(model.class_names))")
    done = subprocess.run([sys.executable, "-c", code, model_path],  # noqa: S603
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2] == "MultiLabelRetinaNet", done.stdout
    with pytest.raises(M.ModelError, match=r"use detector.predict.export\(model, folder\)"):
        M.load_model(model_path).export(str(tmp_path / "raw"))
    assert not (tmp_path / "raw").exists()
