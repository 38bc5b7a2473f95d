"""The builder's configs: an AVA annotation version plus per-build options, checked before
anything is built, and the build's one-line errors."""

from __future__ import annotations

import dataclasses
import re
from os import environ
from typing import Any

import tensorflow_datasets as tfds

from ava_keyframes import clips
from ava_keyframes.annotations import annotation_csv_name, excluded_csv_name
from ava_keyframes.plan import tfds_build_args

ANNOTATIONS_URL = "https://s3.amazonaws.com/ava-dataset/annotations/ava_v{version}.zip"
ANNOTATIONS_URL_ENV = "AVA_KEYFRAMES_ANNOTATIONS_URL"
_CONFIG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # one folder name, never '..'
# A clip is held whole in memory while it is encoded: 128 frames at 1080 px (1920 px long
# side) are 0.8 GB; the published clip configs use 8 and 32 frames at 256 px.
MAX_CLIP_LENGTH = 128
MAX_CLIP_SHORT_SIDE = 1080


class BuildError(RuntimeError):
    """A build that cannot be completed as asked; the message (one line) says why."""


class AnnotationsMissing(BuildError):
    """A config's annotations are neither in the manual folder nor downloadable now."""


def _user_error(error: Exception) -> BaseException:
    """``error``, or inside ``tfds build`` a SystemExit printing its one line (the CLI would
    print a traceback for any exception)."""
    if tfds_build_args() is not None:
        return SystemExit(f"ava_keyframes: error: {error}")
    return error


@dataclasses.dataclass(eq=False)
class AvaKeyframesConfig(tfds.core.BuilderConfig):
    """An AVA annotation version plus per-build options.

    A custom config (``tfds build --config '{"name": "v2.2_k5", "max_per_video": 5}'``)
    must have a name of its own: TFDS refuses a custom config named like a built-in one,
    so its data never passes for the full ``v2.2``. ``clip_length`` and ``clip_stride``
    (both or neither) add a clip of that many frames, ``clip_stride / 30`` s apart, around
    each keyframe, each resized to a shorter side of ``clip_short_side`` pixels, stored as
    ``clip_encoding`` says: "h264" (one short video, ``ava_keyframes.clips``) or "jpeg" (a
    JPEG per frame). A clip config's version is ``clips.VERSION`` (its features changed).
    """

    ava_version: str = "2.2"
    max_per_video: int | None = None
    max_side: int | None = None
    allow_missing: bool = False
    clip_length: int | None = None
    clip_stride: int | None = None
    clip_short_side: int = 256
    clip_encoding: str = "h264"

    def __new__(cls, *args: Any, **options: Any) -> AvaKeyframesConfig:
        """Refuse unknown options in one line (TFDS calls the class with a ``--config`` JSON's
        keys, and a stray key was a TypeError traceback)."""
        unknown = sorted(set(options) - {field.name for field in dataclasses.fields(cls)})
        if unknown:
            cls._refuse(f"unknown config option(s) {', '.join(map(repr, unknown))}; known: "
                        f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        return super().__new__(cls)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _CONFIG_NAME.fullmatch(self.name):
            self._refuse(f"config name {self.name!r}: expected 1 to 64 of A-Z, a-z, 0-9, '.', "
                         "'_', '-', starting with a letter or digit (it names a folder)")
        if self.ava_version not in ("2.1", "2.2"):
            self._refuse(f"ava_version must be '2.1' or '2.2', not {self.ava_version!r}")
        for option in ("max_per_video", "max_side", "clip_stride"):
            value = getattr(self, option)
            if value is not None and (type(value) is not int or value < 1):
                self._refuse(f"{option} must be a positive integer or null, not {value!r}")
        for option, most in (("clip_length", MAX_CLIP_LENGTH),
                             ("clip_short_side", MAX_CLIP_SHORT_SIDE)):
            value = getattr(self, option)
            if value is not None and (type(value) is not int or not 1 <= value <= most):
                self._refuse(f"{option} must be an integer in 1..{most}, not {value!r}")
        if (self.clip_length is None) != (self.clip_stride is None):
            self._refuse("clip_length and clip_stride go together: both positive integers "
                         "(a clip config) or both null")
        if self.clip_encoding not in clips.ENCODINGS:
            self._refuse(f"clip_encoding must be one of {', '.join(clips.ENCODINGS)}, not "
                         f"{self.clip_encoding!r}")
        if self.clip_length and self.version is None:
            self.version, self.release_notes = clips.VERSION, clips.RELEASE_NOTES
        if type(self.allow_missing) is not bool:
            self._refuse(f"allow_missing must be true or false, not {self.allow_missing!r}")
        if self.description is None:
            keep = (f"at most {self.max_per_video} keyframes per video" if self.max_per_video
                    else "every keyframe")
            size = f"longer side at most {self.max_side} px" if self.max_side else "full size"
            clip = (f"; clips of {self.clip_length} frames {self.clip_stride}/30 s apart, "
                     f"shorter side {self.clip_short_side} px, {self.clip_encoding}"
                     if self.clip_length else "")
            self.description = f"AVA v{self.ava_version} annotations; {keep}; images {size}{clip}."

    @staticmethod
    def _refuse(message: str) -> None:
        raise _user_error(ValueError(message))

    @property
    def annotations_url(self) -> str:
        return environ.get(ANNOTATIONS_URL_ENV, ANNOTATIONS_URL).format(version=self.ava_version)

    def split_files(self) -> dict[str, tuple[str, str]]:
        """Split name -> (annotation CSV, excluded-timestamps CSV), named as in the zip."""
        v = self.ava_version
        return {split: (annotation_csv_name(name, v), excluded_csv_name(name, v))
                for split, name in (("train", "train"), ("validation", "val"))}

    def options(self) -> dict[str, Any]:
        options = {"max_per_video": self.max_per_video, "max_side": self.max_side}
        if self.clip_length:
            options.update(clip_length=self.clip_length, clip_stride=self.clip_stride,
                           clip_short_side=self.clip_short_side,
                           clip_encoding=self.clip_encoding)
        return options
