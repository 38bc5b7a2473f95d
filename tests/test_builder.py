"""The TFDS builder `ava_keyframes`: dummy-data test, real `tfds build` runs, Beam, resume.

The end-to-end tests build a small synthetic corpus whose videos are served by a loopback
HTTP mirror (one of them missing: an unavailable video), run the real `tfds build` CLI as
subprocesses (with `--imports`, from inside the dataset folder, with Beam, and once killed
midway and run again), then read everything back with `tfds.load` in a separate process and
directory. Every image is checked by its frame stamp against the frame the corpus says is
shown at that second.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from builder_support import DATASET_FOLDER, LABELMAP, SIZE, TFDS_CLI

from ava_keyframes import ava_keyframes_dataset_builder as builder_module
from ava_keyframes import clips, plan
from ava_keyframes.cli import main as cli_main
from ava_keyframes.mirror import LoopbackMirror
from ava_keyframes.sources import FetchResult
from ava_keyframes.stamp import read_frame_stamp
from ava_keyframes.synth import make_corpus

EMPTY_SECOND = 900  # in the corpus videos' still pre-roll, before the annotated 902..904


# --- TFDS's own dataset test, on dummy_data/ --------------------------------------------------
# dummy_data/ was written by `ava-keyframes synth dummy_data --videos 2 --seconds 3 --start 1
# --fps 10 --size 96x72 --seed 0`, with the four CSVs also copied under their v2.1 names.


@pytest.mark.slow
class AvaKeyframesDummyDataTest(tfds.testing.DatasetBuilderTestCase):
    """Both configs on dummy_data/: 3 keyframes per video, 1 of them excluded."""

    DATASET_CLASS = builder_module.Builder
    SPLITS = {"train": 2, "validation": 2}

    @pytest.fixture(autouse=True)
    def _videos_from_dummy_data_only(self, tmp_path, monkeypatch):
        monkeypatch.setenv("AVA_KEYFRAMES_SOURCES", "local")
        monkeypatch.setenv("AVA_KEYFRAMES_CACHE", str(tmp_path / "cache"))


# --- in-process builds: options, nothing to write ---------------------------------------------


def _build_in_process(root: Path, manual: Path, config) -> tfds.core.DatasetBuilder:
    builder = builder_module.Builder(config=config, data_dir=str(root / "data"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AVA_KEYFRAMES_SOURCES", "local")
        patch.setenv("AVA_KEYFRAMES_CACHE", str(root / "cache"))
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
        )
    return builder


@pytest.mark.slow
def test_options_keep_one_keyframe_per_video_at_max_side(tmp_path):
    config = builder_module.AvaKeyframesConfig(name="v2.2_k1_s48", max_per_video=1, max_side=48)
    builder = _build_in_process(tmp_path, DATASET_FOLDER / "dummy_data", config)
    report = json.loads((Path(builder.data_dir) / "build_report.json").read_text())
    assert report["options"] == {"max_per_video": 1, "max_side": 48}
    # the settings resolved at launch, from the environment set around the build
    assert report["fetch_settings"]["sources"] == ["local"]
    assert report["fetch_settings"]["cache_dir"] == str(tmp_path / "cache")
    for split, csv_split in (("train", "train"), ("validation", "val")):
        examples = list(tfds.as_numpy(builder.as_dataset(split=split)))
        excluded = (DATASET_FOLDER / "dummy_data" / "annotations" /
                    f"ava_{csv_split}_excluded_timestamps_v2.2.csv").read_text()
        kept = [s for s in (1, 2, 3) if f",{s:04d}" not in excluded]  # 2 of keyframes 1..3
        assert [int(e["timestamp"]) for e in examples] == [kept[1]]  # K=1: the middle of 2
        assert examples[0]["image"].shape[:2] == (36, 48)
        bbox, pixels = examples[0]["objects"]["bbox"], examples[0]["objects"]["box_pixels"]
        np.testing.assert_allclose(pixels, bbox[:, [1, 0, 3, 2]] * [48, 36, 48, 36], atol=1e-3)
        counts = report["splits"][split]
        assert counts["keyframes_annotated"] == 2 and counts["keyframes_written"] == 1
        assert counts["keyframes_skipped"] == {plan.OVER_LIMIT: 1}


@pytest.mark.slow
def test_examples_lost_after_generation_fail_the_build(tmp_path, monkeypatch):
    """What a runner that drops an example looks like: generated, counted, never stored."""
    generate = builder_module.video_examples

    def dropping_the_first(*args):
        yield from list(generate(*args))[1:]

    monkeypatch.setattr(builder_module, "video_examples", dropping_the_first)
    with pytest.raises(RuntimeError, match="2 examples were generated but 1 were written"):
        _build_in_process(tmp_path, DATASET_FOLDER / "dummy_data", "v2.2")
    assert not (tmp_path / "data" / "ava_keyframes" / "v2.2" / "2.0.0").exists()


def _losing(video_id: str):
    """A fetch that loses ``video_id`` to a transient cause (as a cache does after an outage,
    spent retries or a full disk) and fetches the others as usual."""
    fetch = builder_module._fetch_job

    def fetch_job(job, work):
        if job.video_id == video_id:
            return FetchResult(video_id, "unavailable", None, "mirror",
                               "connection reset (retries spent)", transient=True)
        return fetch(job, work)

    return fetch_job


@pytest.fixture(scope="module")
def local_corpus(e2e):
    """The e2e corpus as a manual dir holding every video: in-process builds of it are quick."""
    manual = e2e["root"] / "local-manual"
    shutil.copytree(e2e["manual"] / "annotations", manual / "annotations")
    (manual / "videos").mkdir()
    for path in e2e["info"].videos.values():
        os.link(path, manual / "videos" / path.name)
    return manual


@pytest.mark.slow
def test_transient_loss_fails_the_build_then_a_rebuild_is_complete(
        e2e, local_corpus, tmp_path, monkeypatch):
    lost = e2e["info"].ids["train"][0]
    expected = len(_expected_keyframes(e2e["info"], "train"))
    with monkeypatch.context() as patch:
        patch.setattr(builder_module, "_fetch_job", _losing(lost))
        with pytest.raises(builder_module.BuildError) as failure:
            _build_in_process(tmp_path, local_corpus, "v2.2")
    message = str(failure.value)
    config_dir = tmp_path / "data" / "ava_keyframes" / "v2.2"
    failed_report = config_dir / "2.0.0.failed_build_report.json"
    assert "\n" not in message and lost in message and str(failed_report) in message
    assert json.loads(failed_report.read_text())["splits"]["train"]["videos_lost"] == {
        lost: "connection reset (retries spent)"}
    assert not builder_module.Builder(config="v2.2", data_dir=str(tmp_path / "data")).is_prepared()
    assert not (config_dir / "2.0.0").exists()
    # the cause is gone: the same build now gets every video (nothing was kept from the failure)
    builder = _build_in_process(tmp_path, local_corpus, "v2.2")
    assert builder.info.splits["train"].num_examples == expected
    report = json.loads((Path(builder.data_dir) / "build_report.json").read_text())
    train = report["splits"]["train"]
    assert train["videos_lost"] == {} and not report["missing_accepted"]
    assert not failed_report.exists()
    assert report["decoder"]["engine"] and train["fetch_modes"] == {"local": 4}
    assert train["videos_fetched"][lost] == {"fetch_mode": "local", "bytes_fetched": 0}


@pytest.mark.slow
def test_accepted_transient_loss_builds_and_is_recorded(
        e2e, local_corpus, tmp_path, monkeypatch, capsys):
    lost = e2e["info"].ids["train"][0]
    expected = _expected_keyframes(e2e["info"], "train")
    monkeypatch.setattr(builder_module, "_fetch_job", _losing(lost))
    monkeypatch.setenv(builder_module.ALLOW_MISSING_ENV, "1")
    builder = _build_in_process(tmp_path, local_corpus, "v2.2")
    report = json.loads((Path(builder.data_dir) / "build_report.json").read_text())
    train = report["splits"]["train"]
    assert report["missing_accepted"] and list(train["videos_lost"]) == [lost]
    lost_keyframes = sum(video_id == lost for video_id, _ in expected)
    assert train["keyframes_skipped"] == {plan.VIDEO_LOST: lost_keyframes}
    assert builder.info.splits["train"].num_examples == len(expected) - lost_keyframes
    out = capsys.readouterr().out
    assert f"train: video {lost} missing: connection reset" in out
    assert "built without 1 video(s) lost to a transient cause" in out


@pytest.mark.slow
def test_split_without_any_video_is_a_clear_error(tmp_path):
    manual = tmp_path / "manual"
    shutil.copytree(DATASET_FOLDER / "dummy_data" / "annotations", manual / "annotations")
    with pytest.raises(RuntimeError, match=r"no keyframe of split 'train'.*0ogRTCEBL0p: local"):
        _build_in_process(tmp_path, manual, "v2.2")


# --- end to end: loopback mirror -> `tfds build` -> `tfds.load` elsewhere ----------------------


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
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


def _closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused at once (as offline)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


UNREACHABLE_ANNOTATIONS = f"http://127.0.0.1:{_closed_port()}/ava_v{{version}}.zip"


def _env(e2e, cache: str) -> dict[str, str]:
    return {**os.environ, "AVA_KEYFRAMES_SOURCES": "local,mirror",
            "AVA_KEYFRAMES_MIRROR": e2e["mirror"].url,
            "AVA_KEYFRAMES_ANNOTATIONS_URL": UNREACHABLE_ANNOTATIONS,
            "AVA_KEYFRAMES_CACHE": str(e2e["root"] / cache), "TF_CPP_MIN_LOG_LEVEL": "3"}


def _tfds_build(e2e, data_dir: str, *extra: str, cwd: Path | None = None, imports: bool = True,
                cache: str = "cache", config: tuple[str, ...] = ("--config", "v2.2")
                ) -> subprocess.Popen:
    cmd = [TFDS_CLI, "build", *(["ava_keyframes", "--imports", "ava_keyframes"] if imports
                                else []),
           *config, "--manual_dir", str(e2e["manual"]),
           "--data_dir", str(e2e["root"] / data_dir), *extra]
    return subprocess.Popen(cmd, cwd=cwd or e2e["root"], env=_env(e2e, cache),  # noqa: S603
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    return output


@pytest.fixture(scope="module")
def builds(e2e):
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


@pytest.fixture(scope="module")
def loaded(e2e, builds, tmp_path_factory):
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


def _expected_keyframes(info, split: str) -> dict[tuple[str, int], dict[int, tuple]]:
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


@pytest.mark.slow
def test_load_gives_every_expected_keyframe_with_the_right_frame(e2e, loaded):
    info, examples = e2e["info"], loaded["examples"]
    for split, tfds_split in (("train", "train"), ("val", "validation")):
        expected = {k for k in _expected_keyframes(info, split)
                    if k[0] not in (e2e["missing"], e2e["broken"])}
        got = {(key[:11], int(key[12:])) for key, ex in examples.items()
               if ex["split"] == tfds_split}
        assert got == expected
        assert not got & info.excluded[split]
    for key, example in examples.items():
        video_id, second = key[:11], int(key[12:])
        frame = info.keyframe_frames.get((video_id, second), int(second * info.fps))
        assert example["stamp"] == frame, key
        assert example["size"] == [SIZE[1], SIZE[0]]


@pytest.mark.slow
def test_boxes_and_multi_labels_match_the_csv(e2e, loaded):
    info = e2e["info"]
    expected = {**_expected_keyframes(info, "train"), **_expected_keyframes(info, "val")}
    multi_label_persons = 0
    for key, example in loaded["examples"].items():
        persons = expected[key[:11], int(key[12:])]
        height, width = example["size"]
        bbox = np.reshape(example["bbox"], (-1, 4))
        pixels = np.reshape(example["box_pixels"], (-1, 4))
        np.testing.assert_allclose(pixels, bbox[:, [1, 0, 3, 2]] * ([width, height] * 2),
                                   atol=1e-3)
        assert sorted(example["person_id"]) == sorted(persons)
        for person_id, box, labels in zip(example["person_id"], bbox, example["labels"],
                                          strict=True):
            csv_box, csv_labels = persons[person_id]
            np.testing.assert_allclose(box, np.array(csv_box)[[1, 0, 3, 2]], atol=1e-6)
            assert tuple(labels) == csv_labels
            multi_label_persons += len(labels) > 1
    assert multi_label_persons > 0
    empty = loaded["examples"][f"{e2e['info'].ids['val'][0]}_{EMPTY_SECOND:04d}"]
    assert empty["person_id"] == [] and empty["bbox"] == [] and empty["labels"] == []


@pytest.mark.slow
def test_build_report_counts_unavailable_and_undecodable_videos(e2e, loaded, builds):
    info, missing, broken = e2e["info"], e2e["missing"], e2e["broken"]
    report = loaded["content"][str(builds["plain"])]["report"]
    train = report["splits"]["train"]
    # the undecodable local file is passed over for the mirror (issue 23), which lacks it too
    assert sorted(train["videos_unavailable"]) == sorted([missing, broken])
    expected = _expected_keyframes(info, "train")
    unavailable = sum(1 for video_id, _ in expected if video_id == missing)
    undecodable = sum(1 for video_id, _ in expected if video_id == broken)
    assert train["keyframes_skipped"] == {plan.VIDEO_UNAVAILABLE: unavailable + undecodable}
    assert not train["video_errors"]
    assert train["keyframes_annotated"] == len(expected)
    assert train["keyframes_written"] == len(expected) - unavailable - undecodable == sum(
        ex["split"] == "train" for ex in loaded["examples"].values())
    with open(info.annotation_csv("train"), newline="") as handle:
        rows = list(csv.reader(handle))
    on_excluded = sum((r[0], int(r[1])) in info.excluded["train"] for r in rows)
    assert train["rows_read"] == len(rows) and on_excluded > 0
    assert train["rows_skipped"] == {"timestamp: excluded keyframe": on_excluded}
    assert train["rows_used"] == len(rows) - on_excluded and train["rows_without_boxes"] == 0
    validation = report["splits"]["validation"]
    assert validation["rows_without_boxes"] == 1
    assert validation["keyframes_written"] == validation["keyframes_annotated"]
    assert report["decoder"]["engine"] == "pyav" and report["missing_accepted"] is False


@pytest.mark.slow
def test_build_report_records_how_each_video_was_fetched(e2e, loaded, builds):
    info = e2e["info"]
    downloaded = [v for v in info.ids["train"] if v not in (e2e["missing"], e2e["broken"])]
    plain = loaded["fetch"][str(builds["plain"])]["train"]
    fetched = plain["videos_fetched"]
    assert all(fetched[v]["fetch_mode"] == "window" for v in downloaded)  # the mirror has ranges
    assert all(fetched[v]["bytes_fetched"] > 0 for v in downloaded)
    assert plain["bytes_fetched"] == sum(f["bytes_fetched"] for f in fetched.values())
    assert sum(plain["fetch_modes"].values()) == len(fetched)
    cached = loaded["fetch"][str(builds["in_folder"])]["train"]  # same cache, filled before
    assert all(cached["videos_fetched"][v] == {"fetch_mode": "cache", "bytes_fetched": 0}
               for v in downloaded)


@pytest.mark.slow
def test_plain_tfds_build_builds_v2_2_and_skips_v2_1_in_one_line(e2e, builds):
    """`tfds build ava_keyframes` without --config builds every config it can; here only v2.2
    annotations are in the manual dir and the annotations' server cannot be reached."""
    lines = builds["plain_output"].splitlines()
    skipped = [line for line in lines if re.match(r"ava_keyframes/\S+: skipped: ", line)]
    assert len(skipped) == 1 and skipped[0].startswith("ava_keyframes/v2.1/2.0.0: skipped: ")
    for name in ("v2.2_clips8x8", "v2.2_clips32x2"):  # opt-in: built only when named
        assert (f"ava_keyframes/{name}/3.0.0: not built: clip configs are built only when "
                f"named (--config {name})") in lines
        assert not (builds["plain"] / "ava_keyframes" / name).exists()
    assert str(e2e["manual"] / "annotations") in skipped[0] and "ava_v2.1.zip" in skipped[0]
    assert not any("Traceback" in line for line in lines)
    assert not any("deprecat" in line.lower() for line in lines)  # no nested ragged features
    assert (builds["plain"] / "ava_keyframes" / "v2.2" / "2.0.0" / "dataset_info.json").is_file()
    assert sum(f"video {e2e['missing']} missing" in line for line in lines) == 1  # listed


