"""The TFDS features of `ava_keyframes` (declared once, here, with the example that fills
them) and the multi-label feature.

AVA is multi-label: a person does several actions at once. ``MultiHotClassLabel`` stores a
person's actions as a fixed-shape bool vector over the classes, so that examples batch
with ``padded_batch`` (objects become ``[N, 80]``, no nested ragged sequences), while it
keeps a ``ClassLabel``'s names (``names``, ``int2str``, the ``.labels.txt`` file), which
``tfds.as_dataframe`` shows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from ava_keyframes.annotations import Person
from ava_keyframes.finished import EncodedFrame
from ava_keyframes.labelmap import LabelMap
from ava_keyframes.plan import pixel_box


class MultiHotClassLabel(tfds.features.ClassLabel):
    """Several classes at once: a ``bool`` vector of ``num_classes`` entries.

    Encodes a list of class indices or names; decodes to the vector, so ``labels[k]`` is
    True when class ``k`` applies. ``names`` and ``int2str`` work as for ``ClassLabel``.
    """

    def __init__(
        self,
        *,
        num_classes: int | None = None,
        names: Iterable[str] | None = None,
        names_file: str | None = None,
        doc: tfds.features.Documentation | str | None = None,
    ) -> None:
        super().__init__(num_classes=num_classes, names=names, names_file=names_file, doc=doc)
        if self.num_classes is None:
            raise ValueError("MultiHotClassLabel needs num_classes, names or names_file")
        tfds.features.Tensor.__init__(self, shape=(self.num_classes,), dtype=np.bool_, doc=doc)

    def encode_example(self, example_data: Iterable[int | str]) -> np.ndarray:
        """Class indices or names -> the bool vector; an index out of range raises."""
        hot = np.zeros(self.num_classes, dtype=np.bool_)
        for label in example_data:
            index = self.str2int(label) if isinstance(label, str) else int(label)
            if not 0 <= index < self.num_classes:
                raise ValueError(f"class index {index} outside 0..{self.num_classes - 1}")
            hot[index] = True
        return hot

    def repr_html(self, ex: np.ndarray) -> str:
        """The names of the classes that are on (for ``tfds.as_dataframe``)."""
        return ", ".join(f"{i} ({self.int2str(int(i))})" for i in np.flatnonzero(ex)) or "-"


def keyframe_features(class_names: Sequence[str], clip_length: int | None = None,
                      clip_encoding: str = "h264") -> tfds.features.FeaturesDict:
    """The features of one example: a keyframe with its persons; with ``clip_length``, also
    the ``clip`` of that many frames around it and ``clip_padded``, how many of them repeat
    the video's first or last frame. ``clip_encoding`` "jpeg": the clip is a ``Video`` of
    JPEG frames (decoded by TFDS); "h264": the bytes of one H.264 stream, decoded by
    ``ava_keyframes.clips.decode_clip`` / ``decode_example``."""
    features = {
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        "video_id": tfds.features.Text(),
        "timestamp": tfds.features.Scalar(dtype=np.int32),
        "objects": tfds.features.Sequence({
            "bbox": tfds.features.BBoxFeature(),
            "box_pixels": tfds.features.Tensor(shape=(4,), dtype=np.float32),
            "labels": MultiHotClassLabel(names=list(class_names)),
            "person_id": tfds.features.Scalar(dtype=np.int32),
        }),
    }
    if clip_length is not None:
        features["clip"] = (
            tfds.features.Video(shape=(clip_length, None, None, 3), encoding_format="jpeg")
            if clip_encoding == "jpeg" else tfds.features.Tensor(
                shape=(), dtype=np.object_,
                doc=f"{clip_length} frames as one H.264 stream: ava_keyframes.clips.decode"))
        features["clip_padded"] = tfds.features.Scalar(
            dtype=np.int32, doc="clip frames before the video's first frame or after its last "
                                "(they repeat the nearest frame)")
    return tfds.features.FeaturesDict(features)


def example(video_id: str, persons: Sequence[Person], frame: EncodedFrame,
            labelmap: LabelMap, clip_encoding: str = "h264") -> dict[str, Any]:
    """One example of :func:`keyframe_features` from a stored keyframe (with its clip in a
    clip config: its frames' JPEGs, or its one H.264 stream, as ``clip_encoding`` says)."""
    width, height = frame.width, frame.height
    values = {
        "image": frame.jpeg,
        "video_id": video_id,
        "timestamp": frame.second,
        "objects": [
            {
                "bbox": tfds.features.BBox(
                    ymin=person.box[1], xmin=person.box[0], ymax=person.box[3], xmax=person.box[2]
                ),
                "box_pixels": pixel_box(person.box, width, height),
                "labels": [labelmap.index_of(action) for action in person.actions],
                "person_id": person.person_id,
            }
            for person in persons
        ],
    }
    if frame.clip is not None:
        values["clip"] = frame.clip if clip_encoding == "jpeg" else frame.clip[0]
        values["clip_padded"] = frame.clip_padded
    return values
