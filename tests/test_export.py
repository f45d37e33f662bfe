"""`kdm export`: the standalone loader and the ONNX graph reproduce `kdm sample`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import kdm, kdm_run, read_json
from safetensors.torch import load_file, save_file

from koopman_distill.errors import KDMError
from koopman_distill.export import bundle, load

# Run in a fresh interpreter that cannot import koopman_distill: the loader alone.
STANDALONE = """
import importlib.abc, importlib.util, sys

class NoPackage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] == "koopman_distill":
            raise ImportError("koopman_distill must not be imported")

sys.meta_path.insert(0, NoPackage())
spec = importlib.util.spec_from_file_location("kdm_generator", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
assert mod.main(["--noise", "noise.safetensors", "--out", "mapped.safetensors"]) == 0
assert mod.main(["--n", "300", "--seed", "5", "--out", "seeded.safetensors"]) == 0
assert not any(m.partition(".")[0] == "koopman_distill" for m in sys.modules)
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny) -> dict[str, Path]:
    """A 2-D run (dense K), a conditional image run (dense K) and an unconditional image run
    (eigen K, projected latent), trained far enough that their outputs are not near 0."""
    root = tmp_path_factory.mktemp("export")
    for name, extra in (("cond", []), ("uncond", ["--set", "data.conditional=false"])):
        assert kdm("teacher", "train", "--preset", "digits8", "--out", root / f"t-{name}",
                   *extra) == 0
        assert kdm("pairs", "--teacher", root / f"t-{name}", "--out", root / f"p-{name}") == 0
    common = ["--preset", "digits8", "--set", "train.steps=40", "--set", "train.eval_every=0",
              "--set", "train.ckpt_every=40", "--set", "train.ema_decay=0.8"]
    assert kdm("train", *common, "--pairs", root / "p-cond", "--out", root / "cond") == 0
    assert kdm("train", *common, "--pairs", root / "p-uncond", "--out", root / "uncond",
               "--set", "model.koopman=eigen", "--set", "model.projection=32") == 0
    assert kdm("train", "--preset", "checkerboard-tiny", "--pairs", tiny["pairs"], "--out",
               root / "2d", "--set", "train.steps=300", "--set", "train.eval_every=0") == 0
    return {"2d": root / "2d", "cond": root / "cond", "uncond": root / "uncond"}