@pytest.mark.slow
def test_plain_tfds_build_is_quiet_probes_nothing_and_ends_with_the_summary(e2e, builds):
    """Issue 21: 1,051 lines (the card once per config), a v2.1 probe and an empty v2.1/
    folder, the missing videos glued to a progress bar and buried."""
    output = builds["plain_output"]
    lines = output.splitlines()
    assert len(lines) < 250 and "## Features" not in output  # the card is not printed
    for config in ("v2.1/2.0.0", "v2.2_clips8x8/3.0.0", "v2.2_clips32x2/3.0.0"):  # one line each
        assert sum(line.startswith(f"ava_keyframes/{config}: ") for line in lines) == 1
    skipped = next(line for line in lines if line.startswith("ava_keyframes/v2.1/2.0.0: "))
    assert "cannot be reached" not in skipped and "--config v2.1" in skipped  # no probe
    folders = [p for p in builds["plain"].rglob("*") if p.is_dir()]
    assert not (builds["plain"] / "ava_keyframes" / "v2.1").exists()
    assert [p for p in folders if not any(p.iterdir())] == []
    # not a terminal: plain lines, one per video, and no carriage return
    assert "\r" not in output and "\x1b[" not in output
    train = e2e["info"].ids["train"]
    progress = [line for line in lines
                if re.match(r"ava_keyframes/v2\.2/2\.0\.0 train: video \d+/", line)]
    assert [line.split()[3] for line in progress] == [f"{k}/{len(train)}"
                                                      for k in range(1, len(train) + 1)]
    # the summary of missing videos is last: the absent one, and the undecodable local file
    # that fell through to the mirror, which does not have it either
    summary = [line for line in lines if " missing: " in line]
    assert sorted(line.split()[3] for line in summary) == sorted([e2e["missing"],
                                                                  e2e["broken"]])
    assert [line for line in lines if line.strip()][-2:] == summary


