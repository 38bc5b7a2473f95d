"""Which `--mixed-precision` trains fastest here? Seconds per training step of each, one run.

    .venv/bin/python benchmarks/mixed_precision.py [--choices off,bfloat16,float16]
        [--steps 5] [--data-dir D] [--backbone resnet18 --backbone-width 0.25 --image-size 128]

Builds a small synthetic `ava_keyframes` dataset (or uses `--data-dir`), then for each choice
builds the same model under that policy (`detector.precision.training_globals`, as `train`
does), fits 2 warm-up steps (tracing) and times `--steps` more. Prints each choice's seconds
per step and its ratio to `off`: what `auto` picks on a CPU is recorded in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from train_throughput import build_dataset

from detector.data import dataset_info, train_batches
from detector.model import build_model, compile_model
from detector.precision import precision_policy, training_globals


def seconds_per_step(choice: str, args: argparse.Namespace, data_dir: str) -> float:
    info = dataset_info("ava_keyframes", data_dir)
    with training_globals(precision_policy(choice), seed=1):
        model = compile_model(build_model(
            info.num_classes, backbone=args.backbone, image_size=args.image_size,
            backbone_width=args.backbone_width, fpn_channels=args.channels,
            head_channels=args.channels, head_depth=1,
            class_names=info.class_names, class_ids=info.class_ids))
        batches = train_batches(info, "train", image_size=args.image_size,
                                batch_size=args.batch_size, data_dir=data_dir)
        model.fit(batches, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)
        start = time.perf_counter()
        model.fit(batches, steps_per_epoch=args.steps, epochs=1, verbose=0, shuffle=False)
        return (time.perf_counter() - start) / args.steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="where ava_keyframes is built (default: build one)")
    parser.add_argument("--choices", default="off,bfloat16,float16")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--backbone-width", type=float, default=0.25)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--channels", type=int, default=16, help="pyramid and head width")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or build_dataset(Path(tempfile.mkdtemp(prefix="precision-")))
    times = {c: seconds_per_step(c, args, data_dir) for c in args.choices.split(",")}
    print(f"{args.backbone} x{args.backbone_width:g} at {args.image_size} px, batch "
          f"{args.batch_size}, {args.steps} timed steps")
    for choice, seconds in times.items():
        ratio = f" ({seconds / times['off']:.2f}x off)" if "off" in times else ""
        print(f"{choice:9s} {seconds:.3f} s/step{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
