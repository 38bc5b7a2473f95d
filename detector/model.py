"""KerasCV RetinaNet for multi-label detection, built from explicit configs (no hub download).

KerasCV's RetinaNet is single-label: its label encoder gives each anchor one class and
`compute_loss` one-hot encodes it; its default decoder drops scores under 0.5.
AVA persons carry several actions, and AP needs low-score detections, so this module swaps
KerasCV's parts at their seams:

- `MultiLabelEncoder` (a `RetinaNetLabelEncoder`): the classification target of a positive
  anchor is the multi-hot vector of all classes of its matched box.
- `MultiLabelRetinaNet.compute_loss`: sigmoid focal loss on those multi-hot targets.
- `PerClassNMS`: KerasCV's `MultiClassNonMaxSuppression` with a 0.05 score threshold, so
  low-score detections reach AP and one box can carry several classes.
- `PyramidNeck` and `ConvHead`: KerasCV's feature pyramid and heads with their hard-coded
  256 channels and depth made options (256 channels and 4 layers, as in the paper, by default).

Batches are `(images, {"boxes": [B, N, 4], "classes": [B, N, C]})`: float images in 0..255,
`xyxy` pixel boxes padded with -1, and per-box multi-hot classes padded with 0 (KerasCV's
"one-hot classes" layout, which single-label data such as Pascal VOC fills with one 1).
Backbones are in `detector.backbones`; the KerasCV internals relied on in `detector.kerascv`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import keras
import keras_cv
import numpy as np
import tensorflow as tf
from keras_cv import bounding_box

from detector.backbones import BOX_FORMAT, ModelError, build_backbone, with_input_size
from detector.kerascv import BOX_VARIANCE, encode_box_to_deltas, target_gather

__all__ = ["BOX_FORMAT", "ModelError", "build_backbone"]

PRIOR_PROBABILITY = 0.01
_PACKAGE = "detector"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PyramidNeck(keras.layers.Layer):
    """KerasCV's `FeaturePyramid` (P3-P7 from C3-C5) with `channels` instead of a fixed 256."""

    def __init__(self, channels: int = 256, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.lateral = [keras.layers.Conv2D(channels, 1, name=f"lateral_c{i}") for i in (3, 4, 5)]
        self.output_convs = [
            keras.layers.Conv2D(channels, 3, padding="same", name=f"output_p{i}") for i in (3, 4, 5)
        ]
        self.conv_p6 = keras.layers.Conv2D(channels, 3, strides=2, padding="same", name="p6")
        self.conv_p7 = keras.layers.Conv2D(channels, 3, strides=2, padding="same", name="p7")
        self.upsample = keras.layers.UpSampling2D(2)

    def build(self, input_shape):
        shapes = [input_shape[level] for level in ("P3", "P4", "P5")]
        for conv, shape in zip(self.lateral, shapes, strict=True):
            conv.build(shape)
        inner = (None, None, None, self.channels)
        for conv in self.output_convs:
            conv.build(inner)
        self.conv_p6.build(shapes[2])
        self.conv_p7.build(inner)
        self.built = True

    def call(self, inputs):
        c3, c4, c5 = inputs["P3"], inputs["P4"], inputs["P5"]
        p5 = self.lateral[2](c5)
        p4 = self.lateral[1](c4) + self.upsample(p5)
        p3 = self.lateral[0](c3) + self.upsample(p4)
        p3, p4, p5 = (conv(p) for conv, p in zip(self.output_convs, (p3, p4, p5), strict=True))
        p6 = self.conv_p6(c5)
        p7 = self.conv_p7(keras.ops.relu(p6))
        return p3, p4, p5, p6, p7

    def compute_output_shape(self, input_shape):
        p3, p4, p5 = (input_shape[k] for k in ("P3", "P4", "P5"))
        return tuple((s[0], None, None, self.channels) for s in (p3, p4, p5, p5, p5))

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConvHead(keras.layers.Layer):
    """KerasCV's `PredictionHead` with `channels` and `depth` as options.

    The last convolution computes in float32 so that logits and box deltas stay float32
    under mixed precision.
    """

    def __init__(
        self,
        output_filters: int,
        channels: int = 256,
        depth: int = 4,
        bias_prior: float | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.output_filters = output_filters
        self.channels = channels
        self.depth = depth
        self.bias_prior = bias_prior
        bias = (
            keras.initializers.Constant(-np.log((1 - bias_prior) / bias_prior))
            if bias_prior
            else "zeros"
        )
        self.convs = [
            keras.layers.Conv2D(
                channels,
                3,
                padding="same",
                activation="relu",
                kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                name=f"conv{i}",
            )
            for i in range(depth)
        ]
        self.prediction = keras.layers.Conv2D(
            output_filters,
            3,
            padding="same",
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            bias_initializer=bias,
            dtype="float32",
            name="prediction",
        )

    def build(self, input_shape):
        shape = tuple(input_shape)
        for conv in self.convs:
            conv.build(shape)
            shape = shape[:-1] + (self.channels,)
        self.prediction.build(shape)
        self.built = True

    def call(self, x):
        for conv in self.convs:
            x = conv(x)
        return self.prediction(x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_filters,)

    def get_config(self):
        return {
            **super().get_config(),
            "output_filters": self.output_filters,
            "channels": self.channels,
            "depth": self.depth,
            "bias_prior": self.bias_prior,
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MultiLabelEncoder(keras_cv.models.retinanet.LabelEncoder):
    """`RetinaNetLabelEncoder` whose class target is multi-hot: `[B, anchors, C]`.

    Positive anchors get the multi-hot row of their matched box (every action of a
    person), background anchors all zeros, ignored anchors (IoU between the two
    thresholds) all `ignore_class` (-2).
    """

    def _encode_sample(self, box_labels, anchor_boxes, image_shape):
        gt_boxes = box_labels["boxes"]
        gt_classes = box_labels["classes"]
        iou = bounding_box.compute_iou(
            anchor_boxes, gt_boxes, bounding_box_format=self.bounding_box_format,
            image_shape=image_shape,
        )
        matched_idx, matched_vals = self.box_matcher(iou)
        matched_vals = keras.ops.expand_dims(matched_vals, axis=-1)
        positive = keras.ops.equal(matched_vals, 1)
        ignored = keras.ops.equal(matched_vals, -2)
        matched_boxes = target_gather(gt_boxes, matched_idx)
        box_target = encode_box_to_deltas(
            anchors=anchor_boxes,
            boxes=keras.ops.reshape(matched_boxes, (-1, keras.ops.shape(matched_boxes)[1], 4)),
            anchor_format=self.bounding_box_format,
            box_format=self.bounding_box_format,
            variance=self.box_variance,
            image_shape=image_shape,
        )
        matched_classes = keras.ops.cast(
            target_gather(gt_classes, matched_idx), box_target.dtype
        )
        cls_target = keras.ops.where(positive, matched_classes, 0.0)
        # KerasCV's guard: an anchor matched to a degenerate padding box gives NaN deltas.
        invalid = keras.ops.any(keras.ops.isnan(box_target), axis=-1, keepdims=True)
        cls_target = keras.ops.where(
            keras.ops.logical_or(ignored, invalid), self.ignore_class, cls_target
        )
        box_target = keras.ops.where(invalid, 0.0, box_target)
        # KerasCV's diagnostic: the share of real boxes that some anchor matches.
        real = keras.ops.max(gt_classes, axis=-1) > 0
        matched = keras.ops.any(
            keras.ops.logical_and(
                keras.ops.expand_dims(matched_idx, -1)
                == keras.ops.arange(keras.ops.shape(gt_boxes)[1], dtype=matched_idx.dtype),
                positive,
            ),
            axis=1,
        )
        self.matched_boxes_metric.update_state(
            keras.ops.ones_like(real, "int32"), keras.ops.cast(matched, "int32"),
            sample_weight=keras.ops.cast(real, "float32"),
        )
        return {"boxes": box_target, "classes": cls_target}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PerClassNMS(keras_cv.layers.MultiClassNonMaxSuppression):
    """KerasCV's per-class NMS over sigmoid scores with AP's defaults and float32 maths.

    A box survives for every class whose score passes `confidence_threshold` (0.05, not
    KerasCV RetinaNet's 0.5: AP needs low-score detections), so one person can be detected
    with several actions. What differs from the parent: inputs are cast to float32 (under
    mixed precision they arrive as float16) and `classes` are int32 (-1 padded).
    """

    def __init__(
        self,
        bounding_box_format: str = BOX_FORMAT,
        from_logits: bool = True,
        iou_threshold: float = 0.5,
        confidence_threshold: float = 0.05,
        max_detections: int = 100,
        max_detections_per_class: int | None = None,
        **kwargs,
    ):
        super().__init__(
            bounding_box_format, from_logits, iou_threshold=iou_threshold,
            confidence_threshold=confidence_threshold, max_detections=max_detections,
            max_detections_per_class=max_detections_per_class or max_detections, **kwargs,
        )

    def call(self, box_prediction, class_prediction, images=None, image_shape=None):
        decoded = super().call(
            tf.cast(box_prediction, tf.float32), tf.cast(class_prediction, tf.float32),
            images=images, image_shape=image_shape,
        )
        return {**decoded, "classes": tf.cast(decoded["classes"], tf.int32)}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MultiLabelRetinaNet(keras_cv.models.RetinaNet):
    """KerasCV `RetinaNet` trained with sigmoid focal loss on multi-hot anchor targets.

    It also remembers its class names and dataset class ids (`class_names`, `class_ids`)
    and its input size, so a saved model can label its detections on its own.
    """

    def __init__(
        self,
        *args,
        class_names: Sequence[str] | None = None,
        class_ids: Sequence[int] | None = None,
        feature_pyramid=None,
        **kwargs,
    ):
        if isinstance(feature_pyramid, dict):
            feature_pyramid = keras.layers.deserialize(feature_pyramid)
        super().__init__(*args, feature_pyramid=feature_pyramid, **kwargs)
        self.class_names = list(class_names or [str(i) for i in range(self.num_classes)])
        self.class_ids = list(class_ids or range(1, self.num_classes + 1))
        if len(self.class_names) != self.num_classes or len(self.class_ids) != self.num_classes:
            raise ModelError(
                f"{self.num_classes} classes but {len(self.class_names)} names and "
                f"{len(self.class_ids)} ids"
            )

    @property
    def image_size(self) -> int:
        return int(self.input_shape[1])

    def predict(self, x, *args, **kwargs):
        """Keras's `predict` on batches of `image_size` x `image_size` images. Images of
        other sizes are letterboxed by `detector.predict.detect_images` and by the exported
        `serving_function`; here they are a ModelError rather than a shape error deep inside."""
        shape = getattr(x, "shape", None)
        if shape is not None and len(shape) == 4 and tuple(shape[1:3]) != (self.image_size,) * 2:
            raise ModelError(
                f"predict takes {self.image_size}x{self.image_size} images, got "
                f"{shape[1]}x{shape[2]}: use detector.predict.detect_images or "
                "serving_function for images of any size"
            )
        return super().predict(x, *args, **kwargs)

    def export(self, filepath, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
        """Refused: Keras's `Model.export` would save the raw head outputs (one row per
        anchor, no NMS, a fixed input size). The serving SavedModel (letterboxing, NMS, images
        of any size, class names) is `detector.predict.export` / `ava-detector export`."""
        raise ModelError(
            f"{filepath}: not exported: Model.export() would save raw anchor outputs (no NMS, "
            f"fixed {self.image_size}x{self.image_size} input); use "
            "detector.predict.export(model, folder) or `ava-detector export` for the serving "
            "SavedModel.")

    def decode_predictions(self, predictions, images):
        return super().decode_predictions(_float32(predictions), images)

    def compute_loss(self, x, y, y_pred, sample_weight=None, **kwargs):
        y_pred = _float32(y_pred)  # under mixed precision the outputs are float16
        y = bounding_box.convert_format(
            y, source=self.bounding_box_format,
            target=self.label_encoder.bounding_box_format, images=x,
        )
        box_targets, cls_targets = self.label_encoder(x, y)
        positive = keras.ops.cast(keras.ops.max(cls_targets, axis=-1) > 0, "float32")
        counted = keras.ops.cast(keras.ops.min(cls_targets, axis=-1) >= 0, "float32")
        # Normalised by the number of positive anchors, as in the paper; an image without
        # boxes still trains its background.
        normalizer = keras.ops.maximum(keras.ops.sum(positive), 1.0)
        # Skip RetinaNet.compute_loss (one-hot of one class per anchor); keep Keras's.
        return super(keras_cv.models.RetinaNet, self).compute_loss(
            x=x,
            y={"box": box_targets, "classification": keras.ops.maximum(cls_targets, 0.0)},
            y_pred=y_pred,
            sample_weight={"box": positive / normalizer, "classification": counted / normalizer},
        )

    def compile(self, optimizer="adam", box_loss=None, classification_loss=None, **kwargs):
        """KerasCV's compile with RetinaNet's losses as defaults: sigmoid focal loss (on the
        multi-hot targets) and smooth L1, both summed and normalised in `compute_loss`."""
        super().compile(
            optimizer=optimizer,
            box_loss=box_loss or keras_cv.losses.SmoothL1Loss(l1_cutoff=1.0, reduction="sum"),
            classification_loss=classification_loss
            or keras_cv.losses.FocalLoss(from_logits=True, reduction="sum"),
            **kwargs,
        )

    def get_compile_config(self):
        # Saved with the model so that a snapshot resumes with its optimizer state.
        if not self.compiled:
            return None
        return {
            "optimizer": keras.optimizers.serialize(self.optimizer),
            "jit_compile": bool(self.jit_compile),
        }

    def compile_from_config(self, config):
        self.compile(
            optimizer=keras.optimizers.deserialize(config["optimizer"]),
            jit_compile=config["jit_compile"],
        )
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def get_config(self):
        return {
            **super().get_config(),
            "feature_pyramid": keras.saving.serialize_keras_object(self.feature_pyramid),
            "class_names": self.class_names,
            "class_ids": self.class_ids,
        }


def _quiet_input_structure_warning() -> None:
    # KerasCV's RetinaNet declares a dict input {"images": ...} but its train/test steps and
    # label encoder take the image tensor itself; Keras 3 warns on every call about that.
    warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match")


def _float32(outputs: dict) -> dict:
    return {key: keras.ops.cast(value, "float32") for key, value in outputs.items()}


def build_model(
    num_classes: int,
    *,
    backbone: str | keras.Model = "resnet50",
    image_size: int = 512,
    backbone_width: float = 1.0,
    fpn_channels: int = 256,
    head_channels: int = 256,
    head_depth: int = 4,
    class_names: Sequence[str] | None = None,
    class_ids: Sequence[int] | None = None,
    max_detections: int = 100,
    confidence_threshold: float = 0.05,
    anchor_generator: keras_cv.layers.AnchorGenerator | None = None,
) -> MultiLabelRetinaNet:
    """A multi-label RetinaNet on square `image_size` inputs (0..255 floats).

    `backbone` is a name from `BACKBONES` (randomly initialised) or a KerasCV backbone
    (e.g. one loaded from a preset). Image size must be a multiple of 32 (the P5 stride).
    `anchor_generator` defaults to KerasCV RetinaNet's (P3-P7, 3 scales x 3 aspect ratios);
    the heads predict for as many anchors per location as it makes.
    """
    if image_size <= 0 or image_size % 32:
        raise ModelError(f"image size must be a positive multiple of 32, got {image_size}")
    for option, value in (("fpn channels", fpn_channels), ("head channels", head_channels)):
        if value < 1:
            raise ModelError(f"{option} must be positive, got {value}")
    if head_depth < 0:
        raise ModelError(f"head depth must be >= 0, got {head_depth}")
    if isinstance(backbone, str):
        backbone = build_backbone(backbone, backbone_width)
    backbone = with_input_size(backbone, image_size)
    _quiet_input_structure_warning()
    anchors = anchor_generator or keras_cv.models.RetinaNet.default_anchor_generator(BOX_FORMAT)
    level = next(iter(anchors.anchor_generators.values()))
    num_anchors = len(level.scales) * len(level.aspect_ratios)
    return MultiLabelRetinaNet(
        backbone=backbone,
        num_classes=num_classes,
        bounding_box_format=BOX_FORMAT,
        label_encoder=MultiLabelEncoder(
            bounding_box_format=BOX_FORMAT, anchor_generator=anchors,
            box_variance=BOX_VARIANCE,
        ),
        prediction_decoder=PerClassNMS(
            BOX_FORMAT, max_detections=max_detections, confidence_threshold=confidence_threshold
        ),
        feature_pyramid=PyramidNeck(fpn_channels),
        classification_head=ConvHead(
            num_anchors * num_classes, head_channels, head_depth, bias_prior=PRIOR_PROBABILITY
        ),
        box_head=ConvHead(num_anchors * 4, head_channels, head_depth),
        class_names=class_names,
        class_ids=class_ids,
    )


def compile_model(
    model: MultiLabelRetinaNet, *, lr: float = 1e-4, jit_compile: bool = False
) -> MultiLabelRetinaNet:
    """Compile for training: Adam with keras-retinanet's gradient clipping (norm 10)."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr, global_clipnorm=10.0),
        jit_compile=jit_compile,
    )
    return model


def load_model(path: str) -> MultiLabelRetinaNet:
    """Load a `.keras` model saved by `train`; a clear `ModelError` otherwise."""
    _quiet_input_structure_warning()
    try:
        model = keras.saving.load_model(path, compile=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelError(f"{path}: cannot load model: {error}") from error
    if not isinstance(model, MultiLabelRetinaNet):
        raise ModelError(f"{path}: not a model saved by ava-detector train")
    return model
