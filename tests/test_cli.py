"""The `kdm` command end to end on tiny configs, and its behaviour on bad input."""

import json
import os
import re
import signal
import time

import numpy as np
import pytest
import torch
from conftest import kdm, kdm_proc, kdm_run, read_json

from koopman_distill.api import load_run, load_teacher
from koopman_distill.io import sha256_file
from koopman_distill.pairs import PairStore


def test_pipeline_artifacts(tiny):
    run = tiny["kdm"]
    cfg = read_json(run / "config.json")
    assert cfg["preset"] == "checkerboard-tiny" and cfg["train"]["steps"] == 20
    meta = read_json(run / "run.json")
    assert meta["kind"] == "kdm" and meta["shape"] == [2] and meta["nfe_teacher"] == 8
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000020"
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert {"latent", "rec", "push"} <= set(rows[0])
    assert [r["step"] for r in rows if "loss" in r] == [5, 10, 15, 20]  # log_every 5
    assert [r["step"] for r in rows if "eval/pair_mse" in r] == [10, 20]  # eval_every 10
    for r in (r for r in rows if "loss" in r):  # w_latent = w_rec = w_push = 1
        assert r["loss"] == pytest.approx(r["latent"] + r["rec"] + r["push"], rel=1e-5)
    store = PairStore(tiny["pairs"])
    assert len(store) == 512 and store.manifest["teacher"]["kind"] == "flow-matching-mlp"
    assert store.manifest["config"]["preset"] == "checkerboard-tiny"


def test_sample_and_map_given_noise(tiny, tmp_path):
    out = tmp_path / "s.npy"
    assert kdm("sample", tiny["kdm"], "--n", 300, "--seed", 3, "--out", out) == 0
    x = np.load(out)
    assert x.shape == (300, 2) and np.isfinite(x).all()
    gen = load_run(tiny["kdm"])
    np.testing.assert_allclose(x, gen.sample(300, seed=3), rtol=0, atol=1e-6)
    noise = np.random.default_rng(0).standard_normal((50, 2)).astype(np.float32)
    np.save(tmp_path / "noise.npy", noise)
    assert kdm("sample", tiny["kdm"], "--noise", tmp_path / "noise.npy", "--out",
               tmp_path / "m.npy") == 0
    np.testing.assert_allclose(np.load(tmp_path / "m.npy"), gen.map(noise), atol=1e-6)
    assert kdm("sample", tiny["kdm"], "--n", 5, "--raw", "--out", tmp_path / "r.npy") == 0
    assert not np.allclose(np.load(tmp_path / "r.npy"), gen.sample(5))  # raw != EMA


