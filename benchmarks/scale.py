"""AVA at full scale, rehearsed: what `tfds build ava_keyframes` costs per movie, at N movies.

Corpus (``make_movies``, cached under ``--cache``, default ``~/.cache/ava-keyframes-bench``):
AVA-shaped movies, each a stream of ``902 + window + 60`` seconds whose annotated window
starts at 902 s as AVA's does (902-1798 s at the full ``--window-seconds 897``), H.264
(x264 ultrafast, keyframe every 2 s) in mp4 with the index at the end. The mix of
resolutions and rates, in the order movies are added (N = 1, 2, 4, 8 take the first N):
720p 23.976, 1080p 25, 480p 29.97, 360p 30, 1080p 23.976, 720p 29.97, 360p 25, 480p 30.
Content is ffmpeg's ``testsrc2`` (moving pattern and counter): a 10-second segment is
encoded once per format and repeated by stream copy, so generation costs seconds, not
hours. Every N also has one short validation movie (360p 30, 10 keyframes) so that the
validation split is not empty. Annotations are real: the rows of the real AVA v2.1 val
subset in ``tests/data/ava/`` (64 movies), movie i getting real video i's rows of seconds
902 to 902 + window - 1 under a synthetic id (person ids numbered per keyframe: the subset
has none).

Per N, the movies are served by the loopback Range mirror (``ava_keyframes.mirror``) and
built with the ``tfds build`` CLI in a fresh process, fresh cache and data dir (windows
are fetched over HTTP as a user's would be). The build process runs ``tfds``'s own entry
point behind a thin wrapper (``_WRAPPER``) that adds CPU clocks: fetch (``_fetch_job``),
decode (``VideoWork.extract``'s frames) and encode (the image feature's JPEG encoding) are
timed with the thread CPU clock of the thread that runs them, and FFmpeg's own decoding
threads (named ``av:...``; their CPU read from ``/proc/self/task`` every 0.2 s, so up to
0.2 s per thread may be missed) count as decode; start-up is the process CPU
before the first fetch starts (imports, TensorFlow, annotations); write is the rest (TFDS
serializing, shuffling and writing records, FFmpeg's and TensorFlow's own threads).
Peak RSS is the build process's (``wait4``; no child processes: decoding is in process).

Usage: python benchmarks/scale.py [--movies 1,2,4,8] [--window-seconds 897] [--cache DIR]
                                  [--baseline PYTHONPATH] [--json OUT] [--config CONFIG]
``--baseline`` also builds each N with another copy of the package (e.g. ``git archive``
of an older commit) in the same run, for ratios.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

from ava_keyframes.media import ffmpeg_binary
from ava_keyframes.mirror import LoopbackMirror

WINDOW_START = 902
TAIL_SECONDS = 60
SEGMENT_SECONDS = 10
MIX = [(1280, 720, Fraction(24000, 1001)), (1920, 1080, Fraction(25)),
       (854, 480, Fraction(30000, 1001)), (640, 360, Fraction(30)),
       (1920, 1080, Fraction(24000, 1001)), (1280, 720, Fraction(30000, 1001)),
       (640, 360, Fraction(25)), (854, 480, Fraction(30))]
VAL_MOVIE = (640, 360, Fraction(30))
VAL_SECONDS = 10
SUBSET = Path(__file__).parents[1] / "tests/data/ava/ava_val_v2.1_person_movement_subset.csv"

_WRAPPER = """
import atexit, json, os, sys, threading, time
start_wall, stats = time.time(), {"fetch": 0.0, "decode": 0.0, "encode": 0.0}
threads = {}  # thread id -> [name, CPU seconds when last seen]
tick = os.sysconf("SC_CLK_TCK")

def sample():
    for task in os.scandir("/proc/self/task"):
        try:
            with open(f"{task.path}/stat") as handle:
                line = handle.read()
        except OSError:
            continue
        name = line[line.index("(") + 1:line.rindex(")")]
        fields = line[line.rindex(")") + 2:].split()
        threads[task.name] = [name, (int(fields[11]) + int(fields[12])) / tick]

def sampler():
    while True:
        sample()
        time.sleep(0.2)
threading.Thread(target=sampler, daemon=True).start()
import tensorflow_datasets as tfds
from ava_keyframes import ava_keyframes_dataset_builder as builder, plan

def clocked(name, function):
    def timed(*args, **kwargs):
        began = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            stats[name] += time.thread_time() - began
    return timed

fetch = clocked("fetch", builder._fetch_job)
def started(*args, **kwargs):
    if "startup" not in stats:
        times = os.times()
        stats["startup"] = times.user + times.system
    return fetch(*args, **kwargs)
builder._fetch_job = started
tfds.features.Image.encode_example = clocked("encode", tfds.features.Image.encode_example)
extract = plan.VideoWork.extract
def clocked_extract(self, *args):
    frames = extract(self, *args)
    while True:
        began = time.thread_time()
        try:
            item = next(frames)
        except StopIteration:
            stats["decode"] += time.thread_time() - began
            return
        stats["decode"] += time.thread_time() - began
        yield item
