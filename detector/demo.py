"""The whole product on a synthetic corpus, offline: what `make demo` runs.

AVA-shaped synthetic corpus (`ava_keyframes.csvworld`: real AVA val boxes and actions, shown
by pose alone) -> its videos served by a loopback HTTP mirror (the real download path)
-> `tfds build ava_keyframes` (the real CLI, in a subprocess) -> RetinaNet trained with `fit`
-> per-class AP on the held-out videos, beside a trivial baseline (the true boxes, each with
every class scored by its frequency in the train split) -> tables, charts and pictures.
`benchmarks/learn.py` runs the same pipeline on the colour world with a longer budget.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

CONFIG = "v2.2"


@dataclass
class DemoSettings:
    """Sizes that fit the demo's 15 minutes on 2 CPU cores. Training runs a fixed number of
    epochs with fixed seeds and deterministic ops, so the result does not depend on the
    machine's load; the wall time is measured and printed, never used to stop."""

    videos: int = 10
    seconds: int = 40  # keyframe seconds per video: the slice [start, start + seconds)
    start: int = 902
    size: tuple[int, int] = (320, 240)
    image_size: int = 128
    backbone: str = "resnet18"
    backbone_width: float = 0.25
    channels: int = 64  # pyramid and head width
    head_depth: int = 2
    batch_size: int = 8
    lr: float = 1e-3
    epochs: int = 30
    eval_every: int = 5  # epochs between evaluations (mAP drives the learning rate)
    pictures: int = 8
    seed: int = 0


@dataclass
class DemoResult:
    keyframes: dict[str, int]
    mAP: float
    epochs: int
    train_minutes: float
    outputs: dict[str, str]
    model: object  # the trained MultiLabelRetinaNet
    data_dir: str
    evaluation: object  # detector.ap.APResult on the validation split
    baseline_mAP: float
    """Boxes right, labels by train class frequency: the bar a detector must clear."""


def build_dataset(corpus_root: Path, work: Path) -> tuple[str, dict]:
    """`tfds build` over the corpus's annotations, its videos fetched from a loopback mirror.
    Returns the data dir and the build report."""
    from ava_keyframes.mirror import LoopbackMirror

    manual = work / "manual"
    shutil.copytree(corpus_root / "annotations", manual / "annotations")
    data_dir = work / "tfds"
    tfds_cli = Path(sys.executable).with_name("tfds")
    with LoopbackMirror(corpus_root / "videos") as mirror:
        env = {**os.environ, "AVA_KEYFRAMES_SOURCES": "mirror",
               "AVA_KEYFRAMES_MIRROR": mirror.url, "AVA_KEYFRAMES_CACHE": str(work / "cache"),
               "TF_CPP_MIN_LOG_LEVEL": "3"}
        cmd = [str(tfds_cli), "build", "ava_keyframes", "--imports", "ava_keyframes",
               "--config", CONFIG, "--manual_dir", str(manual), "--data_dir", str(data_dir)]
        with open(work / "tfds_build.log", "w") as log:
            done = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
        if done.returncode != 0:
            raise RuntimeError(f"tfds build failed; see {work / 'tfds_build.log'}")
        if not mirror.requests:
            raise RuntimeError("tfds build fetched nothing from the loopback mirror")
    [report] = data_dir.glob(f"ava_keyframes/{CONFIG}/*/build_report.json")
    return str(data_dir), json.loads(report.read_text())


def keyframe_pictures(model, data_dir: str, count: int, min_score: float = 0.3) -> np.ndarray:
    """A grid of held-out keyframes at their own resolution, each captioned with its video id
    and second: ground truth as white outlines, detections in their class's colour with
    names and scores, and a legend of both."""
    import tensorflow_datasets as tfds

    from detector.plots import draw_keyframe, drawn_classes, keyframe_grid
    from detector.predict import detect_images

    builder = tfds.builder(f"ava_keyframes/{CONFIG}", data_dir=data_dir)
    examples = list(tfds.as_numpy(builder.as_dataset(split="validation").take(8 * count)))
    # the most crowded keyframes: the hard scenes
    examples = sorted(examples, key=lambda e: -len(e["objects"]["box_pixels"]))[:count]
    items = [(e["video_id"].decode(), int(e["timestamp"]), e["image"]) for e in examples]
    tiles, shown = [], set()
    for example, (image, keyframe) in zip(examples, detect_images(model, items), strict=True):
        truth = example["objects"]["box_pixels"]
        picture = draw_keyframe(image, keyframe, model.class_names, min_score=min_score,
                                truth_pixels=truth)
        tiles.append((picture, f"{keyframe.video_id}  second {keyframe.second}"))
        shown |= drawn_classes(keyframe, min_score)
    return keyframe_grid(tiles, [(model.class_names[i], i) for i in sorted(shown)])


