"""Fuzzing the files the package reads back, through the ``kdm`` command line: every mutation
of a pair store's manifest, a run's ``run.json`` and ``config.json`` and a checkpoint's
``state.pt`` dict (a value replaced by random JSON, a key deleted, an unknown key added, at
any depth) either works or ends in exit code 2 with one ``kdm: error:`` line and no file
changed; a value of another kind in a field the package reads always ends in exit code 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from bad_input_cases import key_paths, mutate, snapshot
from conftest import kdm_run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from koopman_distill.training.checkpoint import latest_checkpoint

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-2**70, 2**70) | st.floats()
    | st.text(max_size=4), lambda c: st.lists(c, max_size=3)
    | st.dictionaries(st.text(max_size=4), c, max_size=3), max_leaves=6)


def outcome_is_clean(code: int, err: str, before: dict, root: Path) -> None:
    lines = [line for line in err.strip().splitlines() if not line.startswith("kdm: warning:")]
    assert code in (0, 2), err
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("kdm: error: "), err
        assert snapshot(root) == before


# Each target: a file, how to read and write it, and the command that reads it.
def _json(path: Path):
    return json.loads(path.read_text())


def _write_json(path: Path, doc) -> None:
    path.write_text(json.dumps(doc))


def _state_path(run: Path) -> Path:
    return latest_checkpoint(run) / "state.pt"


TARGETS = {
    "manifest": (lambda w: w["pairs"] / "manifest.json", _json, _write_json,
                 lambda w, out: ["pairs", "verify", w["pairs"]]),
    "run.json": (lambda w: w["run"] / "run.json", _json, _write_json,
                 lambda w, out: ["sample", w["run"], "--n", "3", "--out", out]),
    "config.json": (lambda w: w["run"] / "config.json", _json, _write_json,
                    lambda w, out: ["sample", w["run"], "--n", "3", "--out", out]),
    "state.pt": (lambda w: _state_path(w["run"]), lambda p: torch.load(p, weights_only=True),
                 lambda p, d: torch.save(d, p), lambda w, out: ["train", "--resume", w["run"]]),
}


@pytest.fixture
def fresh(tiny, tmp_path):
    """A function giving a fresh copy of the tiny run and pair store (the copied run points at
    the copied store)."""
    def make() -> dict[str, Path]:
        root = tmp_path / "w"
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(tiny["pairs"], root / "pairs")
        shutil.copytree(tiny["kdm"], root / "run")
        meta = _json(root / "run" / "run.json")
        _write_json(root / "run" / "run.json", {**meta, "pairs": str(root / "pairs")})
        return {"root": root, "pairs": root / "pairs", "run": root / "run",
                "out": tmp_path / "samples.npy"}
    return make


@pytest.mark.parametrize("target", list(TARGETS))
@FUZZ
@given(data=st.data())
def test_every_mutation_works_or_fails_in_one_line(fresh, target, data):
    w = fresh()
    where, read, write, command = TARGETS[target]
    path = where(w)
    good = read(path)
    key_path = data.draw(st.sampled_from(list(key_paths(good))))
    op = data.draw(st.sampled_from(["replace", "delete", "add"]))
    write(path, mutate(read(path), key_path, op, data.draw(JSON)))
    w["out"].unlink(missing_ok=True)
    before = snapshot(w["root"])
    code, _, err = kdm_run(*command(w, w["out"]))
    outcome_is_clean(code, err, before, w["root"])
    assert w["out"].exists() == (code == 0 and target != "state.pt" and target != "manifest")


def _kind(v) -> str:
    if isinstance(v, bool) or v is None:
        return repr(v)
    return ("number" if isinstance(v, (int, float)) else "tensor"
            if isinstance(v, torch.Tensor) else type(v).__name__)


# Fields read as they are (values of another kind must be refused), per target.
STRICT = {
    "run.json": ["format", "kind", "sigma_max", "shape", "pairs", "n_pairs", "teacher",
                 "nfe_teacher"],
    "state.pt": ["step", "optimizer", "ema_updates", "data", "rng_torch", "nonfinite_total"],
    "manifest": ["format", "version", "complete", "count", "shard_size", "shape", "dtypes",
                 "order", "sigma_max", "shards"],
}


@pytest.mark.parametrize("target", list(STRICT))
@FUZZ
@given(data=st.data())
def test_a_value_of_another_kind_is_refused(fresh, target, data):
    w = fresh()
    where, read, write, command = TARGETS[target]
    path = where(w)
    doc = read(path)
    key = data.draw(st.sampled_from(STRICT[target]))
    value = data.draw(JSON.filter(lambda v: _kind(v) != _kind(doc[key]) and v is not None))
    doc[key] = value
    write(path, doc)
    before = snapshot(w["root"])
    code, _, err = kdm_run(*command(w, w["out"]))
    assert code == 2, (key, value, err)
    outcome_is_clean(code, err, before, w["root"])
