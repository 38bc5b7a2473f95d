"""The TFDS features of `ava_keyframes` (declared once, here) and the multi-label feature.

AVA is multi-label: a person does several actions at once. ``MultiHotClassLabel`` stores a
person's actions as a fixed-shape bool vector over the classes, so that examples batch
with ``padded_batch`` (objects become ``[N, 80]``, no nested ragged sequences), while it
keeps a ``ClassLabel``'s names (``names``, ``int2str``, the ``.labels.txt`` file), which
``tfds.as_dataframe`` shows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import tensorflow_datasets as tfds


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


def keyframe_features(class_names: Sequence[str]) -> tfds.features.FeaturesDict:
    """The features of one example: a keyframe with its persons."""
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        "video_id": tfds.features.Text(),
        "timestamp": tfds.features.Scalar(dtype=np.int32),
        "objects": tfds.features.Sequence({
            "bbox": tfds.features.BBoxFeature(),
            "box_pixels": tfds.features.Tensor(shape=(4,), dtype=np.float32),
            "labels": MultiHotClassLabel(names=list(class_names)),
            "person_id": tfds.features.Scalar(dtype=np.int32),
        }),
    })
