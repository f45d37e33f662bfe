"""Presets, overrides, the JSON round trip, and the checks each config field carries."""

import dataclasses
import json
import re
import typing

import pytest

from koopman_distill.config import (
    ANY,
    FRACTION,
    NONNEGATIVE,
    POSITIVE,
    PRESETS,
    UNIT,
    Check,
    Config,
    DataConfig,
    EvalConfig,
    ModelConfig,
    PairsConfig,
    TeacherConfig,
    TrainConfig,
    UNetConfig,
    apply_overrides,
    check_fields,
    check_overrides_act,
    preset,
)
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


SECTIONS = [Config, DataConfig, UNetConfig, TeacherConfig, PairsConfig, ModelConfig,
            TrainConfig, EvalConfig]
# A value each rule refuses (list fields get it as their second entry).
BAD = {POSITIVE: 0, NONNEGATIVE: -1, UNIT: 1.5, FRACTION: 1.0}


def _settings(cls):
    """The fields of ``cls`` that hold a value (not a section), with their type hint."""
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)
            if not dataclasses.is_dataclass(hints[f.name])]


def test_every_setting_carries_its_check():
    unchecked = []
    for cls in SECTIONS:
        for f, tp in _settings(cls):
            check = f.metadata.get("check")
            if tp is bool and check is None:  # its type is its whole check
                continue
            assert isinstance(check, Check), f"{cls.__name__}.{f.name} has no check"
            if check is ANY:
                unchecked.append(f"{cls.__name__}.{f.name}")
            elif not check.choices:
                assert check in BAD, f"{cls.__name__}.{f.name}: a rule this test does not know"
    # what is deliberately left unchecked: seeds, names and paths, a real of any sign, the
    # device (checked against the machine when a run starts), a boolean that acts_with, and
    # a teacher's solver and null class (checked by the teacher, whose choices they are)
    assert sorted(unchecked) == sorted([
        "Config.preset", "DataConfig.source", "DataConfig.seed", "TeacherConfig.P_mean",
        "PairsConfig.seed", "PairsConfig.solver", "PairsConfig.null_class",
        "ModelConfig.koopman_bias", "ModelConfig.lpips_weights",
        "TrainConfig.seed", "TrainConfig.device", "TrainConfig.init", "EvalConfig.seed",
        "EvalConfig.reference_seed", "EvalConfig.extractor_weights",
        "EvalConfig.reference_stats"])


def _renamed(cls):
    """A copy of config class ``cls`` with every setting renamed ``renamed_NAME`` (its field
    object copied, so its metadata comes along as in a rename in the source)."""
    return dataclasses.make_dataclass(f"Renamed{cls.__name__}", [
        (f"renamed_{f.name}", tp, dataclasses.field(
            default=f.default, default_factory=f.default_factory, metadata=f.metadata))
        for f, tp in _settings(cls)])


@pytest.mark.parametrize("cls", SECTIONS[1:])
def test_a_renamed_field_keeps_its_check(cls):
    renamed = _renamed(cls)
    check_fields(renamed())  # the defaults pass
    refused = 0
    for f, tp in _settings(cls):
        check = f.metadata.get("check")
        if check is None or check is ANY:
            continue
        bad = ("bogus" if check.choices else tp(BAD[check]) if tp in (int, float)
               else [1, BAD[check]])
        obj = renamed(**{f"renamed_{f.name}": bad})
        with pytest.raises(KDMError) as e:
            check_fields(obj, "sec.")
        assert str(e.value) == f"sec.renamed_{f.name} must be {check.says}, got {bad!r}"
        refused += 1
    assert refused == sum(1 for f, _ in _settings(cls)
                          if f.metadata.get("check") not in (None, ANY))
    assert refused > 0


def test_acts_with_names_settings_of_its_section():
    """Each ``acts_with`` condition names a choice field of the same section and one of its
    choices (a renamed ``method`` would fail here, not silently stop the refusal)."""
    n = 0
    for cls in SECTIONS:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for f in fields.values():
            for needs in f.metadata.get("acts_with", ()):
                other, _, value = needs.partition("=")
                assert value in fields[other].metadata["check"].choices, (f.name, needs)
                n += 1
    # 6 KDM-only settings, 5 KDM- and eigen-only, the dense bias (KDM and dense), and the
    # rectified steps, Huber c and LPIPS weights
    assert n == 6 + 5 * 2 + 2 + 3


def test_a_config_is_checked_when_built_loaded_and_overridden():
    with pytest.raises(KDMError, match=r"^train.steps must be > 0, got 0$"):
        Config(train=TrainConfig(steps=0))
    d = Config().to_dict()
    d["model"]["method"] = "consistency"
    with pytest.raises(KDMError, match=r"^model.method must be one of kdm, kd, rectified, got "
                       r"'consistency'$"):
        Config.from_dict(d)
    with pytest.raises(KDMError, match=r"^train.precision must be one of fp32, bf16, fp16, got "
                       r"'fp8'$"):
        apply_overrides(Config(), ["train.precision=fp8"])
    with pytest.raises(KDMError, match=r"^model.unet.channel_mult must be > 0, got \[1, 0\]$"):
        apply_overrides(Config(), ["model.unet.channel_mult=1,0"])


def test_overrides_that_would_not_act_are_refused():
    cfg = preset("checkerboard")
    reads = ("model",)
    check_overrides_act(cfg, ["model.sigma_z=0.1", "model.huber_c=0.1"], reads, "kdm train")
    for overrides, msg in [
        (["model.method=kd", "model.sigma_z=0.1"], "model.sigma_z has no effect without "
         "model.method=kdm"),
        (["model.w_spectrum=0.5"], "model.w_spectrum has no effect without model.koopman=eigen"),
        (["model.koopman=eigen", "model.koopman_bias=false"], "model.koopman_bias has no "
         "effect without model.koopman=dense"),
        (["model.sample_steps=4"], "model.sample_steps has no effect without "
         "model.method=rectified"),
        (["model.distance=l2", "model.huber_c=0.1"], "model.huber_c has no effect without "
         "model.distance=pseudo_huber"),
        (["model.lpips_weights=w.pt"], "without model.distance=lpips"),
        (["train.steps=5"], "--set train.steps has no effect on `kdm train`, which reads only "
         "model"),
    ]:
        with pytest.raises(KDMError, match=re.escape(msg)):
            check_overrides_act(apply_overrides(cfg, overrides), overrides, reads, "kdm train")
