"""Teachers that are the user's Python code: ``denoiser:`` (D(x, sigma, labels) -> x_0, sampled
by our Karras-schedule Heun/Euler) and ``callable:`` (noise -> x_0).

The closed-form case: data N(mu, s^2 I) under the EDM noising x = x_0 + sigma n has the exact
denoiser D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu), and the probability-flow ODE from
sigma_max to 0 maps x_T to mu + s / sqrt(s^2 + sigma_max^2) (x_T - mu).
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from conftest import assert_pairs_resume_bitwise, kdm, kdm_run

from koopman_distill.config import PairsConfig
from koopman_distill.errors import KDMError
from koopman_distill.pairs import PairStore
from koopman_distill.teachers import DenoiserTeacher, declare, store_teacher, teacher_from_arg

MU, S, SIGMA_MAX = 0.7, 0.5, 20.0

MODULE = f'''
import torch
from koopman_distill.teachers import declare

MU, S = {MU}, {S}


@declare(shape=(3,), sigma_max={SIGMA_MAX}, sigma_min=0.002, rho=7.0)
def gaussian(x, sigma, labels=None):
    s = sigma.reshape(-1, *[1] * (x.ndim - 1))
    return MU + S ** 2 / (S ** 2 + s ** 2) * (x - MU)


@declare(shape=(3,), sigma_max=2.0, num_classes=3, nfe=1)
def shifted(noise, labels):
    return 2.0 * labels.float().reshape(-1, 1) + 0.25 * noise


@declare(shape=(3,), sigma_max=1.0)
def wrong_shape(noise):
    return noise[:, :2]


@declare(shape=(3,), sigma_max=1.0)
def some_nan(noise):
    out = noise.clone()
    out[1, 0] = out[4, 2] = float("nan")
    return out


def undeclared(noise):
    return noise
'''


@pytest.fixture
def module(tmp_path):
    path = tmp_path / "my_teachers.py"
    path.write_text(textwrap.dedent(MODULE))
    return path


def exact(x_T: torch.Tensor) -> torch.Tensor:
    return MU + S / (S ** 2 + SIGMA_MAX ** 2) ** 0.5 * (x_T - MU)


# measured max |error| over 4096 draws: heun 0.091 (16 steps), 0.0047 (64); euler 0.149 (32),
# 0.0187 (256)
@pytest.mark.parametrize("solver, steps, tol", [("heun", 16, 0.1), ("heun", 64, 0.006),
                                                 ("euler", 32, 0.16), ("euler", 256, 0.02)])
def test_denoiser_converges_to_the_exact_ode_endpoint(module, solver, steps, tol):
    teacher = DenoiserTeacher(f"{module}:gaussian", PairsConfig(solver=solver, steps=steps))
    x_T = SIGMA_MAX * torch.randn(4096, 3, generator=torch.Generator().manual_seed(0))
    assert (teacher.sample(x_T) - exact(x_T)).abs().max().item() < tol
    assert teacher.nfe() == (2 * steps - 1 if solver == "heun" else steps)


def test_denoiser_error_falls_with_steps(module):
    x_T = SIGMA_MAX * torch.randn(2048, 3, generator=torch.Generator().manual_seed(1))
    for solver, order in (("heun", 2), ("euler", 1)):
        errs = [(DenoiserTeacher(f"{module}:gaussian", PairsConfig(solver=solver, steps=n))
                 .sample(x_T) - exact(x_T)).abs().max().item() for n in (16, 64)]
        # 4x the steps: the error shrinks by at least 4 ** order / 2
        assert errs[1] < errs[0] / (4 ** order / 2), (solver, errs)


def test_callable_pairs_train_sample_eval(module, tmp_path, capsys):
    store, run = tmp_path / "pairs", tmp_path / "run"
    assert kdm("pairs", "make", "--teacher", f"callable:{module}:shifted", "--out", store,
                 "--n", "600", "--set", "pairs.shard_size=200",
                 "--set", "pairs.batch_size=128") == 0
    s = PairStore(store)
    pairs = s.load()
    np.testing.assert_allclose(
        pairs["clean"], 2.0 * pairs["label"].reshape(-1, 1) + 0.25 * pairs["noise"], atol=1e-6)
    ident = s.manifest["teacher"]
    assert ident["kind"] == "callable" and ident["name"] == "shifted" and s.manifest["nfe"] == 1
    assert len(ident["file_sha256"]) == 64 and s.sigma_max == 2.0 and s.has_labels

    assert kdm("train", "--pairs", store, "--out", run, "--preset", "checkerboard-tiny") == 0
    assert json.loads((run / "run.json").read_text())["num_classes"] == 3
    assert kdm("sample", run, "--n", "6", "--out", tmp_path / "x.npy", "--class", "2") == 0
    assert np.load(tmp_path / "x.npy").shape == (6, 3)
    # the teacher is rebuilt from its file for the teacher row and the held-out error
    assert kdm("eval", run, "--out", tmp_path / "eval", "--no-plots",
                 "--set", "eval.n=256") == 0
    res = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert res["teacher"]["nfe"] == 1 and res["teacher"]["paired_sq_error_per_sample"] == 0.0
    assert res["student"]["paired_sq_error_per_sample"] > 0
    capsys.readouterr()


def test_denoiser_pairs_train_sample_eval(module, tmp_path, capsys):
    store, run = tmp_path / "pairs", tmp_path / "run"
    assert kdm("pairs", "make", "--teacher", f"denoiser:{module}:gaussian", "--out", store,
                 "--n", "512", "--set", "pairs.shard_size=256", "--set", "pairs.steps=16") == 0
    s = PairStore(store)
    pairs = s.load()
    x_T = torch.from_numpy(pairs["noise"])
    assert np.abs(pairs["clean"] - exact(x_T).numpy()).max() < 0.1  # as at 16 steps above
    assert s.manifest["sampler"]["method"] == "heun" and s.manifest["nfe"] == 31
    assert kdm("train", "--pairs", store, "--out", run, "--preset", "checkerboard-tiny") == 0
    assert kdm("sample", run, "--n", "5", "--out", tmp_path / "x.npy") == 0
    assert kdm("eval", run, "--out", tmp_path / "eval", "--no-plots",
                 "--set", "eval.n=256") == 0
    res = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert res["teacher"]["name"] == "teacher (Heun x16)" and res["teacher"]["nfe"] == 31
    assert res["teacher"]["paired_sq_error_per_sample"] == 0.0
    assert "inside_fraction" not in res["student"]
    capsys.readouterr()


def test_a_changed_file_is_not_the_teacher_that_made_the_pairs(module, capsys):
    teacher = DenoiserTeacher(f"{module}:gaussian", PairsConfig(steps=4))
    manifest = {"teacher": {**teacher.identity(), "spec": teacher.spec()}}
    rebuilt = store_teacher(manifest)
    x_T = SIGMA_MAX * torch.randn(16, 3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(rebuilt.sample(x_T), teacher.sample(x_T)) and rebuilt.nfe() == 7
    module.write_text(module.read_text() + "\n# edited\n")
    assert store_teacher(manifest) is None
    assert "changed since it made the pairs" in capsys.readouterr().err


def test_declare_records_what_the_function_says():
    @declare(shape=(2,), sigma_max=3.0, num_classes=4, nfe=7)
    def f(noise, labels):
        return noise

    assert f.kdm_teacher == {"shape": [2], "sigma_max": 3.0, "num_classes": 4, "nfe": 7,
                             "sigma_min": None, "rho": None}


@pytest.mark.parametrize("target, message", [
    ("{m}:wrong_shape", "returned shape (8, 2) for noise of shape (8, 3)"),
    ("{m}:some_nan", "returned 2 non-finite values (NaN/inf) in 2 of 8 samples (rows 1, 4"),
    ("{m}:undeclared", "does not say what it makes"),
    ("{m}:missing", "has no function 'missing'"),
    ("no_such_module_kdm:f", "no module 'no_such_module_kdm'"),
    ("{d}/nope.py:f", "no file"),
    ("justaname", "give callable:MODULE:FUNCTION"),
])
def test_callable_errors_are_one_line(module, tmp_path, target, message):
    with pytest.raises(KDMError) as e:
        teacher = teacher_from_arg(f"callable:{target.format(m=module, d=tmp_path)}",
                                   PairsConfig())
        teacher.sample(torch.randn(8, 3))
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name, message", [
    ("wrong_shape", "returned shape (10, 2) for noise of shape (10, 3)"),
    ("some_nan", "returned 2 non-finite values (NaN/inf) in 2 of 10 samples (rows 1, 4 of the "
                 "batch)"),
])
def test_a_failing_teacher_leaves_no_store(module, tmp_path, name, message):
    out = tmp_path / "new" / "store"
    res = kdm_run("pairs", "make", "--teacher", f"callable:{module}:{name}", "--out", out,
                  "--n", "20", "--set", "pairs.shard_size=10")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("kdm: error: ")
    assert message in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()


@pytest.mark.parametrize("teacher", ["callable:{m}:shifted", "denoiser:{m}:gaussian"])
def test_an_interrupted_pairs_run_resumes_bitwise(module, tmp_path, teacher):
    args = ["pairs", "make", "--teacher", teacher.format(m=module), "--n", "300",
            "--set", "pairs.shard_size=100", "--set", "pairs.steps=4"]
    assert_pairs_resume_bitwise(args, tmp_path)
