"""detector.backbones: explicit configs, presets by name (offline) and from a folder."""

from __future__ import annotations

import json

import keras
import keras_cv
import numpy as np
import pytest

from detector import backbones as B
from detector.kerascv import save_to_preset


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v3_small", "efficientnetv2_b0"])
def test_backbones_from_explicit_configs_give_strides_8_16_32(name):
    backbone = B.build_backbone(name, width=0.25)
    names = [backbone.pyramid_level_inputs[p] for p in ("P3", "P4", "P5")]
    extractor = keras.Model(backbone.inputs, [backbone.get_layer(n).output for n in names])
    shapes = [tuple(t.shape[1:3]) for t in extractor(np.zeros((1, 64, 64, 3), "float32"))]
    assert shapes == [(8, 8), (4, 4), (2, 2)]


def test_presets_unknown_name_and_no_network(monkeypatch):
    with pytest.raises(B.ModelError, match="unknown KerasCV preset 'nope'.*retinanet_resnet50"):
        B.preset_backbone("nope")

    def offline(*args, **kwargs):
        raise OSError("Name or service not known\nmore lines")

    monkeypatch.setattr(keras_cv.models.RetinaNet, "from_preset", offline)
    with pytest.raises(B.ModelError) as error:
        B.preset_backbone("retinanet_resnet50_pascalvoc")
    message = str(error.value)
    assert "kaggle://" in message and "network" in message and "\n" not in message


def test_preset_folder_loads_offline(tmp_path):
    backbone = B.build_backbone("resnet18", width=0.25)
    save_to_preset(backbone, str(tmp_path / "preset"))
    assert {p.name for p in (tmp_path / "preset").iterdir()} >= {"config.json", "model.weights.h5"}
    loaded = B.preset_backbone(str(tmp_path / "preset"))
    assert type(loaded) is type(backbone)
    for ours, theirs in zip(backbone.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_bad_preset_folder_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text('{"registered_name": "keras_cv>ResNetBackbone"')
    with pytest.raises(B.ModelError, match="config.json: not a KerasCV preset config") as error:
        B.preset_backbone(str(tmp_path))
    assert "\n" not in str(error.value)
    (tmp_path / "config.json").write_text('{"registered_name": "keras_cv>ResNetBackbone", '
                                          '"config": {}, "weights": "model.weights.h5"}')
    with pytest.raises(B.ModelError, match="cannot load KerasCV preset") as error:
        B.preset_backbone(str(tmp_path))
    assert "\n" not in str(error.value)


def test_retinanet_preset_folder_gives_its_backbone(tmp_path):
    from detector.model import build_model

    model = build_model(3, backbone="resnet18", backbone_width=0.25, image_size=64,
                        fpn_channels=8, head_channels=8, head_depth=1)
    save_to_preset(model, str(tmp_path / "retinanet"))
    loaded = B.preset_backbone(str(tmp_path / "retinanet"))
    for ours, theirs in zip(model.backbone.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


@pytest.mark.parametrize("weights", ["../outside.weights.h5", "/etc/passwd", "sub/../../x.h5"])
def test_preset_config_cannot_load_weights_from_outside_its_folder(tmp_path, weights):
    preset = tmp_path / "preset"
    save_to_preset(B.build_backbone("resnet18", width=0.25), str(preset))
    (tmp_path / "outside.weights.h5").write_bytes((preset / "model.weights.h5").read_bytes())
    config = json.loads((preset / "config.json").read_text())
    config["weights"] = weights
    (preset / "config.json").write_text(json.dumps(config))
    with pytest.raises(B.ModelError, match="field 'weights': .* is outside the preset folder"):
        B.preset_backbone(str(preset))