def test_eval_writes_metrics_and_plots(tiny, tmp_path):
    assert kdm("eval", tiny["kdm"], "--out", tmp_path, "--set", "eval.n=400",
               "--set", "eval.projections=16", "--set", "eval.energy_n=200") == 0
    res = read_json(tmp_path / "eval.json")
    assert res["settings"]["n"] == 400 and res["settings"]["projections"] == 16
    assert res["data"] == "checkerboard" and res["shape"] == [2]
    assert res["settings"]["data"] == "checkerboard (data.n=4096, data.seed=0), n=400"
    for side in ("student", "teacher"):
        assert res[side]["sliced_wasserstein_to_data"] > 0
    assert res["student"]["nfe"] == 1 and res["teacher"]["nfe"] == 8
    assert res["student"]["name"] == "KDM (1 step)"
    assert res["teacher"]["name"] == "teacher (Heun x4)"
    assert res["teacher"]["paired_sq_error_per_sample"] == 0.0  # the targets themselves
    assert 0 <= res["student"]["far_miss_fraction"] <= 1
    assert res["ratios"]["speedup_student_over_teacher"] == pytest.approx(
        res["student"]["samples_per_s"] / res["teacher"]["samples_per_s"])
    # the protocol: eval.n noise vectors from eval.seed, mapped by KDM and by the teacher
    from koopman_distill.data.checkerboard import inside_fraction

    gen = load_run(tiny["kdm"])
    teacher, tcfg = load_teacher(tiny["teacher"])
    noise = gen.noise(400, res["settings"]["seed"])
    x = gen.map(noise)
    x0 = teacher.sample(noise, solver=tcfg.teacher.sampler, steps=tcfg.teacher.steps)
    assert res["student"]["inside_fraction"] == inside_fraction(x)
    assert res["teacher"]["inside_fraction"] == inside_fraction(x0)
    held_out = np.sum((x - x0.numpy()) ** 2, axis=1).mean()
    assert res["student"]["paired_sq_error_per_sample"] == pytest.approx(held_out, rel=1e-5)
    assert res["student"]["paired_mse"] == pytest.approx(held_out / 2, rel=1e-5)
    for side in ("student", "teacher"):  # against fresh teacher samples: only the teacher is near
        assert res[side]["sliced_wasserstein"] > 0
    assert res["student"]["sliced_wasserstein"] > res["teacher"]["sliced_wasserstein"]
    # the paired error on the run's own training pairs, next to the held-out one
    pairs = PairStore(gen.meta["pairs"]).load(np.arange(400))
    own = np.sum((gen.map(pairs["noise"]) - pairs["clean"]) ** 2, axis=1).mean()
    assert res["student"]["train_pairs_paired_sq_error_per_sample"] == pytest.approx(own,
                                                                                     rel=1e-5)
    for name in ("scatter", "noise_structure", "far_misses", "spectrum", "loss"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_samples_file(tmp_path, capsys):
    from koopman_distill.data.checkerboard import sample_checkerboard

    np.save(tmp_path / "x.npy", sample_checkerboard(500).numpy())
    assert kdm("eval", "--samples", tmp_path / "x.npy", "--set", "eval.projections=8",
               "--set", "eval.energy_n=100") == 0
    assert '"inside_fraction": 1.0' in capsys.readouterr().out


def test_pairs_noise_scale_widens_only_the_pairs_noise(tiny, tmp_path, capsys):
    from koopman_distill.api import load_teacher

    out = tmp_path / "wide"
    assert kdm("pairs", "--teacher", tiny["teacher"], "--out", out,
               "--set", "pairs.noise_scale=2") == 0
    wide, base = PairStore(out), PairStore(tiny["pairs"])
    assert wide.manifest["sampler"]["noise_scale"] == 2.0
    assert "noise_scale" not in base.manifest["sampler"]
    assert wide.sigma_max == base.sigma_max == 1.0  # sampling noise is unchanged
    pairs = wide.load()
    np.testing.assert_array_equal(pairs["noise"], 2 * base.load()["noise"])  # same seeds
    teacher, tcfg = load_teacher(tiny["teacher"])
    x0 = teacher.sample(torch.from_numpy(pairs["noise"][:16]), steps=tcfg.teacher.steps,
                        solver=tcfg.teacher.sampler).numpy()
    np.testing.assert_allclose(pairs["clean"][:16], x0, atol=1e-5)
    # a student trained on them samples N(0, sigma_max^2) noise; eval says the pairs are wider
    assert kdm("train", "--preset", "checkerboard-tiny", "--pairs", out, "--out",
               tmp_path / "run") == 0
    capsys.readouterr()
    assert kdm("eval", tmp_path / "run", "--no-plots", "--set", "eval.n=300",
               "--set", "eval.projections=8", "--set", "eval.energy_n=100") == 0
    assert "(their noise drawn 2x wider)" in capsys.readouterr().out
    res = read_json(tmp_path / "run" / "eval" / "eval.json")
    assert res["student"]["train_pairs_noise_scale"] == 2.0
    assert load_run(tmp_path / "run").noise(20000).std().item() == pytest.approx(1.0, rel=0.03)
    # another noise scale is another store, never mixed into this one
    one_line_error(kdm_run("pairs", "--teacher", tiny["teacher"], "--out", out,
                            "--set", "pairs.noise_scale=3"), "other settings")


def test_import_authors_checkerboard_then_train_and_sample(tmp_path):
    import torch

    from koopman_distill.data.checkerboard import sample_checkerboard

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(600, 2, generator=g)
    clean = sample_checkerboard(600, g)
    t = torch.linspace(0, 1, 5)[:, None, None]
    traj = ((1 - t) * noise + t * clean).numpy().astype(np.float32)  # (T, N, 2), noise first
    np.save(tmp_path / "sampled_dataset.npy", traj)
    assert kdm("pairs", "import", tmp_path / "sampled_dataset.npy", "--out",
               tmp_path / "store") == 0
    store = PairStore(tmp_path / "store")
    np.testing.assert_array_equal(store.load()["noise"], traj[0])
    np.testing.assert_array_equal(store.load()["clean"], traj[-1])
    assert store.sigma_max == pytest.approx(1.0)
    assert kdm("train", "--preset", "checkerboard-tiny", "--pairs", tmp_path / "store",
               "--out", tmp_path / "run") == 0
    assert kdm("sample", tmp_path / "run", "--n", 10, "--out", tmp_path / "s.npy") == 0
    assert np.load(tmp_path / "s.npy").shape == (10, 2)
    assert kdm("eval", tmp_path / "run", "--no-plots", "--set", "eval.n=200",
               "--set", "eval.projections=8", "--set", "eval.energy_n=100") == 0
    res = read_json(tmp_path / "run" / "eval" / "eval.json")
    assert "teacher" not in res and "train_pairs_paired_mse" in res["student"]
    # imported pairs record no data: no data metrics and none of the board's extras
    assert res["data"] is None and res["settings"]["data"] is None
    assert not any("inside" in k or "to_data" in k for k in res["student"])
    assert res["settings"]["reference"] == "training pairs (teacher not available)"


def test_resume_after_killed_train(tiny, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--preset", "checkerboard-tiny", "--pairs", tiny["pairs"], "--out", run,
            "--set", "train.steps=3000", "--set", "train.ckpt_every=20",
            "--set", "train.eval_every=0"]
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "koopman_distill.cli", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "latest").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = int((run / "checkpoints" / "latest").read_text().split("-")[1])
    assert 0 < killed_at < 3000
    end = killed_at + 40  # resumed to a nearer end: the same steps, fewer of them
    assert kdm("train", "--resume", run, "--set", f"train.steps={end}") == 0
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step-{end:08d}"
    steps = [r["step"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())
             if "loss" in r]
    assert steps == list(range(5, end + 1, 5))  # no gap, no duplicate after the resume


