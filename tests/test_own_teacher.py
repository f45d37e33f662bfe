"""A teacher defined only here goes through the whole pipeline: pairs, KDM, evaluation, bench.

The teacher is a Gaussian data distribution N(mu_y, s^2 I) (one mean per class when
conditional) with noise x_T ~ N(0, sigma_max^2 I): the probability-flow ODE of any Gaussian
diffusion path maps x_T to ``mu_y + (s / sigma_max) x_T`` exactly, so the teacher is that map.
Nothing in the package knows this class: its spec cannot be rebuilt from a module path, so the
object is passed to evaluation and bench.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from koopman_distill import api
from koopman_distill.bench import run_bench
from koopman_distill.config import apply_overrides, preset
from koopman_distill.errors import KDMError
from koopman_distill.evaluation import evaluate_run, evaluate_students
from koopman_distill.pairs import PairStore
from koopman_distill.protocols import Teacher


class GaussianTeacher:
    """Exact ODE map of Gaussian data: x_0 = mu_y + (s / sigma_max) x_T, (B, D) -> (B, D)."""

    def __init__(self, dim: int = 3, num_classes: int = 0, s: float = 0.5,
                 sigma_max: float = 2.0):
        self.shape, self.num_classes, self.sigma_max, self.s = (dim,), num_classes, sigma_max, s
        g = torch.Generator().manual_seed(7)
        self.mu = torch.randn(max(num_classes, 1), dim, generator=g)

    def sample(self, noise, labels=None, *, steps=None, solver=None):
        mu = self.mu[labels] if self.num_classes else self.mu[0]
        return mu.to(noise) + self.s / self.sigma_max * noise

    def nfe(self, steps=None, solver=None):
        return steps or 1

    def identity(self):
        return {"kind": "gaussian-test", "num_classes": self.num_classes, "s": self.s,
                "sampler": {"method": "exact", "steps": 1}, "nfe": 1}

    def spec(self):
        return {"kind": "gaussian-test"}


SETTINGS = ["pairs.n=1024", "pairs.shard_size=512", "train.steps=300", "train.batch_size=128",
            "train.eval_every=300", "train.ckpt_every=300", "train.lr=3e-3", "eval.n=512",
            "model.sample_steps=4"]


@pytest.mark.parametrize("num_classes", [0, 3])
def test_a_teacher_defined_in_a_test_goes_through_the_pipeline(tmp_path, num_classes):
    teacher = GaussianTeacher(num_classes=num_classes)
    assert isinstance(teacher, Teacher)
    bench = run_bench("checkerboard", tmp_path, quick=True, teacher=teacher,
                      overrides=[*SETTINGS, f"data.conditional={str(bool(num_classes)).lower()}"])

    store = PairStore(tmp_path / "pairs")
    pairs = store.load()
    # the pairs are the teacher's exact map of their own noise
    expect = teacher.sample(torch.from_numpy(pairs["noise"]).float(),
                            torch.from_numpy(pairs["label"]) if num_classes else None)
    np.testing.assert_allclose(pairs["clean"], expect.numpy(), atol=1e-6)
    assert store.manifest["teacher"]["kind"] == "gaussian-test"
    assert store.manifest["sigma_max"] == 2.0 and store.has_labels == bool(num_classes)

    # bench: teacher rows at every NFE and at its own sampler, every student, generic metrics
    names = [r["name"] for r in bench["rows"]]
    assert names[:6] == [*(f"teacher (Euler x{k})" for k in (1, 2, 4, 8, 16)),
                         "teacher (Exact x1)"]
    assert {"KDM (1 step)", "KD (1 step)", "rectified flow (4 steps)"} <= set(names)
    own = bench["rows"][5]
    assert own["paired_sq_error_per_sample"] == pytest.approx(0.0, abs=1e-10)
    assert bench["metric"] == "sliced_wasserstein" and bench["data"] is None
    spread = float(teacher.s ** 2 * 3)  # E||x_0 - mu_y||^2 per sample: a constant's error
    kdm_row = next(r for r in bench["rows"] if r["name"] == "KDM (1 step)")
    assert kdm_row["paired_sq_error_per_sample"] < 0.02 * spread

    # evaluation of one run: without the object the teacher cannot be rebuilt, so it scores
    # against the training pairs; with it, teacher rows and a held-out paired error
    res = evaluate_run(tmp_path / "kdm", out=tmp_path / "eval-no-teacher", make_plots=False)
    assert "teacher" not in res and res["reference"]["name"].startswith("training pairs")
    res = evaluate_run(tmp_path / "kdm", out=tmp_path / "eval", teacher=teacher)
    s = res["student"]
    assert s["paired_sq_error_per_sample"] == pytest.approx(
        kdm_row["paired_sq_error_per_sample"], rel=1e-5)  # the same held-out noise as bench
    assert s["paired_sq_error_per_sample"] < 0.02 * spread
    assert res["teacher"]["paired_sq_error_per_sample"] == pytest.approx(0.0, abs=1e-10)
    assert res["teacher"]["nfe"] == 1
    text = (json.dumps(res) + json.dumps(bench) + (tmp_path / "bench.md").read_text()
            + "".join(p.name for p in (tmp_path / "eval").iterdir()))
    assert "inside" not in text and "far_miss" not in text and "far miss" not in text


def test_without_the_object_bench_needs_the_teacher(tmp_path):
    cfg = apply_overrides(preset("checkerboard-tiny"), SETTINGS[:2])
    api.make_pairs(GaussianTeacher(), tmp_path / "pairs", cfg, progress=False)
    run = api.train_kdm(cfg, tmp_path / "pairs", tmp_path / "kdm")
    with pytest.raises(KDMError, match="cannot be rebuilt"):
        evaluate_students({"kdm": run}, cfg)
