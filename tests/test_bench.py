"""``kdm bench --quick``: every suite end to end at toy budgets, rows, reports and reuse."""

import json
import shutil

import pytest

from koopman_distill.bench import run_bench
from koopman_distill.cli import main
from koopman_distill.evaluation.runs import TEACHER_NFES
from koopman_distill.students.baselines import EVAL_STEPS


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
