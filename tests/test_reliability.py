"""A full disk fails cleanly and keeps the previous state; non-finite steps are counted and
stop the run with the last good checkpoint kept; checkpoints are pruned to the configured
number; nothing in the package unpickles arbitrary objects."""

from __future__ import annotations

import ast
import builtins
import errno
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import contents, kdm, kdm_run
from torch import nn

import koopman_distill
from koopman_distill import io as kio
from koopman_distill.config import TrainConfig
from koopman_distill.errors import KDMError
from koopman_distill.io import sha256_file
from koopman_distill.pairs import store as store_module
from koopman_distill.training import Batches, Trainer
from koopman_distill.training import checkpoint as ckpt_module
from koopman_distill.training import trainer as trainer_module
from koopman_distill.training.checkpoint import latest_checkpoint

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FullDisk:
    """``open`` whose ``fail``-th file opened for writing takes half of its first write and
    then raises ENOSPC, as a disk that fills up midway."""

    def __init__(self, fail: int) -> None:
        self.fail, self.opened = fail, 0

    def __call__(self, file, mode="r", *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)  # noqa: SIM115 (handed to the caller)
        if not set(mode) & set("wa"):
            return f
        self.opened += 1
        return _Filling(f) if self.opened == self.fail else f


class _Filling:
    def __init__(self, f) -> None:
        self._f = f

    def write(self, data) -> int:
        self._f.write(data[:len(data) // 2])
        self._f.flush()
        raise ENOSPC

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def one_line_error(code: int, stderr: str, *needles: str) -> None:
    """Exit code 2 and one error line, the last one (progress bars may come before it)."""
    lines = stderr.strip().splitlines()
    assert code == 2 and lines[-1].startswith("kdm: error: "), stderr
    assert stderr.count("kdm: error") == 1 and "Traceback" not in stderr, stderr
    for n in needles:
        assert n in lines[-1], lines[-1]


def no_temp_files(root: Path) -> None:
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp") or ".tmp-" in p.name]


# -- a full disk --------------------------------------------------------------------------------
@pytest.mark.parametrize("fail,listed,what", [(8, 2, "noise-00002.npy"),
                                              (7, 1, "manifest.json")])
def test_full_disk_while_writing_pairs(tiny, tmp_path, monkeypatch, fail, listed, what):
    """Files opened for writing: manifest, then per shard noise, clean, manifest. The 8th is
    shard 2's noise, the 7th the manifest listing shard 1."""
    argv = ["pairs", "--teacher", tiny["teacher"], "--n", "500",
            "--set", "pairs.shard_size=100"]
    assert kdm(*argv, "--out", tmp_path / "ref") == 0
    out = tmp_path / "store"
    disk = FullDisk(fail)
    for module in (kio, store_module):
        monkeypatch.setattr(module, "open", disk, raising=False)
    code, _, err = kdm_run(*argv, "--out", out)
    one_line_error(code, err, f"cannot write {out / what}: No space left on device; "
                   "nothing was changed")
    monkeypatch.undo()
    manifest = json.loads((out / "manifest.json").read_text())  # whole and valid
    assert [s["index"] for s in manifest["shards"]] == list(range(listed))
    for shard in manifest["shards"]:
        for name, f in shard["files"].items():
            assert sha256_file(out / f) == shard["sha256"][name]
    assert not (out / what).exists() or what == "manifest.json"
    no_temp_files(out)
    assert kdm(*argv, "--out", out) == 0  # with space again: resumes to the same store
    assert contents(out) == contents(tmp_path / "ref")


def test_full_disk_while_writing_a_checkpoint(tiny, tmp_path, monkeypatch):
    argv = ["train", "--preset", "checkerboard-tiny", "--pairs", tiny["pairs"],
            "--set", "train.steps=30", "--set", "train.keep_checkpoints=3"]
    assert kdm(*argv, "--out", tmp_path / "ref") == 0
    real, calls = torch.save, []

    def save(obj, path, *args, **kwargs):  # the second state.pt: half written, then full
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"PK\x03\x04half")
            raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter "
                               "failed writing file data/0: file write failed")
        return real(obj, path, *args, **kwargs)

    monkeypatch.setattr(ckpt_module.torch, "save", save)
    run = tmp_path / "run"
    code, _, err = kdm_run(*argv, "--out", run)
    monkeypatch.undo()
    one_line_error(code, err, "cannot write", "step-00000020", "file write failed",
                   "the previous checkpoint step-00000010 is kept")
    assert latest_checkpoint(run).name == "step-00000010"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest",
                                                                       "step-00000010"]
    ref = contents(tmp_path / "ref")
    assert contents(run / "checkpoints/step-00000010") == contents(
        tmp_path / "ref/checkpoints/step-00000010")
    assert kdm("train", "--resume", run) == 0
    assert contents(run) == ref


