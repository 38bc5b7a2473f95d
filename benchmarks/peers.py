"""This project's RetinaNet beside KerasHub's `RetinaNetObjectDetector`, in one run.

Both train on the same TFDS split of the AVA-shaped pose world (`ava_keyframes.csvworld`,
built with `tfds build` as `make demo` does, `detector.demo.build_dataset`), with the same
input size, batches, augmentation (`detector.data.train_batches`), optimizer, learning rate,
epochs and seed, and a ResNet-18 backbone of the same widths, randomly initialised (no
preset, nothing downloaded). Both are scored by this project's evaluator (`detector.ap`,
the official AVA frame-mAP@0.5 protocol) on the held-out videos, with the same ground truth
(`detector.predict.detect_split`). Images/s are measured for training (whole `fit`, model
building and tracing included, the same for both) and for inference (the validation split,
input pipeline included).

KerasHub's detector is single-label per box (softmax-free sigmoid heads, but one class per
target anchor and class-agnostic NMS): it gets one row per (person, action), the way
keras-retinanet and KerasHub users train AVA, and its detections are scored the same way.

Run (KerasHub beside keras-cv, never in the shared venv; see benchmarks/README.md):

    pip install --target /tmp/peers-site --no-deps keras-hub tokenizers sentencepiece \\
        tensorflow-text    # or: pip install -e .[peers] in a venv of its own
    PYTHONPATH=.:/tmp/peers-site python benchmarks/peers.py [--epochs 10] [--out /tmp/peers]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class PeerSettings:
    """A small slice of the pose world: about 15 minutes on a loaded 2-core CPU."""

    videos: int = 6
    seconds: int = 20
    start: int = 902
    size: tuple[int, int] = (320, 240)
    image_size: int = 128
    backbone_width: float = 0.25  # resnet18 stage widths: max(64, 0.25 x 64..512)
    channels: int = 64  # this project's pyramid and head width
    head_depth: int = 2
    batch_size: int = 8
    lr: float = 1e-3
    epochs: int = 10
    seed: int = 0


@dataclass
class Row:
    name: str
    mAP: float
    train_images_per_s: float
    infer_images_per_s: float
    params: int
    per_class: dict[str, float]


def ours(settings: PeerSettings, data_dir: str, info) -> Row:
    from detector import ap
    from detector.ap_inputs import scored_labelmap
    from detector.predict import detect_dataset, detections_table
    from detector.train import TrainOptions, train

    started = time.monotonic()
    trained = train(TrainOptions(
        dataset=info.name, data_dir=data_dir, backbone="resnet18",
        backbone_width=settings.backbone_width, image_size=settings.image_size,
        fpn_channels=settings.channels, head_channels=settings.channels,
        head_depth=settings.head_depth, batch_size=settings.batch_size, lr=settings.lr,
        epochs=settings.epochs, random_transform=True, eval_every=0,
        early_stopping_patience=None, snapshots=False, seed=settings.seed, verbose=2,
    ))
    train_s = time.monotonic() - started
    started = time.monotonic()
    truth, keyframes = detect_dataset(trained.model, info, "validation", data_dir=data_dir,
                                      batch_size=settings.batch_size)
    infer_s = time.monotonic() - started
    result = ap.evaluate(truth, detections_table(keyframes, trained.model.class_ids),
                         scored_labelmap(info=info))
    return _row("this project (KerasCV 0.9, multi-label)", result, settings, info, train_s,
                infer_s, trained.model.count_params())


def keras_hub_peer(settings: PeerSettings, data_dir: str, info) -> Row:
    import keras
    import tensorflow as tf

    from detector import ap
    from detector.ap_inputs import scored_labelmap
    from detector.data import train_batches
    from detector.predict import detect_split, detections_table

    keras.utils.set_random_seed(settings.seed)
    tf.config.experimental.enable_op_determinism()
    started = time.monotonic()
    model = keras_hub_model(settings, info.num_classes)
    # its own losses (Huber, binary focal), our optimizer (Adam, gradient norm clipped at 10)
    model.compile(optimizer=keras.optimizers.Adam(settings.lr, global_clipnorm=10.0))
    batches = train_batches(info, "train", image_size=settings.image_size,
                            batch_size=settings.batch_size, random_transform=True,
                            data_dir=data_dir).map(_single_label_rows)
    steps = max(1, math.ceil(info.splits["train"] / settings.batch_size))
    model.fit(batches, epochs=settings.epochs, steps_per_epoch=steps, verbose=2)
    train_s = time.monotonic() - started

    @tf.function
    def detect(images, content):
        decoded = model.decode_predictions(model(_normalize(images), training=False), images)
        height, width = tf.unstack(tf.cast(content, tf.float32), axis=-1)
        scale = tf.reshape(tf.stack([width, height, width, height], axis=-1), [-1, 1, 4])
        return {"boxes": tf.clip_by_value(decoded["boxes"] / scale, 0.0, 1.0),
                "scores": decoded["confidence"], "classes": tf.cast(decoded["labels"], tf.int32),
                "num_detections": decoded["num_detections"]}

    started = time.monotonic()
    truth, keyframes = detect_split(detect, info, "validation", image_size=settings.image_size,
                                    data_dir=data_dir, batch_size=settings.batch_size)
    infer_s = time.monotonic() - started
    result = ap.evaluate(truth, detections_table(keyframes, info.class_ids),
                         scored_labelmap(info=info))
    return _row("KerasHub 0.32 RetinaNetObjectDetector (one row per action)", result, settings,
                info, train_s, infer_s, model.count_params())


def keras_hub_model(settings: PeerSettings, num_classes: int):
    """KerasHub's RetinaNet from an explicit config: ResNet-18 (basic blocks) at this
    project's stage widths, P3-P7, heads as deep as ours. KerasHub fixes the pyramid and head
    width at 256 (ours: `channels`) and its decoder is class-agnostic NMS; its threshold is set
    to ours (0.05) so that low-scoring detections count for AP as they do for ours."""
    import keras_hub
    from keras_hub.src.layers.modeling.non_max_supression import NonMaxSuppression

    widths = [max(64, round(f * settings.backbone_width)) for f in (64, 128, 256, 512)]
    shape = (settings.image_size, settings.image_size, 3)
    resnet = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=widths,
        stackwise_num_blocks=[2, 2, 2, 2], stackwise_num_strides=[1, 2, 2, 2],
        block_type="basic_block", image_shape=shape)
    backbone = keras_hub.models.RetinaNetBackbone(
        image_encoder=resnet, min_level=3, max_level=7, use_p5=False, image_shape=shape)
    return keras_hub.models.RetinaNetObjectDetector(
        backbone=backbone, num_classes=num_classes, bounding_box_format="xyxy",
        pre_logits_num_conv_layers=settings.head_depth,
        prediction_decoder=NonMaxSuppression(bounding_box_format="xyxy", from_logits=True,
                                             confidence_threshold=0.05, max_detections=100))


def _normalize(images):
    import tensorflow as tf

    return (images / 255.0 - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)


def _single_label_rows(images, targets):
    """Multi-hot persons -> one box row per (person, action), padding (-1) rows last, as
    KerasHub's `{"boxes", "labels"}` wants; images ImageNet-normalized as its converter does."""
    import tensorflow as tf

    boxes, classes = targets["boxes"], targets["classes"]  # [B, N, 4], [B, N, C]
    count = tf.shape(classes)[-1]
    rows = tf.reshape(tf.repeat(boxes[:, :, None], count, axis=2), [tf.shape(boxes)[0], -1, 4])
    labels = tf.reshape(tf.where(classes > 0, tf.range(count, dtype=tf.float32), -1.0),
                        [tf.shape(boxes)[0], -1])
    order = tf.argsort(tf.cast(labels < 0, tf.int32), axis=-1, stable=True)
    kept = tf.maximum(tf.reduce_max(tf.reduce_sum(tf.cast(labels >= 0, tf.int32), -1)), 1)
    labels = tf.gather(labels, order, batch_dims=1)[:, :kept]
    rows = tf.gather(rows, order, batch_dims=1)[:, :kept]
    rows = tf.where(labels[..., None] >= 0, rows, -1.0)
    return _normalize(images), {"boxes": rows, "labels": labels}


