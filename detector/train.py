"""Training with `model.fit`: keras-retinanet's options on a KerasCV RetinaNet.

Callbacks, in order: TerminateOnNaN, the evaluation callback (mAP and per-class AP on the
validation split through `detector.predict.evaluate_model`, the code `ava-detector evaluate
--model` runs; `mAP` appears in the logs of the epochs it evaluated, never carried over),
ModelCheckpoint (a `.keras` snapshot per epoch, unless turned off), TensorBoard,
ReduceLROnPlateau and EarlyStopping (both on mAP when evaluating, so their patience counts
evaluations; else the learning rate follows the loss). `seed` makes a run repeatable: the same
seeds and deterministic ops (tf.data then maps serially), so the same result on any load.
"""

from __future__ import annotations

import importlib.util
import math
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from detector import ap
from detector.ap_inputs import scored_labelmap
from detector.backbones import preset_backbone
from detector.data import DataError, DatasetInfo, dataset_info, train_batches
from detector.keras_retinanet import load_retinanet_weights, retinanet_architecture
from detector.model import (
    ModelError,
    MultiLabelRetinaNet,
    build_model,
    compile_model,
    load_model,
)
from detector.precision import precision_policy, training_globals
from detector.predict import evaluate_model
from detector.weights import (
    architecture_of,
    copy_parts,
    imagenet_backbone,
    is_legacy_h5,
    saved_model,
)

SNAPSHOT_EPOCH = re.compile(r"_(\d+)\.keras$")
LOG_FORMATS = ("auto", "bar", "plain")


@dataclass
class TrainOptions:
    """`ava-detector train`'s options (the flags of keras-retinanet's train.py, and more)."""

    dataset: str
    data_dir: str | None = None
    split: str = "train"
    val_split: str | None = "validation"
    backbone: str = "resnet50"
    backbone_width: float = 1.0
    weights: str | None = None  # a whole model (.keras, .weights.h5) or a keras-retinanet .h5
    backbone_weights: str | None = None  # Keras Applications ImageNet weights (.h5)
    preset: str | None = None  # a KerasCV preset folder or name
    snapshot: str | None = None  # resume from this .keras snapshot
    freeze_backbone: bool = False
    random_transform: bool = False
    epochs: int = 50
    steps: int | None = None  # per epoch; default one pass over the split
    batch_size: int = 8
    lr: float = 1e-4
    image_size: int = 512
    fpn_channels: int = 256
    head_channels: int = 256
    head_depth: int = 4
    snapshot_path: str = "snapshots"
    tensorboard_dir: str | None = None
    mixed_precision: str = "auto"  # one of detector.precision.MIXED_PRECISION
    jit_compile: bool = False
    eval_every: int = 1  # epochs between evaluations; 0 turns evaluation off
    eval_limit: int | None = None  # evaluate on at most this many validation images
    lr_patience: int = 2  # evaluations (epochs when not evaluating) without improvement
    early_stopping_patience: int | None = 5  # evaluations without improvement; None: off
    snapshots: bool = True  # a .keras snapshot per epoch under snapshot_path
    seed: int | None = None  # seeds and deterministic ops: the same result on every run
    time_limit: float | None = None  # minutes; training stops after the epoch that passes it
    verbose: int | str = "auto"  # fit's: 0 silent, 1 progress, 2 a line per epoch; auto: 1
    log_format: str = "auto"  # one of LOG_FORMATS (see `fit_verbosity`)


@dataclass
class TrainResult:
    model: MultiLabelRetinaNet
    history: dict[str, list[float]]
    last_snapshot: Path | None
    evaluation: ap.APResult | None


class EvaluationCallback(keras.callbacks.Callback):
    """Every `every` epochs and at the end of training, mAP and per-class AP on a split.

    Puts `mAP` into the epoch logs for the callbacks after it (checkpoint, learning rate,
    early stopping), carrying the last value over epochs without an evaluation, prints the
    per-class table and writes both to TensorBoard when a log folder is given.
    """

    def __init__(self, info: DatasetInfo, split: str, *, data_dir: str | None, every: int,
                 epochs: int, limit: int | None = None, tensorboard_dir: str | None = None,
                 batch_size: int = 8, progress: bool = False):
        super().__init__()
        self.progress = progress  # images scored, on stderr (`detector.progress`)
        self.info, self.split, self.data_dir = info, split, data_dir
        self.every, self.epochs, self.limit, self.batch_size = every, epochs, limit, batch_size
        self.labelmap = scored_labelmap(info=info)
        self.writer = (
            tf.summary.create_file_writer(str(Path(tensorboard_dir) / "evaluation"))
            if tensorboard_dir else None
        )
        self.result: ap.APResult | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs if logs is not None else {}
        last = epoch + 1 == self.epochs or self.model.stop_training
        if ((epoch + 1) % self.every == 0 or last) and finite_loss(logs):
            logs["mAP"] = self._evaluate(epoch)

    def _evaluate(self, epoch: int) -> float:
        """Score the split, print the table, log to TensorBoard; returns the mAP."""
        self.result = evaluate_model(
            self.model, self.info, self.split, data_dir=self.data_dir,
            labelmap=self.labelmap, batch_size=self.batch_size, limit=self.limit,
            progress=self.progress,
        )
        print(f"\nEpoch {epoch + 1}: {self.split} mAP@0.5 = {self.result.mAP:.4f}")
        print(self.result.to_markdown(every_class=False))
        if self.writer is not None:
            with self.writer.as_default(step=epoch):
                tf.summary.scalar("mAP", self.result.mAP)
                for name, value in self.result.per_class.items():
                    if not math.isnan(value):
                        tf.summary.scalar(f"AP/{name}", value)
            self.writer.flush()
        return self.result.mAP


