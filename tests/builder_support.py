"""What the builder's test modules share: constants, in-process and `tfds build` runs, and the
expensive corpus and builds behind the session fixtures in `conftest.py` (``e2e``,
``local_corpus``, ``builds``, ``loaded``, ``clip_build``), so that each is made once per
session however many test modules use it.

The end-to-end corpus' videos are served by a loopback HTTP mirror (one of them missing: an
unavailable video); the real `tfds build` CLI runs as subprocesses (with `--imports`, from
inside the dataset folder, with Beam, and once killed midway and run again); everything is
read back with `tfds.load` in a separate process and directory.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

from ava_keyframes import ava_keyframes_dataset_builder as builder_module
from ava_keyframes.labelmap import default_labelmap_path, read_labelmap
from ava_keyframes.mirror import LoopbackMirror
from ava_keyframes.synth import make_corpus

DATASET_FOLDER = Path(builder_module.__file__).parent
TFDS_CLI = str(Path(sys.executable).parent / "tfds")
LABELMAP = read_labelmap(default_labelmap_path())
SIZE = (96, 72)
EMPTY_SECOND = 900  # in the corpus videos' still pre-roll, before the annotated 902..904


def build_in_process(root: Path, manual: Path, config) -> tfds.core.DatasetBuilder:
    """Build ``config`` in this process from ``manual``'s files alone (local source)."""
    builder = builder_module.Builder(config=config, data_dir=str(root / "data"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AVA_KEYFRAMES_SOURCES", "local")
        patch.setenv("AVA_KEYFRAMES_CACHE", str(root / "cache"))
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
        )
    return builder


def expected_keyframes(info, split: str) -> dict[tuple[str, int], dict[int, tuple]]:
    """(video, second) -> person id -> (box x1 y1 x2 y2, sorted class indices), from the CSV."""
    persons: dict[tuple[str, int], dict[int, tuple]] = defaultdict(dict)
    with open(info.annotation_csv(split), newline="") as handle:
        for row in csv.reader(handle):
            key = (row[0], int(row[1]))
            if key in info.excluded[split]:
                continue
            if len(row) == 2:
                persons[key] = {}
                continue
            video_id, second, x1, y1, x2, y2, action, person = row
            box = tuple(map(float, (x1, y1, x2, y2)))
            _, labels = persons[key].get(int(person), (box, ()))
            persons[key][int(person)] = (box, tuple(sorted({*labels,
                                                            LABELMAP.index_of(int(action))})))
    return persons


def make_e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Corpus of 6 videos (4 train, 2 val) x 3 keyframes at 902..904. The mirror serves all
    but two train videos: one is missing everywhere (unavailable), the other is a local file
    in the manual dir that is no video (decoding fails)."""
    root = tmp_path_factory.mktemp("e2e")
    info = make_corpus(root / "corpus", videos=6, seconds=3, size=SIZE, fps=10, seed=3)
    missing, broken = info.ids["train"][1], info.ids["train"][2]
    served = root / "served"
    served.mkdir()
    for video_id, path in info.videos.items():
        if video_id not in (missing, broken):
            os.link(path, served / path.name)
    manual = root / "manual"
    shutil.copytree(info.annotations_dir, manual / "annotations")
    with open(info.annotation_csv("val"), "a") as handle:  # a keyframe without any person
        handle.write(f"{info.ids['val'][0]},{EMPTY_SECOND:04d}\n")
    shutil.copy(info.annotation_csv("val"), manual / "annotations")
    (manual / "videos").mkdir()
    (manual / "videos" / info.videos[broken].name).write_bytes(b"not a video at all")
    mirror = LoopbackMirror(served)
    yield {"root": root, "info": info, "missing": missing, "broken": broken, "manual": manual,
           "mirror": mirror}
    mirror.close()


def make_local_corpus(e2e: dict) -> Path:
    """The e2e corpus as a manual dir holding every video: in-process builds of it are quick."""
    manual = e2e["root"] / "local-manual"
    shutil.copytree(e2e["manual"] / "annotations", manual / "annotations")
    (manual / "videos").mkdir()
    for path in e2e["info"].videos.values():
        os.link(path, manual / "videos" / path.name)
    return manual


def _closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused at once (as offline)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


UNREACHABLE_ANNOTATIONS = f"http://127.0.0.1:{_closed_port()}/ava_v{{version}}.zip"


def build_env(e2e: dict, cache: str) -> dict[str, str]:
    return {**os.environ, "AVA_KEYFRAMES_SOURCES": "local,mirror",
            "AVA_KEYFRAMES_MIRROR": e2e["mirror"].url,
            "AVA_KEYFRAMES_ANNOTATIONS_URL": UNREACHABLE_ANNOTATIONS,
            "AVA_KEYFRAMES_CACHE": str(e2e["root"] / cache), "TF_CPP_MIN_LOG_LEVEL": "3"}


def _tfds_build(e2e: dict, data_dir: str, *extra: str, cwd: Path | None = None,
                imports: bool = True, cache: str = "cache",
                config: tuple[str, ...] = ("--config", "v2.2")) -> subprocess.Popen:
    cmd = [TFDS_CLI, "build", *(["ava_keyframes", "--imports", "ava_keyframes"] if imports
                                else []),
           *config, "--manual_dir", str(e2e["manual"]),
           "--data_dir", str(e2e["root"] / data_dir), *extra]
    return subprocess.Popen(cmd, cwd=cwd or e2e["root"], env=build_env(e2e, cache),  # noqa: S603
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    return output


def make_builds(e2e: dict) -> dict:
    """Data dirs of: a plain build with --imports and no --config (the manual dir holds only
    v2.2 annotations), one from inside the dataset folder, a Beam build, and a build killed
    after its first video then run again (its own cache); and the plain build's output."""
    plain_output = _finish(_tfds_build(e2e, "plain", config=()))  # fills the shared cache
    in_folder = _tfds_build(e2e, "in_folder", cwd=DATASET_FOLDER, imports=False)
    beam = _tfds_build(e2e, "beam", "--beam_pipeline_options=runner=FnApiRunner,"
                       "direct_num_workers=2,direct_running_mode=multi_processing")
    _finish(in_folder)
    _finish(beam)

    # the mirror answers byte ranges: videos come as windows, each finished by its sidecar
    mirror, killed_cache = e2e["mirror"], e2e["root"] / "killed-cache" / "windows"
    mirror.delay = 0.3  # per request: the next window is still being fetched when we kill
    killed = _tfds_build(e2e, "killed", cache="killed-cache")
    deadline = time.monotonic() + 120
    while not (killed_cache.is_dir() and any(killed_cache.glob("*.json"))):
        assert killed.poll() is None and time.monotonic() < deadline, "build ended too soon"
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    mirror.delay = 0.0
    assert not (e2e["root"] / "killed/ava_keyframes/v2.2/2.0.0").exists()  # stopped midway
    first_video = next(killed_cache.glob("*.json")).name.removesuffix(".json")
    rerun_starts = len(mirror.requests)
    _finish(_tfds_build(e2e, "killed", cache="killed-cache"))
    assert f"/{first_video}" not in mirror.requests[rerun_starts:]  # not downloaded again
    return {**{name: e2e["root"] / name for name in ("plain", "in_folder", "beam", "killed")},
            "plain_output": plain_output}


_LOADER = textwrap.dedent("""
    import hashlib, json, sys
    import numpy as np
    from pathlib import Path
    import matplotlib
    matplotlib.use("Agg")
    import tensorflow as tf
    import tensorflow_datasets as tfds
    import ava_keyframes
    from ava_keyframes.stamp import read_frame_stamp

    plain, others, out = Path(sys.argv[1]), sys.argv[2:-1], Path(sys.argv[-1])
    result = {"examples": {}, "content": {}}
    for split in ("train", "validation"):
        ds, info = tfds.load("ava_keyframes/v2.2", split=split, data_dir=str(plain),
                             with_info=True)
        for ex in ds:
            key = f"{ex['video_id'].numpy().decode()}_{int(ex['timestamp']):04d}"
            objects = ex["objects"]
            result["examples"][key] = {
                "split": split, "stamp": read_frame_stamp(ex["image"].numpy()),
                "size": list(ex["image"].shape[:2]),
                "bbox": objects["bbox"].numpy().tolist(),
                "box_pixels": objects["box_pixels"].numpy().tolist(),
                "labels": [np.flatnonzero(hot).tolist() for hot in objects["labels"].numpy()],
                "person_id": objects["person_id"].numpy().tolist(),
            }
    figure = tfds.visualization.show_examples(ds, info, rows=1, cols=2)
    figure.savefig(out / "examples.png")
    frame = tfds.as_dataframe(ds.take(2), info)
    result["dataframe"] = {"rows": len(frame), "columns": sorted(frame.columns),
                           "html": frame._repr_html_()}
    # batches as VOC/COCO do: images and objects padded to the batch's largest
    batch = next(iter(tfds.as_numpy(ds.padded_batch(4))))
    result["batch"] = {key: [list(value.shape), str(value.dtype)] for key, value in (
        ("image", batch["image"]), ("labels", batch["objects"]["labels"]),
        ("bbox", batch["objects"]["bbox"]), ("timestamp", batch["timestamp"]))}
    result["class_names"] = info.features["objects"]["labels"].names
    for data_dir in [str(plain), *others]:
        folder = Path(data_dir) / "ava_keyframes" / "v2.2" / "2.0.0"
        result["content"][data_dir] = {
            split: sorted(
                hashlib.sha256(tf.train.Example.FromString(record.numpy()).SerializeToString(
                    deterministic=True)).hexdigest()
                for record in tf.data.TFRecordDataset(
                    sorted(map(str, folder.glob(f"ava_keyframes-{split}.tfrecord-*"))))
            )
            for split in ("train", "validation")
        }
        report = json.loads((folder / "build_report.json").read_text())
        fetch = result.setdefault("fetch", {})[data_dir] = {}
        for split, split_report in report["splits"].items():
            # reasons differ once one is recorded; how a video came depends on the cache
            split_report["videos_unavailable"] = sorted(split_report["videos_unavailable"])
            fetch[split] = {key: split_report.pop(key)
                            for key in ("videos_fetched", "bytes_fetched", "fetch_modes")}
        fetch["settings"] = report.pop("fetch_settings")  # each build has its own cache
        result["content"][data_dir]["report"] = report
        result["content"][data_dir]["loaded"] = {
            split: sum(1 for _ in tfds.load("ava_keyframes/v2.2", split=split,
                                            data_dir=data_dir))
            for split in ("train", "validation")
        }
    (out / "loaded.json").write_text(json.dumps(result))
""")


def load_builds(builds: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Everything read back by `tfds.load` in another process, from another directory."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    script = elsewhere / "load.py"
    script.write_text(_LOADER)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg"}
    dirs = [str(builds[name]) for name in ("plain", "in_folder", "beam", "killed")]
    result = subprocess.run([sys.executable, str(script), *dirs, str(elsewhere)],  # noqa: S603
                            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((elsewhere / "loaded.json").read_text())
    data["figure"] = elsewhere / "examples.png"
    return data


def make_clip_build(e2e: dict, builds: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """v2.2_clips32x2 built in process from the e2e mirror and manual dir (its own cache).
    The corpus' videos end at 904.9 s, so the clips of 904 reach past the end (905.0 s)."""
    root = tmp_path_factory.mktemp("clips")
    builder = builder_module.Builder(config="v2.2_clips32x2", data_dir=str(root / "data"))
    with pytest.MonkeyPatch.context() as patch:
        for name, value in build_env(e2e, "clips-cache").items():
            if name.startswith("AVA_KEYFRAMES_"):
                patch.setenv(name, value)
        patch.setenv("AVA_KEYFRAMES_CACHE", str(root / "cache"))
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(e2e["manual"])))
    keyframes = builder_module.Builder(config="v2.2", data_dir=str(builds["plain"]))
    return {"clips": builder, "keyframes": keyframes,
            "report": json.loads((Path(builder.data_dir) / "build_report.json").read_text())}
