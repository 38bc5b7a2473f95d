"""`ava-keyframes`: one verb per job on the dataset side."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ava_keyframes.remote import Limits
from ava_keyframes.runner import (
    CliError,
    output_path,
    parse_seconds,
    run,
    user_errors,
    verb_parser,
)


# --- labelmap ---
def _cmd_labelmap(args: argparse.Namespace) -> int:
    from ava_keyframes.labelmap import LabelMapError, read_labelmap, write_classes_csv

    with user_errors(LabelMapError, OSError):
        labelmap = read_labelmap(args.pbtxt)
        if args.classes_csv:
            write_classes_csv(labelmap, args.classes_csv)
    if args.json:
        print(json.dumps(labelmap.to_json(), indent=2, ensure_ascii=False))
    elif not args.classes_csv:
        for entry in labelmap.to_json():
            suffix = f"  [{entry['type']}]" if entry["type"] else ""
            print(f"{entry['id']:>4}  {entry['name']}{suffix}")
    return 0


# --- inspect ---
def _cmd_inspect(args: argparse.Namespace) -> int:
    from ava_keyframes.annotations import AnnotationError, read_annotations, read_excluded
    from ava_keyframes.labelmap import LabelMapError, read_labelmap

    with user_errors(AnnotationError, LabelMapError):
        labelmap = read_labelmap(args.labelmap) if args.labelmap else None
        excluded = read_excluded(args.excluded) if args.excluded else None
        annotations = read_annotations(args.csv, labelmap, excluded)
    summary = annotations.summary(labelmap)
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return 0
    print(f"{summary['file']}: {summary['rows']} rows, {summary['rows_used']} used, "
          f"{summary['rows_rejected']} rejected")
    print(f"{summary['videos']} videos, {summary['keyframes']} keyframes, "
          f"{summary['persons']} persons")
    print("labels per class:")
    for name, count in summary["labels_per_class"].items():
        print(f"  {count:>7}  {name}")
    for rejection in annotations.report:
        print(f"rejected {rejection}")
    return 0


# --- synth ---
MAX_SYNTH_FPS = 240  # high-speed footage; far above AVA's 23.976..60 fps


def _cmd_synth(args: argparse.Namespace) -> int:
    from ava_keyframes.media import VideoError
    from ava_keyframes.synth import make_corpus

    width, _, height = args.size.partition("x")
    if not (width.isdigit() and height.isdigit()):
        raise CliError(f"--size: expected WxH such as 320x240, not {args.size!r}")
    try:
        fps = float(args.fps)
    except ValueError:
        raise CliError(f"--fps: expected a number such as 29.97, not {args.fps!r}") from None
    if not 1 <= fps <= MAX_SYNTH_FPS:
        raise CliError(f"--fps: {args.fps} outside 1..{MAX_SYNTH_FPS} (every annotated second "
                       "needs a frame of its own)")
    size = (int(width), int(height))
    if args.from_csv is not None:
        return _synth_from_csv(args, fps, size)
    if args.videos is None or args.seconds is None:
        raise CliError("--videos and --seconds are needed (or --from-csv)")
    with user_errors(ValueError, VideoError, OSError):
        info = make_corpus(args.out, videos=args.videos, seconds=args.seconds, start=args.start,
                           fps=fps, size=size, container=args.container, seed=args.seed)
    _print_corpus(args, info)
    return 0


def _synth_from_csv(args: argparse.Namespace, fps: float, size: tuple[int, int]) -> int:
    from ava_keyframes.csvworld import make_csv_corpus
    from ava_keyframes.media import VideoError

    csv = None if args.from_csv == "default" else args.from_csv
    given = {name: getattr(args, name) for name in ("videos", "seconds")
             if getattr(args, name) is not None}  # else the library's defaults
    with user_errors(ValueError, VideoError, OSError):
        info, rejected = make_csv_corpus(
            args.out, csv=csv, start=args.start, fps=fps, size=size, container=args.container,
            background=args.background, seed=args.seed, **given)
    _print_corpus(args, info)
    if rejected:
        print(f"{rejected} rows of the CSV were rejected and not rendered; "
              f"`ava-keyframes inspect` lists them", file=sys.stderr)
        return 1
    return 0


def _print_corpus(args: argparse.Namespace, info) -> None:
    counts = ", ".join(f"{len(ids)} {split}" for split, ids in info.ids.items())
    end = info.start + info.seconds
    print(f"{len(info.videos)} videos ({counts}) of {end} s at {args.fps} fps, {args.size} "
          f"{info.container}: {info.root / 'videos'}")
    print(f"keyframes {info.start}..{end - 1} annotated: {info.annotations_dir}")


# --- download ---
_LIMIT_FLAGS = {  # flag -> (type, help): the fields of ava_keyframes.remote.Limits
    "read_timeout": (float, "seconds one read may wait"),
    "deadline": (float, "seconds allowed per file, plus its size / --min-rate"),
    "min_rate": (float, "bytes per second the deadline allows for"),
    "max_retry_after": (float, "longest Retry-After waited for; longer gives up the file"),
    "attempts": (int, "failed requests per file before giving up"),
    "max_bytes": (int, "largest file accepted, in bytes"),
}


def _cmd_download(args: argparse.Namespace) -> int:
    """Exit 0 when every video is in hand or permanently unavailable (listed), 1 when one
    was lost to a cause that may pass (run again), 2 for a user's mistake or unusable cache."""
    from ava_keyframes.annotations import AnnotationError
    from ava_keyframes.cache import CacheError
    from ava_keyframes.settings import FetchSettings
    from ava_keyframes.sources import download

    ids = None if args.ids is None else [i.strip() for i in args.ids.split(",") if i.strip()]
    with user_errors(ValueError, AnnotationError, CacheError):
        flags = {name: getattr(args, name) for name in _LIMIT_FLAGS}
        settings = FetchSettings.resolve(
            cache_dir=args.cache, manual_dir=args.manual_dir, flags=flags | {
                "cache_dir": args.cache, "sources": args.sources, "mirror": args.mirror,
                "youtube_template": args.youtube_url_template, "fetch": args.fetch})
        done = download(settings, ids=ids, csv=args.csv, jobs=args.jobs,
                        retry_unavailable=args.retry_unavailable)
    console = sys.stderr if args.json else sys.stdout
    for result in done.results:
        if args.json:
            print(json.dumps(result.to_json()))
        if result.status == "unavailable":
            kind = "lost (transient, run again)" if result.transient else "unavailable"
            print(f"{result.id}: {kind}: {result.reason}", file=console)
    print(f"{len(done.results)} videos: " + ", ".join(f"{n} {s}" for s, n in done.counts.items())
          + f" ({done.transient} transient); {done.bytes_fetched} bytes fetched "
          f"(cache: {done.cache_dir})", file=console)
    return 1 if done.transient else 0