@pytest.mark.slow
def test_folder_beam_and_resumed_builds_hold_the_same_content(loaded, builds):
    content = loaded["content"]
    plain = content[str(builds["plain"])]
    assert len(plain["train"]) > 0 and len(plain["validation"]) > 0
    for name in ("in_folder", "beam", "killed"):
        assert content[str(builds[name])] == plain, name


@pytest.mark.slow
def test_show_examples_and_as_dataframe_work(loaded):
    assert loaded["figure"].stat().st_size > 0
    assert loaded["dataframe"]["rows"] == 2
    assert {"image", "objects/bbox", "objects/labels", "video_id"} <= set(
        loaded["dataframe"]["columns"])
    html = loaded["dataframe"]["html"]
    assert "RaggedTensor" not in html
    assert any(f"({name})" in html for name in ("sit", "stand", "walk"))  # class names shown
    assert loaded["class_names"] == LABELMAP.names


@pytest.mark.slow
def test_examples_batch_with_padded_batch(loaded):
    """Fixed-shape multi-hot labels: objects pad to [B, N, 80] like VOC's and COCO's."""
    batch = loaded["batch"]
    size, persons = batch["image"][0][0], batch["labels"][0][1]
    assert size == 4 and persons >= 1
    assert batch["labels"] == [[size, persons, 80], "bool"]
    assert batch["bbox"] == [[size, persons, 4], "float32"]
    assert batch["image"] == [[size, SIZE[1], SIZE[0], 3], "uint8"]
    assert batch["timestamp"] == [[size], "int32"]