def run_demo(out: str | Path, settings: DemoSettings | None = None) -> DemoResult:
    """Run the whole pipeline into ``out`` (its ``work/`` folder is made anew)."""
    import ava_keyframes  # noqa: F401 - registers the TFDS builder
    from ava_keyframes.csvworld import make_csv_corpus
    from detector.ap_inputs import scored_labelmap
    from detector.data import dataset_info
    from detector.predict import evaluate_model

    settings = settings or DemoSettings()
    out = Path(out)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.monotonic()

    print(f"[1/4] AVA-shaped synthetic corpus: real val boxes of {settings.videos} videos, "
          f"seconds {settings.start}..{settings.start + settings.seconds - 1}")
    corpus, _ = make_csv_corpus(work / "corpus", videos=settings.videos, start=settings.start,
                                seconds=settings.seconds, size=settings.size, seed=settings.seed)
    print("[2/4] tfds build ava_keyframes, videos from a loopback mirror")
    data_dir, report = build_dataset(corpus.root, work)
    (out / "build_report.json").write_text(json.dumps(report, indent=2))
    info = dataset_info(f"ava_keyframes/{CONFIG}", data_dir)

    print(f"[3/4] training a RetinaNet for {settings.epochs} epochs on "
          f"{info.splits['train']} keyframes (seed {settings.seed})")
    train_start = time.monotonic()
    trained = _train(settings, data_dir)
    train_minutes = (time.monotonic() - train_start) / 60
    print(f"trained {settings.epochs} epochs in {train_minutes:.1f} min of wall time")

    print(f"[4/4] per-class AP on {info.splits['validation']} held-out keyframes")
    result = evaluate_model(trained.model, info, "validation", data_dir=data_dir,
                            detections_csv=out / "detections.csv")
    baseline = frequency_baseline(corpus.annotation_csv("train"), corpus.annotation_csv("val"),
                                  scored_labelmap(info=info))
    outputs = _write_outputs(out, result, trained.model, data_dir, settings)
    keyframes = {split: report["splits"][split]["keyframes_written"]
                 for split in ("train", "validation")}
    (out / "summary.json").write_text(json.dumps({
        "keyframes": keyframes, "mAP": result.mAP, "baseline_mAP": baseline.mAP,
        "epochs": len(trained.history["loss"]),
        "train_minutes": train_minutes, "total_minutes": (time.monotonic() - started) / 60,
        "settings": asdict(settings),
    }, indent=2))
    return DemoResult(keyframes, result.mAP, len(trained.history["loss"]), train_minutes,
                      outputs, trained.model, data_dir, result, baseline.mAP)


def frequency_baseline(train_csv: Path, val_csv: Path, labelmap):
    """AP of the trivial detector: every true val box, scored for each class by that class's
    share of the train boxes (boxes right, labels by class frequency)."""
    from ava_keyframes.annotations import read_annotations
    from detector import ap
    from detector.ap_inputs import ava_table

    counts = read_annotations(train_csv).table["action_id"].value_counts(normalize=True)
    persons = read_annotations(val_csv).keyframes()
    boxes = [(video_id, second, person.box) for (video_id, second), found in persons.items()
             for person in found]
    rows = [(v, s, box, int(action), float(share)) for v, s, box in boxes
            for action, share in counts.items()]
    video_ids, seconds, box_rows, actions, scores = zip(*rows, strict=True)
    detections = ava_table(video_ids, seconds, np.array(box_rows), actions, score=scores)
    return ap.evaluate(read_annotations(val_csv), detections, labelmap)


def _train(settings: DemoSettings, data_dir: str):
    from detector.train import TrainOptions, train

    return train(TrainOptions(
        dataset=f"ava_keyframes/{CONFIG}", data_dir=data_dir, backbone=settings.backbone,
        backbone_width=settings.backbone_width, image_size=settings.image_size,
        fpn_channels=settings.channels, head_channels=settings.channels,
        head_depth=settings.head_depth, batch_size=settings.batch_size, lr=settings.lr,
        epochs=settings.epochs, random_transform=True, eval_every=settings.eval_every,
        early_stopping_patience=None, snapshots=False, seed=settings.seed, verbose=2,
    ))


def _write_outputs(out: Path, result, model, data_dir: str, settings: DemoSettings
                   ) -> dict[str, str]:
    """The AP table, JSON and chart, the keyframe pictures and the model, beside the
    detections CSV and the build report; returns {what: path}."""
    from PIL import Image

    from detector.plots import plot_ap

    outputs = {
        "AP table": out / "ap.md",
        "AP JSON": out / "ap.json",
        "AP chart": out / "ap.png",
        "keyframes": out / "keyframes.png",
        "detections": out / "detections.csv",
        "build report": out / "build_report.json",
        "model": out / "model.keras",
    }
    outputs["AP table"].write_text(result.to_markdown())
    outputs["AP JSON"].write_text(json.dumps(result.to_json(), indent=2))
    plot_ap(result, outputs["AP chart"])
    grid = keyframe_pictures(model, data_dir, settings.pictures)
    Image.fromarray(grid).save(outputs["keyframes"])
    model.save(outputs["model"])
    return {name: str(path) for name, path in outputs.items()}


def print_summary(result: DemoResult) -> None:
    print()
    print(f"Built {result.keyframes['train']} train and {result.keyframes['validation']} "
          f"validation keyframes with tfds build (videos fetched from a loopback mirror).")
    print(f"Trained {result.epochs} epochs in {result.train_minutes:.1f} min; held-out "
          f"frame-mAP@0.5 (official AVA protocol): {result.mAP:.3f}")
    print(f"Trivial baseline (true boxes, labels by train class frequency): "
          f"mAP {result.baseline_mAP:.3f}")
    for name, path in result.outputs.items():
        print(f"  {name:<13} {path}")