plan.VideoWork.extract = clocked_extract
examples = builder.video_examples
def first_example(*args):
    for item in examples(*args):
        stats.setdefault("first_example_s", time.time() - start_wall)
        yield item
builder.video_examples = first_example

def record():
    sample()
    times = os.times()
    stats["total"] = times.user + times.system
    by_name = {}
    for name, cpu in threads.values():
        by_name[name] = by_name.get(name, 0.0) + cpu
    stats["threads"] = by_name
    stats["main"] = threads[str(os.getpid())][1]
    with open(os.environ["SCALE_STATS"], "w") as out:
        json.dump(stats, out)
atexit.register(record)
from tensorflow_datasets.scripts.cli.main import launch_cli
sys.argv = ["tfds", *sys.argv[1:]]
sys.exit(launch_cli())
"""


def movie_id(index: int) -> str:
    return f"scaleMovie{index}" if index < 10 else f"scaleMov{index:03d}"


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True)  # noqa: S603


def make_movie(cache: Path, size_fps: tuple[int, int, Fraction], seconds: int) -> Path:
    """A ``seconds``-long H.264 mp4 of ``testsrc2`` at that size and rate (cached)."""
    width, height, fps = size_fps
    rate = f"{fps.numerator}/{fps.denominator}"
    stem = f"{width}x{height}_{fps.numerator}_{fps.denominator}"
    movie = cache / f"{stem}_{seconds}s.mp4"
    if movie.is_file():
        return movie
    segment = cache / f"{stem}_segment.mp4"
    if not segment.is_file():
        _run([ffmpeg_binary(), "-y", "-v", "error", "-f", "lavfi", "-i",
              f"testsrc2=size={width}x{height}:rate={rate}", "-t", str(SEGMENT_SECONDS),
              "-c:v", "libx264", "-preset", "ultrafast", "-crf", "28", "-pix_fmt", "yuv420p",
              "-g", str(round(2 * fps)), str(segment) + ".tmp.mp4"])
        os.replace(str(segment) + ".tmp.mp4", segment)
    repeats = -(-seconds // SEGMENT_SECONDS)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", dir=cache, delete=False) as listing:
        listing.write(f"file '{segment.name}'\n" * repeats)
    try:
        _run([ffmpeg_binary(), "-y", "-v", "error", "-f", "concat", "-safe", "0", "-i",
              listing.name, "-c", "copy", "-t", str(seconds), str(movie) + ".tmp.mp4"])
        os.replace(str(movie) + ".tmp.mp4", movie)
    finally:
        os.unlink(listing.name)
    return movie


def real_rows(videos: int) -> list[dict[int, list[list[str]]]]:
    """The first ``videos`` real videos of the subset: second -> rows (box, action)."""
    rows: dict[str, dict[int, list[list[str]]]] = {}
    with open(SUBSET, newline="") as handle:
        for video_id, second, *box, action in csv.reader(handle):
            rows.setdefault(video_id, defaultdict(list))[int(second)].append([*box, action])
    return list(rows.values())[:videos]


def _annotation_rows(video_id: str, seconds: dict[int, list[list[str]]], first: int,
                     count: int) -> list[list[str]]:
    """Rows of seconds [first, first + count) under ``video_id``, person ids per keyframe."""
    out = []
    for second in range(first, first + count):
        people: dict[tuple[str, ...], int] = {}
        for *box, action in seconds.get(second, []):
            person = people.setdefault(tuple(box), len(people))
            out.append([video_id, f"{second:04d}", *box, action, str(person)])
    return out


def make_corpus(cache: Path, window: int) -> tuple[Path, dict[str, Path], dict[str, int]]:
    """Annotations folder, video id -> movie, video id -> keyframes (train movies 0..7 and
    the validation movie ``movie_id(8)``)."""
    cache.mkdir(parents=True, exist_ok=True)
    length = WINDOW_START + window + TAIL_SECONDS
    movies = {movie_id(i): make_movie(cache, fmt, length) for i, fmt in enumerate(MIX)}
    movies[movie_id(len(MIX))] = make_movie(cache, VAL_MOVIE, WINDOW_START + VAL_SECONDS + 10)
    real = real_rows(len(MIX) + 1)
    annotations = cache / f"annotations_{window}"
    annotations.mkdir(exist_ok=True)
    counts = {}
    for split, ids, seconds in (("train", list(movies)[:-1], window),
                                ("val", list(movies)[-1:], VAL_SECONDS)):
        rows = []
        for video_id in ids:
            mine = _annotation_rows(video_id, real[int(video_id[-1])], WINDOW_START, seconds)
            counts[video_id] = len({row[1] for row in mine})
            rows += mine
        with open(annotations / f"ava_{split}_v2.2.csv", "w", newline="") as out:
            csv.writer(out).writerows(rows)
        (annotations / f"ava_{split}_excluded_timestamps_v2.2.csv").write_text("")
    return annotations, movies, counts


def build(n: int, corpus: tuple, work: Path, pythonpath: str, config: str = "v2.2") -> dict:
    """One `tfds build` of the first ``n`` movies (and the validation movie), measured."""
    annotations, movies, counts = corpus
    ids = [*list(movies)[:n], list(movies)[-1]]
    for name in ("served", "manual/annotations", "data", "cache"):
        shutil.rmtree(work / name, ignore_errors=True)
        (work / name).mkdir(parents=True)
    for video_id in ids:
        os.link(movies[video_id], work / "served" / f"{video_id}.mp4")
    for split in ("train", "val"):
        with open(annotations / f"ava_{split}_v2.2.csv") as rows, \
             open(work / f"manual/annotations/ava_{split}_v2.2.csv", "w") as out:
            out.writelines(line for line in rows if line.split(",")[0] in ids)
        shutil.copy(annotations / f"ava_{split}_excluded_timestamps_v2.2.csv",
                    work / "manual/annotations")
    with LoopbackMirror(work / "served") as mirror:
        env = {**os.environ, "PYTHONPATH": pythonpath, "TF_CPP_MIN_LOG_LEVEL": "3",
               "AVA_KEYFRAMES_SOURCES": "mirror", "AVA_KEYFRAMES_MIRROR": mirror.url,
               "AVA_KEYFRAMES_ANNOTATIONS_URL": "http://127.0.0.1:9/ava_v{version}.zip",
               "AVA_KEYFRAMES_CACHE": str(work / "cache"), "SCALE_STATS": str(work / "stats")}
        began = time.time()
        process = subprocess.Popen(  # noqa: S603
            [sys.executable, "-c", _WRAPPER, "build", "ava_keyframes", "--imports",
             "ava_keyframes", "--config", config, "--manual_dir", str(work / "manual"),
             "--data_dir", str(work / "data")], env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        stderr = process.stderr.read()
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.time() - began
    if status != 0:
        raise SystemExit(f"build of N={n} failed: {stderr.decode()[-2000:]}")
    name = json.loads(config)["name"] if config.startswith("{") else config
    return _summary(n, work / "data/ava_keyframes" / name / "2.0.0", wall,
                    usage.ru_maxrss * 1024, counts, ids)


def _summary(n: int, folder: Path, wall: float, rss: int, counts: dict, ids: list) -> dict:
    stats = json.loads((folder.parents[3] / "stats").read_text())
    report = json.loads((folder / "build_report.json").read_text())
    keyframes = sum(s["keyframes_written"] for s in report["splits"].values())
    assert keyframes == sum(counts[v] for v in ids), (keyframes, counts)
    shards = sorted(p.stat().st_size for p in folder.glob("*.tfrecord-*"))
    codec_threads = sum(cpu for name, cpu in stats["threads"].items() if name.startswith("av:"))
    decode = stats["decode"] + codec_threads
    rest = stats["total"] - stats["startup"] - stats["fetch"] - decode - stats["encode"]
    return {
        "movies": n, "keyframes": keyframes, "wall_s": round(wall, 1),
        "keyframes_per_s": round(keyframes / wall, 2),
        "cpu_ms_per_keyframe": {k: round(1000 * v / keyframes, 2) for k, v in (
            ("fetch", stats["fetch"]), ("decode", decode),
            ("encode", stats["encode"]), ("write_and_rest", rest))},
        "startup_cpu_s": round(stats["startup"], 1),
        "peak_rss_mib": round(rss / 2**20, 1),
        "bytes_fetched": sum(s["bytes_fetched"] for s in report["splits"].values()),
        "dataset_bytes_per_keyframe": round(sum(shards) / keyframes),
        "shards": len(shards), "shard_mib": [round(s / 2**20, 1) for s in shards],
        "first_example_s": round(stats.get("first_example_s", float("nan")), 1),
        "thread_cpu_s": {k: round(v, 1) for k, v in stats["threads"].items() if v >= 0.1},
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movies", default="1,2,4,8")
    parser.add_argument("--window-seconds", type=int, default=897)
    parser.add_argument("--cache", type=Path,
                        default=Path.home() / ".cache" / "ava-keyframes-bench")
    parser.add_argument("--baseline", help="PYTHONPATH of a package to compare against")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--config", default="v2.2",
                        help="the build's --config (e.g. a custom one with max_side)")
    args = parser.parse_args()
    began = time.time()
    corpus = make_corpus(args.cache, args.window_seconds)
    print(f"corpus ready in {time.time() - began:.0f} s (window {args.window_seconds} s)",
          flush=True)
    here = str(Path(__file__).parents[1])
    results = []
    with tempfile.TemporaryDirectory(dir=args.cache) as work:
        for n in map(int, args.movies.split(",")):
            for name, path in (("this", here), ("baseline", args.baseline)):
                if path:
                    result = {"package": name, **build(n, corpus, Path(work), path, args.config)}
                    results.append(result)
                    print(json.dumps(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