# --- export-csv ------------------------------------------------------------------------------


# --- a clip config: same keyframes, clips by the rule, through the mirror ---------------------


@pytest.fixture(scope="module")
def clip_build(e2e, builds, tmp_path_factory):
    """v2.2_clips32x2 built in process from the e2e mirror and manual dir (its own cache).
    The corpus' videos end at 904.9 s, so the clips of 904 reach past the end (905.0 s)."""
    root = tmp_path_factory.mktemp("clips")
    builder = builder_module.Builder(config="v2.2_clips32x2", data_dir=str(root / "data"))
    with pytest.MonkeyPatch.context() as patch:
        for name, value in _env(e2e, "clips-cache").items():
            if name.startswith("AVA_KEYFRAMES_"):
                patch.setenv(name, value)
        patch.setenv("AVA_KEYFRAMES_CACHE", str(root / "cache"))
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(e2e["manual"])))
    keyframes = builder_module.Builder(config="v2.2", data_dir=str(builds["plain"]))
    return {"clips": builder, "keyframes": keyframes,
            "report": json.loads((Path(builder.data_dir) / "build_report.json").read_text())}


def _by_key(builder, split: str) -> dict[str, dict]:
    return {f"{ex['video_id'].decode()}_{int(ex['timestamp']):04d}": clips.decode_example(ex)
            for ex in tfds.as_numpy(builder.as_dataset(split=split))}


