"""Does the detector learn? Synthetic AVA corpus -> `tfds build` -> CPU training -> mAP.

    .venv/bin/python benchmarks/learn.py [--out DIR] [--epochs 45]

The pipeline of `make demo` (`detector.demo.run_demo`), with a bigger corpus and budget:
1. `ava_keyframes.csvworld.make_csv_corpus`: the AVA-shaped world, real val boxes and
   actions of `--videos` videos from second 902, actions shown by pose alone; train and val
   use different videos (split by video, as AVA is).
2. `tfds build ava_keyframes`, its videos fetched from a loopback mirror.
3. `detector.train.train` from scratch (random weights) for `--epochs` epochs with fixed
   seeds, with augmentation (the wall time is measured, not a stop).
4. The official AVA frame-mAP@0.5 (`detector.ap`, 60-class evaluation map) on the held-out
   val videos, where a person with two actions is two ground-truth rows: each action must be
   detected on its own. Also printed: how many multi-label persons had every one of their
   actions detected (IoU >= 0.5, score >= 0.3).

Prints the mAP beside the demo's trivial baseline (true boxes, labels by train class
frequency) and the training time, writes `result.json` in the output folder, and exits 1
when the detector does not beat the baseline.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from detector.data import dataset_info
from detector.demo import CONFIG, DemoSettings, run_demo
from detector.predict import detect_dataset

SHOWN_SCORE = 0.3


def all_actions_found(groundtruth, keyframes, class_ids: list[int]) -> tuple[int, int]:
    """(multi-label persons, those with every action detected at IoU >= 0.5, score >= 0.3)."""
    found = {(k.video_id, k.second): k for k in keyframes}
    total = complete = 0
    for key, persons in groundtruth.keyframes().items():
        detected = found[key]
        for person in persons:
            if len(person.actions) < 2:
                continue
            total += 1
            box = np.asarray(person.box)
            hits = set()
            for det_box, score, index in zip(detected.boxes, detected.scores, detected.classes,
                                             strict=True):
                if score >= SHOWN_SCORE and _iou(box, det_box) >= 0.5:
                    hits.add(class_ids[int(index)])
            complete += set(person.actions) <= hits
    return total, complete


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="working folder (default: a temporary one)")
    parser.add_argument("--epochs", type=int, default=45, help="training epochs")
    parser.add_argument("--videos", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=60, help="keyframes per video")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--backbone-width", type=float, default=0.25)
    parser.add_argument("--channels", type=int, default=64, help="pyramid and head width")
    parser.add_argument("--head-depth", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=5)
    args = parser.parse_args(argv)

    out = Path(args.out or tempfile.mkdtemp(prefix="learn-"))
    settings = DemoSettings(
        videos=args.videos, seconds=args.seconds, image_size=args.image_size,
        backbone=args.backbone, backbone_width=args.backbone_width, channels=args.channels,
        head_depth=args.head_depth, batch_size=args.batch_size, lr=args.lr,
        epochs=args.epochs, eval_every=args.eval_every,
    )
    demo = run_demo(out, settings)
    splits, minutes, scored = demo.keyframes, demo.train_minutes, demo.evaluation
    info = dataset_info(f"ava_keyframes/{CONFIG}", demo.data_dir)
    groundtruth, keyframes = detect_dataset(demo.model, info, "validation",
                                            data_dir=demo.data_dir)
    persons, complete = all_actions_found(groundtruth, keyframes, info.class_ids)
    print(scored.to_markdown(every_class=False))
    print(f"held-out mAP@0.5: {scored.mAP:.4f}; trivial baseline (true boxes, labels by "
          f"class frequency): {demo.baseline_mAP:.4f}")
    print(f"training: {minutes:.1f} min for {demo.epochs} epochs")
    print(f"multi-label persons with every action detected: {complete}/{persons}")
    (out / "result.json").write_text(json.dumps({
        "mAP": scored.mAP,
        "baseline_mAP": demo.baseline_mAP,
        "per_class": scored.to_json()["per_class"],
        "num_groundtruth": scored.num_groundtruth,
        "training_minutes": minutes,
        "epochs": demo.epochs,
        "keyframes": splits,
        "multi_label_persons": persons,
        "multi_label_persons_all_actions_found": complete,
        "options": vars(args),
    }, indent=2))
    return 0 if scored.mAP > demo.baseline_mAP else 1


if __name__ == "__main__":
    sys.exit(main())
