"""AVA Actions keyframes: label maps, annotations, videos, frames and the TFDS builder.

Importing the package registers the TFDS dataset ``ava_keyframes`` (so ``tfds.load`` and
``tfds build --imports ava_keyframes`` find it).
"""

from ava_keyframes.annotations import (
    AnnotationError,
    Annotations,
    Person,
    Rejection,
    check_video_id,
    read_annotations,
    read_excluded,
)
from ava_keyframes.ava_keyframes_dataset_builder import AvaKeyframesConfig, Builder, pixel_box
from ava_keyframes.frames import KeyframeError, MissingKeyframes, extract_keyframes
from ava_keyframes.labelmap import (
    LabelMap,
    LabelMapError,
    default_labelmap_path,
    evaluation_labelmap_path,
    read_labelmap,
    write_classes_csv,
)
from ava_keyframes.media import VideoError, check_video, ffmpeg_binary
from ava_keyframes.sources import FetchResult, VideoCache
from ava_keyframes.stamp import read_frame_stamp, write_stamped_video
from ava_keyframes.synth import CorpusInfo, make_corpus

__all__ = [
    "AnnotationError",
    "Annotations",
    "AvaKeyframesConfig",
    "Builder",
    "CorpusInfo",
    "FetchResult",
    "KeyframeError",
    "LabelMap",
    "LabelMapError",
    "MissingKeyframes",
    "Person",
    "Rejection",
    "VideoCache",
    "VideoError",
    "check_video",
    "check_video_id",
    "default_labelmap_path",
    "evaluation_labelmap_path",
    "extract_keyframes",
    "ffmpeg_binary",
    "make_corpus",
    "pixel_box",
    "read_annotations",
    "read_excluded",
    "read_frame_stamp",
    "read_labelmap",
    "write_classes_csv",
    "write_stamped_video",
]
