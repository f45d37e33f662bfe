"""diffusers teachers (``diffusers:DIR``): diffusers' own models and schedulers, driven by
:class:`~koopman_distill.teachers.DiffusersTeacher`.

Exactness: data N(mu, s^2 I) has a closed-form epsilon (and v) prediction under the DDPM
noising x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps, and its probability-flow ODE from the first
noise level sigma_0 = sqrt((1 - a) / a) maps y_T = x_T / sqrt(a) (VP schedulers; the VE ones
already hold y) to mu + s / sqrt(s^2 + sigma_0^2) (y_T - mu). A module with the UNet2DModel
call convention computes that prediction and replaces the folder's network.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import diffusers  # the [diffusers] extra, which `make test` installs
import numpy as np
import pytest
import torch
from conftest import assert_pairs_resume_bitwise, kdm

from koopman_distill.bench import run_bench
from koopman_distill.config import PairsConfig
from koopman_distill.errors import KDMError
from koopman_distill.pairs import PairStore
from koopman_distill.teachers import DiffusersTeacher, store_teacher

MU, S = 0.3, 0.5


def unet(size: int = 8, channels: int = 1, classes: int | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
        num_class_embeds=classes)


def scheduler(**kw: object) -> object:
    return diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing",
                                   clip_sample=False, **kw)


def pipeline(folder, model, sched, vae=None):
    """A pipeline folder in diffusers' save_pretrained layout."""
    folder.mkdir(parents=True)
    model.save_pretrained(folder / "unet")
    sched.save_pretrained(folder / "scheduler")
    index = {"_class_name": "DDIMPipeline", "_diffusers_version": diffusers.__version__,
             "unet": ["diffusers", type(model).__name__],
             "scheduler": ["diffusers", type(sched).__name__]}
    if vae is not None:
        vae.save_pretrained(folder / "vae")
        index["vae"] = ["diffusers", type(vae).__name__]
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


class ExactGaussian(torch.nn.Module):
    """The exact epsilon / v prediction of N(MU, S^2 I) data: ``forward(sample, timestep,
    class_labels=None).sample`` like UNet2DModel, at integer or interpolated timesteps (log
    sigma linear between training steps, as diffusers' _sigma_to_t assumes)."""

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str):
        super().__init__()
        self.log_sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt().log().double()
        self.prediction_type = prediction_type

    def forward(self, x, timestep, class_labels=None):
        t = timestep.double().reshape(-1, *[1] * (x.ndim - 1))
        lo = t.floor().clamp(0, len(self.log_sigmas) - 2).long()
        log_sigma = self.log_sigmas[lo] + (t - lo) * (self.log_sigmas[lo + 1]
                                                       - self.log_sigmas[lo])
        a = 1 / (1 + (2 * log_sigma).exp())
        x = x.double()
        eps = (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * S ** 2 + 1 - a)
        if self.prediction_type == "v_prediction":
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
            eps = a.sqrt() * eps - (1 - a).sqrt() * x0
        return SimpleNamespace(sample=eps.float())


def exact_endpoint(teacher: DiffusersTeacher, x_T: torch.Tensor) -> torch.Tensor:
    a = float(teacher.scheduler.alphas_cumprod[-1])
    sigma0 = ((1 - a) / a) ** 0.5
    y_T = x_T / a ** 0.5 if teacher.sigma_max == 1.0 else x_T  # VP or VE variable
    return MU + S / (S ** 2 + sigma0 ** 2) ** 0.5 * (y_T - MU)


def exact_teacher(folder, solver: str, steps: int, prediction: str) -> DiffusersTeacher:
    teacher = DiffusersTeacher(folder, PairsConfig(solver=solver, steps=steps))
    teacher.model = ExactGaussian(teacher.scheduler.alphas_cumprod, prediction)
    return teacher


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusers")
    eps = pipeline(root / "eps", unet(4), scheduler())
    v = pipeline(root / "v", unet(4), scheduler(prediction_type="v_prediction"))
    return {"epsilon": eps, "v_prediction": v}