class TrainingError(RuntimeError):
    """Training that cannot give a usable model (the loss diverged)."""


def finite_loss(logs: dict | None) -> bool:
    """Whether the epoch's loss is a number (TerminateOnNaN stops at the first NaN or inf)."""
    return math.isfinite(float((logs or {}).get("loss", 0.0)))


class FiniteCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint that never writes a model whose loss is NaN or infinite."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if finite_loss(logs):
            super().on_epoch_end(epoch, logs)


class TimeLimit(keras.callbacks.Callback):
    """Stop training after the batch that reaches `minutes` of training (evaluations
    included); the evaluation callback then scores the model as it is."""

    def __init__(self, minutes: float):
        super().__init__()
        self.seconds = minutes * 60

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        if not self.model.stop_training and time.monotonic() - self.start >= self.seconds:
            print(f"\ntime limit of {self.seconds / 60:g} min reached")
            self.model.stop_training = True


def _new_model(options: TrainOptions, info: DatasetInfo) -> MultiLabelRetinaNet:
    """A model from the flags, started from the weight files they name (`detector.weights`):
    a whole model (`.keras`, `.weights.h5`, a keras-retinanet `.h5`), ImageNet backbone
    weights or a preset folder."""
    whole = bool(options.weights) and not is_legacy_h5(options.weights)
    if options.backbone_weights and options.preset:
        raise ModelError("--backbone-weights and --preset both give the backbone; choose one")
    if options.weights and (options.backbone_weights or options.preset):
        raise ModelError(f"--weights {options.weights} holds a whole model, backbone included; "
                         f"drop --backbone-weights/--preset")
    architecture = {"backbone": options.backbone, "backbone_width": options.backbone_width,
                    "fpn_channels": options.fpn_channels, "head_channels": options.head_channels,
                    "head_depth": options.head_depth}
    if options.preset:
        architecture["backbone"] = preset_backbone(options.preset)
    elif options.backbone_weights:
        architecture["backbone"] = imagenet_backbone(
            options.backbone, options.backbone_weights, width=options.backbone_width,
            report=print)
    source = None
    if whole:
        source = saved_model(options.weights, lambda num_classes: build_model(
            num_classes, image_size=options.image_size, **architecture))
        architecture.update(architecture_of(source))
    elif options.weights:
        architecture.update(retinanet_architecture(options.weights))
    model = build_model(info.num_classes, image_size=options.image_size,
                        class_names=info.class_names, class_ids=info.class_ids, **architecture)
    if source is not None:
        print(copy_parts(source, model, options.weights))
    elif options.weights:
        print(load_retinanet_weights(model, options.weights))
    return model


def _resumed_model(options: TrainOptions, info: DatasetInfo) -> tuple[MultiLabelRetinaNet, int]:
    model = load_model(options.snapshot)
    if model.class_names != info.class_names:
        raise ModelError(f"{options.snapshot}: trained on other classes than {info.name}")
    match = SNAPSHOT_EPOCH.search(Path(options.snapshot).name)
    return model, int(match[1]) if match else 0


def fit_verbosity(verbose: int | str, log_format: str, *, terminal: bool | None = None) -> int:
    """`model.fit`'s verbose for `verbose` (0, 1, 2 or auto) in `log_format`: Keras's progress
    bar (`bar`: carriage returns, backspaces and colour codes) or one plain line per epoch
    (`plain`, what fit's verbose 2 prints); `auto` is the bar when stdout is a `terminal`
    (default: ask stdout) and plain lines in a redirected log."""
    if log_format not in LOG_FORMATS:
        raise ModelError(f"log format {log_format!r}: expected one of {', '.join(LOG_FORMATS)}.")
    if verbose == 0:
        return 0
    if terminal is None:
        terminal = sys.stdout.isatty()
    bar = log_format == "bar" or (log_format == "auto" and terminal)
    return 1 if verbose in (1, "auto") and bar else 2


