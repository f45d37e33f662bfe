"""Bad input ends in one ``kdm: error:`` line and exit code 2, never in a traceback or a
changed file: the case table of ``bad_input_cases.py`` (also listed in docs/reliability.md),
then property-based tests over manifests, configs, CLI arguments, data arrays and damaged
files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from bad_input_cases import (
    BEGIN,
    CASES,
    DOC,
    END,
    Workspace,
    key_paths,
    mutate,
    run_case,
    snapshot,
)
from conftest import kdm_run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from koopman_distill.config import Config, apply_overrides, preset
from koopman_distill.data.arrays import load_points
from koopman_distill.errors import KDMError
from koopman_distill.io import read_json
from koopman_distill.pairs import PairStore
from koopman_distill.training.checkpoint import latest_checkpoint, load_state, load_weights

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def one_line(e: KDMError) -> None:
    assert str(e) and "\n" not in str(e), str(e)


def assert_clean_exit(code: int, stderr: str) -> None:
    assert code in (0, 2), stderr
    if code == 2:
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kdm: error: "), stderr


# -- the case table ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_case(case, tiny, tmp_path):
    out = run_case(case, Workspace(tmp_path / "case", tiny))
    lines = out.stderr.strip().splitlines()
    assert out.code == 2, out.stderr
    assert len(lines) == 1 and lines[0].startswith("kdm: error: "), out.stderr
    assert case.expect in lines[0]
    assert out.changed == []


def test_case_table_is_documented():
    names = [c.name for c in CASES]
    assert len(set(names)) == len(names) >= 40
    section = DOC.read_text().split(BEGIN)[1].split(END)[0].strip().splitlines()
    assert [row.split(" | ")[1] for row in section[2:]] == names, (
        "docs/reliability.md is stale: run `python tests/bad_input_cases.py`")


# -- manifests --------------------------------------------------------------------------------
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c,
                                                                          max_size=3),
                    max_leaves=6)


@pytest.fixture(scope="module")
def store_copy(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz") / "store"
    shutil.copytree(tiny["pairs"], out)
    return out


@FUZZ
@given(data=st.data())
def test_mutated_manifests_fail_cleanly(store_copy, data):
    good = read_json(store_copy / "manifest.json")
    path = data.draw(st.sampled_from(list(key_paths(good))))
    op = data.draw(st.sampled_from(["replace", "delete", "add"]))
    (store_copy / "manifest.json").write_text(json.dumps(
        mutate(json.loads(json.dumps(good)), path, op, data.draw(JSON))))
    shards = snapshot(*store_copy.glob("*.npy"))
    try:
        store = PairStore(store_copy)
        store.check_intact()
        assert store.load()["clean"].shape == (len(store), *store.shape)
        store.check_finite()
    except KDMError as e:
        one_line(e)
    finally:
        (store_copy / "manifest.json").write_text(json.dumps(good))
    assert snapshot(*store_copy.glob("*.npy")) == shards


@FUZZ
@given(data=st.data())
def test_mutated_config_files_fail_cleanly(tmp_path, data):
    good = preset("checkerboard-tiny").to_dict()
    path = data.draw(st.sampled_from(list(key_paths(good))))
    op = data.draw(st.sampled_from(["replace", "delete", "add"]))
    f = tmp_path / "config.json"
    f.write_text(json.dumps(mutate(json.loads(json.dumps(good)), path, op, data.draw(JSON))))
    try:
        cfg = Config.from_dict(read_json(f))
    except KDMError as e:
        one_line(e)
    else:
        cfg.validate()


# -- CLI arguments ----------------------------------------------------------------------------
def _keys(d, prefix=""):
    for k, v in d.items():
        yield from _keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]


KEYS = sorted(_keys(preset("checkerboard-tiny").to_dict()))
VALUES = st.sampled_from(["0", "-1", "1", "3.5", "1e400", "nan", "inf", "-inf", "true", "x",
                          "", "1,2", "cosine", "eigen", "heun", "float16", " 7 ", "0x10",
                          "1_000"]) | st.text(max_size=6)


@FUZZ
@given(key=st.sampled_from(KEYS) | st.text(max_size=12), value=VALUES)
def test_overrides_fail_cleanly(key, value):
    try:
        cfg = apply_overrides(preset("checkerboard-tiny"), [f"{key}={value}"])
    except KDMError as e:
        one_line(e)
    else:
        cfg.validate()
        Config.from_dict(json.loads(cfg.to_json()))  # what is accepted also reloads


TOKENS = st.sampled_from(["--preset", "checkerboard-tiny", "nope", "--set", "train.steps=3",
                          "train.lr=-1", "model.koopman=x", "=", "--", "-x", "--help", "--out",
                          "--n", "5", "-1", "--seed"]) | st.text(max_size=8)


@FUZZ
@given(argv=st.lists(TOKENS, max_size=6))
def test_config_command_arguments_fail_cleanly(argv):
    code, _, err = kdm_run("config", *argv)
    assert_clean_exit(code, err)


@settings(FUZZ, max_examples=25)
@given(n=st.integers(-3, 4), seed=st.integers(-2, 2**64) | st.text(max_size=4),
       extra=st.lists(st.sampled_from(["--raw", "--class", "2", "--device", "tpu", "cpu",
                                       "--grid", "g.png"]), max_size=3))
def test_sample_arguments_fail_cleanly(tiny, tmp_path, n, seed, extra):
    out = tmp_path / "s.npy"
    out.unlink(missing_ok=True)
    code, _, err = kdm_run("sample", tiny["kdm"], "--n", n, "--seed", seed, "--out", out, *extra)
    assert_clean_exit(code, err)
    assert out.exists() == (code == 0)


# -- data arrays ------------------------------------------------------------------------------
ARRAYS = hnp.arrays(
    dtype=st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int64, np.uint8,
                           np.bool_, np.complex64, np.dtype("<U2")]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))


@FUZZ
@given(arr=ARRAYS)
def test_arrays_load_or_fail_cleanly(tmp_path, arr):
    f = tmp_path / "x.npy"
    np.save(f, arr)
    before = f.read_bytes()
    try:
        x = load_points(f)
    except KDMError as e:
        one_line(e)
    else:
        assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] >= 1 and len(x) >= 1
        assert x.shape == arr.shape
        assert np.isfinite(x).all()
    assert f.read_bytes() == before


@settings(FUZZ, max_examples=20)
@given(arr=ARRAYS)
def test_noise_files_sample_or_fail_cleanly(tiny, tmp_path, arr):
    noise, out = tmp_path / "noise.npy", tmp_path / "s.npy"
    out.unlink(missing_ok=True)
    np.save(noise, arr)
    code, _, err = kdm_run("sample", tiny["kdm"], "--noise", noise, "--out", out)
    assert_clean_exit(code, err)
    assert out.exists() == (code == 0)


# -- truncated and garbage files --------------------------------------------------------------
def _damaged(data: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    raw = bytearray(data[:cut])
    for pos, bits in flips:
        if raw:
            raw[pos % len(raw)] ^= bits
    return bytes(raw)


DAMAGE = dict(cut=st.integers(0, 10**6), flips=st.lists(
    st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=3))


@pytest.fixture(scope="module")
def own_files(tiny):
    """One file of each kind the package reads back, by name."""
    ckpt = latest_checkpoint(tiny["kdm"])
    return {"ema.safetensors": ckpt / "ema.safetensors", "state.pt": ckpt / "state.pt",
            "config.json": tiny["kdm"] / "config.json",
            "noise-00000.npy": tiny["pairs"] / "noise-00000.npy"}


def _read_back(name: str, path: Path) -> None:
    if name == "ema.safetensors":
        load_weights(path)
    elif name == "state.pt":
        load_state(path.parent)
    elif name == "config.json":
        Config.from_dict(read_json(path))
    else:
        load_points(path)


@FUZZ
@given(name=st.sampled_from(["ema.safetensors", "state.pt", "config.json", "noise-00000.npy"]),
       **DAMAGE)
def test_damaged_files_fail_cleanly(own_files, tmp_path, name, cut, flips):
    path = tmp_path / name
    path.write_bytes(_damaged(own_files[name].read_bytes(), cut, flips))
    try:
        _read_back(name, path)
    except KDMError as e:
        one_line(e)


def test_unpickling_is_refused(tmp_path):
    """A state.pt that would run code when unpickled is refused and runs nothing."""
    from bad_input_cases import Pwned

    ckpt = tmp_path / "step-00000001"
    ckpt.mkdir()
    torch.save({"step": Pwned(tmp_path / "PWNED")}, ckpt / "state.pt")
    with pytest.raises(KDMError, match="unpickle arbitrary objects, which is refused"):
        load_state(ckpt)
    assert not (tmp_path / "PWNED").exists()
