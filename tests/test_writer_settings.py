"""The TFDS writer settings of a build (`ava_keyframes.writer_settings`): the shuffle buffer
is capped while a build writes, shards are cut at the size TFDS recommends, and a real
`tfds build` of four times the videos peaks at the same memory."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorflow_datasets.core import download
from tensorflow_datasets.core import shuffle as tfds_shuffle
from tensorflow_datasets.core.utils import shard_utils

from ava_keyframes.mirror import LoopbackMirror
from ava_keyframes.stamp import write_stamped_video
from ava_keyframes.writer_settings import (
    MIN_SHARD_BYTES,
    SHUFFLE_BUFFER_BYTES,
    shard_sizes,
    shuffle_buffer,
)

TFDS_CLI = str(Path(sys.executable).parent / "tfds")


def test_the_shuffle_buffer_is_capped_only_while_a_build_writes():
    default = tfds_shuffle.MAX_MEM_BUFFER_SIZE
    with shuffle_buffer():
        assert tfds_shuffle.MAX_MEM_BUFFER_SIZE == SHUFFLE_BUFFER_BYTES < default
    assert tfds_shuffle.MAX_MEM_BUFFER_SIZE == default


def test_shards_are_128_to_256_mib_unless_the_user_chose():
    config = shard_sizes(download.DownloadConfig()).get_shard_config()
    for total in (10 << 30, 27 << 30):  # AVA v2.2 trainval: ~27 GB at full size
        count = config.get_number_shards(total, num_examples=270_000)
        assert MIN_SHARD_BYTES <= total / count < 2 * MIN_SHARD_BYTES
    default_count = shard_utils.ShardConfig().get_number_shards(10 << 30, 270_000)
    assert (10 << 30) / default_count < 100e6  # what TFDS's own default gives: 80 MiB
    chosen = download.DownloadConfig(min_shard_size=1 << 20)
    assert shard_sizes(chosen) is chosen
    assert shard_sizes(download.DownloadConfig(num_shards=3)).num_shards == 3


SECONDS = 30


def _build_peak_rss(root: Path, videos: int) -> tuple[int, int]:
    """Peak RSS (bytes) of a `tfds build` of ``videos`` train videos of SECONDS 720p
    keyframes (and one validation video), and the dataset's bytes."""
    annotations = root / f"manual{videos}" / "annotations"
    annotations.mkdir(parents=True)
    ids = [f"memoryVid{i:02d}" for i in range(videos + 1)]
    for index, video_id in enumerate(ids):
        split = "val" if index == videos else "train"
        with open(annotations / f"ava_{split}_v2.2.csv", "a", newline="") as out:
            csv.writer(out).writerows([video_id, f"{s:04d}", 0.1, 0.2, 0.5, 0.9, 12, 0]
                                      for s in range(SECONDS))
        if not (root / "served" / f"{video_id}.mp4").exists():
            os.link(root / "video.mp4", root / "served" / f"{video_id}.mp4")
    for split in ("train", "val"):
        (annotations / f"ava_{split}_excluded_timestamps_v2.2.csv").write_text("")
    with LoopbackMirror(root / "served") as mirror:
        env = {**os.environ, "AVA_KEYFRAMES_SOURCES": "mirror",
               "AVA_KEYFRAMES_MIRROR": mirror.url, "TF_CPP_MIN_LOG_LEVEL": "3",
               "AVA_KEYFRAMES_ANNOTATIONS_URL": "http://127.0.0.1:9/ava_v{version}.zip",
               "AVA_KEYFRAMES_CACHE": str(root / f"cache{videos}")}
        process = subprocess.Popen(  # noqa: S603
            [TFDS_CLI, "build", "ava_keyframes", "--imports", "ava_keyframes", "--config",
             "v2.2", "--manual_dir", str(annotations.parent), "--data_dir",
             str(root / f"data{videos}")], env=env, cwd=root, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        errors = process.stderr.read()
        _, status, usage = os.wait4(process.pid, 0)
    assert status == 0, errors[-3000:]
    folder = root / f"data{videos}" / "ava_keyframes" / "v2.2" / "2.0.0"
    return usage.ru_maxrss * 1024, sum(p.stat().st_size for p in folder.glob("*.tfrecord-*"))


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_number_of_videos(tmp_path):
    """2 then 8 train videos of 720p keyframes (~280 KB each: 50 MB more data). With TFDS's
    1 GB shuffle buffer every record stays in memory until the shards are written, so the
    larger build peaked ~50 MB higher; capped, the two peak alike."""
    (tmp_path / "served").mkdir()
    write_stamped_video(tmp_path / "video.mp4", duration=SECONDS + 1, fps=5, size=(1280, 720))
    small_rss, small_bytes = _build_peak_rss(tmp_path, 2)
    large_rss, large_bytes = _build_peak_rss(tmp_path, 8)
    more_data = large_bytes - small_bytes
    assert more_data > 40 << 20  # the data grew enough to show in memory if it were held
    assert large_rss - small_rss < 0.3 * more_data, (small_rss, large_rss, more_data)
    assert large_rss < 1.1 * small_rss
