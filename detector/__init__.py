"""KerasCV RetinaNet trained and scored on AVA keyframes (`ava-detector`).

``import detector`` is cheap (the CLI's CSV evaluation never loads TensorFlow), yet it makes
``keras.models.load_model("model.keras")`` work on a model saved by ``ava-detector train``:
the classes in `detector.model` are registered with Keras at once when Keras is already
imported, else right after it is.
"""

from ava_keyframes.import_hooks import import_after

import_after("keras", "detector.model")
