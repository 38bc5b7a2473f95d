"""How the TFDS writer of an `ava_keyframes` build holds and cuts its records: memory that
does not grow with the dataset, shards of the size TFDS recommends for large datasets."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

from tensorflow_datasets.core import download
from tensorflow_datasets.core import shuffle as tfds_shuffle
from tensorflow_datasets.core.utils import shard_utils

SHUFFLE_BUFFER_BYTES = 8 << 20
"""Serialized examples the TFDS writer holds in memory before it spills them to its bucket
files. TFDS's default, 1 GB, made a build's peak memory grow with the dataset until the
dataset passed 1 GB."""

MIN_SHARD_BYTES = 128 << 20
"""Smallest shard. TFDS picks a power-of-two shard count with every shard at least this
big, so shards land between this and twice this: 128-256 MiB, inside the 100 MB-1 GB that
TFDS recommends (its own default, 64 MiB, gives 64-128 MiB shards)."""


@contextlib.contextmanager
def shuffle_buffer(limit: int = SHUFFLE_BUFFER_BYTES) -> Iterator[None]:
    """Cap the TFDS writer's in-memory shuffle buffer while a build writes. TFDS has no
    setting for it: it is the module constant ``shuffle.MAX_MEM_BUFFER_SIZE``, read each time
    a record is added. The order of the records does not depend on it (they are sorted by
    their hashed keys either way)."""
    default, tfds_shuffle.MAX_MEM_BUFFER_SIZE = tfds_shuffle.MAX_MEM_BUFFER_SIZE, limit
    try:
        yield
    finally:
        tfds_shuffle.MAX_MEM_BUFFER_SIZE = default


@dataclasses.dataclass(frozen=True)
class RecommendedShards(shard_utils.ShardConfig):
    """TFDS's shard config with MIN_SHARD_BYTES. A subclass, because TFDS (4.9) counts
    shards in a classmethod that reads the class's sizes, not the instance's: a
    ``DownloadConfig(min_shard_size=...)`` has no effect on the shards."""

    min_shard_size: int = MIN_SHARD_BYTES


@dataclasses.dataclass
class _RecommendedDownload(download.DownloadConfig):
    def get_shard_config(self) -> shard_utils.ShardConfig:
        return RecommendedShards(num_shards=self.num_shards)


def shard_sizes(config: download.DownloadConfig) -> download.DownloadConfig:
    """``config``, its shards cut as RecommendedShards unless the user chose a shard count
    or size."""
    if (config.num_shards or config.min_shard_size != shard_utils.DEFAULT_MIN_SHARD_SIZE
            or config.max_shard_size != shard_utils.DEFAULT_MAX_SHARD_SIZE):
        return config
    return _RecommendedDownload(**{field.name: getattr(config, field.name)
                                   for field in dataclasses.fields(config)})