def _add_download_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="fetch AVA videos into a resumable cache",
                       description="Fetch videos through local folder, CVDF mirror and YouTube "
                       "(first success wins) into CACHE/videos/. Permanent failures are "
                       "recorded in CACHE/unavailable.json and skipped on later runs. Exit "
                       "status: 0 when every video is in hand or permanently unavailable, 1 "
                       "when some were lost to a cause that may pass (outage, time or attempt "
                       "limits, 429, full disk: run again), 2 for a usage error or a cache "
                       "that cannot be used.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--ids", metavar="ID,ID", help="comma-separated video ids")
    which.add_argument("--csv", metavar="FILE", help="AVA annotation CSV: fetch its videos")
    p.add_argument("--cache", required=True, metavar="DIR", help="video cache folder")
    p.add_argument("--sources", metavar="LIST",
                   help="order of local,mirror,youtube (default: $AVA_KEYFRAMES_SOURCES or all)")
    p.add_argument("--mirror", metavar="URL",
                   help="mirror base URL (default: $AVA_KEYFRAMES_MIRROR or the CVDF mirror)")
    p.add_argument("--youtube-url-template", metavar="T", help="URL with {id} (default: "
                   "$AVA_KEYFRAMES_YOUTUBE_TEMPLATE or https://www.youtube.com/watch?v={id})")
    p.add_argument("--manual-dir", metavar="D", help="folder whose videos/ holds local files")
    p.add_argument("--jobs", type=int, default=4, help="concurrent downloads (default 4)")
    p.add_argument("--retry-unavailable", action="store_true",
                   help="try again the videos recorded as unavailable")
    p.add_argument("--fetch", choices=("window", "whole"),
                   help="with --csv, 'window' fetches from the mirror only the span of each "
                   "video that its keyframes need (into CACHE/windows/), 'whole' whole files "
                   "(default: $AVA_KEYFRAMES_FETCH or window)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per video on stdout (FetchResult.to_json: status, "
                   "path, source, reason, origin, fetch_mode, bytes_fetched, transient, "
                   "note); the lost videos and the total go to stderr")
    for flag, (kind, meaning) in _LIMIT_FLAGS.items():
        p.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=kind, metavar="N",
                       help=f"{meaning} (default: $AVA_KEYFRAMES_{flag.upper()} or "
                       f"{getattr(Limits, flag):,})")
    p.set_defaults(func=_cmd_download)


# --- frames ---
def _cmd_frames(args: argparse.Namespace) -> int:
    from ava_keyframes.frames import KeyframeError, MissingKeyframes, save_keyframes
    from ava_keyframes.media import decoder_info

    seconds = parse_seconds(args.seconds, fractions=True)
    if args.max_side is not None and args.max_side < 1:
        raise CliError(f"--max-side must be at least 1, not {args.max_side}")
    out = output_path(args.out, folder=True)
    written: list[dict] = []
    try:
        for entry in save_keyframes(args.video, seconds, out, max_side=args.max_side,
                                    image_format=args.format):
            written.append(entry)
    except MissingKeyframes as error:
        raise CliError(f"{error}; wrote the other {len(written)} frame(s) to {out}") from None
    except KeyframeError as error:
        raise CliError(str(error)) from None
    if args.json:
        print(json.dumps({"video": str(args.video), "frames": written,
                          "decoder": decoder_info()}, indent=2))
    else:
        print(f"wrote {len(written)} frame(s) to {out}")
    return 0