# max |error| over 512 draws of (1, 4, 4), epsilon prediction, measured 2026-12-02: ddim
# 0.117 (50 steps) -> 0.030 (200); dpm++2m 0.106 (20) -> 0.0050 (80); euler 0.127 (50) ->
# 0.032 (200); heun 0.049 (20) -> 0.0058 (80): first order for ddim and euler, higher for the
# others. (few, many, tolerance at few, tolerance at many)
ERRORS = {"ddim": (50, 200, 0.15, 0.04), "dpm++2m": (20, 80, 0.12, 0.008),
          "euler": (50, 200, 0.15, 0.04), "heun": (20, 80, 0.06, 0.008)}


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("solver", list(ERRORS))
def test_each_solver_converges_to_the_ode_endpoint(folders, solver, prediction):
    few, many, tol_few, tol_many = ERRORS[solver]
    errs = []
    for steps in (few, many):
        teacher = exact_teacher(folders[prediction], solver, steps, prediction)
        g = torch.Generator().manual_seed(0)
        x_T = teacher.sigma_max * torch.randn(512, *teacher.shape, generator=g)
        errs.append((teacher.sample(x_T) - exact_endpoint(teacher, x_T)).abs().max().item())
    assert errs[0] < tol_few and errs[1] < tol_many and errs[1] < errs[0], errs