def test_full_disk_while_appending_to_the_log(tiny, tmp_path, monkeypatch):
    argv = ["train", "--preset", "checkerboard-tiny", "--pairs", tiny["pairs"],
            "--set", "train.steps=30"]
    assert kdm(*argv, "--out", tmp_path / "ref") == 0
    disk = FullDisk(4)  # log rows at steps 5, 10 (eval), 10, 15: the 4th is torn
    monkeypatch.setattr(trainer_module, "open", disk, raising=False)
    run = tmp_path / "run"
    code, _, err = kdm_run(*argv, "--out", run)
    monkeypatch.undo()
    one_line_error(code, err, f"cannot write {run / 'log.jsonl'}: No space left on device",
                   "the last checkpoint is step-00000010")
    assert kdm("train", "--resume", run) == 0
    assert contents(run) == contents(tmp_path / "ref")


def test_failed_atomic_write_changes_nothing(tmp_path):
    f = tmp_path / "a.json"
    kio.write_json(f, {"v": 1})
    before = (f.read_bytes(), f.stat().st_mtime_ns)

    def write(tmp):
        Path(tmp).write_text('{"v": 2')
        raise ENOSPC

    with pytest.raises(KDMError, match="No space left on device; nothing was changed"):
        kio.atomic_write(f, write)
    assert (f.read_bytes(), f.stat().st_mtime_ns) == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


# -- non-finite steps -----------------------------------------------------------------------------
class Flaky(nn.Module):
    """Loss (w - 3)^2; at the steps in ``bad`` the loss (``"loss"``) or only the gradient
    (``"grad"``: sqrt at 0 has an infinite slope) is not finite."""

    def __init__(self, bad: dict[int, str]) -> None:
        super().__init__()
        self.w, self.bad, self.calls = nn.Parameter(torch.zeros(1)), bad, 0

    def loss(self, batch, rng):
        self.calls += 1
        kind = self.bad.get(self.calls)
        loss = (self.w - 3).square().sum()
        if kind == "loss":
            loss = loss * float("nan")
        elif kind == "grad":
            loss = loss + torch.sqrt((self.w - self.w.detach()).abs().sum())
        return loss, {}


def flaky_trainer(run: Path, bad: dict[int, str], **kw) -> Trainer:
    cfg = TrainConfig(**{"steps": 60, "batch_size": 4, "lr": 0.1, "ckpt_every": 10,
                         "log_every": 5, "eval_every": 0, "progress": False, **kw})
    return Trainer(Flaky(bad), Batches({"x": torch.zeros(8, 1)}, 4), cfg, run)


def test_nonfinite_steps_are_skipped_counted_and_logged(tmp_path):
    bad = {3: "loss", 7: "grad", 8: "grad", 20: "loss"}
    t = flaky_trainer(tmp_path, bad, max_nonfinite=3)
    t.fit()
    rows = [json.loads(r) for r in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["nonfinite"] for r in rows] == [1, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4]
    assert t.nonfinite_total == 4
    # a skipped step changes nothing: the weights are those of 56 clean steps
    clean = flaky_trainer(tmp_path / "clean", {}, steps=56)
    clean.fit()
    assert torch.equal(t.model.w, clean.model.w) and abs(t.model.w.item() - 3) < 0.5


def test_repeated_nonfinite_steps_stop_and_keep_the_last_good_checkpoint(tmp_path):
    t = flaky_trainer(tmp_path, {s: "grad" for s in range(26, 40)}, max_nonfinite=4)
    with pytest.raises(KDMError) as e:
        t.fit()
    assert str(e.value) == (
        "training stopped: 4 consecutive non-finite losses or gradients at step 28; last good "
        "checkpoint: step-00000020; lower train.lr or set train.grad_clip")
    assert latest_checkpoint(tmp_path).name == "step-00000020"
    last = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert last == {"step": 28, "nonfinite": 4, "stopped": "non-finite"}
    w = ckpt_module.load_weights(tmp_path / "checkpoints/step-00000020/model.safetensors")
    clean = flaky_trainer(tmp_path / "clean", {}, steps=20)
    clean.fit()
    assert torch.equal(w["w"], clean.model.w.detach())  # the weights before the bad steps


# -- checkpoints --------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [1, 3])
def test_keeps_the_configured_number_of_checkpoints(tmp_path, keep):
    flaky_trainer(tmp_path, {}, keep_checkpoints=keep).fit()
    steps = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert steps == [f"step-{s:08d}" for s in range(60, 60 - 10 * keep, -10)][::-1]
    assert latest_checkpoint(tmp_path).name == "step-00000060"
    no_temp_files(tmp_path)


# -- safe loading -------------------------------------------------------------------------------
def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            base = node.func.value
            yield (base.id if isinstance(base, ast.Name) else "", node.func.attr,
                   {k.arg: k.value for k in node.keywords})


def test_no_loader_unpickles_arbitrary_objects():
    """Every torch.load passes weights_only=True and every np.load allow_pickle=False; pickle
    is never used to read."""
    root = Path(next(iter(koopman_distill.__path__)))
    seen = 0
    for path in root.rglob("*.py"):
        for base, attr, kw in _calls(ast.parse(path.read_text())):
            where = f"{path.relative_to(root)}: {base}.{attr}"
            if (base, attr) == ("torch", "load"):
                assert getattr(kw.get("weights_only"), "value", None) is True, where
                seen += 1
            elif (base, attr) == ("np", "load"):
                assert getattr(kw.get("allow_pickle"), "value", None) is False, where
                seen += 1
            assert (base, attr) not in {("pickle", "load"), ("pickle", "loads")}, where
    assert seen >= 8
