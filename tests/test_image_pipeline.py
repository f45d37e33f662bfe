"""Images end to end on real 8x8 digits (digits8 preset), image pair stores, the image KDM
(adversarial critic, class control), full-size configurations and bad image input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import kdm, kdm_run, read_json

from koopman_distill.api import load_run, load_teacher, train_kdm
from koopman_distill.config import apply_overrides, preset
from koopman_distill.errors import KDMError
from koopman_distill.pairs import PairStore, write_pairs
from koopman_distill.pairs.store import draw_seeded_noise, seeded_noise
from koopman_distill.students import KDM, param_count
from koopman_distill.training import Trainer
from koopman_distill.training.checkpoint import latest_checkpoint
from koopman_distill.training.rng import GLOBAL
from koopman_distill.training.trainer import read_log

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def digits(tmp_path_factory, monkeypatch_module) -> dict[str, Path]:
    """teacher -> pairs -> KDM -> eval with the digits8 preset (real sklearn digits)."""
    root = tmp_path_factory.mktemp("digits")
    monkeypatch_module.setenv("KDM_CACHE", str(root / "cache"))
    assert kdm("demo", "--preset", "digits8", "--out", root / "demo") == 0
    return {"root": root, "teacher": root / "demo/teacher", "pairs": root / "demo/pairs",
            "kdm": root / "demo/kdm"}


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_digits_pipeline_end_to_end(digits, capsys) -> None:
    store = PairStore(digits["pairs"])
    m = store.manifest
    assert store.shape == SHAPE and len(store) == 96 and store.seeded and store.has_labels
    assert m["dtypes"] == {"clean": "float16", "label": "int64", "noise_seed": "int64"}
    assert m["nfe"] == 7 and m["sampler"] == {  # 4 Heun steps on the Karras schedule
        "method": "heun", "steps": 4, "schedule": "karras", "sigma_min": 0.002,
        "sigma_max": 80.0, "rho": 7.0}
    assert m["teacher"]["kind"] == "edm-unet" and m["teacher"]["num_classes"] == 10
    arrays = store.load()
    assert arrays["noise"].shape == (96, *SHAPE)
    assert abs(float(arrays["noise"].std()) - 80.0) < 8.0  # x_T at sigma_max = 80
    teacher, _ = load_teacher(digits["teacher"])  # the pairs are the teacher's outputs
    with torch.no_grad():
        x0 = teacher.sample(torch.from_numpy(arrays["noise"][:8]),
                            torch.from_numpy(arrays["label"][:8]))
    np.testing.assert_allclose(arrays["clean"][:8], x0.numpy(), rtol=0, atol=2e-3)  # float16

    res = read_json(digits["kdm"] / "eval/eval.json")
    assert res["settings"]["extractor"] == "classifier"
    assert res["settings"]["extractor_settings"]["data_sha256"]
    assert "load_digits" in res["settings"]["reference"]
    for who, nfe in (("teacher", 7), ("student", 1)):
        r = res[who]
        assert r["nfe"] == nfe and r["fd"] >= 0 and np.isfinite(r["kid"])
        assert 0 <= r["class_accuracy"] <= 1 and r["samples_per_s"] > 0
    assert res["teacher"]["paired_mse"] == 0.0  # the targets themselves
    assert res["reference"]["n"] == res["settings"]["n"] and "inside" not in json.dumps(res)
    # the protocol: eval.n noise images and labels from eval.seed, mapped by KDM and teacher
    gen, (teacher, _) = load_run(digits["kdm"]), load_teacher(digits["teacher"])
    n, seed = res["settings"]["n"], res["settings"]["seed"]
    noise, labels = gen.noise(n, seed), gen.labels(n, seed)
    with torch.no_grad():
        x0 = teacher.sample(noise, labels).numpy()
    assert res["student"]["paired_mse"] == pytest.approx(
        np.mean((gen.map(noise, labels) - x0) ** 2), rel=1e-4)
    assert Path(res["plots"]["samples"]).stat().st_size > 1000

    # the second run reuses every stage
    assert kdm("demo", "--preset", "digits8", "--out", digits["root"] / "demo") == 0
    out = capsys.readouterr().out
    assert "[teacher] reusing" in out and "[kdm] reusing" in out and "| KDM (1 step) |" in out


def test_periodic_evaluation_scores_held_out_noise_as_kdm_eval(digits) -> None:
    """The trainer's evaluation of an image student scores the EMA model's samples on the
    first eval.n held-out noise draws as ``kdm eval`` does: at the last step, the same FD, KID
    and class accuracy as eval.json (same noise, labels, reference and extractor)."""
    rows = [r for r in read_log(digits["kdm"] / "log.jsonl") if "eval/fd" in r]
    cfg = read_json(digits["kdm"] / "config.json")["train"]
    assert [r["step"] for r in rows] == list(range(cfg["eval_every"], cfg["steps"] + 1,
                                                   cfg["eval_every"]))
    student = read_json(digits["kdm"] / "eval/eval.json")["student"]
    for key in ("fd", "kid", "class_accuracy"):
        # tight: this barely trained student's FD moves by 1e-7 on other noise draws
        assert rows[-1][f"eval/{key}"] == pytest.approx(student[key], rel=1e-9)


def test_sample_conditional_and_noise(digits, tmp_path) -> None:
    gen = load_run(digits["kdm"])
    assert gen.shape == SHAPE and gen.num_classes == 10
    a = gen.sample(5, seed=3, labels=np.arange(5))
    np.testing.assert_array_equal(a, gen.map(gen.noise(5, 3), np.arange(5)))
    assert kdm("sample", digits["kdm"], "--n", 7, "--class", 4, "--out", tmp_path / "s.npy",
               "--grid", tmp_path / "g.png") == 0
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (7, *SHAPE)
    np.testing.assert_allclose(s, gen.map(gen.noise(7, 0), np.full(7, 4)), atol=1e-6)
    assert (tmp_path / "g.png").stat().st_size > 500
    np.save(tmp_path / "noise.npy", gen.noise(3, 9).numpy())
    np.save(tmp_path / "labels.npy", np.array([1, 2, 3]))
    assert kdm("sample", digits["kdm"], "--noise", tmp_path / "noise.npy", "--labels",
               tmp_path / "labels.npy", "--out", tmp_path / "t.npy") == 0
    np.testing.assert_allclose(np.load(tmp_path / "t.npy"),
                               gen.map(gen.noise(3, 9), np.array([1, 2, 3])), atol=1e-6)


def test_analyze_conditional_images(digits, tmp_path) -> None:
    """``kdm analyze`` on the conditional digits KDM: the classifier's label, neighbours and
    interpolations within the requested label, a picture of each part."""
    from koopman_distill.analysis import analyze_run

    r = analyze_run(digits["kdm"], tmp_path / "an", n=120, k=3, device="cpu", progress=False)
    s = r["settings"]
    assert s["within_requested_label"] and s["semantic_label"] == "classifier label"
    p = r["proximity"]
    assert all(0 <= v <= 1 for v in p["agreement"].values())
    assert all(-1 <= v <= 1 for v in p["rank_correlation"].values())
    requested = load_run(digits["kdm"]).labels(120, s["seed"]).numpy()
    for a, b in r["interpolation"]["pairs"]:
        assert a != b and requested[a] == requested[b]
    assert r["outliers"]["space"] == "classifier features"
    assert r["outliers"]["pairs"]["rows"] == 96 and r["outliers"]["pairs"]["k"] <= 3
    assert [t["label"] for t in r["outliers"]["samples"]["top"]] == [
        requested[t["index"]] for t in r["outliers"]["samples"]["top"]]
    assert len(r["spectrum"]["leading"]) == 4 and r["spectrum"]["outside_unit_circle"] >= 0
    assert set(r["plots"]) == {"neighbours", "interpolation", "spectrum", "eigen_directions",
                               "outliers"}
    assert all(Path(v).stat().st_size > 1000 for v in r["plots"].values())


def test_image_bad_input(digits, tmp_path) -> None:
    gen = load_run(digits["kdm"])
    with pytest.raises(KDMError, match="class-conditional"):
        gen.map(gen.noise(2))
    with pytest.raises(KDMError, match=r"labels must lie in \[0, 10\)"):
        gen.map(gen.noise(2), np.array([0, 10]))
    with pytest.raises(KDMError, match=r"noise must have shape \(N, 1, 8, 8\)"):
        gen.map(np.zeros((2, 3, 8, 8)), np.zeros(2, dtype=np.int64))
    np.save(tmp_path / "bad.npy", np.zeros((4, 1, 16, 16), np.float32))
    p = kdm_run("sample", digits["kdm"], "--noise", tmp_path / "bad.npy", "--class", 1,
                 "--out", tmp_path / "o.npy")
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert "must have shape (N, 1, 8, 8), got (4, 1, 16, 16)" in p.stderr
    assert not (tmp_path / "o.npy").exists()
    # images of the wrong range, and a conditional preset on unlabelled data
    np.save(tmp_path / "big.npy", np.full((10, 8, 8), 7.0, np.float32))
    p = kdm_run("teacher", "train", "--preset", "digits8", "--data", tmp_path / "big.npy",
                 "--out", tmp_path / "t")
    assert p.returncode == 2 and "accepted: integers 0..255" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "t").exists()
    np.save(tmp_path / "nolabels.npy", np.zeros((10, 8, 8), np.uint8))
    p = kdm_run("teacher", "train", "--preset", "digits8", "--data", tmp_path / "nolabels.npy",
                 "--out", tmp_path / "t")
    assert p.returncode == 2 and "has no labels" in p.stderr and not (tmp_path / "t").exists()
    p = kdm_run("eval", digits["kdm"], "--set", "eval.extractor=inception", "--set",
                 "eval.extractor_weights=/nonexistent/pt_inception.pth", "--out", tmp_path / "e")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "never downloaded" in p.stderr
    # pairs of an image teacher drawn wider: the same seeds, twice the noise
    assert kdm("pairs", "--teacher", digits["teacher"], "--out", tmp_path / "wide",
               "--set", "pairs.noise_scale=2") == 0
    wide, base = PairStore(tmp_path / "wide"), PairStore(digits["pairs"])
    assert wide.manifest["sampler"]["noise_scale"] == 2.0 and wide.sigma_max == 80.0
    np.testing.assert_array_equal(wide.load()["noise"], 2 * base.load()["noise"])
    np.testing.assert_array_equal(wide.load()["label"], base.load()["label"])
    teacher = load_teacher(digits["teacher"])[0]
    pairs = wide.load(np.arange(4))
    x0 = teacher.sample(torch.from_numpy(pairs["noise"]), torch.from_numpy(pairs["label"]))
    np.testing.assert_allclose(pairs["clean"], x0.numpy(), rtol=1e-3, atol=1e-3)  # float16


def test_seeded_float16_store_round_trip_and_resume(tmp_path) -> None:
    def teacher(g: torch.Generator, n: int) -> dict[str, torch.Tensor]:
        seeds, noise = draw_seeded_noise(g, n, SHAPE, 80.0)
        label = torch.randint(0, 3, (n,), generator=g)
        return {"noise": noise, "clean": torch.tanh(noise / 80) + label.view(-1, 1, 1, 1) / 10,
                "noise_seed": seeds, "label": label}

    args = dict(sigma_max=80.0, shape=SHAPE, teacher={"kind": "t"}, sampler={}, nfe=1,
                progress=False, clean_dtype="float16", store_noise=False)
    store = write_pairs(tmp_path / "a", teacher, 25, 10, 5, **args)
    full = write_pairs(tmp_path / "f", teacher, 25, 10, 5, **{**args, "store_noise": True,
                                                                "clean_dtype": "float32"})
    a, f = store.load(), full.load()
    np.testing.assert_array_equal(a["noise"], f["noise"])  # regenerated bitwise
    np.testing.assert_allclose(a["clean"], f["clean"], atol=1e-3)  # float16 rounding
    np.testing.assert_array_equal(a["label"], f["label"])
    picked = store.load([24, 0, 13])
    np.testing.assert_array_equal(picked["noise"], f["noise"][[24, 0, 13]])
    def data_bytes(d: Path) -> int:
        return sum(np.load(f, mmap_mode="r").nbytes for f in d.glob("*.npy"))

    # per pair: seed 8 + float16 clean 2*64 + label 8 bytes, against 4*64*2 + 8
    assert data_bytes(tmp_path / "a") == 25 * (8 + 2 * 64 + 8)
    assert data_bytes(tmp_path / "f") == 25 * (4 * 64 * 2 + 8)
    assert seeded_noise(np.array([7]), SHAPE, 2.0).shape == (1, *SHAPE)

    # an interrupted seeded store resumes bitwise
    (tmp_path / "a" / "clean-00002.npy").unlink()
    m = read_json(tmp_path / "a/manifest.json")
    m["complete"], m["shards"] = False, m["shards"][:2]
    (tmp_path / "a/manifest.json").write_text(json.dumps(m))
    again = write_pairs(tmp_path / "a", teacher, 25, 10, 5, **args).load()
    for k in a:
        np.testing.assert_array_equal(again[k], a[k])

    def liar(g: torch.Generator, n: int) -> dict[str, torch.Tensor]:
        out = teacher(g, n)
        out["noise_seed"] = out["noise_seed"] + 1
        return out

    with pytest.raises(KDMError, match="noise_seed does not regenerate the noise"):
        write_pairs(tmp_path / "b", liar, 5, 5, 0, **args)


def _tiny_image_cfg(**model):
    cfg = apply_overrides(preset("digits8"), [])
    for k, v in model.items():
        setattr(cfg.model, k, v)
    return cfg


def test_image_kdm_critic_and_control_train(tmp_path) -> None:
    """A few trainer steps with the adversarial critic and label control: finite losses, the
    critic and its optimizer checkpointed, exact resume."""
    torch.manual_seed(0)
    cfg = _tiny_image_cfg(w_adv=0.05, koopman="eigen")
    g = torch.Generator().manual_seed(1)
    data = {"noise": 80 * torch.randn(64, *SHAPE, generator=g),
            "clean": torch.rand(64, *SHAPE, generator=g) * 2 - 1,
            "label": torch.randint(0, 10, (64,), generator=g)}

    def run(out: Path, steps: int, resume: bool = False) -> KDM:
        from koopman_distill.training import Batches

        torch.manual_seed(0)
        model = KDM(SHAPE, cfg.model, 80.0, num_classes=10)
        cfg.train.steps = steps
        t = Trainer(model, Batches(data, 16, seed=0), cfg.train, out)
        if resume:
            t.resume()
        t.fit()
        return model

    a = run(tmp_path / "a", 6)
    log = (tmp_path / "a/log.jsonl").read_text().splitlines()
    rows = [r for r in map(json.loads, log) if "loss" in r]
    assert all(np.isfinite(r["adv"]) and np.isfinite(r["critic_real"]) for r in rows)
    assert "critic_optimizer" in torch.load(latest_checkpoint(tmp_path / "a") / "state.pt",
                                            weights_only=True)
    run(tmp_path / "b", 3)
    b = run(tmp_path / "b", 6, resume=True)
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)


@pytest.mark.parametrize("name,total", [("cifar10", 47_476_165), ("cifar10-cond", 47_489_541),
                                        ("ffhq64", 18_203_365), ("afhq64", 18_203_365)])
def test_full_size_configs_match_reference(name: str, total: int, lpips_file: Path) -> None:
    cfg = apply_overrides(preset(name), [f"model.lpips_weights={lpips_file}"])
    assert cfg.model.distance == "lpips" and cfg.model.w_adv == 0.01
    classes = 10 if cfg.data.conditional else 0
    R = cfg.data.resolution
    model = KDM((3, R, R), cfg.model, cfg.teacher.sigma_max, classes)
    assert param_count(model, ("critic.",)) == total  # reference §10, LPIPS and critic excluded
    assert not any(k.startswith("_lpips") for k in model.state_dict())  # not checkpointed


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory) -> Path:
    """Random VGG16 + LPIPS head weights in one file (real ones are local user files)."""
    from safetensors.torch import save_file

    from koopman_distill.models.lpips import LPIPS

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lpips") / "lpips.safetensors"
    save_file({k: v.contiguous() for k, v in LPIPS().state_dict().items()}, str(path))
    return path


def test_lpips_distance_in_image_kdm(lpips_file: Path) -> None:
    cfg = apply_overrides(preset("digits8"), ["model.distance=lpips",
                                              f"model.lpips_weights={lpips_file}"])
    model = KDM((1, 16, 16), cfg.model, 80.0, 10)
    g = torch.Generator().manual_seed(0)
    batch = {"noise": 80 * torch.randn(2, 1, 16, 16, generator=g),
             "clean": torch.rand(2, 1, 16, 16, generator=g) * 2 - 1,
             "label": torch.tensor([1, 2])}
    loss, logs = model.loss(batch, GLOBAL)
    loss.backward()
    assert logs["rec"] > 0 and model.D.stem.weight.grad.abs().sum() > 0
    missing = apply_overrides(preset("digits8"), ["model.distance=lpips"])
    with pytest.raises(KDMError, match="never downloaded"):
        KDM((1, 16, 16), missing.model, 80.0, 10)


@pytest.mark.parametrize("name", ["cifar10-cond", "ffhq64"])
def test_full_size_configs_take_two_steps(name: str, tmp_path) -> None:
    """Two training steps at batch 2 on CPU (pseudo-Huber stands in for LPIPS, whose
    weights are local files; LPIPS itself is tested in test_lpips.py)."""
    cfg = apply_overrides(preset(name), ["model.distance=pseudo_huber", "train.steps=2",
                                         "train.batch_size=2", "train.progress=false",
                                         "train.ckpt_every=2"])
    classes = 10 if cfg.data.conditional else 0
    R = cfg.data.resolution
    g = torch.Generator().manual_seed(0)
    data = {"noise": 80 * torch.randn(4, 3, R, R, generator=g),
            "clean": torch.rand(4, 3, R, R, generator=g) * 2 - 1}
    if classes:
        data["label"] = torch.tensor([0, 3, 5, 9])
    from koopman_distill.training import Batches

    torch.manual_seed(0)
    model = KDM((3, R, R), cfg.model, 80.0, classes)
    before = model.K.matrix().detach().clone()
    Trainer(model, Batches(data, 2), cfg.train, tmp_path).fit()
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and np.isfinite(rows[-1]["loss"])
    assert not torch.equal(before, model.K.matrix())


def test_train_kdm_refuses_unlabelled_store_for_conditional(digits, tmp_path) -> None:
    cfg = preset("digits8")
    store = PairStore(digits["pairs"])
    write_pairs(tmp_path / "nolab", lambda g, n: {
        k: v for k, v in store.load(np.arange(n)).items() if k in ("noise", "clean")},
        16, 16, 0, sigma_max=80.0, shape=SHAPE, teacher={"kind": "x"}, sampler={}, nfe=1,
        progress=False)
    # the store records no data: its (missing) labels decide, unless the caller names the
    # teacher's data, which asks for a conditional student
    with pytest.raises(KDMError, match="has no labels"):
        train_kdm(cfg, tmp_path / "nolab", tmp_path / "run", teacher_data=True)
    assert not (tmp_path / "run").exists()
