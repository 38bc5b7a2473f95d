"""KerasCV RetinaNet for multi-label detection, built from explicit configs (no hub download).

KerasCV's RetinaNet is single-label: its label encoder gives each anchor one class and
`compute_loss` one-hot encodes it; its default decoder is class-agnostic with a 0.5 score cut.
AVA persons carry several actions, and AP needs low-score detections, so this module swaps
KerasCV's parts at their seams:

- `MultiLabelEncoder` (a `RetinaNetLabelEncoder`): the classification target of a positive
  anchor is the multi-hot vector of all classes of its matched box.
- `MultiLabelRetinaNet.compute_loss`: sigmoid focal loss on those multi-hot targets.
- `PerClassNMS`: per-class NMS with a 0.05 score threshold and a detections cap, so one
  box can carry several classes.
- `PyramidNeck` and `ConvHead`: KerasCV's feature pyramid and heads with their hard-coded
  256 channels and depth made options (256 channels and 4 layers, as in the paper, by default).

Batches are `(images, {"boxes": [B, N, 4], "classes": [B, N, C]})`: float images in 0..255,
`xyxy` pixel boxes padded with -1, and per-box multi-hot classes padded with 0 (KerasCV's
"one-hot classes" layout, which single-label data such as Pascal VOC fills with one 1).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import keras
import keras_cv
import numpy as np
import tensorflow as tf
from keras_cv import bounding_box
from keras_cv.src.bounding_box.converters import _encode_box_to_deltas
from keras_cv.src.models.object_detection.retinanet.retinanet_presets import retinanet_presets
from keras_cv.src.utils import target_gather

BOX_FORMAT = "xyxy"
PRIOR_PROBABILITY = 0.01
_PACKAGE = "detector"

# KerasCV's RetinaNet declares a dict input {"images": ...} but its train/test steps and
# label encoder take the image tensor itself; Keras 3 warns on every call about that.
warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match")


class ModelError(ValueError):
    """A model option or file that cannot be used; the message says which."""


def _resnet(blocks: list[int], block_type: str, width: float) -> keras.Model:
    # The stem has 64 channels (fixed by KerasCV) and the first stage's identity shortcut
    # needs the same width, so narrower variants keep at least 64 channels per stage.
    filters = [max(64, round(f * width)) for f in (64, 128, 256, 512)]
    return keras_cv.models.ResNetBackbone(
        stackwise_filters=filters,
        stackwise_blocks=blocks,
        stackwise_strides=[1, 2, 2, 2],
        block_type=block_type,
        include_rescaling=True,
    )


def _mobilenet_v3(large: bool, width: float) -> keras.Model:
    if large:
        config = dict(
            stackwise_expansion=[1, 4, 3, 3, 3, 3, 6, 2.5, 2.3, 2.3, 6, 6, 6, 6, 6],
            stackwise_filters=[16, 24, 24, 40, 40, 40, 80, 80, 80, 80, 112, 112, 160, 160, 160],
            stackwise_kernel_size=[3, 3, 3, 5, 5, 5, 3, 3, 3, 3, 3, 3, 5, 5, 5],
            stackwise_stride=[1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1],
            stackwise_se_ratio=[None] * 3 + [0.25] * 3 + [None] * 4 + [0.25] * 5,
            stackwise_activation=["relu"] * 6 + ["hard_swish"] * 9,
        )
    else:
        config = dict(
            stackwise_expansion=[1, 72.0 / 16, 88.0 / 24, 4, 6, 6, 3, 3, 6, 6, 6],
            stackwise_filters=[16, 24, 24, 40, 40, 40, 48, 48, 96, 96, 96],
            stackwise_kernel_size=[3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 5],
            stackwise_stride=[2, 2, 1, 2, 1, 1, 1, 1, 2, 1, 1],
            stackwise_se_ratio=[0.25, None, None] + [0.25] * 8,
            stackwise_activation=["relu"] * 3 + ["hard_swish"] * 8,
        )
    return keras_cv.models.MobileNetV3Backbone(include_rescaling=True, alpha=width, **config)


def _efficientnetv2_b0(width: float) -> keras.Model:
    return keras_cv.models.EfficientNetV2Backbone(
        include_rescaling=True,
        width_coefficient=width,
        depth_coefficient=1.0,
        stackwise_kernel_sizes=[3, 3, 3, 3, 3, 3],
        stackwise_num_repeats=[1, 2, 2, 3, 5, 8],
        stackwise_input_filters=[32, 16, 32, 48, 96, 112],
        stackwise_output_filters=[16, 32, 48, 96, 112, 192],
        stackwise_expansion_ratios=[1, 4, 4, 4, 6, 6],
        stackwise_squeeze_and_excite_ratios=[0.0, 0.0, 0.0, 0.25, 0.25, 0.25],
        stackwise_strides=[1, 2, 2, 2, 1, 2],
        stackwise_conv_types=["fused"] * 3 + ["unfused"] * 3,
    )


_BACKBONE_BUILDERS: dict[str, Callable[[float], keras.Model]] = {
    "resnet18": lambda w: _resnet([2, 2, 2, 2], "basic_block", w),
    "resnet34": lambda w: _resnet([3, 4, 6, 3], "basic_block", w),
    "resnet50": lambda w: _resnet([3, 4, 6, 3], "block", w),
    "resnet101": lambda w: _resnet([3, 4, 23, 3], "block", w),
    "mobilenet_v3_small": lambda w: _mobilenet_v3(False, w),
    "mobilenet_v3_large": lambda w: _mobilenet_v3(True, w),
    "efficientnetv2_b0": _efficientnetv2_b0,
}
BACKBONES = tuple(_BACKBONE_BUILDERS)


def build_backbone(name: str, width: float = 1.0) -> keras.Model:
    """A randomly initialised KerasCV backbone (input 0..255) from its explicit config.

    `width` scales the channels (ResNet stages keep at least 64, MobileNetV3's `alpha`,
    EfficientNetV2's width coefficient): values below 1 make CPU-sized models.
    """
    if name not in _BACKBONE_BUILDERS:
        raise ModelError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")
    if not 0 < width <= 4:
        raise ModelError(f"backbone width must be in (0, 4], got {width}")
    return _BACKBONE_BUILDERS[name](width)


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
        matched_boxes = target_gather._target_gather(gt_boxes, matched_idx)
        box_target = _encode_box_to_deltas(
            anchors=anchor_boxes,
            boxes=keras.ops.reshape(matched_boxes, (-1, keras.ops.shape(matched_boxes)[1], 4)),
            anchor_format=self.bounding_box_format,
            box_format=self.bounding_box_format,
            variance=self.box_variance,
            image_shape=image_shape,
        )
        matched_classes = keras.ops.cast(
            target_gather._target_gather(gt_classes, matched_idx), box_target.dtype
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
class PerClassNMS(keras.layers.Layer):
    """Per-class NMS (`tf.image.combined_non_max_suppression`) over sigmoid scores.

    Unlike KerasCV's class-agnostic default, a box survives for every class whose score
    passes `confidence_threshold`, so one person can be detected with several actions.
    Returns KerasCV's decoded format: `boxes`, `confidence`, `classes` (-1 padded) and
    `num_detections`.
    """

    def __init__(
        self,
        bounding_box_format: str = BOX_FORMAT,
        from_logits: bool = True,
        iou_threshold: float = 0.5,
        confidence_threshold: float = 0.05,
        max_detections: int = 100,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.bounding_box_format = bounding_box_format
        self.from_logits = from_logits
        self.iou_threshold = iou_threshold
        self.confidence_threshold = confidence_threshold
        self.max_detections = max_detections
        self.built = True

    def call(self, box_prediction, class_prediction, images=None, image_shape=None):
        boxes = bounding_box.convert_format(
            box_prediction, source=self.bounding_box_format, target="yxyx",
            images=images, image_shape=image_shape,
        )
        scores = tf.cast(class_prediction, tf.float32)
        if self.from_logits:
            scores = tf.sigmoid(scores)
        nms = tf.image.combined_non_max_suppression(
            tf.cast(boxes, tf.float32)[:, :, tf.newaxis, :],
            scores,
            max_output_size_per_class=self.max_detections,
            max_total_size=self.max_detections,
            iou_threshold=self.iou_threshold,
            score_threshold=self.confidence_threshold,
            clip_boxes=False,
        )
        decoded = {
            "boxes": bounding_box.convert_format(
                nms.nmsed_boxes, source="yxyx", target=self.bounding_box_format,
                images=images, image_shape=image_shape,
            ),
            "confidence": nms.nmsed_scores,
            "classes": tf.cast(nms.nmsed_classes, tf.int32),
            "num_detections": nms.valid_detections,
        }
        return bounding_box.mask_invalid_detections(decoded)

    def get_config(self):
        return {
            **super().get_config(),
            "bounding_box_format": self.bounding_box_format,
            "from_logits": self.from_logits,
            "iou_threshold": self.iou_threshold,
            "confidence_threshold": self.confidence_threshold,
            "max_detections": self.max_detections,
        }


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
) -> MultiLabelRetinaNet:
    """A multi-label RetinaNet on square `image_size` inputs (0..255 floats).

    `backbone` is a name from `BACKBONES` (randomly initialised) or a KerasCV backbone
    (e.g. one loaded from a preset). Image size must be a multiple of 32 (the P5 stride).
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
    backbone = _with_input_size(backbone, image_size)
    anchors = keras_cv.models.RetinaNet.default_anchor_generator(BOX_FORMAT)
    level = next(iter(anchors.anchor_generators.values()))
    num_anchors = len(level.scales) * len(level.aspect_ratios)
    return MultiLabelRetinaNet(
        backbone=backbone,
        num_classes=num_classes,
        bounding_box_format=BOX_FORMAT,
        label_encoder=MultiLabelEncoder(
            bounding_box_format=BOX_FORMAT, anchor_generator=anchors,
            box_variance=[0.1, 0.1, 0.2, 0.2],
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


def _with_input_size(backbone: keras.Model, image_size: int) -> keras.Model:
    """The same backbone config with a fixed square input (RetinaNet needs static shapes)."""
    shape = (image_size, image_size, 3)
    if tuple(backbone.input_shape[1:]) == shape:
        return backbone
    config = backbone.get_config()
    config["input_shape"] = shape
    rebuilt = backbone.__class__.from_config(config)
    if backbone.weights:
        rebuilt.set_weights(backbone.get_weights())
    return rebuilt


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
    try:
        model = keras.saving.load_model(path, compile=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelError(f"{path}: cannot load model: {error}") from error
    if not isinstance(model, MultiLabelRetinaNet):
        raise ModelError(f"{path}: not a model saved by ava-detector train")
    return model


def preset_backbone(name: str) -> keras.Model:
    """The backbone of KerasCV preset `name` (a RetinaNet or backbone preset), downloaded.

    KerasCV presets live on Kaggle; without network access this fails, and the error
    says so rather than showing the download traceback.
    """
    known = keras_cv.models.RetinaNet.presets
    if name not in known:
        raise ModelError(
            f"unknown KerasCV preset {name!r}; known: {', '.join(sorted(known))}"
        )
    # A backbone preset becomes a KerasCV RetinaNet around it, which needs head settings.
    task_options = (
        {} if name in retinanet_presets else {"num_classes": 1, "bounding_box_format": BOX_FORMAT}
    )
    try:
        loaded = keras_cv.models.RetinaNet.from_preset(name, **task_options)
    except Exception as error:  # noqa: BLE001 - any download/parse failure is reported whole
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(
            f"cannot load KerasCV preset {name!r} (it downloads from "
            f"{known[name]['kaggle_handle']}; is the network reachable?): {first}"
        ) from error
    return loaded.backbone
