"""Build of a clip config against the keyframe config on the same videos (issue 16).

Two corpora, videos read in place from the manual dir (no fetching):

- ``synthetic``: ``make_corpus`` (``--videos`` videos x ``--seconds`` keyframes, 640x360,
  30 fps H.264), the corpus of ``build.py``;
- ``film``: ``--copies`` copies of ``tests/data/video/bigbuckbunny.mp4`` (5.3 s of Big Buck
  Bunny, 1280x720, 25 fps), keyframes at seconds 1..4 of each: real film, so that the bytes
  stored per keyframe are those of movie frames, not of a synthetic texture.

For each corpus, ``v2.2`` (keyframes), ``v2.2_clips8x8`` and ``v2.2_clips32x2`` are built
with ``download_and_prepare`` in a fresh child process each (interleaved rounds, best of
``--repeat``), which reports the build's wall time (TensorFlow's start-up excluded: the
child encodes a JPEG first), the examples written, the TFRecord bytes and its peak resident
memory (``ru_maxrss``). Printed: keyframes per second and as a fraction of the keyframe
config's, bytes per keyframe (and per 1000 keyframes), peak memory; and the load average.

Usage: python benchmarks/build_clips.py [--videos 4] [--seconds 30] [--copies 12] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = ("v2.2", "v2.2_clips8x8", "v2.2_clips32x2")
FILM = Path(__file__).resolve().parent.parent / "tests" / "data" / "video" / "bigbuckbunny.mp4"


def child(config: str, manual: str, out: str) -> None:
    """Build ``config`` from ``manual`` into ``out``; print one JSON line of measurements."""
    import numpy as np
    import tensorflow_datasets as tfds

    from ava_keyframes.ava_keyframes_dataset_builder import Builder

    os.environ.update(AVA_KEYFRAMES_SOURCES="local", AVA_KEYFRAMES_CACHE=f"{out}/cache")
    tfds.features.Image().encode_example(np.zeros((8, 8, 3), np.uint8))  # TensorFlow's start-up
    builder = Builder(config=config, data_dir=f"{out}/data")
    start = time.perf_counter()
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual))
    seconds = time.perf_counter() - start
    records = list(Path(builder.data_dir).glob("*.tfrecord-*"))
    print(json.dumps({
        "seconds": seconds,
        "examples": sum(split.num_examples for split in builder.info.splits.values()),
        "bytes": sum(path.stat().st_size for path in records),
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }))


def film_corpus(root: Path, copies: int) -> Path:
    """``copies`` copies of the film clip as videos, keyframes 1..4 each, the last in val."""
    manual = root / "film"
    (manual / "videos").mkdir(parents=True)
    (manual / "annotations").mkdir()
    rows: dict[str, list[str]] = {"train": [], "val": []}
    for i in range(copies):
        video_id = f"BigBuckBu{i:02d}"  # 11 characters, as YouTube ids
        shutil.copy(FILM, manual / "videos" / f"{video_id}.mp4")
        split = "val" if i == copies - 1 else "train"
        rows[split] += [f"{video_id},{s:04d},0.300,0.200,0.700,0.950,12,0\n" for s in range(1, 5)]
    for split, lines in rows.items():
        (manual / "annotations" / f"ava_{split}_v2.2.csv").write_text("".join(lines))
        (manual / "annotations" / f"ava_{split}_excluded_timestamps_v2.2.csv").write_text("")
    return manual


def synthetic_corpus(root: Path, videos: int, seconds: int) -> Path:
    from ava_keyframes.synth import make_corpus

    info = make_corpus(root / "synthetic", videos=videos, seconds=seconds, size=(640, 360),
                       fps=30, seed=0)
    return info.root


def run_child(config: str, manual: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    result = subprocess.run(  # noqa: S603
        [sys.executable, __file__, "--child", config, str(manual), str(out)],
        capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        check=False)
    if result.returncode != 0:
        raise SystemExit(f"{config} build failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(manual: Path, work: Path, repeat: int) -> dict[str, dict]:
    best: dict[str, dict] = {}
    for _ in range(repeat):
        for config in CONFIGS:
            got = run_child(config, manual, work / config)
            if config not in best or got["seconds"] < best[config]["seconds"]:
                best[config] = {**got, "peak_kib": max(got["maxrss_kib"], best.get(
                    config, {}).get("peak_kib", 0))}
    return best


def report(name: str, results: dict[str, dict]) -> None:
    base = results["v2.2"]
    base_rate = base["examples"] / base["seconds"]
    print(f"\n{name}: {base['examples']} keyframes")
    print(f"{'config':<16}{'kf/s':>8}{'/ v2.2':>8}{'bytes/kf':>11}{'MB/1000 kf':>12}"
          f"{'x v2.2':>8}{'peak RSS':>10}")
    for config, r in results.items():
        if r["examples"] != base["examples"]:
            raise SystemExit(f"{config}: {r['examples']} examples, v2.2 {base['examples']}")
        rate, per = r["examples"] / r["seconds"], r["bytes"] / r["examples"]
        print(f"{config:<16}{rate:>8.1f}{rate / base_rate:>7.2f}x{per / 1024:>9.0f} KiB"
              f"{per * 1000 / 1e6:>12.0f}{per / (base['bytes'] / base['examples']):>7.1f}x"
              f"{r['peak_kib'] / 1024:>7.0f} MiB")


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--copies", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpora = {"film (Big Buck Bunny, 1280x720, 25 fps)": film_corpus(root, args.copies),
                   "synthetic (640x360, 30 fps)": synthetic_corpus(root, args.videos,
                                                                    args.seconds)}
        for name, manual in corpora.items():
            report(name, measure(manual, root / "builds", args.repeat))
    print(f"\nload average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