def test_identity_records_what_was_read(folders):
    t = DiffusersTeacher(folders["epsilon"], PairsConfig(solver="heun", steps=5))
    ident = t.identity()
    assert ident["kind"] == "diffusers" and ident["model"] == "UNet2DModel"
    assert ident["sampler"]["method"] == "heun" and ident["nfe"] == t.nfe() == 9
    assert ident["versions"]["diffusers"] == diffusers.__version__
    assert {"model_index.json", "scheduler/scheduler_config.json",
            "unet/config.json"} <= set(ident["files_sha256"])
    assert all(len(h) == 64 for h in ident["files_sha256"].values())
    rebuilt = store_teacher({"teacher": {**ident, "spec": t.spec()}})
    x = t.sigma_max * torch.randn(4, *t.shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(rebuilt.sample(x), t.sample(x))


def _pipeline_cli(tmp_path, folder, n=96, extra=(), train=()):
    store, run = tmp_path / "pairs", tmp_path / "run"
    assert kdm("pairs", "make", "--teacher", f"diffusers:{folder}", "--out", store, "--n", n,
               "--set", "pairs.shard_size=48", "--set", "pairs.batch_size=48",
               "--set", "pairs.steps=4", *extra) == 0
    assert kdm("train", "--pairs", store, "--out", run, "--preset", "digits8", *train) == 0
    return store, run


def test_pixel_pipeline_end_to_end(tmp_path, capsys):
    folder = pipeline(tmp_path / "ddpm", unet(8), diffusers.DDIMScheduler())
    store, run = _pipeline_cli(tmp_path, folder)
    s = PairStore(store)
    assert s.shape == (1, 8, 8) and s.sigma_max == 1.0 and s.manifest["nfe"] == 4
    t = DiffusersTeacher(folder, PairsConfig(steps=4))
    first = s.load(np.arange(3))
    np.testing.assert_allclose(first["clean"], t.sample(torch.from_numpy(first["noise"])),
                               atol=1e-5)
    assert kdm("sample", run, "--n", 5, "--out", tmp_path / "x.npy",
               "--grid", tmp_path / "x.png") == 0
    assert np.load(tmp_path / "x.npy").shape == (5, 1, 8, 8) and (tmp_path / "x.png").is_file()
    assert kdm("eval", run, "--out", tmp_path / "eval", "--set", "eval.n=64",
               "--set", "eval.extractor=effnet", "--set", "eval.effnet_resolution=32",
               "--no-plots") == 0
    res = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert res["teacher"]["nfe"] == 4 and res["teacher"]["paired_mse"] == 0.0
    assert res["student"]["fd"] > 0
    capsys.readouterr()


def test_the_digits_bench_suite_distils_a_diffusers_folder(tmp_path, capsys):
    folder = pipeline(tmp_path / "ddpm", unet(8), scheduler())
    out = tmp_path / "bench"
    assert kdm("bench", "digits", "--quick", "--teacher", f"diffusers:{folder}", "--out", out,
               "--set", "data.conditional=false", "--set", "pairs.steps=4") == 0
    res = json.loads((out / "bench.json").read_text())
    assert (res["suite"], res["preset"]) == ("digits", "digits8")
    assert PairStore(out / "pairs").manifest["teacher"]["kind"] == "diffusers"
    # a teacher of the user's given to a suite learned its data: scored against real digits
    assert res["data"] == "digits" and res["reference"]["name"].startswith("sklearn load_digits")
    rows = {r["name"]: r for r in res["rows"]}
    own = rows["teacher (DDIM x4)"]
    assert own["nfe"] == 4 and own["paired_mse"] == 0.0
    assert {"KDM (1 step)", "KD (1 step)", "teacher (Euler x16)"} <= set(rows)
    # a teacher whose images are not the suite's: one line, before any student is trained
    wide = pipeline(tmp_path / "ddpm16", unet(16), scheduler())
    assert kdm("bench", "digits", "--quick", "--teacher", f"diffusers:{wide}", "--out",
               tmp_path / "wide", "--set", "data.conditional=false", "--set", "pairs.steps=2") == 2
    assert ("holds (1, 16, 16) images but data.* describes (1, 8, 8) digits images; set "
            "data.resolution and data.channels to the teacher's" in capsys.readouterr().err)
    assert not (tmp_path / "wide" / "kdm").exists()
    # through the API without teacher_data its data is not known: scored against its pairs
    res = run_bench("digits", tmp_path / "api", quick=True, pairs=out / "pairs",
                    overrides=["data.conditional=false", "eval.extractor=effnet",
                               "eval.effnet_resolution=32"])
    assert res["data"] is None and res["reference"]["name"].startswith("training pairs")
    assert res["reference"]["n"] == 64  # eval.n of the store's pairs
    capsys.readouterr()


def test_class_conditional_pipeline_with_guidance(tmp_path, capsys):
    folder = pipeline(tmp_path / "cond", unet(8, classes=4), diffusers.DDIMScheduler())
    store, run = _pipeline_cli(tmp_path, folder, extra=("--set", "pairs.guidance=2",
                                                        "--set", "pairs.null_class=3"))
    s = PairStore(store)
    labels = s.load()["label"]
    assert s.has_labels and set(labels.tolist()) <= {0, 1, 2}  # never the null class
    assert s.manifest["nfe"] == 8  # two network evaluations per step under guidance
    assert json.loads((run / "run.json").read_text())["num_classes"] == 3
    assert kdm("sample", run, "--n", 4, "--class", 2, "--out", tmp_path / "x.npy") == 0
    assert kdm("eval", run, "--out", tmp_path / "eval", "--set", "eval.n=48",
               "--set", "eval.extractor=effnet", "--set", "eval.effnet_resolution=32",
               "--no-plots") == 0
    res = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert res["teacher"]["nfe"] == 8 and res["teacher"]["paired_mse"] == 0.0
    assert "class_accuracy" not in res["student"]  # no classifier of the teacher's data
    capsys.readouterr()


def test_an_interrupted_diffusers_pairs_run_resumes_bitwise(tmp_path):
    folder = pipeline(tmp_path / "ddpm", unet(8), diffusers.DDIMScheduler())
    args = ["pairs", "make", "--teacher", f"diffusers:{folder}", "--n", "96",
            "--set", "pairs.shard_size=32", "--set", "pairs.batch_size=32",
            "--set", "pairs.steps=3"]
    assert_pairs_resume_bitwise(args, tmp_path)


@pytest.mark.parametrize("setup, extra, message", [
    ("empty", (), "holds no diffusers model"),
    ("noscheduler", (), "has no scheduler/"),
    ("hub", (), "is not a local directory; koopman-distill never downloads"),
    ("ddpm", (), "is DDPMScheduler, not a deterministic solver"),
    ("ddpm", ("--set", "pairs.solver=euler_ancestral"), "unknown or stochastic solver "
     "'euler_ancestral'"),
    ("cond", ("--set", "pairs.guidance=2"), "pairs.guidance needs the model's unconditional "
     "class"),
    ("uncond", ("--set", "pairs.null_class=0"), "is an unconditional model; pairs.guidance "
     "and pairs.null_class"),
])
def test_bad_diffusers_teachers_are_one_line_errors(tmp_path, capsys, setup, extra, message):
    folder = tmp_path / setup
    if setup == "empty":
        folder.mkdir()
    elif setup == "noscheduler":
        pipeline(folder, unet(4), scheduler())
        for f in (folder / "scheduler").iterdir():
            f.unlink()
        (folder / "scheduler").rmdir()
    elif setup == "hub":
        folder = "google/ddpm-cifar10-32"
    else:
        model = unet(4, classes=4 if setup == "cond" else None)
        pipeline(folder, model, diffusers.DDPMScheduler() if setup == "ddpm" else scheduler())
    before = sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    assert kdm("pairs", "make", "--teacher", f"diffusers:{folder}", "--out",
               tmp_path / "store", *extra) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_labels_for_an_unconditional_model(folders):
    t = DiffusersTeacher(folders["epsilon"], PairsConfig(steps=2))
    with pytest.raises(KDMError, match="unconditional model but labels were given"):
        t.sample(torch.randn(2, *t.shape), torch.zeros(2, dtype=torch.long))


def test_latent_pipeline_end_to_end(tmp_path, capsys):
    """Pairs are latents (2, 4, 4); the student learns latent -> latent; sample, grid and eval
    see the 1 x 8 x 8 images the pipeline's VAE decodes."""
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=2, block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=4,
        sample_size=8)
    folder = pipeline(tmp_path / "ldm", unet(4, channels=2), diffusers.DDIMScheduler(), vae)
    # 4x4 latents: too small for the patch critic
    store, run = _pipeline_cli(tmp_path, folder, train=("--set", "model.w_adv=0"))
    s = PairStore(store)
    assert s.shape == (2, 4, 4)
    assert s.manifest["teacher"]["latent"]["scaling_factor"] == vae.config.scaling_factor
    assert kdm("sample", run, "--n", 5, "--out", tmp_path / "x.npy",
               "--grid", tmp_path / "x.png") == 0
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (5, 1, 8, 8) and np.abs(x).max() <= 1.0
    assert kdm("sample", run, "--n", 5, "--latents", "--out", tmp_path / "z.npy") == 0
    z = np.load(tmp_path / "z.npy")
    assert z.shape == (5, 2, 4, 4)
    with torch.no_grad():  # the images are the VAE's decoding of the latents
        decoded = vae.decode(torch.from_numpy(z) / vae.config.scaling_factor).sample.clamp(-1, 1)
    np.testing.assert_allclose(x, decoded.numpy(), atol=1e-5)
    assert kdm("eval", run, "--out", tmp_path / "eval", "--set", "eval.n=64",
               "--set", "eval.extractor=effnet", "--set", "eval.effnet_resolution=32",
               "--no-plots") == 0
    res = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert res["teacher"]["paired_mse"] == 0.0 and res["student"]["paired_mse"] > 0
    from koopman_distill.analysis import analyze_run

    an = analyze_run(run, tmp_path / "an", n=40, k=3, device="cpu", progress=False)
    assert an["shape"] == [2, 4, 4] and an["outliers"]["space"] == "pixels"  # data unknown
    assert an["outliers"]["pairs"]["rows"] == min(40, len(s)) and "agreement" not in an[
        "proximity"]
    assert {"interpolation", "eigen_directions", "outliers"} <= set(an["plots"])
    capsys.readouterr()