@pytest.mark.slow
def test_clip_config_keyframe_features_equal_the_keyframe_configs(clip_build):
    for split in ("train", "validation"):
        clips, keyframes = _by_key(clip_build["clips"], split), _by_key(clip_build["keyframes"],
                                                                         split)
        assert set(clips) == set(keyframes) and len(clips) > 0
        for key, example in clips.items():
            assert set(example) == {*keyframes[key], "clip", "clip_padded"}
            np.testing.assert_array_equal(example["image"], keyframes[key]["image"])
            for field, value in example["objects"].items():
                np.testing.assert_array_equal(value, keyframes[key]["objects"][field])


def _expected_clip(info, second: int, length: int, stride: int) -> tuple[list[int], int]:
    """Stamps of the clip frames the rule names (the first frame at or after each time, the
    nearest frame outside the video), and how many are padding."""
    last = math.ceil((info.start + info.seconds) * info.fps) - 1
    stamps, padded = [], 0
    for k in range(length):
        time = second + Fraction((k - length // 2) * stride, 30)
        index = math.ceil(time * info.fps)
        padded += time < 0 or index > last
        stamps.append(min(max(index, 0), last))
    return stamps, padded


@pytest.mark.slow
def test_every_clip_frame_is_the_frame_the_rule_names(e2e, clip_build):
    seen_padded = 0
    for split in ("train", "validation"):
        for key, example in _by_key(clip_build["clips"], split).items():
            stamps, padded = _expected_clip(e2e["info"], int(example["timestamp"]), 32, 2)
            assert example["clip"].shape == (32, 256, 341, 3), key  # shorter side 256
            assert [read_frame_stamp(frame) for frame in example["clip"]] == stamps, key
            assert example["clip_padded"] == padded, key
            seen_padded += padded
    assert seen_padded > 0  # the clips of 904 end past the last frame


@pytest.mark.slow
def test_clips_past_the_end_come_from_a_window_that_reaches_the_video_s_end(e2e, clip_build):
    """Issue 23: a window reaching the video's end holds it to its last frame, so clips past
    the end are served (and padded, see above) from the window, not refused or dropped."""
    report, info = clip_build["report"], e2e["info"]
    assert report["options"]["clip_length"] == 32 and report["options"]["clip_stride"] == 2
    for split, csv_split in (("train", "train"), ("validation", "val")):
        fetched_videos = report["splits"][split]["videos_fetched"]
        for video_id in info.ids[csv_split]:
            if video_id in (e2e["missing"], e2e["broken"]):
                continue
            fetched = fetched_videos[video_id]
            assert fetched["fetch_mode"] == "window" and "note" not in fetched
            assert fetched["bytes_fetched"] > 0
        assert report["splits"][split]["keyframes_skipped"].get("frame not extracted", 0) == 0


@pytest.mark.slow
def test_the_detector_reads_a_clip_configs_keyframes_and_leaves_clips_encoded(clip_build):
    from detector import data

    builder = clip_build["clips"]
    info = data.dataset_info(builder.info.full_name.rsplit("/", 1)[0], builder.data_dir_root)
    assert data.load_split(info, "train", builder.data_dir_root).element_spec["clip"].dtype \
        == tf.string  # not decoded: the detector never looks at it
    images, targets = next(iter(data.train_batches(info, "train", image_size=64, batch_size=2,
                                                   data_dir=builder.data_dir_root)))
    assert images.shape == (2, 64, 64, 3) and targets["classes"].shape[-1] == 80


@pytest.mark.slow
def test_clips_batch_in_tf_data(clip_build):
    ds = clip_build["clips"].as_dataset(split="train").map(
        functools.partial(clips.decode_clip, length=32), num_parallel_calls=2)
    assert ds.element_spec["clip"].shape.as_list() == [32, None, None, 3]
    frames, padded = next(iter(ds.map(lambda ex: (ex["clip"], ex["clip_padded"])).batch(2)))
    assert frames.shape == (2, 32, 256, 341, 3) and frames.dtype == "uint8"
    assert padded.shape == (2,)
    batch = next(iter(tfds.as_numpy(ds.padded_batch(3))))
    assert batch["clip"].shape == (3, 32, 256, 341, 3) and batch["objects"]["labels"].ndim == 3
    # the dataset card's recipe: clips cropped to one size, then batched with their targets
    cropped = ds.map(lambda ex: (tf.image.resize_with_crop_or_pad(ex["clip"], 224, 224),
                                 ex["objects"]["bbox"], ex["objects"]["labels"]))
    frames, boxes, labels = next(iter(cropped.padded_batch(3)))
    assert frames.shape == (3, 32, 224, 224, 3) and frames.dtype == "uint8"
    assert boxes.shape[::2] == (3, 4) and labels.shape[::2] == (3, 80)


@pytest.mark.slow
def test_export_csv_writes_images_annotations_and_classes(e2e, builds, loaded, tmp_path):
    out = tmp_path / "export"
    code = cli_main(["export-csv", "--data-dir", str(builds["plain"]), "--split", "validation",
                     "--out", str(out)])
    assert code == 0
    with open(out / "annotations.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    validation = {k: ex for k, ex in loaded["examples"].items() if ex["split"] == "validation"}
    expected_rows = []
    for key, example in validation.items():
        if not example["person_id"]:
            expected_rows.append([f"images/{key}.jpg", "", "", "", "", ""])
        for pixels, labels in zip(example["box_pixels"], example["labels"], strict=True):
            corners = [str(round(v)) for v in pixels]
            expected_rows += [[f"images/{key}.jpg", *corners, LABELMAP.names[label]]
                              for label in labels]
    assert sorted(rows) == sorted(expected_rows)
    assert {p.name for p in (out / "images").iterdir()} == {f"{k}.jpg" for k in validation}
    with open(out / "classes.csv", newline="") as handle:
        classes = list(csv.reader(handle))
    assert classes == [[name, str(i)] for i, name in enumerate(LABELMAP.names)]


@pytest.mark.slow
def test_export_csv_unknown_split_is_a_one_line_error(builds, tmp_path, capsys):
    code = cli_main(["export-csv", "--data-dir", str(builds["plain"]), "--split", "test",
                     "--out", str(tmp_path / "x")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ava-keyframes: error: ") and "'test'" in err[-1]
    assert not any("Traceback" in line for line in err)


@pytest.mark.slow
def test_export_csv_into_a_file_is_a_one_line_error(builds, tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("not a folder")
    code = cli_main(["export-csv", "--data-dir", str(builds["plain"]), "--split", "validation",
                     "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ava-keyframes: error: ") and str(out) in err[0]
    assert out.read_text() == "not a folder"
