"""End to end through the library APIs, in about a minute on a laptop CPU:

1. a small synthetic AVA corpus (`ava_keyframes.synth`: videos whose frames carry their own
   time stamp, and AVA-format annotation CSVs);
2. `download_and_prepare` of `ava_keyframes/v2.2` (what `tfds build` runs), videos taken from
   the manual folder;
3. `tfds.load` of the validation split;
4. a tiny RetinaNet (`detector.model.build_model`) trained with stock Keras `fit` on
   `detector.data.train_batches`;
5. the official AVA frame-mAP of its detections (`detector.predict.evaluate_model`).

    python examples/end_to_end.py [OUT]     # OUT defaults to a new temporary folder

The numbers are tiny on purpose: the model learns little in 2 epochs, the point is the calls.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path


def build(out: Path) -> str:
    """Steps 1 and 2: the corpus, then the TFDS build; returns the data dir."""
    import tensorflow_datasets as tfds

    import ava_keyframes  # noqa: F401 - registers the `ava_keyframes` dataset
    from ava_keyframes.synth import make_corpus

    corpus = make_corpus(out / "corpus", videos=4, seconds=4, size=(160, 120), seed=0)
    manual = out / "manual"
    shutil.copytree(corpus.annotations_dir, manual / "annotations")
    shutil.copytree(corpus.root / "videos", manual / "videos")
    os.environ["AVA_KEYFRAMES_SOURCES"] = "local"  # only the manual folder: no network
    os.environ["AVA_KEYFRAMES_CACHE"] = str(out / "cache")
    data_dir = str(out / "tensorflow_datasets")
    builder = tfds.builder("ava_keyframes/v2.2", data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    return data_dir


def main(out: Path) -> float:
    data_dir = build(out)
    import keras
    import tensorflow_datasets as tfds

    from detector.data import dataset_info, train_batches
    from detector.model import build_model, compile_model
    from detector.predict import evaluate_model

    validation = tfds.load("ava_keyframes/v2.2", split="validation", data_dir=data_dir)
    first = next(iter(tfds.as_numpy(validation)))
    print(f"tfds.load: {len(validation)} validation keyframes; the first is "
          f"{first['video_id'].decode()} second {first['timestamp']}, image "
          f"{first['image'].shape}, {len(first['objects']['bbox'])} person(s)")

    keras.utils.set_random_seed(0)
    info = dataset_info("ava_keyframes/v2.2", data_dir)
    model = build_model(info.num_classes, image_size=128, backbone="resnet18",
                        backbone_width=0.25, fpn_channels=16, head_channels=16, head_depth=1,
                        class_names=info.class_names, class_ids=info.class_ids)
    compile_model(model, lr=1e-3)
    batches = train_batches(info, "train", image_size=128, batch_size=4, data_dir=data_dir)
    history = model.fit(batches, epochs=2, steps_per_epoch=4, shuffle=False, verbose=2)
    print(f"fit: loss {history.history['loss'][0]:.3f} -> {history.history['loss'][-1]:.3f}")

    result = evaluate_model(model, info, "validation", data_dir=data_dir,
                            detections_csv=out / "detections.csv")
    print(f"evaluate: frame-mAP {result.mAP:.4f} over {len(validation)} keyframes; "
          f"detections in {out / 'detections.csv'}")
    return result.mAP


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="ava-e2e-")))