def test_train_init_starts_from_another_runs_ema(tiny, tmp_path):
    from safetensors.torch import load_file

    src = tiny["kdm"] / "checkpoints" / "step-00000020" / "ema.safetensors"
    args = ["train", "--preset", "checkerboard-tiny", "--pairs", tiny["pairs"],
            "--set", "train.steps=2", "--set", "train.warmup=0"]
    # lr 1e-30 (below float32 resolution): the weights stay the source run's EMA weights
    assert kdm(*args, "--out", tmp_path / "ft", "--set", f"train.init={tiny['kdm']}",
               "--set", "train.lr=1e-30") == 0
    got = load_file(tmp_path / "ft" / "checkpoints" / "step-00000002" / "model.safetensors")
    want = load_file(src)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert read_json(tmp_path / "ft" / "config.json")["train"]["init"] == str(tiny["kdm"])

    one_line_error(kdm_run(*args, "--out", tmp_path / "none", "--set",
                            f"train.init={tmp_path / 'missing'}"), "holds no checkpoint")
    one_line_error(kdm_run(*args, "--out", tmp_path / "wide", "--set", "model.width=48",
                            "--set", f"train.init={tiny['kdm']}"),
                   "does not match the model", "shape differs")
    assert not (tmp_path / "none").exists() and not (tmp_path / "wide").exists()


