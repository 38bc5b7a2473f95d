"""Is the input pipeline fast enough to feed training? Images/s of each, same run.

    .venv/bin/python benchmarks/train_throughput.py [--backbone resnet50 --image-size 512]
        [--batch-size 8] [--mixed-precision [auto|float16|bfloat16|off]] [--jit-compile]
        [--data-dir D]

Builds a small synthetic `ava_keyframes` dataset (or uses `--data-dir` where one is built),
then measures on the same training batches (augmentation on):

- the input pipeline alone (`detector.data.train_batches`: read, decode, augment,
  letterbox, pad, batch, prefetch), iterated without a model;
- training (`model.fit` on that pipeline) after one warm-up epoch (tracing, XLA).

Prints both rates, their ratio (the pipeline should be at least 2x training, so the
accelerator never waits) and the device.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import keras
import tensorflow as tf
import tensorflow_datasets as tfds

import ava_keyframes  # noqa: F401 - registers the TFDS builder
from ava_keyframes.synth import make_corpus
from detector.data import SHUFFLE_BUFFER, dataset_info, train_batches
from detector.model import build_model, compile_model
from detector.precision import MIXED_PRECISION, precision_policy


def build_dataset(root: Path) -> str:
    make_corpus(root / "corpus", videos=4, seconds=30, seed=1)
    data_dir = str(root / "tfds")
    tfds.builder("ava_keyframes", data_dir=data_dir).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(root / "corpus"))
    )
    return data_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="where ava_keyframes is built (default: build one)")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--backbone-width", type=float, default=1.0)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--channels", type=int, default=256, help="pyramid and head width")
    parser.add_argument("--head-depth", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--mixed-precision", nargs="?", const="auto", default="off",
                        choices=MIXED_PRECISION, help="as `ava-detector train`'s (a bare flag: "
                        "auto, float16 on a GPU)")
    parser.add_argument("--jit-compile", action="store_true")
    args = parser.parse_args(argv)

    keras.mixed_precision.set_global_policy(precision_policy(args.mixed_precision))
    data_dir = args.data_dir or build_dataset(Path(tempfile.mkdtemp(prefix="throughput-")))
    info = dataset_info("ava_keyframes", data_dir)
    batches = train_batches(info, "train", image_size=args.image_size,
                            batch_size=args.batch_size, random_transform=True, data_dir=data_dir)

    # Warm-up: open the files and fill the shuffle buffer (its examples are decoded already,
    # so timing them would flatter the pipeline), then time fresh batches.
    iterator = iter(batches)
    for _ in range(SHUFFLE_BUFFER // args.batch_size + 2):
        next(iterator)
    pipeline_batches = max(args.steps, 100)
    start = time.perf_counter()
    for _ in range(pipeline_batches):
        next(iterator)
    pipeline_rate = pipeline_batches * args.batch_size / (time.perf_counter() - start)

    model = compile_model(
        build_model(info.num_classes, backbone=args.backbone, image_size=args.image_size,
                    backbone_width=args.backbone_width, fpn_channels=args.channels,
                    head_channels=args.channels, head_depth=args.head_depth,
                    class_names=info.class_names, class_ids=info.class_ids),
        lr=1e-4, jit_compile=args.jit_compile,
    )
    model.fit(batches, steps_per_epoch=3, epochs=1, verbose=0, shuffle=False)  # tracing, XLA
    start = time.perf_counter()
    model.fit(batches, steps_per_epoch=args.steps, epochs=1, verbose=0, shuffle=False)
    train_rate = args.steps * args.batch_size / (time.perf_counter() - start)

    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    print(f"device: {devices[0].name} ({'GPU' if tf.config.list_logical_devices('GPU') else 'CPU'})"
          f"; {args.backbone} x{args.backbone_width:g} at {args.image_size} px, batch "
          f"{args.batch_size}, mixed precision {args.mixed_precision}, XLA {args.jit_compile}")
    print(f"input pipeline: {pipeline_rate:.1f} images/s")
    print(f"training:       {train_rate:.1f} images/s")
    print(f"pipeline / training: {pipeline_rate / train_rate:.2f}x (target >= 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
