"""`ava-detector`: train, evaluate, predict, export, demo (keras-retinanet's verbs).

Each verb parses, calls the library and prints; heavy imports happen inside the verb, so that
`evaluate` on CSVs never loads TensorFlow.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ava_keyframes.runner import (
    CliError,
    count,
    output_path,
    parse_seconds,
    positive_int,
    positive_number,
    probability,
    run,
    user_errors,
    verb_parser,
)
from detector.precision import MIXED_PRECISION


# --- train ---
def _cmd_train(args: argparse.Namespace) -> int:
    from detector.data import DataError
    from detector.model import ModelError
    from detector.train import TrainingError, TrainOptions, train

    options = TrainOptions(
        dataset=args.dataset, data_dir=args.data_dir, split=args.split,
        val_split=None if args.val_split.lower() == "none" else args.val_split,
        backbone=args.backbone, backbone_width=args.backbone_width, weights=args.weights,
        backbone_weights=args.backbone_weights, preset=args.preset, snapshot=args.snapshot,
        freeze_backbone=args.freeze_backbone,
        random_transform=args.random_transform, epochs=args.epochs, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, image_size=args.image_size,
        fpn_channels=args.fpn_channels, head_channels=args.head_channels,
        head_depth=args.head_depth, snapshot_path=args.snapshot_path,
        tensorboard_dir=args.tensorboard_dir, mixed_precision=args.mixed_precision,
        jit_compile=args.jit_compile, eval_every=args.eval_every, eval_limit=args.eval_limit,
        time_limit=args.time_limit, snapshots=not args.no_snapshots, seed=args.seed,
        verbose=args.fit_verbose, log_format=args.log_format,
    )
    if not args.no_snapshots:
        output_path(args.snapshot_path, folder=True)
    if args.tensorboard_dir:
        output_path(args.tensorboard_dir, folder=True)
    with user_errors(DataError, ModelError, TrainingError), _damaged_model(args.snapshot):
        result = train(options)
    print(f"last snapshot: {result.last_snapshot}")
    if result.evaluation is not None:
        print(f"{options.val_split} mAP@0.5: {result.evaluation.mAP:.4f}")
    return 0


@contextmanager
def _damaged_model(path: str | None) -> Iterator[None]:
    """A `.keras` archive that fails its checksums (bad CRC, truncated) as a one-line error."""
    import zipfile

    try:
        yield
    except zipfile.BadZipFile as error:
        raise CliError(f"{path}: damaged model file ({error})") from None


def _load_model(path: str):
    from detector.model import ModelError, load_model

    with user_errors(ModelError), _damaged_model(path):
        return load_model(path)


# --- evaluate ---
def _cmd_evaluate(args: argparse.Namespace) -> int:
    """CSV mode (--groundtruth, --detections) or model mode (--model, --dataset)."""
    from ava_keyframes.annotations import MAX_CSV_BYTES, AnnotationError
    from ava_keyframes.labelmap import LabelMapError
    from detector.ap_inputs import EvaluationError
    from detector.evaluate import (
        DEFAULT_EXCLUSIONS,
        evaluate_files,
        not_scored_lines,
        write_outputs,
    )

    outputs = _evaluation_outputs(args)
    if args.model is None:
        if args.dataset is not None:
            raise CliError("--dataset needs --model")
        if args.groundtruth is None or args.detections is None:
            raise CliError("evaluate needs --groundtruth GT.csv and --detections DET.csv")
        with user_errors(EvaluationError, AnnotationError, LabelMapError):
            evaluation = evaluate_files(
                args.groundtruth, args.detections, exclusions=args.exclusions or
                DEFAULT_EXCLUSIONS, labelmap=args.labelmap, metric=args.metric,
                max_bytes=args.max_csv_mb * 2**20 if args.max_csv_mb else MAX_CSV_BYTES)
    else:
        if args.dataset is None or args.groundtruth or args.detections:
            raise CliError("evaluate --model needs --dataset (and no --groundtruth/"
                           "--detections)")
        evaluation = _evaluate_model(args)
    _print_lines([evaluation.exclusions_note, *not_scored_lines(evaluation)])
    print(evaluation.result.to_markdown(every_class=False))
    try:
        write_outputs(evaluation.result, json_path=outputs.get("json"),
                      plot=outputs.get("plot"), pr_curves=outputs.get("pr_curves"))
    except OSError as error:
        raise CliError(f"cannot write {error.filename}: {error.strerror}") from None
    return 0


def _print_lines(lines: Sequence[str | None]) -> None:
    for line in lines:
        if line:
            print(line, file=sys.stderr)


def _evaluate_model(args: argparse.Namespace):
    from ava_keyframes.annotations import AnnotationError
    from ava_keyframes.labelmap import LabelMapError
    from detector.data import DataError
    from detector.evaluate import evaluate_split
    from detector.model import ModelError

    detections_csv = output_path(args.detections_out)
    model = _load_model(args.model)
    with user_errors(DataError, ModelError, LabelMapError, AnnotationError):
        evaluation = evaluate_split(
            model, args.dataset, args.split, data_dir=args.data_dir, labelmap=args.labelmap,
            metric=args.metric, batch_size=args.batch_size, limit=args.limit,
            detections_csv=detections_csv, exclusions=args.exclusions, progress=True)
    print(f"detections: {detections_csv}", file=sys.stderr)
    return evaluation


def _evaluation_outputs(args: argparse.Namespace) -> dict[str, Path]:
    """--json, --plot and --pr-curves checked (and their folders made) before any work."""
    outputs = {}
    if args.plot:
        from detector.plots import check_image_format

        with user_errors(ValueError):
            check_image_format(args.plot)
    for name, folder in (("json", False), ("plot", False), ("pr_curves", True)):
        if getattr(args, name):
            outputs[name] = output_path(getattr(args, name), folder=folder)
    return outputs


# --- predict ---
def _cmd_predict(args: argparse.Namespace) -> int:
    from ava_keyframes.frames import KeyframeError
    from detector.predict import (
        UNNAMED_VIDEO,
        InputError,
        predict_images,
        predict_video,
        video_id_of,
        write_detections_csv,
    )

    if bool(args.images) == bool(args.video):
        raise CliError("give either IMAGES or --video (with --seconds)")
    if args.video and not args.seconds:
        raise CliError("--video needs --seconds, e.g. --seconds 902-910")
    if args.video:
        with user_errors(InputError):
            video_id = video_id_of(args.video, args.video_id)
        if video_id == UNNAMED_VIDEO:
            print(f"{args.video}: its name is no AVA video id; detections written as "
                  f"{UNNAMED_VIDEO} (--video-id ID to choose)", file=sys.stderr)
        seconds = parse_seconds(args.seconds)
    model = _load_model(args.model)
    out = output_path(args.out, folder=True)
    pictures = None if args.no_pictures else out
    with user_errors(InputError, KeyframeError):
        if args.video:
            found = predict_video(model, args.video, seconds, video_id, pictures=pictures,
                                  min_score=args.min_score, progress=True)
        else:
            found = predict_images(model, args.images, pictures=pictures,
                                   min_score=args.min_score, progress=True)
    if found.missing:
        print(f"ava-detector: warning: {found.missing}", file=sys.stderr)
    write_detections_csv(found.table, out / "detections.csv")
    print(f"{len(found.keyframes)} keyframes, {len(found.table)} detections -> "
          f"{out / 'detections.csv'}")
    return 0


# --- export ---
def _cmd_export(args: argparse.Namespace) -> int:
    from detector.predict import export

    model = _load_model(args.model)
    keras_path, saved = export(model, output_path(args.out, folder=True))
    print(f"SavedModel: {saved} (signature serving_default: uint8 images [B, H, W, 3] -> "
          "boxes, scores, classes, class_ids, num_detections)")
    print(f"Keras model: {keras_path}")
    return 0


# --- demo ---
def _cmd_demo(args: argparse.Namespace) -> int:
    from detector.demo import DemoSettings, print_summary, run_demo

    settings = DemoSettings(epochs=args.epochs, seed=args.seed)
    print_summary(run_demo(args.out, settings))
    return 0


# --- parsers, one per verb ---
def _add_model_options(p: argparse.ArgumentParser) -> None:
    """train's flags for the network and where its weights start."""
    p.add_argument("--backbone", default="resnet50",
                   help="resnet50 (default), resnet18, resnet34, resnet101, "
                   "mobilenet_v3_small, mobilenet_v3_large or efficientnetv2_b0")
    p.add_argument("--backbone-width", type=positive_number, default=1.0,
                   help="channel multiplier of the backbone (e.g. 0.5 on CPU)")
    p.add_argument("--weights", metavar="FILE", help="start from a whole model: a .keras or "
                   ".weights.h5 from train (its architecture from a sibling .keras or "
                   "config.json, else these flags; for other classes the classification head "
                   "starts afresh) or a keras-retinanet .h5 snapshot")
    p.add_argument("--backbone-weights", metavar="FILE", help="Keras Applications ImageNet "
                   "weights (legacy .h5 as in ~/.keras/models/, or a Keras 3 .weights.h5) for "
                   "--backbone resnet50, resnet101, mobilenet_v3_small, mobilenet_v3_large or "
                   "efficientnetv2_b0")
    p.add_argument("--preset", help="KerasCV preset folder on disk (config.json, "
                   "model.weights.h5...), or a preset name (downloads: needs network access)")
    p.add_argument("--image-size", type=positive_int, default=512,
                   help="square input side, a multiple of 32 (default 512)")
    p.add_argument("--fpn-channels", type=positive_int, default=256,
                   help="channels of the feature pyramid")
    p.add_argument("--head-channels", type=positive_int, default=256,
                   help="channels of the box and class heads")
    p.add_argument("--head-depth", type=positive_int, default=4, help="conv layers per head")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a RetinaNet on a TFDS detection dataset (model.fit)",
        description="Train a KerasCV RetinaNet (multi-label sigmoid focal loss) on a TFDS "
        "detection dataset: ava_keyframes/v2.2, or any with objects/bbox and objects/label "
        "such as voc/2007.",
    )
    p.add_argument("--dataset", required=True, help="TFDS name, e.g. ava_keyframes/v2.2")
    p.add_argument("--data-dir", help="TFDS data dir the dataset was built in")
    p.add_argument("--split", default="train", help="training split (default: train)")
    p.add_argument("--val-split", default="validation",
                   help="split scored for mAP during training, or 'none' (default: validation)")
    _add_model_options(p)
    p.add_argument("--snapshot", help="resume training from this .keras snapshot")
    p.add_argument("--freeze-backbone", action="store_true", help="do not train the backbone")
    p.add_argument("--random-transform", action="store_true",
                   help="augment: flip, jittered resize, colour")
    p.add_argument("--epochs", type=positive_int, default=50, help="training epochs")
    p.add_argument("--steps", type=positive_int, help="steps per epoch (default: one pass)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per step")
    p.add_argument("--lr", type=positive_number, default=1e-4, help="Adam learning rate")
    p.add_argument("--snapshot-path", default="snapshots",
                   help="folder for a .keras snapshot per epoch (default: snapshots)")
    p.add_argument("--no-snapshots", action="store_true", help="write no per-epoch snapshot")
    p.add_argument("--seed", type=count, help="fixed seeds and deterministic ops: the same "
                   "result on every run and any load (the input pipeline then maps serially)")
    p.add_argument("--tensorboard-dir", help="TensorBoard log folder")
    p.add_argument("--mixed-precision", nargs="?", const="auto", default="auto",
                   choices=MIXED_PRECISION, help="Keras mixed precision: auto is float16 on a "
                   "GPU and off on a CPU (float16 there can be up to ~80x slower); a bare "
                   "--mixed-precision means auto")
    p.add_argument("--jit-compile", action="store_true", help="compile the train step with XLA")
    p.add_argument("--fit-verbose", type=int, choices=(0, 1, 2), default=1,
                   help="fit's output: 0 none, 1 progress, 2 one line per epoch (-v/--verbose "
                   "shows the libraries' own logs, on every verb)")
    p.add_argument("--log-format", choices=("auto", "bar", "plain"), default="auto",
                   help="progress as Keras's bar or as plain lines; auto: the bar on a "
                   "terminal, plain lines when stdout is redirected")
    p.add_argument("--eval-every", type=count, default=1,
                   help="epochs between mAP evaluations; 0: never (default 1)")
    p.add_argument("--eval-limit", type=positive_int,
                   help="score at most this many validation images")
    p.add_argument("--time-limit", type=positive_number, metavar="MINUTES",
                   help="stop after the epoch that passes this many minutes")
    p.set_defaults(func=_cmd_train)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="per-class AP by the official AVA frame-mAP protocol",
        description="Score AVA-format detections against ground truth (official AVA frame-mAP: "
                    "Pascal AP at IoU 0.5, the 50 best detections per keyframe).",
    )
    csv_mode = p.add_argument_group("CSV mode", "evaluate --groundtruth GT --detections DET")
    csv_mode.add_argument("--groundtruth", metavar="GT.csv", help="AVA ground-truth CSV")
    csv_mode.add_argument("--detections", metavar="DET.csv",
                          help="AVA detections CSV (video_id,second,x1,y1,x2,y2,action_id,score)")
    model_mode = p.add_argument_group(
        "model mode", "evaluate --model M --dataset D [--split S]: run a trained model on a "
        "TFDS split, write its detections CSV and score them against the split's ground truth"
    )
    model_mode.add_argument("--model", help=".keras model from train")
    model_mode.add_argument("--dataset", help="TFDS name, e.g. ava_keyframes/v2.2")
    model_mode.add_argument("--data-dir", help="TFDS data dir the dataset was built in")
    model_mode.add_argument("--split", default="validation", help="default: validation")
    model_mode.add_argument("--detections-out", default="detections.csv", metavar="CSV",
                            help="where the detections go (default: detections.csv)")
    model_mode.add_argument("--batch-size", type=positive_int, default=8,
                            help="images per prediction step")
    model_mode.add_argument("--limit", type=positive_int, help="score at most this many images")
    p.add_argument("--labelmap", metavar="PBTXT",
                   help="classes to evaluate (default: the official 60-class map)")
    p.add_argument("--exclusions", metavar="CSV",
                   help="excluded-timestamps CSV (the official scorer's -x): keyframes left out "
                   "of ground truth and detections; 'none' for none. Default in CSV mode: "
                   "ava_<split>_excluded_timestamps_v<version>.csv beside a ground truth named "
                   "ava_<split>_v<version>.csv (a built split has left its own out already)")
    p.add_argument("--max-csv-mb", type=positive_int, metavar="MB",
                   help="refuse a CSV larger than this (default: 256); reading takes about 20 "
                   "times a file's size in memory")
    p.add_argument("--metric", choices=("ava", "voc07", "coco"), default="ava",
                   help="ava: all-point AP at IoU 0.5 (default); voc07: 11-point; "
                        "coco: mean of all-point AP over IoU 0.50:0.05:0.95")
    p.add_argument("--json", metavar="OUT", help='write {"mAP", "per_class", "num_groundtruth"}')
    p.add_argument("--plot", metavar="OUT.png", help="write a per-class AP bar chart")
    p.add_argument("--pr-curves", metavar="DIR", help="write one precision-recall plot per class")
    p.set_defaults(func=_cmd_evaluate)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="detect actions in images or video keyframes",
        description="Write OUT/detections.csv (official AVA detections: video_id, second, x1, "
        "y1, x2, y2, action_id, score) and a picture per keyframe. An image named "
        "<video id>_<second>.<ext> keeps that keyframe; others get their file stem and 0.",
    )
    p.add_argument("images", nargs="*", metavar="IMAGE")
    p.add_argument("--model", required=True, help=".keras model from train")
    p.add_argument("--video", help="a video file of any name")
    p.add_argument("--video-id", help="video id written for --video (default: the file stem "
                   "when it is an AVA id, 11 of A-Za-z0-9_-, else unnamed_vid)")
    p.add_argument("--seconds", metavar="S,S-S",
                   help="keyframe seconds of --video, e.g. 902,905,910-920")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--min-score", type=probability, default=0.3,
                   help="pictures show detections from this score (default 0.3)")
    p.add_argument("--no-pictures", action="store_true", help="write the CSV only")
    p.set_defaults(func=_cmd_predict)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write an inference SavedModel (and .keras) of a trained model",
        description="OUT/saved_model: signature serving_default takes a uint8 image batch "
        "[B, H, W, 3] of any size and returns boxes (normalized x1, y1, x2, y2), scores, "
        "classes (class index), class_ids (action ids) and num_detections; signature "
        "class_names returns the class names. OUT/model.keras: the Keras model.",
    )
    p.add_argument("--model", required=True, help=".keras model from train")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cmd_export)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    from detector.demo import DemoSettings  # no TensorFlow: the demo imports it when it runs

    p = sub.add_parser(
        "demo",
        help="the whole pipeline on a synthetic corpus, offline (what `make demo` runs)")
    p.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    p.add_argument("--epochs", type=positive_int, default=DemoSettings.epochs,
                   help=f"training epochs (default {DemoSettings.epochs})")
    p.add_argument("--seed", type=count, default=DemoSettings.seed,
                   help=f"seed of corpus and training (default {DemoSettings.seed})")
    p.set_defaults(func=_cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    return verb_parser(
        "ava-detector", "KerasCV RetinaNet on AVA keyframes: train, evaluate, predict, export.",
        (_add_train, _add_evaluate, _add_predict, _add_export, _add_demo))


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