def one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdm: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_inputs_one_line_errors(tiny, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    np.save(bad / "shape.npy", np.zeros((10, 3), np.float32))
    np.save(bad / "flat.npy", np.zeros(10, np.float32))
    arr = np.zeros((10, 2), np.float32)
    arr[[2, 7], 1] = np.nan
    arr[4, 0] = np.inf
    np.save(bad / "nan.npy", arr)
    (bad / "garbage.npy").write_bytes(b"not numpy at all")
    cases = [
        (["teacher", "train", "--out", tmp_path / "t1", "--data", bad / "missing.npy"],
         ["not found", "missing.npy"], tmp_path / "t1"),
        (["teacher", "train", "--out", tmp_path / "t2", "--data", bad / "flat.npy"],
         ["must have shape (N, D)", "(10,)"], tmp_path / "t2"),
        (["teacher", "train", "--out", tmp_path / "t3", "--data", bad / "nan.npy"],
         ["3 rows with NaN/inf", "rows 2, 4, 7"], tmp_path / "t3"),
        (["teacher", "train", "--out", tmp_path / "t4", "--data", bad / "garbage.npy"],
         ["garbage.npy"], tmp_path / "t4"),
        (["train", "--preset", "nope", "--pairs", tiny["pairs"], "--out", tmp_path / "r1"],
         ["unknown preset 'nope'"], tmp_path / "r1"),
        (["train", "--pairs", tiny["pairs"], "--out", tmp_path / "r2", "--set", "train.x=1"],
         ["unknown config key 'train.x'"], tmp_path / "r2"),
        (["train", "--pairs", tiny["pairs"], "--out", tmp_path / "r3", "--bogus"],
         ["unrecognized arguments: --bogus"], tmp_path / "r3"),
        (["train", "--pairs", tmp_path / "nostore", "--out", tmp_path / "r4"],
         ["nostore"], tmp_path / "r4"),
        (["sample", tiny["kdm"], "--noise", bad / "shape.npy", "--out", tmp_path / "o.npy"],
         ["must have shape (N, 2)"], tmp_path / "o.npy"),
        (["sample", tiny["kdm"], "--n", "5", "--out", tmp_path / "o.txt"],
         ["must end in .npy"], tmp_path / "o.txt"),
        (["sample", tmp_path / "norun", "--n", "5", "--out", tmp_path / "o2.npy"],
         ["norun"], tmp_path / "o2.npy"),
        (["pairs", "import", bad / "shape.npy", "--out", tmp_path / "p1"],
         ["shape.npy"], tmp_path / "p1"),
        (["pairs", "import", bad / "nan.npy", "--out", tmp_path / "p2"],
         ["nan.npy"], tmp_path / "p2"),
    ]
    for args, needles, must_not_exist in cases:
        one_line_error(kdm_run(*args), *needles)
        assert not must_not_exist.exists(), args


def test_newer_manifest_is_refused(tiny, tmp_path):
    import json
    import shutil

    store = tmp_path / "store"
    shutil.copytree(tiny["pairs"], store)
    m = read_json(store / "manifest.json")
    m["version"] = 99
    (store / "manifest.json").write_text(json.dumps(m))
    one_line_error(kdm_run("train", "--pairs", store, "--out", tmp_path / "r"),
                   "newer", "upgrade")
    assert not (tmp_path / "r").exists()


def test_nan_pairs_are_refused_before_training(tiny, tmp_path):
    import shutil

    store = tmp_path / "store"
    shutil.copytree(tiny["pairs"], store)
    shard = store / "clean-00000.npy"
    x = np.load(shard)
    x[3, 0] = np.nan
    np.save(shard, x)
    # reseal the edited shard as the writer would (sha256 of the file's bytes), so that the
    # checksum passes and only the NaN check can refuse it
    m = read_json(store / "manifest.json")
    m["shards"][0]["sha256"]["clean"] = sha256_file(shard)
    (store / "manifest.json").write_text(json.dumps(m))
    proc = kdm_run("train", "--pairs", store, "--out", tmp_path / "r")
    one_line_error(proc, "has 1 non-finite values (NaN/inf) in clean shard 0 at example "
                   "indices [3]")
    assert "sha256" not in proc.stderr
    assert not (tmp_path / "r").exists()


def test_existing_run_is_not_overwritten(tiny, tmp_path):
    one_line_error(kdm_run("train", "--preset", "checkerboard-tiny", "--pairs", tiny["pairs"],
                            "--out", tiny["kdm"]), "already holds a run", "--resume")


def test_teacher_on_user_point_cloud(tmp_path):
    theta = np.random.default_rng(0).uniform(0, 2 * np.pi, 3000)
    ring = np.stack([3 * np.cos(theta), 3 * np.sin(theta)], 1).astype(np.float32)
    np.save(tmp_path / "ring.npy", ring)
    assert kdm("teacher", "train", "--preset", "checkerboard-tiny", "--data",
               tmp_path / "ring.npy", "--out", tmp_path / "t") == 0
    assert read_json(tmp_path / "t" / "config.json")["data"]["source"] == str(tmp_path / "ring.npy")
    assert read_json(tmp_path / "t" / "run.json")["n_data"] == 3000
    assert kdm("pairs", "--teacher", tmp_path / "t", "--out", tmp_path / "p", "--n", 300) == 0
    assert len(PairStore(tmp_path / "p")) == 300


def test_eigen_koopman_run_plots_both_spectra(tiny, tmp_path):
    assert kdm("train", "--preset", "checkerboard-tiny", "--pairs", tiny["pairs"], "--out",
               tmp_path / "run", "--set", "model.koopman=eigen",
               "--set", "model.w_spectrum=0.1") == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {"inverse", "spectrum"} <= set(rows[0])
    assert kdm("eval", tmp_path / "run", "--set", "eval.n=300", "--set", "eval.projections=8",
               "--set", "eval.energy_n=100") == 0
    assert (tmp_path / "run" / "eval" / "spectrum.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_of_a_baseline_run_names_it_and_counts_its_steps(tiny, tmp_path, capsys):
    assert kdm("train", "--preset", "checkerboard-tiny", "--pairs", tiny["pairs"], "--out",
               tmp_path / "rf", "--set", "model.method=rectified",
               "--set", "model.sample_steps=3") == 0
    capsys.readouterr()
    assert kdm("eval", tmp_path / "rf", "--set", "eval.n=300", "--set", "eval.projections=8",
               "--set", "eval.energy_n=100") == 0
    assert "| rectified flow (3 steps) | 3 " in capsys.readouterr().out
    res = read_json(tmp_path / "rf" / "eval" / "eval.json")
    assert res["method"] == "rectified" and res["student"]["nfe"] == 3
    # scatter and noise structure as for KDM; no Koopman operator, so no spectrum
    assert set(res["plots"]) == {"scatter", "noise_structure", "far_misses", "loss"}
    assert not (tmp_path / "rf" / "eval" / "spectrum.png").exists()


def test_demo_runs_reuses_stages_and_guards_settings(tmp_path, capsys):
    args = ["demo", "--preset", "checkerboard-tiny", "--out", tmp_path / "d",
            "--set", "eval.n=300", "--set", "eval.projections=8", "--set", "eval.energy_n=100"]
    assert kdm(*args) == 0
    first = capsys.readouterr().out
    assert "| KDM (1 step) | 1" in first and "| teacher" in first and "noise_structure:" in first
    assert kdm(*args) == 0
    second = capsys.readouterr().out
    assert "[teacher] reusing" in second and "[kdm] reusing" in second
    one_line_error(kdm_run(*args, "--set", "teacher.width=48"), "other teacher settings")


def test_version_matches_the_installed_package():
    from importlib.metadata import version

    import koopman_distill

    proc = kdm_proc("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"kdm {version('koopman-distill')}" == \
        f"kdm {koopman_distill.__version__}"


def test_pairs_make_and_its_short_form_make_the_same_store(tiny, tmp_path):
    from conftest import contents

    assert kdm("pairs", "make", "--teacher", tiny["teacher"], "--out", tmp_path / "p") == 0
    assert contents(tmp_path / "p") == contents(tiny["pairs"])  # tiny's: `kdm pairs --teacher`
    proc = kdm_run("pairs", "--help")
    assert proc.returncode == 0
    listed = re.findall(r"^ {4}(\w+) {2,}\S", proc.stdout, re.M)
    assert listed == ["make", "import", "verify", "filter"], proc.stdout
