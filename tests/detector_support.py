"""Tiny TFDS detection datasets for the detector tests, built in a temporary folder.

`detector_toy_ava` has the features of `ava_keyframes` (JPEG image, video_id, timestamp,
objects with bbox, box_pixels, multi-hot AVA action labels per person, person_id) and the
real 80-class AVA label map; `detector_toy_voc` has VOC's single `objects/label`. Each
image shows coloured figures whose colour is their first action and, for a second action,
a white band across the figure, on a grey background: enough for a loss to fall quickly.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from ava_keyframes.ava_keyframes_dataset_builder import LocalInfo
from ava_keyframes.features import keyframe_features
from ava_keyframes.labelmap import default_labelmap_path, read_labelmap

LABELMAP = read_labelmap(default_labelmap_path())
# (action id, colour): sit, stand, walk; carry/hold (17) is drawn as a second action.
POSES = {11: (220, 40, 40), 12: (40, 200, 40), 14: (40, 60, 220)}
SECOND_ACTION = 17
SIZE = (64, 96)  # height, width: not square, so letterboxing matters


Figure = tuple[tuple[float, float, float, float], tuple[int, ...]]


def figures(rng: np.random.Generator, count: int) -> list[Figure]:
    """`count` non-overlapping figures: (normalized ymin, xmin, ymax, xmax), action ids."""
    result = []
    slots = rng.permutation(3)[:count]
    for slot in slots:
        x0 = 0.05 + slot * 0.32 + rng.uniform(0, 0.05)
        y0 = rng.uniform(0.05, 0.3)
        pose = int(rng.choice(list(POSES)))
        actions = (pose, SECOND_ACTION) if rng.random() < 0.4 else (pose,)
        result.append(((y0, x0, y0 + rng.uniform(0.5, 0.65), x0 + 0.22), actions))
    return result


def draw(boxes_actions) -> np.ndarray:
    height, width = SIZE
    image = np.full((height, width, 3), 128, np.uint8)
    for (ymin, xmin, ymax, xmax), actions in boxes_actions:
        y1, y2 = int(ymin * height), int(ymax * height)
        x1, x2 = int(xmin * width), int(xmax * width)
        image[y1:y2, x1:x2] = POSES[actions[0]]
        if SECOND_ACTION in actions:
            middle = (y1 + y2) // 2
            image[middle - 2:middle + 2, x1:x2] = 255
    return image


def examples(seed: int, count: int):
    rng = np.random.default_rng(seed)
    for index in range(count):
        content = figures(rng, int(rng.integers(1, 4)))
        yield index, content, draw(content)


class DetectorToyAva(tfds.core.GeneratorBasedBuilder):
    """ava_keyframes-shaped toy data: 8 train and 4 validation keyframes of 2 videos."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return LocalInfo(  # no empty tmp*tfds folder left behind
            builder=self,
            features=keyframe_features(LABELMAP.names),
        )

    def _split_generators(self, dl_manager):
        return {
            "train": self._generate_examples("trainvideo0", seed=1, count=8),
            "validation": self._generate_examples("validvideo0", seed=2, count=4),
        }

    def _generate_examples(self, video_id: str, seed: int, count: int):
        height, width = SIZE
        for index, content, image in examples(seed, count):
            second = 902 + index
            yield f"{video_id}_{second:04d}", {
                "image": image,
                "video_id": video_id,
                "timestamp": second,
                "objects": [
                    {
                        "bbox": tfds.features.BBox(*box),
                        "box_pixels": np.array(
                            [box[1] * width, box[0] * height, box[3] * width, box[2] * height],
                            np.float32,
                        ),
                        "labels": [LABELMAP.index_of(a) for a in actions],
                        "person_id": person,
                    }
                    for person, (box, actions) in enumerate(content)
                ],
            }


class DetectorToyVoc(tfds.core.GeneratorBasedBuilder):
    """VOC-shaped toy data: one ClassLabel per box (the pose), 6 train and 3 test images."""

    VERSION = tfds.core.Version("1.0.0")
    CLASSES = ["sit", "stand", "walk"]

    def _info(self):
        return LocalInfo(  # no empty tmp*tfds folder left behind
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "objects": tfds.features.Sequence({
                    "bbox": tfds.features.BBoxFeature(),
                    "label": tfds.features.ClassLabel(names=self.CLASSES),
                }),
            }),
        )

    def _split_generators(self, dl_manager):
        return {
            "train": self._generate_examples(seed=3, count=6),
            "test": self._generate_examples(seed=4, count=3),
        }

    def _generate_examples(self, seed: int, count: int):
        poses = list(POSES)
        for index, content, image in examples(seed, count):
            yield index, {
                "image": image,
                "objects": [
                    {"bbox": tfds.features.BBox(*box), "label": poses.index(actions[0])}
                    for box, actions in content
                ],
            }


def build(data_dir: str) -> None:
    """Build both toy datasets under `data_dir` (a second or two)."""
    for builder_class in (DetectorToyAva, DetectorToyVoc):
        builder_class(data_dir=data_dir).download_and_prepare()