def test_without_diffusers_the_error_names_the_extra(folders, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers raises ImportError
    with pytest.raises(KDMError, match=r"pip install 'koopman-distill\[diffusers\]'"):
        DiffusersTeacher(folders["epsilon"])
    capsys.readouterr()
    assert kdm("pairs", "make", "--teacher", f"diffusers:{folders['epsilon']}",
               "--out", tmp_path / "store") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "koopman-distill[diffusers]" in err[0]
    assert not (tmp_path / "store").exists()


def test_a_bare_model_folder_takes_its_solver_by_name(tmp_path):
    unet(4).save_pretrained(tmp_path / "bare")
    with pytest.raises(KDMError, match="is a bare model folder; choose its solver"):
        DiffusersTeacher(tmp_path / "bare")
    t = DiffusersTeacher(tmp_path / "bare", PairsConfig(solver="ddim", steps=3))
    assert type(t.scheduler).__name__ == "DDIMScheduler" and t.nfe() == 3
    files = set(t.identity()["files_sha256"])
    assert files == {"config.json", "diffusion_pytorch_model.safetensors"}
    x = torch.randn(2, *t.shape, generator=torch.Generator().manual_seed(0))
    assert t.sample(x).shape == (2, 1, 4, 4)


def test_a_dit_transformer_folder(tmp_path):
    """A class-conditional DiT (``transformer/``, learned variance: twice the channels out):
    its classes are ``num_embeds_ada_norm``, its null class the next id."""
    torch.manual_seed(0)
    dit = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=1, out_channels=2,
        num_layers=1, sample_size=4, patch_size=2, num_embeds_ada_norm=3)
    folder = tmp_path / "dit"
    dit.save_pretrained(folder / "transformer")
    scheduler().save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "DiTPipeline", "transformer": ["diffusers", "DiTTransformer2DModel"],
        "scheduler": ["diffusers", "DDIMScheduler"]}))
    t = DiffusersTeacher(folder, PairsConfig(solver="ddim", steps=3))
    assert t.shape == (1, 4, 4) and t.num_classes == 3 and t.nfe() == 3
    x = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0])
    out = t.sample(x, y)
    assert out.shape == (4, 1, 4, 4) and torch.isfinite(out).all()
    guided = DiffusersTeacher(folder, PairsConfig(solver="ddim", steps=3, guidance=3.0,
                                                  null_class=3))
    assert guided.num_classes == 3 and guided.nfe() == 6
    assert not torch.equal(guided.sample(x, y), out)  # the guidance changes the samples