def _noise(run: Path, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    meta = read_json(run / "run.json")
    g = torch.Generator().manual_seed(seed)
    x = meta["sigma_max"] * torch.randn(n, *meta["shape"], generator=g)
    k = meta["num_classes"]
    return x, (torch.randint(0, k, (n,), generator=g) if k else None)


@pytest.mark.parametrize("which", ["2d", "cond", "uncond"])
def test_standalone_loader_reproduces_kdm_sample(runs, which, tmp_path) -> None:
    run, out = runs[which], tmp_path / "export"
    r = kdm_run("export", run, "--out", out)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "kdm_generator.py", "model.safetensors"]
    # the same noise (and labels) through `kdm sample` and through the loader
    x, y = _noise(run, 257, 1)
    np.save(tmp_path / "noise.npy", x.numpy())
    args = ["sample", run, "--noise", tmp_path / "noise.npy", "--out", tmp_path / "a.npy"]
    tensors = {"x_T": x}
    if y is not None:
        np.save(tmp_path / "labels.npy", y.numpy())
        args += ["--labels", tmp_path / "labels.npy"]
        tensors["labels"] = y
    assert kdm(*args) == 0
    assert kdm("sample", run, "--n", "300", "--seed", "5", "--out", tmp_path / "b.npy") == 0
    save_file(tensors, str(tmp_path / "noise.safetensors"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "-c", STANDALONE, str(out / "kdm_generator.py")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    mapped = load_file(str(tmp_path / "mapped.safetensors"))["samples"].numpy()
    seeded = load_file(str(tmp_path / "seeded.safetensors"))["samples"].numpy()
    expected, expected_seeded = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert np.abs(expected).max() > 0.05  # outputs of trained weights, not of the ~0 init
    assert mapped.shape == expected.shape and np.abs(mapped - expected).max() <= 1e-6
    assert np.abs(seeded - expected_seeded).max() <= 1e-6
    config = read_json(out / "config.json")
    assert config["check"]["loader_max_abs_diff"] <= 1e-6
    assert config["source"]["weights"] == "ema" and config["source"]["step"] > 0
    assert config["generator"]["num_classes"] == (10 if which == "cond" else 0)
    assert config["outputs"]["kind"] == ("vectors" if which == "2d" else "images")


def test_loader_file_defines_every_name_it_uses(runs, tmp_path) -> None:
    assert kdm("export", runs["uncond"], "--out", tmp_path / "e") == 0
    p = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--isolated",
                        "--select", "F821,F811,F823", str(tmp_path / "e/kdm_generator.py")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout


def test_loader_refuses_bad_inputs(runs, tmp_path) -> None:
    assert kdm("export", runs["cond"], "--out", tmp_path / "e") == 0
    g = load(tmp_path / "e")
    assert tuple(g.sample(3, seed=0).shape) == (3, 1, 8, 8)
    with pytest.raises(KDMError, match="class-conditional: pass 3 class ids"):
        g.map(g.noise(3))
    with pytest.raises(KDMError, match=r"class ids must lie in \[0, 10\)"):
        g.map(g.noise(3), torch.tensor([0, 1, 10]))
    with pytest.raises(KDMError, match=r"noise must have shape \(N, 1, 8, 8\)"):
        g.map(torch.zeros(3, 64), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("which", ["2d", "cond", "uncond"])
def test_onnx_matches_pytorch(runs, which, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    run, out = runs[which], tmp_path / "export"
    r = kdm_run("export", run, "--out", out, "--format", "onnx")
    assert r.returncode == 0, r.stderr
    info = read_json(out / "config.json")["onnx"]
    # checked at export: 1,000 seeded inputs at batch sizes 1 and 250
    assert info["n"] == 1000 and set(info["max_abs_diff"]) == {"1", "250"}
    assert max(info["max_abs_diff"].values()) <= 1e-4
    # and here, against `kdm sample` on other noise, at a third batch size
    x, y = _noise(run, 77, 2)
    np.save(tmp_path / "noise.npy", x.numpy())
    args = ["sample", run, "--noise", tmp_path / "noise.npy", "--out", tmp_path / "a.npy"]
    feed = {"x_T": x.numpy()}
    if y is not None:
        np.save(tmp_path / "labels.npy", y.numpy())
        args += ["--labels", tmp_path / "labels.npy"]
        feed["labels"] = y.numpy()
    assert kdm(*args) == 0
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(feed)
    got = session.run(["x_0"], feed)[0]
    assert np.abs(got - np.load(tmp_path / "a.npy")).max() <= 1e-4


def test_onnx_without_the_package_is_refused_before_any_work(runs, tmp_path, monkeypatch,
                                                            capsys) -> None:
    real = bundle.importlib.util.find_spec
    monkeypatch.setattr(bundle.importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnx" else real(name, *a))
    r = kdm_run("export", runs["2d"], "--out", tmp_path / "e", "--format", "onnx")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "--format onnx needs the onnx package: pip install 'koopman-distill[onnx]'" in r.stderr
    assert not (tmp_path / "e").exists()


def test_failed_export_leaves_nothing_and_force_replaces(runs, tmp_path, monkeypatch) -> None:
    out = tmp_path / "deep" / "e"

    def broken(version):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("koopman_distill.export.standalone.loader_source", broken)
    r = kdm_run("export", runs["2d"], "--out", out)
    assert r.returncode == 2 and "No space left on device" in r.stderr
    assert list(tmp_path.iterdir()) == []  # no export, no temp dir, no parent made
    monkeypatch.undo()
    assert kdm("export", runs["2d"], "--out", out) == 0
    before = json.loads((out / "config.json").read_text())["weights_sha256"]
    (out / "stale.txt").write_text("old")
    assert kdm("export", runs["cond"], "--out", out, "--force") == 0
    assert not (out / "stale.txt").exists()
    assert read_json(out / "config.json")["weights_sha256"] != before
    assert [p.name for p in out.parent.iterdir()] == ["e"]
