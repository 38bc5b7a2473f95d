"""Does starting from a trained model pay? Fine-tuning vs random weights on a new corpus.

    .venv/bin/python benchmarks/finetune.py [--out DIR] [--epochs 12]

1. A corpus of the colour world (`ava_keyframes.synth.make_corpus`, the demo's sizes and
   seed; the demo itself now runs the AVA-shaped world) built with `tfds build` (videos
   from a loopback mirror), and a model trained on it with the demo's settings and epochs;
   its held-out mAP is the bar to reach.
2. A second corpus with another seed (other videos, people, places and actions), built the
   same way.
3. On the second corpus, in this run and with the same settings, seeds and epochs: training
   from random weights, and fine-tuning from the first model's `.keras` file (what
   `ava-detector train --weights model.keras` does). Both evaluate every epoch.

Prints, for each mAP bar (the demo model's own among them), the first epoch at which each
start reaches it and their ratio, and writes `result.json` in the output folder. A corpus
already built under `--out` is reused.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from ava_keyframes.synth import make_corpus
from detector.demo import CONFIG, DemoSettings, build_dataset
from detector.train import TrainOptions, TrainResult, train

BARS = (0.5, 0.8, 0.9)


def first_epoch(curve: list[float], bar: float) -> int | None:
    """The first epoch (1-based) whose mAP reaches `bar`, or None."""
    return next((epoch for epoch, value in enumerate(curve, 1) if value >= bar), None)


def built_corpus(work: Path, settings: DemoSettings, seed: int) -> str:
    """The TFDS data dir of a synthetic corpus built in `work` (reused when already built)."""
    if not list(work.glob(f"tfds/ava_keyframes/{CONFIG}/*/build_report.json")):
        work.mkdir(parents=True, exist_ok=True)
        corpus = make_corpus(work / "corpus", videos=settings.videos, seconds=settings.seconds,
                             size=settings.size, seed=seed)
        build_dataset(corpus.root, work)
    return str(work / "tfds")


def trained(data_dir: str, settings: DemoSettings, epochs: int, *, eval_every: int = 1,
            weights: str | None = None) -> TrainResult:
    """The demo's training (settings, augmentation, seed) on the corpus in `data_dir`."""
    return train(TrainOptions(
        dataset=f"ava_keyframes/{CONFIG}", data_dir=data_dir, backbone=settings.backbone,
        backbone_width=settings.backbone_width, image_size=settings.image_size,
        fpn_channels=settings.channels, head_channels=settings.channels,
        head_depth=settings.head_depth, batch_size=settings.batch_size, lr=settings.lr,
        epochs=epochs, random_transform=True, eval_every=eval_every,
        early_stopping_patience=None, snapshots=False, seed=settings.seed, verbose=2,
        weights=weights,
    ))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="working folder (default: a temporary one)")
    parser.add_argument("--epochs", type=int, default=12, help="epochs of each run on corpus 2")
    parser.add_argument("--seed", type=int, default=1, help="seed of the second corpus")
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="finetune-"))

    settings = DemoSettings()
    first = trained(built_corpus(out / "first", settings, settings.seed), settings,
                    settings.epochs, eval_every=settings.eval_every)
    source = out / "first.keras"
    first.model.save(source)
    demo_map = first.evaluation.mAP
    print(f"first model: held-out mAP {demo_map:.4f} on its own corpus, {settings.epochs} epochs")

    data_dir = built_corpus(out / "second", settings, args.seed)
    curves = {start: [float(v) for v in trained(data_dir, settings, args.epochs,
                                                weights=weights).history["mAP"]]
              for start, weights in (("random", None), ("fine-tuned", str(source)))}
    bars = sorted({*BARS, round(demo_map, 4)})
    reached = {start: {bar: first_epoch(curve, bar) for bar in bars}
               for start, curve in curves.items()}
    for start, curve in curves.items():
        print(f"{start:>10}: mAP per epoch {' '.join(f'{v:.3f}' for v in curve)}")
    for bar in bars:
        random, tuned = reached["random"][bar], reached["fine-tuned"][bar]
        ratio = f"{tuned / random:.2f}x the epochs" if random and tuned else "n/a"
        print(f"mAP >= {bar:.4f}: random epoch {random or f'>{args.epochs}'}, fine-tuned "
              f"epoch {tuned or f'>{args.epochs}'} ({ratio})")
    (out / "result.json").write_text(json.dumps({
        "demo_mAP": demo_map, "demo_epochs": settings.epochs, "curves": curves,
        "first_epoch": {start: {str(bar): epoch for bar, epoch in by_bar.items()}
                        for start, by_bar in reached.items()},
        "options": vars(args),
    }, indent=2))
    demo_bar = round(demo_map, 4)
    tuned, random = reached["fine-tuned"][demo_bar], reached["random"][demo_bar]
    return 0 if tuned is not None and (random is None or tuned < random) else 1


if __name__ == "__main__":
    sys.exit(main())