# --- export-csv ---
def _cmd_export_csv(args: argparse.Namespace) -> int:
    from ava_keyframes.export import export_retinanet_csv

    with user_errors(OSError, ValueError):
        counts = export_retinanet_csv(args.data_dir, args.split, args.out, config=args.config)
    print(f"{counts['images']} images, {counts['rows']} annotation rows -> {args.out}")
    return 0


def _add_labelmap(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("labelmap", help="read an AVA label map (.pbtxt)")
    p.add_argument("pbtxt", help="label map in 'label {...}' or 'item {...}' form")
    p.add_argument("--json", action="store_true", help="print [{id, name, type}] as JSON")
    p.add_argument("--classes-csv", metavar="OUT", help="write keras-retinanet's classes CSV")
    p.set_defaults(func=_cmd_labelmap)


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="validate an AVA annotation CSV and count what it holds")
    p.add_argument("csv", help="AVA CSV (7 or 8 columns)")
    p.add_argument("--labelmap", metavar="PBTXT", help="reject actions not in this label map")
    p.add_argument("--excluded", metavar="CSV", help="excluded-timestamps CSV to leave out")
    p.add_argument("--json", action="store_true", help="counts and rejected rows as JSON")
    p.set_defaults(func=_cmd_inspect)


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a synthetic AVA corpus (videos and annotations)",
                       description="Write OUT/videos/<id>.<ext> and OUT/annotations/ (train and "
                       "val CSVs, label map, excluded timestamps) in the real AVA formats. "
                       "Every frame carries its index in a stamp along the top edge.")
    p.add_argument("out", help="new or empty output folder")
    p.add_argument("--videos", type=int,
                   help="number of videos (with --from-csv: the first N ids, default 4)")
    p.add_argument("--seconds", type=int,
                   help="annotated seconds per video (with --from-csv: the slice, default 10)")
    p.add_argument("--from-csv", nargs="?", const="default", metavar="CSV",
                   help="render real AVA rows as articulated figures (pose shows the action); "
                   "CSV defaults to the real val subset in tests/data/ava (source checkout)")
    p.add_argument("--background", choices=("footage", "noise"), default="footage",
                   help="with --from-csv: real footage (Big Buck Bunny crops) or noise")
    p.add_argument("--start", type=int, default=902,
                   help="first keyframe second; videos are START+SECONDS long (default 902)")
    p.add_argument("--fps", default="30",
                   help="frame rate, e.g. 30, 29.97 (= 30000/1001), 25 (default 30)")
    p.add_argument("--size", default="320x240", metavar="WxH", help="frame size (default 320x240)")
    p.add_argument("--container", choices=("mp4", "mkv", "webm"), default="mp4",
                   help="mp4 or mkv (H.264) or webm (VP9)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same corpus)")
    p.set_defaults(func=_cmd_synth)


def _add_frames(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("frames", help="extract frame-exact keyframes from a video",
                       description="Write DIR/<second>.<format> for each requested second: "
                       "the first frame whose presentation time, counted from the video's "
                       "first frame, is at or after that second (what `ffmpeg -ss SECOND -i "
                       "VIDEO -frames:v 1` returns).")
    p.add_argument("video", help="video file (mp4, mkv, webm, ...)")
    p.add_argument("--seconds", required=True, metavar="S,S-S",
                   help="comma-separated seconds and ranges such as 902,903,910-915 or 902.5")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--format", choices=("png", "jpg"), default="png", help="image format")
    p.add_argument("--max-side", type=int, metavar="N",
                   help="downscale so that the longer side is at most N pixels")
    p.add_argument("--json", action="store_true",
                   help="print the written frames and the decoder's library versions as JSON")
    p.set_defaults(func=_cmd_frames)


def _add_export_csv(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-csv", help="export a built TFDS split for keras-retinanet",
                       description="Write OUT/images/<video_id>_<second>.jpg, "
                       "OUT/annotations.csv (path,x1,y1,x2,y2,class_name; one row per person "
                       "and action, integer pixels) and OUT/classes.csv from a split built by "
                       "`tfds build ava_keyframes`.")
    p.add_argument("--data-dir", required=True, metavar="D", help="TFDS data dir of the build")
    p.add_argument("--split", required=True, metavar="S", help="train or validation")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--config", default="v2.2",
                   help="builder config, or the name of a custom one (default v2.2)")
    p.set_defaults(func=_cmd_export_csv)


def build_parser() -> argparse.ArgumentParser:
    return verb_parser(
        "ava-keyframes",
        "AVA Actions keyframes: label maps, annotations, videos, frames, TFDS export.",
        (_add_labelmap, _add_inspect, _add_synth, _add_download_parser, _add_frames,
         _add_export_csv))


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
