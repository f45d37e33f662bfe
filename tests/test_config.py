"""Presets, overrides and the JSON round trip."""

import json

import pytest

from koopman_distill.config import PRESETS, Config, apply_overrides, preset
from koopman_distill.errors import KDMError


def test_presets_resolve_and_round_trip():
    for name in PRESETS:
        cfg = preset(name)
        assert cfg.preset == name
        again = Config.from_dict(json.loads(cfg.to_json()))
        assert again == cfg
    full = preset("checkerboard")
    assert (full.train.steps, full.train.batch_size, full.pairs.n) == (40_000, 256, 50_000)
    assert full.model.distance == "pseudo_huber" and full.model.sigma_z == 0.4
    assert Config().train.steps == 20_000 and Config().train.batch_size == 4096  # the paper


def test_overrides_are_typed():
    cfg = apply_overrides(preset("checkerboard"), [
        "train.steps=123", "train.lr=1e-4", "model.koopman=eigen", "model.koopman_bias=false",
        "train.steps=2e3"])
    assert cfg.train.steps == 2000 and isinstance(cfg.train.steps, int)
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.model.koopman == "eigen" and cfg.model.koopman_bias is False
    assert preset("checkerboard").train.steps == 40_000  # the preset itself is untouched


@pytest.mark.parametrize("item,msg", [
    ("train.stepz=3", "unknown config key 'train.stepz'"),
    ("nosection.x=3", "unknown config key 'nosection.x'"),
    ("train.steps", "must look like section.field=value"),
    ("train.steps=ten", "train.steps takes a number"),
    ("model.koopman_bias=maybe", "takes true or false"),
])
def test_bad_overrides(item, msg):
    with pytest.raises(KDMError, match=msg):
        apply_overrides(preset("checkerboard"), [item])


def test_bad_config_dicts():
    d = preset("checkerboard").to_dict()
    d["train"]["bogus"] = 1
    with pytest.raises(KDMError, match=r"unknown key\(s\) in config.train: 'bogus'"):
        Config.from_dict(d)
    d = preset("checkerboard").to_dict()
    d["train"]["steps"] = "many"
    with pytest.raises(KDMError, match="config.train.steps must be int"):
        Config.from_dict(d)
    with pytest.raises(KDMError, match="unknown preset 'cifar99'"):
        preset("cifar99")
