"""The one evaluation path: the evaluate function on closed forms, the one timer, and runs of
data that is not the checkerboard (5-D vectors, two moons) end to end."""

import json
import time

import numpy as np
import pytest
import torch
from conftest import kdm, read_json

from koopman_distill.bench import bench_markdown, checks
from koopman_distill.config import apply_overrides, preset
from koopman_distill.demo import results_table
from koopman_distill.domains import domain_for
from koopman_distill.evaluation import timer
from koopman_distill.evaluation.core import Candidate, Reference, evaluate
from koopman_distill.evaluation.runs import evaluate_students
from koopman_distill.metrics.vectors import random_directions


def test_evaluate_scores_every_candidate_on_the_same_noise_and_reference():
    cfg = apply_overrides(preset("checkerboard-tiny"), ["eval.n=300", "eval.projections=16",
                                                        "eval.energy_n=100"])
    noise = torch.randn(300, 5, generator=torch.Generator().manual_seed(1))
    m = torch.tensor([0.5, -1.0, 0.0, 2.0, 0.25])
    seen = []

    def teacher(x, y):
        seen.append(x)
        return x

    candidates = [Candidate("teacher (exact)", "teacher", 4, teacher, 10),
                  Candidate("shifted", "kd", 1, lambda x, y: x + m, 20, 3.0)]
    ev = evaluate(candidates, domain_for((5,)), noise, None, Reference(noise.numpy(), "noise"),
                  cfg, device=torch.device("cpu"), paired_with="teacher (exact)",
                  keep=["shifted"])
    exact, shifted = ev.rows
    # the reference itself scores 0; a translation by m scores E_u |m . u| exactly
    assert exact["sliced_wasserstein"] == 0.0 and exact["paired_mse"] == 0.0
    u = random_directions(16, 5, seed=cfg.eval.seed)
    assert shifted["sliced_wasserstein"] == pytest.approx(np.mean(np.abs(u @ m.numpy())),
                                                          rel=1e-6)
    assert shifted["paired_sq_error_per_sample"] == pytest.approx(float(m @ m), rel=1e-6)
    assert shifted["energy_distance"] > 0.3 > abs(exact["energy_distance"])
    assert (shifted["method"], shifted["nfe"], shifted["params"],
            shifted["train_seconds"]) == ("kd", 1, 20, 3.0)
    assert exact["speedup_vs_teacher"] == 1.0 and shifted["samples_per_s"] > 0
    np.testing.assert_array_equal(ev.samples["shifted"], (noise + m).numpy())
    assert list(ev.samples) == ["shifted"]
    # the teacher mapped all the noise once for the rows (not once per row), then timed batches
    assert torch.equal(seen[0], noise) and [len(x) for x in seen] == [300] * 5
    assert ev.settings["n"] == 300 and ev.settings["reference"] == "noise"
    assert ev.reference == {"name": "noise", "n": 300}
    assert not any("inside" in k for k in exact)


def test_timer_warms_up_then_keeps_the_fastest_synchronised_call(monkeypatch):
    log, sleeps = [], iter([0.0, 0.06, 0.03, 0.09])  # warm-up first: not timed

    def call():
        log.append("call")
        time.sleep(next(sleeps))

    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log.append("sync"))
    best = timer.best_seconds(call, torch.device("cuda"), repeats=3)
    assert 0.03 <= best < 0.05
    assert log == ["call"] + ["sync", "call", "sync"] * 3
    log.clear()
    timer.best_seconds(lambda: log.append("call"), torch.device("cpu"), repeats=2)
    assert log == ["call"] * 3  # nothing to wait for on the CPU
    sleeps = iter([0.0, 0.02, 0.02, 0.02])
    rate = timer.throughput(lambda x, y: time.sleep(next(sleeps)) or x, torch.zeros(50, 2),
                            None, torch.device("cpu"))
    assert 50 / 0.03 < rate <= 50 / 0.02


def _pipeline(tmp_path, data: np.ndarray, *extra: str) -> dict:
    """Teacher on ``data`` (N, D) -> pairs -> student(s) -> kdm eval, on the tiny budgets."""
    np.save(tmp_path / "data.npy", data.astype(np.float32))
    args = ["--preset", "checkerboard-tiny"]
    assert kdm("teacher", "train", *args, "--data", tmp_path / "data.npy", "--out",
               tmp_path / "t") == 0
    assert kdm("pairs", "make", "--teacher", tmp_path / "t", "--out", tmp_path / "p",
               "--n", 256) == 0
    for method in ("kdm", *extra):
        assert kdm("train", *args, "--pairs", tmp_path / "p", "--out", tmp_path / method,
                   "--set", f"model.method={method}") == 0
    assert kdm("eval", tmp_path / "kdm", "--set", "eval.n=200", "--set",
               "eval.projections=8", "--set", "eval.energy_n=100") == 0
    return read_json(tmp_path / "kdm" / "eval" / "eval.json")