def _row(name, result, settings, info, train_s, infer_s, params) -> Row:
    trained = settings.epochs * math.ceil(info.splits["train"] / settings.batch_size)
    per_class = {name: float(value) for name, value in result.per_class.items()}
    return Row(name, float(result.mAP), trained * settings.batch_size / train_s,
               info.splits["validation"] / infer_s, int(params), per_class)


def table(rows: list[Row]) -> str:
    lines = ["| detector | params | mAP | train img/s | inference img/s |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r.name} | {r.params:,} | {r.mAP:.3f} | {r.train_images_per_s:.1f} | "
              f"{r.infer_images_per_s:.1f} |" for r in rows]
    classes = [c for c, value in rows[0].per_class.items() if not math.isnan(value)]
    lines += ["", "| class | " + " | ".join(r.name.split(" (")[0] for r in rows) + " |",
              "|---|" + "---:|" * len(rows)]
    lines += [f"| {c} | " + " | ".join(f"{r.per_class[c]:.3f}" for r in rows) + " |"
              for c in classes]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/peers")
    parser.add_argument("--epochs", type=int, default=PeerSettings.epochs)
    parser.add_argument("--videos", type=int, default=PeerSettings.videos)
    parser.add_argument("--seconds", type=int, default=PeerSettings.seconds)
    args = parser.parse_args()
    settings = PeerSettings(epochs=args.epochs, videos=args.videos, seconds=args.seconds)

    from ava_keyframes.csvworld import make_csv_corpus
    from detector.data import dataset_info
    from detector.demo import CONFIG, build_dataset

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    corpus, _ = make_csv_corpus(out / "corpus", videos=settings.videos, start=settings.start,
                                seconds=settings.seconds, size=settings.size, seed=settings.seed)
    data_dir, _ = build_dataset(corpus.root, out)
    info = dataset_info(f"ava_keyframes/{CONFIG}", data_dir)
    print(f"pose world: {info.splits['train']} train, {info.splits['validation']} validation "
          f"keyframes; {settings.epochs} epochs each")
    rows = [ours(settings, data_dir, info), keras_hub_peer(settings, data_dir, info)]
    text = table(rows)
    print(text)
    (out / "peers.md").write_text(text + "\n")
    (out / "peers.json").write_text(json.dumps(
        {"settings": asdict(settings), "rows": [asdict(r) for r in rows]}, indent=2))


if __name__ == "__main__":
    main()
