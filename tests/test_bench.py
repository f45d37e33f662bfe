"""``kdm bench --quick``: every suite end to end at toy budgets, rows, reports and reuse;
seeds (``--seeds``) and the students with and without the adversarial term (``--adv``)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from koopman_distill.api import load_run
from koopman_distill.bench import run_bench, suite_config
from koopman_distill.cli import main
from koopman_distill.evaluation.runs import TEACHER_NFES, evaluate_students
from koopman_distill.students.baselines import EVAL_STEPS
from koopman_distill.training.checkpoint import latest_checkpoint


def _rows(result):
    return {(r["method"], r["nfe"]) for r in result["rows"]}


@pytest.mark.parametrize("suite, full_nfe", [("checkerboard", 8), ("fashion16", 7)])
def test_quick_suite_end_to_end(tmp_path, suite, full_nfe):
    result = run_bench(suite, tmp_path / "b", quick=True)
    want = {("teacher", k) for k in (*TEACHER_NFES, full_nfe)}
    want |= {("kdm", 1), ("kd", 1)} | {("rectified", k) for k in EVAL_STEPS}
    assert _rows(result) == want
    for r in result["rows"]:
        assert r["samples_per_s"] > 0 and r["params"] > 0
        if r["name"].startswith("teacher (Heun"):
            assert r["speedup_vs_teacher"] == pytest.approx(1.0)
    params = {r["method"]: r["params"] for r in result["rows"]}
    assert abs(params["kd"] - params["kdm"]) / params["kdm"] < 0.15  # comparable sizes
    assert set(result["checks"]) >= {"quality_target_met", "speed_target_met",
                                     "kdm_speedup_vs_teacher"}
    out = tmp_path / "b"
    saved = json.loads((out / "bench.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    md = (out / "bench.md").read_text()
    assert "| KDM (1 step)" in md and "x teacher" in md and "target" in md
    assert (out / "quality_vs_nfe.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_reuses_stages_and_rejects_unknown_suite(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["bench", "checkerboard", "--quick", "--out", str(out)]) == 0
    first = json.loads((out / "bench.json").read_text())
    capsys.readouterr()
    assert main(["bench", "checkerboard", "--quick", "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert "[kdm] reusing" in log and "[kd] reusing" in log and "[rectified] reusing" in log
    second = json.loads((out / "bench.json").read_text())
    quality = [{k: v for k, v in r.items() if k not in ("samples_per_s", "speedup_vs_teacher")}
               for r in first["rows"]]
    assert quality == [{k: v for k, v in r.items()
                        if k not in ("samples_per_s", "speedup_vs_teacher")}
                       for r in second["rows"]]
    # evaluation settings and the trainer's bookkeeping may change between runs; training
    # settings may not
    assert main(["bench", "checkerboard", "--quick", "--out", str(out),
                 "--set", "eval.n=256", "--set", "train.progress=true",
                 "--set", "train.log_every=1"]) == 0
    assert "[kdm] reusing" in capsys.readouterr().out
    assert main(["bench", "checkerboard", "--quick", "--out", str(out),
                 "--set", "train.lr=0.1"]) == 2
    assert ("was made with other train settings than these (train.lr 0.0003 -> 0.1)"
            in capsys.readouterr().err)
    # KDM's own loss settings do not touch the baselines: only the KDM stage is retrained
    shutil.rmtree(out / "kdm")
    assert main(["bench", "checkerboard", "--quick", "--out", str(out),
                 "--set", "model.w_latent=0.5", "--set", "model.sigma_z_schedule=cosine"]) == 0
    log = capsys.readouterr().out
    assert "[kdm] -> " in log and "[kd] reusing" in log and "[rectified] reusing" in log
    assert main(["bench", "cifar", "--quick", "--out", str(out)]) == 2
    assert "invalid choice: 'cifar'" in capsys.readouterr().err


def test_cli_preset_picks_the_budget_on_the_suites_data(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["bench", "checkerboard", "--quick", "--out", str(out)]) == 0
    quick = json.loads((out / "bench.json").read_text())
    capsys.readouterr()
    # --quick is the suite's toy preset: naming it runs the same config, so every stage is reused
    assert main(["bench", "checkerboard", "--preset", "checkerboard-tiny", "--out",
                 str(out)]) == 0
    assert "[kd] reusing" in capsys.readouterr().out
    named = json.loads((out / "bench.json").read_text())
    assert named["preset"] == quick["preset"] == "checkerboard-tiny"
    inside = [[r["inside_fraction"] for r in res["rows"]] for res in (named, quick)]
    assert inside[0] == inside[1]
    fresh = tmp_path / "fresh"
    assert main(["bench", "checkerboard", "--preset", "fashion16-cond", "--out",
                 str(fresh)]) == 2
    err = capsys.readouterr().err
    assert ("preset 'fashion16-cond' is not on the checkerboard suite's data; choose one of: "
            "checkerboard, checkerboard-demo, checkerboard-tiny") in err
    assert len(err.strip().splitlines()) == 1
    assert main(["bench", "checkerboard", "--quick", "--preset", "checkerboard", "--out",
                 str(fresh)]) == 2
    assert "drop --preset or --quick" in capsys.readouterr().err
    assert not fresh.exists()


STAGES = ("kdm", "kdm-noadv", "kd", "kd-adv", "rectified", "rectified-adv")
NAMES = ("KDM", "KDM, no adv.", "KD", "KD + adv.", "rectified flow", "rectified flow + adv.")
W_ADV = ["--set", "model.w_adv=0.05"]


def test_seeds_and_adversarial_variants(tmp_path, capsys):
    """``--seeds 2 --adv both``: six students (each method with and without the adversarial
    term) trained with train.seed 0 and 1 on one teacher and pairs; rows hold the means,
    ``per_seed`` the per-seed values with their mean, sample std, min and max; the checks
    compare like for like. A default bench in the same directory then reuses the first seed's
    runs, and an old-format baseline run that recorded an ignored w_adv loads without a
    critic."""
    out = tmp_path / "b"
    assert main(["bench", "checkerboard", "--quick", "--out", str(out), "--seeds", "2",
                 "--adv", "both", *W_ADV]) == 0
    res = json.loads((out / "bench.json").read_text())
    assert (res["adv"], res["seeds"]) == ("both", 2)
    assert list(res["students"]) == list(STAGES)
    assert [s["name"] for s in res["students"].values()] == list(NAMES)
    for stage, s in res["students"].items():
        assert s["runs"] == [str((out / stage).resolve()), str((out / f"{stage}-seed1").resolve())]
        assert s["train_seeds"] == [0, 1]
        assert s["w_adv"] == (0.05 if stage in ("kdm", "kd-adv", "rectified-adv") else 0.0)
        for run, seed in zip(s["runs"], (0, 1), strict=True):
            model = json.loads((Path(run) / "config.json").read_text())["model"]
            train = json.loads((Path(run) / "config.json").read_text())["train"]
            assert (model["method"], model["w_adv"], train["seed"]) == (s["method"], s["w_adv"],
                                                                         seed)
    # the seeds train different weights
    a, b = (load_file(latest_checkpoint(out / r) / "ema.safetensors") for r in ("kd", "kd-seed1"))
    assert not all(torch.equal(a[k], b[k]) for k in a)
    # the critic trains with KD + adv. and stays off its sampling path
    log = [json.loads(r) for r in (out / "kd-adv" / "log.jsonl").read_text().splitlines()]
    assert any({"adv", "critic_real"} <= set(r) for r in log)
    assert any(k.startswith("critic.") for k in load_file(
        latest_checkpoint(out / "kd-adv") / "ema.safetensors"))
    assert not any(k.startswith("critic.") for k in a)

    rows = [r for r in res["rows"] if r["method"] != "teacher"]
    assert [(r["student"], r["nfe"]) for r in rows] == [
        (s, k) for s in STAGES for k in (EVAL_STEPS if s.startswith("rectified") else (1,))]
    assert [r["name"] for r in rows if r["nfe"] == 1] == [f"{n} (1 step)" for n in NAMES]
    params = {r["name"]: r["params"] for r in rows}
    assert params["KD + adv. (1 step)"] == params["KD (1 step)"]
    assert set(res["per_seed"]) == {r["name"] for r in rows}
    for r in rows:
        spread = res["per_seed"][r["name"]]
        assert spread["train_seeds"] == [0, 1]
        for key in ("sliced_wasserstein", "energy_distance", "inside_fraction", "samples_per_s",
                    "paired_mse"):
            v = np.array(spread[key]["values"])
            assert len(v) == 2 and r[key] == spread[key]["mean"] == pytest.approx(v.mean())
            assert spread[key]["std"] == pytest.approx(np.std(v, ddof=1))
            assert (spread[key]["min"], spread[key]["max"]) == (v.min(), v.max())
    # the per-seed values are those of each run, evaluated on its own
    alone = evaluate_students({"0": out / "kd-adv", "1": out / "kd-adv-seed1"},
                              suite_config("checkerboard", True, ["model.w_adv=0.05"]),
                              names={"0": "KD + adv. seed 0", "1": "KD + adv. seed 1"})
    one = {r["student"]: r for r in alone["rows"] if r["method"] == "kd"}
    for key in ("sliced_wasserstein", "inside_fraction", "paired_mse"):
        assert res["per_seed"]["KD + adv. (1 step)"][key]["values"] == [one["0"][key],
                                                                         one["1"][key]]
    compared = [(c["compares"], c["like_for_like"]) for c in res["checks"]["quality_comparisons"]]
    assert compared == [(["KDM (1 step)", "KD + adv. (1 step)"], True),
                        (["KDM, no adv. (1 step)", "KD (1 step)"], True)]
    for c in res["checks"]["quality_comparisons"]:  # seed by seed: KDM and KD of one seed
        kdm_, kd_ = (res["per_seed"][n]["inside_fraction"]["values"] for n in c["compares"])
        gaps = c["per_seed"]["kdm_inside_minus_kd_inside"]
        assert gaps["values"] == pytest.approx(np.subtract(kdm_, kd_).tolist(), abs=1e-12)
        assert gaps["mean"] == pytest.approx(c["kdm_inside_minus_kd_inside"], abs=1e-12)
    md = (out / "bench.md").read_text()
    assert "seeds 0, 1" in md and " ± " in md and "| KD + adv. (1 step)" in md
    assert "KDM, no adv. (1 step) vs KD (1 step) (like for like)" in md
    assert "; per seed kdm_inside_minus_kd_inside " in md

    # a baseline run of an earlier format recorded the preset's w_adv but had no critic
    meta = json.loads((out / "kd" / "run.json").read_text())
    cfg = json.loads((out / "kd" / "config.json").read_text())
    (out / "kd" / "run.json").write_text(json.dumps({**meta, "format": 2}))
    cfg["model"]["w_adv"] = 0.05
    (out / "kd" / "config.json").write_text(json.dumps(cfg))
    assert load_run(out / "kd").model.critic is None
    capsys.readouterr()
    assert main(["bench", "checkerboard", "--quick", "--out", str(out), *W_ADV]) == 0
    log = capsys.readouterr().out
    assert all(f"[{s}] reusing" in log for s in ("kdm", "kd", "rectified"))
    default = json.loads((out / "bench.json").read_text())
    assert list(default["students"]) == ["kdm", "kd", "rectified"] and "per_seed" not in default
    for r in default["rows"]:
        if r["method"] != "teacher":
            assert r["inside_fraction"] == res["per_seed"][r["name"]]["inside_fraction"][
                "values"][0]
    c = default["checks"]
    assert (c["compares"], c["like_for_like"]) == (["KDM (1 step)", "KD (1 step)"], False)
    assert "not like for like: the adversarial term only in KDM" in c["quality_check"]


def test_bench_refuses_bad_seeds_and_adv_before_writing(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["bench", "checkerboard", "--quick", "--out", str(out), "--seeds", "0"]) == 2
    assert "--seeds must be a positive integer, got 0" in capsys.readouterr().err
    assert main(["bench", "checkerboard", "--quick", "--out", str(out), "--adv", "all"]) == 2
    assert "--adv all sets the adversarial term at model.w_adv, which is 0 here" in \
        capsys.readouterr().err
    assert not out.exists()