def train(options: TrainOptions) -> TrainResult:
    """Build (or resume) a model, fit it on `options.split`, evaluate on `options.val_split`.
    Keras's global dtype policy and op determinism are as before when it returns."""
    if options.tensorboard_dir and importlib.util.find_spec("tensorboard") is None:
        raise ModelError("--tensorboard-dir needs the tensorboard package: pip install tensorboard")
    with training_globals(precision_policy(options.mixed_precision), options.seed):
        return _train(options)


def _train(options: TrainOptions) -> TrainResult:
    info = dataset_info(options.dataset, options.data_dir)
    evaluating = bool(options.val_split) and options.eval_every > 0
    if evaluating and info.splits and options.val_split not in info.splits:
        raise DataError(f"dataset {info.name!r} has no split {options.val_split!r} to "
                        f"evaluate on; it has {', '.join(info.splits)} (or --val-split none)")
    if options.snapshot:
        model, initial_epoch = _resumed_model(options, info)
    else:
        model, initial_epoch = _new_model(options, info), 0
    if options.freeze_backbone:
        model.backbone.trainable = False
    if not options.snapshot or options.freeze_backbone:
        compile_model(model, lr=options.lr, jit_compile=options.jit_compile)

    batches = train_batches(
        info, options.split, image_size=model.image_size, batch_size=options.batch_size,
        random_transform=options.random_transform, data_dir=options.data_dir,
    )
    steps = options.steps or max(1, math.ceil(info.splits.get(options.split, 1)
                                              / options.batch_size))
    callbacks, evaluation, name = _callbacks(options, info, evaluating)
    history = model.fit(
        batches, epochs=options.epochs, steps_per_epoch=steps, initial_epoch=initial_epoch,
        shuffle=False, callbacks=callbacks,
        verbose=fit_verbosity(options.verbose, options.log_format),
    )
    if not finite_loss({"loss": history.history["loss"][-1]}):
        raise TrainingError(
            f"training stopped in epoch {initial_epoch + len(history.history['loss'])}: the loss "
            f"became {history.history['loss'][-1]} (diverged; try a lower --lr than "
            f"{options.lr:g}); no snapshot was written for that epoch")
    written = sorted(Path(options.snapshot_path).glob(f"{name}_*.keras"),
                     key=lambda p: p.stat().st_mtime) if options.snapshots else []
    return TrainResult(
        model=model,
        history=history.history,
        last_snapshot=written[-1] if written else None,
        evaluation=evaluation.result if evaluation else None,
    )


def _callbacks(options: TrainOptions, info: DatasetInfo, evaluating: bool
               ) -> tuple[list[keras.callbacks.Callback], EvaluationCallback | None, str]:
    """The callbacks of `train` (see the module), the evaluation one, and the snapshots'
    name stem."""
    callbacks: list[keras.callbacks.Callback] = [keras.callbacks.TerminateOnNaN()]
    evaluation = None
    if evaluating:
        evaluation = EvaluationCallback(
            info, options.val_split, data_dir=options.data_dir, every=options.eval_every,
            epochs=options.epochs, limit=options.eval_limit,
            tensorboard_dir=options.tensorboard_dir, batch_size=options.batch_size,
            progress=options.verbose != 0,
        )
        callbacks.append(evaluation)
    # keras-retinanet's snapshot names: <backbone>_<epoch>.keras; a resumed run keeps its name
    name = (SNAPSHOT_EPOCH.sub("", Path(options.snapshot).name) if options.snapshot
            else Path(options.preset).name if options.preset else options.backbone)
    if options.snapshots:
        snapshots = Path(options.snapshot_path)
        snapshots.mkdir(parents=True, exist_ok=True)
        callbacks.append(FiniteCheckpoint(str(snapshots / f"{name}_{{epoch:02d}}.keras")))
    if options.tensorboard_dir:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=options.tensorboard_dir))
    if options.time_limit:
        callbacks.append(TimeLimit(options.time_limit))
    # mAP is logged only on the epochs that evaluate, so patience counts evaluations; the
    # epochs between are expected to lack it, not worth a warning.
    warnings.filterwarnings("ignore", message=".*conditioned on metric `mAP` which is not")
    monitor, mode = ("mAP", "max") if evaluating else ("loss", "min")
    callbacks.append(keras.callbacks.ReduceLROnPlateau(
        monitor=monitor, mode=mode, factor=0.1, patience=options.lr_patience,
        min_lr=options.lr * 1e-3, verbose=1,
    ))
    if evaluating and options.early_stopping_patience is not None:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="mAP", mode="max", patience=options.early_stopping_patience, verbose=1,
        ))
    return callbacks, evaluation, name