def test_five_dimensional_vectors_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    centres = 3 * rng.standard_normal((4, 5))
    data = centres[rng.integers(0, 4, 600)] + 0.3 * rng.standard_normal((600, 5))
    res = _pipeline(tmp_path, data)
    assert res["shape"] == [5] and res["data"] == str(tmp_path / "data.npy")
    for side in ("teacher", "student"):
        r = res[side]
        assert r["sliced_wasserstein"] > 0 and r["sliced_wasserstein_to_data"] > 0
        assert np.isfinite(r["energy_distance_to_data"])
    # the student is scored against the same fresh teacher samples as the teacher itself
    assert res["reference"] == {"name": "fresh teacher samples (eval.reference_seed)", "n": 200}
    assert res["student"]["paired_sq_error_per_sample"] > 0
    assert res["student"]["train_pairs_paired_sq_error_per_sample"] > 0
    log = (tmp_path / "kdm" / "log.jsonl").read_text()
    assert "eval/pair_mse" in log and "inside" not in log
    files = sorted(p.name for p in (tmp_path / "kdm" / "eval").iterdir())
    assert files == ["commands.jsonl", "eval.json", "loss.png", "scatter.png",
                     "spectrum.png"]  # a projection; the command line for `kdm report`
    assert kdm("sample", tmp_path / "kdm", "--n", 10, "--out", tmp_path / "s.npy",
               "--grid", tmp_path / "g.png") == 0
    assert np.load(tmp_path / "s.npy").shape == (10, 5)
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_two_moons_get_generic_metrics_and_no_board(tmp_path, capsys):
    rng = np.random.default_rng(1)
    t = rng.uniform(0, np.pi, 800)
    upper = rng.random(800) < 0.5
    moons = np.stack([np.where(upper, np.cos(t), 1 - np.cos(t)),
                      np.where(upper, np.sin(t), 0.5 - np.sin(t))], 1)
    res = _pipeline(tmp_path, 2 * moons + 0.05 * rng.standard_normal((800, 2)), "kd")
    table = capsys.readouterr().out
    assert res["shape"] == [2] and "sliced W1" in table
    assert res["student"]["sliced_wasserstein_to_data"] > 0
    bench = evaluate_students({m: tmp_path / m for m in ("kdm", "kd")},
                              apply_overrides(preset("checkerboard-tiny"), ["eval.n=100"]))
    assert [r["nfe"] for r in bench["rows"] if r["method"] == "teacher"] == [1, 2, 4, 8, 16, 8]
    bench.update(suite="moons", quick=True, preset="checkerboard-tiny")
    bench["checks"] = checks(bench)
    ratio = bench["checks"]["kdm_sliced_wasserstein_over_kd"]
    one = {r["method"]: r for r in bench["rows"] if r["nfe"] == 1}
    assert ratio == pytest.approx(one["kdm"]["sliced_wasserstein"]
                                  / one["kd"]["sliced_wasserstein"])
    outputs = [json.dumps(res), json.dumps(bench), bench_markdown(bench), results_table(res),
               table, (tmp_path / "kdm" / "log.jsonl").read_text()]
    assert not any("inside" in text for text in outputs)
    files = sorted(p.name for p in (tmp_path / "kdm" / "eval").iterdir())
    assert files == ["commands.jsonl", "eval.json", "loss.png", "scatter.png", "spectrum.png"]


def test_imported_five_dimensional_trajectory_trains_and_evaluates(tmp_path):
    # imported pairs record no data: the in-training evaluation and kdm eval use none of the
    # checkerboard's extras (the preset's data.source), which cannot score 5-D points
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(300, 5, generator=g)
    clean = 2 + 0.5 * torch.randn(300, 5, generator=g)
    t = torch.linspace(0, 1, 4)[:, None, None]
    np.save(tmp_path / "traj.npy", ((1 - t) * noise + t * clean).numpy().astype(np.float32))
    assert kdm("pairs", "import", tmp_path / "traj.npy", "--out", tmp_path / "store") == 0
    assert kdm("train", "--preset", "checkerboard-tiny", "--pairs", tmp_path / "store",
               "--out", tmp_path / "run") == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text()
            .splitlines()]
    assert [r["step"] for r in rows if "eval/pair_mse" in r] == [10, 20]
    assert not any("eval/inside" in r for r in rows)
    assert kdm("eval", tmp_path / "run", "--set", "eval.n=200", "--set", "eval.projections=8",
               "--set", "eval.energy_n=100") == 0
    res = read_json(tmp_path / "run" / "eval" / "eval.json")
    assert res["shape"] == [5] and res["data"] is None and "teacher" not in res
    assert res["reference"]["name"] == "training pairs (teacher not available)"
    assert res["student"]["sliced_wasserstein"] > 0 and "inside" not in json.dumps(res)
