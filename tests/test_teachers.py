"""The Teacher protocol on both trained teachers, the registry that rebuilds a store's teacher,
``make_pairs`` with a teacher object (a closed-form Gaussian teacher), and vector data of any
dimension and scale."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch
from conftest import kdm, read_json

from koopman_distill import api
from koopman_distill.config import apply_overrides, preset
from koopman_distill.errors import KDMError
from koopman_distill.pairs import PairStore
from koopman_distill.pairs import store as store_module
from koopman_distill.pairs.store import seeded_noise, shard_seed
from koopman_distill.protocols import Teacher
from koopman_distill.teachers import (
    EDMTeacher,
    FlowMatchingTeacher,
    TeacherUnavailable,
    load_teacher_spec,
    ode_sample,
    registry,
    store_teacher,
)
from koopman_distill.teachers.flow import standardization


class Gaussian:
    """Data N(mu + y, s^2 I) (class y, 0 when unconditional) and noise N(0, sigma_max^2 I):
    the exact ODE map of the flow-matching path between them is affine,
    ``x_0 = mu + y + (s / sigma_max) x_T``."""

    def __init__(self, shape, mu=3.0, s=0.5, sigma_max=2.0, num_classes=0):
        self.shape, self.mu, self.s = tuple(shape), mu, s
        self.sigma_max, self.num_classes = sigma_max, num_classes

    def sample(self, noise, labels=None, *, steps=None, solver=None):
        y = 0 if labels is None else labels.to(noise.dtype).view(-1, *[1] * len(self.shape))
        return self.mu + y + self.s / self.sigma_max * noise

    def nfe(self, steps=None, solver=None):
        return 1

    def identity(self):
        return {"kind": "gaussian", "num_classes": self.num_classes,
                "sampler": {"method": "exact", "steps": 1}, "nfe": 1, "mu": self.mu}

    def spec(self):
        return {"kind": "gaussian", "shape": list(self.shape), "mu": self.mu, "s": self.s,
                "sigma_max": self.sigma_max, "num_classes": self.num_classes}


def pairs_cfg(*extra):
    return apply_overrides(preset("checkerboard-tiny"), [
        "pairs.n=50", "pairs.shard_size=20", "pairs.batch_size=8", "pairs.seed=4",
        "train.device=cpu", *extra])


def flow_teacher():
    return FlowMatchingTeacher(2, preset("checkerboard-tiny").teacher)


def edm_teacher():
    return EDMTeacher.from_config(preset("digits8"), {"shape": [1, 8, 8], "num_classes": 10})


@pytest.mark.parametrize("make,nfes", [
    (flow_teacher, {"euler": 3, "midpoint": 6, "heun": 6, "rk4": 12}),
    (edm_teacher, {"heun": 5, "euler": 3})])
def test_both_teachers_satisfy_the_protocol(make, nfes):
    torch.manual_seed(0)
    t = make()
    assert isinstance(t, Teacher)
    params = inspect.signature(t.sample).parameters
    assert list(params) == ["noise", "labels", "steps", "solver"]
    assert params["labels"].default is None
    assert all(params[k].kind is inspect.Parameter.KEYWORD_ONLY for k in ("steps", "solver"))
    assert t.steps == 4 and t.solver == "heun" and t.nfe() == t.nfe(4, "heun") == 2 * 4 - (
        t.kind == "edm-unet")  # EDM's last step is Euler
    noise = t.sigma_max * torch.randn(3, *t.shape)
    labels = torch.arange(3) if t.num_classes else None
    net = t.net if isinstance(t, FlowMatchingTeacher) else t.precond.net
    calls = []
    net.register_forward_hook(lambda *a: calls.append(1))
    for solver, n in nfes.items():  # nfe counts the network calls sample makes
        calls.clear()
        out = t.sample(noise, labels, steps=3, solver=solver)
        assert t.nfe(3, solver) == n == len(calls) and out.shape == noise.shape
    for bad in (lambda: t.nfe(3, "rk5"), lambda: t.sample(noise, labels, solver="rk5")):
        with pytest.raises(KDMError, match=r"unknown solver 'rk5' .*choose one of: ") as e:
            bad()
        assert "\n" not in str(e.value)
    ident, spec = t.identity(), t.spec()
    assert ident["kind"] == spec["kind"] == t.kind and ident["nfe"] == t.nfe()
    assert ident["sampler"]["method"] == "heun" and ident["sampler"]["steps"] == 4
    assert spec["run"] is None and spec["weights_sha256"] == ident["weights_sha256"]
    with torch.no_grad():
        next(t.parameters()).add_(1)
    assert t.identity()["weights_sha256"] != ident["weights_sha256"]


def test_trained_teachers_rebuild_from_their_spec(tiny, tmp_path):
    cfg = apply_overrides(preset("digits8"), ["teacher_train.steps=1", "teacher_train.ckpt_every=1",
                                              "data.n=64", "teacher_train.device=cpu"])
    api.train_teacher(cfg, tmp_path / "edm")
    for run in (tiny["teacher"], tmp_path / "edm"):
        t = api.load_teacher(run)[0]
        spec = t.spec()
        assert json.loads(json.dumps(spec)) == spec and spec["run"] == str(run.resolve())
        back = load_teacher_spec(spec)
        assert back.identity() == t.identity() and back is not t
        noise = t.sigma_max * torch.randn(4, *t.shape, generator=torch.Generator().manual_seed(1))
        labels = torch.tensor([0, 3, 9, 2]) if t.num_classes else None
        assert torch.equal(back.sample(noise, labels), t.sample(noise, labels))
        with pytest.raises(TeacherUnavailable, match="holds other weights than the teacher"):
            load_teacher_spec({**spec, "weights_sha256": "0" * 64})
        with pytest.raises(TeacherUnavailable, match="no longer holds checkpoint step-9"):
            load_teacher_spec({**spec, "checkpoint": "step-99999999"})
        assert store_teacher({"teacher": {"spec": {**spec, "run": str(tmp_path / "gone")}}}) is None
    # the tiny store's teacher, and a store written before specs (identity entry + sampler)
    store = PairStore(tiny["pairs"])
    rebuilt = store_teacher(store)
    assert {**rebuilt.identity(), "spec": rebuilt.spec()} == store.manifest["teacher"]
    flow = api.load_teacher(tiny["teacher"])[0]
    old = {"teacher": {"kind": "flow-matching-mlp", "path": str(tiny["teacher"]),
                       "checkpoint": flow.origin["checkpoint"]},
           "sampler": {"method": "euler", "steps": 3}}
    legacy = store_teacher(old)
    assert (legacy.solver, legacy.steps) == ("euler", 3)
    x = torch.randn(5, 2)
    assert torch.equal(legacy.sample(x), flow.sample(x, steps=3, solver="euler"))
    # unit-scale data (the checkerboard, std 2.6) are used as they are
    assert read_json(tiny["teacher"] / "run.json")["standardize"] == {"shift": [0.0, 0.0],
                                                                     "scale": [1.0, 1.0]}


@pytest.mark.parametrize("num_classes", [0, 4])
@pytest.mark.parametrize("store_noise", [True, False])
def test_make_pairs_with_a_teacher_object(tmp_path, store_noise, num_classes):
    t = Gaussian((3,), num_classes=num_classes)
    cfg = pairs_cfg(f"pairs.store_noise={store_noise}")
    store = api.make_pairs(t, tmp_path / "p", cfg, progress=False)
    m = store.manifest
    assert m["teacher"] == {**t.identity(), "spec": t.spec()} and m["nfe"] == 1
    assert m["sampler"] == {"method": "exact", "steps": 1} and store.sigma_max == 2.0
    assert store.seeded == (not store_noise) and store.has_labels == bool(num_classes)
    data = store.load()
    y = data["label"][:, None] if num_classes else 0
    np.testing.assert_allclose(data["clean"], 3.0 + y + 0.25 * data["noise"], rtol=0, atol=1e-6)
    # shard i's generator draws the noise (one block, or a seed per pair), then the labels
    for i, (lo, hi) in enumerate([(0, 20), (20, 40), (40, 50)]):
        g = torch.Generator().manual_seed(shard_seed(4, i))
        if store_noise:
            noise = (2.0 * torch.randn(hi - lo, 3, generator=g)).numpy()
        else:
            noise = seeded_noise(torch.randint(0, 2**62, (hi - lo,), generator=g), (3,), 2.0)
        np.testing.assert_array_equal(data["noise"][lo:hi], noise)
        if num_classes:
            np.testing.assert_array_equal(data["label"][lo:hi], torch.randint(
                0, num_classes, (hi - lo,), generator=g).numpy())
    assert abs(data["noise"].std() - 2.0) < 0.4
    with pytest.raises(KDMError, match="other settings"):  # another teacher never mixes in
        api.make_pairs(Gaussian((3,), mu=1.0, num_classes=num_classes), tmp_path / "p", cfg,
                       progress=False)
    assert store_teacher(store) is None  # the kind has no loader


def test_registry_rebuilds_a_registered_kind(tmp_path, monkeypatch):
    monkeypatch.setitem(registry._LOADERS, "gaussian", lambda spec, device: Gaussian(
        spec["shape"], spec["mu"], spec["s"], spec["sigma_max"], spec["num_classes"]))
    t = Gaussian((3,), mu=-1.0, num_classes=2)
    store = api.make_pairs(t, tmp_path / "p", pairs_cfg("pairs.noise_scale=1.5"), progress=False)
    assert store.manifest["sampler"]["noise_scale"] == 1.5 and store.noise_std == 3.0
    back = store_teacher(store)
    x, y = 2 * torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    assert torch.equal(back.sample(x, y), t.sample(x, y)) and back.identity() == t.identity()
    with pytest.raises(KDMError, match="no loader for teacher kind 'nope' .*pass the teacher"):
        load_teacher_spec({"kind": "nope"})
    with pytest.raises(KDMError, match="make_pairs needs a teacher run directory or a Teacher"):
        api.make_pairs(object(), tmp_path / "q", pairs_cfg())


def test_progress_moves_per_batch_for_an_image_teacher(tmp_path, monkeypatch):
    updates = []

    class Bar:
        def __init__(self, *args, **kwargs):
            pass

        def update(self, k):
            if k:
                updates.append(k)

        def close(self):
            pass

    monkeypatch.setattr(store_module, "tqdm", Bar)
    cfg = pairs_cfg("pairs.n=10", "pairs.shard_size=10", "pairs.batch_size=4")
    store = api.make_pairs(Gaussian((1, 4, 4), sigma_max=80.0), tmp_path / "p", cfg)
    assert updates == [4, 4, 2] and store.shape == (1, 4, 4)


def test_standardization_leaves_unit_scale_data_alone():
    g = torch.Generator().manual_seed(0)
    unit = 1.0 + 2.0 * torch.randn(4000, 3, generator=g)
    assert standardization(unit) == {"shift": [0.0] * 3, "scale": [1.0] * 3}
    big = unit * torch.tensor([1000.0, 1.0, 0.01]) + torch.tensor([0.0, 50.0, 0.0])
    std = standardization(big)
    np.testing.assert_allclose(std["shift"], big.double().mean(0).numpy(), rtol=1e-9)
    np.testing.assert_allclose(std["scale"], big.double().std(0).numpy(), rtol=1e-9)
    assert standardization(torch.ones(5, 2)) == {"shift": [1.0, 1.0], "scale": [1.0, 1.0]}


def test_five_dimensional_data_of_scale_1000(tmp_path):
    rng = np.random.default_rng(0)
    x = (5000 + 1000 * rng.standard_normal((2048, 5)) * [1, 2, 0.5, 1, 3]).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert kdm("teacher", "train", "--preset", "checkerboard-tiny", "--data",
               tmp_path / "x.npy", "--out", tmp_path / "t", "--set",
               "teacher_train.device=cpu") == 0
    meta = read_json(tmp_path / "t/run.json")
    assert meta["shape"] == [5] and meta["n_data"] == 2048
    np.testing.assert_allclose(meta["standardize"]["shift"], x.mean(0, dtype=np.float64),
                               rtol=1e-6)
    np.testing.assert_allclose(meta["standardize"]["scale"], x.std(0, ddof=1, dtype=np.float64),
                               rtol=1e-6)
    assert kdm("pairs", "--teacher", tmp_path / "t", "--out", tmp_path / "p", "--n", "300",
               "--set", "train.device=cpu") == 0
    store = PairStore(tmp_path / "p")
    pairs = store.load()
    assert store.shape == (5,) and pairs["clean"].shape == (300, 5) and store.sigma_max == 1.0
    teacher = api.load_teacher(tmp_path / "t")[0]
    z = ode_sample(teacher.velocity, torch.from_numpy(pairs["noise"][:8]), 4, "heun")
    np.testing.assert_allclose(pairs["clean"][:8], (z * teacher.scale + teacher.shift).numpy(),
                               rtol=1e-6)
    # the map back puts the (briefly trained) teacher's samples in the data's units
    assert (np.abs(pairs["clean"].mean(0) - x.mean(0)) < x.std(0)).all()
    assert (pairs["clean"].std(0) > 0.1 * x.std(0)).all()


def test_data_and_teacher_kind_must_agree():
    for cfg, expect in ((["teacher.kind=flow", "data.resolution=8"], "teacher.kind=flow learns "
                         "vectors but data.resolution=8 asks for images"),
                        (["data.resolution=0"], "teacher.kind=edm learns images but "
                         "data.resolution is 0")):
        with pytest.raises(KDMError, match=expect) as e:
            api.train_teacher(apply_overrides(preset("digits8"), cfg), "/nonexistent/never")
        assert "\n" not in str(e.value)
