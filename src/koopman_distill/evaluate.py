"""``kdm eval``: metrics of a KDM run against its teacher, with the settings recorded.

Protocol (2-D): draw ``eval.n`` noise vectors from seed ``eval.seed`` (disjoint from the pair
seeds, so the teacher's outputs on them are held-out pairs); map them with KDM in one step and
with the teacher's ODE sampler; draw a *fresh* reference set of ``eval.n`` teacher samples from
seed ``eval.reference_seed``. KDM and the teacher are both scored against that reference at the
same N, so the teacher's own score is the floor a perfect student could reach. The paired
error is also measured on the run's own training pairs (``train_pairs_paired_*``): far below
the held-out one, it says the student fits its pairs and errs between them. On the
checkerboard, samples more than half a square from the teacher's are counted with the share of
the error they carry (``far_miss_fraction``), and drawn on the noise plane (``far_misses.png``).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .analysis import plots
from .api import load_run, read_run, timed
from .config import EvalConfig
from .data.checkerboard import far_misses, sample_checkerboard
from .io import write_json
from .metrics.twod import evaluate_2d, paired_error, sliced_wasserstein
from .pairs import PairStore
from .teachers import store_teacher
from .training.trainer import read_log


def memory_needed(ecfg: EvalConfig, shape: tuple[int, ...]) -> int:
    """Rough bytes an evaluation of ``ecfg.n`` examples of ``shape`` holds at once. Points:
    noise, samples, teacher samples, reference and training pairs with their float64 copies
    (12 float64 arrays (n, D)); images: 6 float32 arrays (n, C, R, R) and two sets of float64
    features (n, 2048)."""
    size = math.prod(shape)
    return ecfg.n * (24 * size + 16 * 2048 if len(shape) == 3 else 96 * size)


def run_teacher(meta: dict[str, Any], device: str | torch.device = "cpu") -> Any:
    """A KDM run's teacher on ``device``, with the sampler that made its pairs (from the
    store's manifest, or the run's record of it when the store is gone), or None when it is
    not on this machine."""
    pairs = Path(meta["pairs"])
    return store_teacher(PairStore(pairs) if (pairs / "manifest.json").exists() else meta,
                         device)


def evaluate_run(run: str | Path, ecfg: EvalConfig | None = None, out: str | Path | None = None,
                 make_plots: bool = True) -> dict[str, Any]:
    """Evaluate the EMA weights of a KDM run; writes ``eval.json`` (and plots) under ``out``
    (default ``RUN/eval``) and returns the result."""
    run = Path(run)
    if len(read_run(run)[1]["shape"]) == 3:
        from .evaluate_images import evaluate_image_run

        return evaluate_image_run(run, ecfg, out, make_plots)
    gen = load_run(run)
    ecfg = ecfg or gen.cfg.eval
    out = Path(out) if out else run / "eval"
    noise = gen.noise(ecfg.n, ecfg.seed)
    gen.map(noise[:256])  # warm-up, so the timing measures steady-state throughput
    kdm, t_kdm = timed(gen.map, noise)
    metric_args = {"projections": ecfg.projections, "seed": ecfg.seed, "energy_n": ecfg.energy_n}
    teacher = run_teacher(gen.meta)
    # The run's own training pairs: the reference when the teacher is not on this machine (the
    # store's own error if neither is), and a paired error to set against the held-out one.
    store = (PairStore(gen.meta["pairs"]) if teacher is None
             or Path(gen.meta["pairs"], "manifest.json").exists() else None)
    pairs = store.load(np.arange(min(ecfg.n, len(store)))) if store is not None else None
    result: dict[str, Any] = {"run": str(run.resolve()), "method": gen.cfg.model.method,
                              "settings": {**dataclasses.asdict(ecfg), "weights": "ema",
                                           "threads": torch.get_num_threads()}}
    if teacher is not None:
        g = torch.Generator().manual_seed(ecfg.reference_seed)
        ref_noise = gen.sigma_max * torch.randn(ecfg.n, *gen.meta["shape"], generator=g)
        reference = teacher.sample(ref_noise).numpy()
        teacher.sample(noise[:256])  # warm-up
        target, t_teacher = timed(lambda: teacher.sample(noise).numpy())
        result["settings"]["reference"] = "fresh teacher samples (eval.reference_seed)"
        result["teacher"] = {"nfe": int(gen.meta["nfe_teacher"] or 0), "seconds": t_teacher,
                             "samples_per_s": ecfg.n / t_teacher,
                             **evaluate_2d(target, reference=reference, **metric_args)}
        result["kdm"] = {"nfe": gen.nfe, "seconds": t_kdm, "samples_per_s": ecfg.n / t_kdm,
                         **evaluate_2d(kdm, reference=reference, paired_target=target,
                                       **metric_args)}
        result["ratios"] = {
            "sliced_wasserstein_kdm_over_teacher":
                result["kdm"]["sliced_wasserstein"] / result["teacher"]["sliced_wasserstein"],
            "speedup_kdm_over_teacher": t_teacher / t_kdm}
    else:
        result["settings"]["reference"] = "training pairs (teacher not available)"
        result["kdm"] = {"nfe": gen.nfe, "seconds": t_kdm, "samples_per_s": ecfg.n / t_kdm,
                         **evaluate_2d(kdm, reference=pairs["clean"], **metric_args)}
    if store is not None:
        # A large gap between this and the held-out error means the student is limited by
        # how many pairs it saw, not by fitting them.
        result["kdm"].update({f"train_pairs_paired_{k}": v for k, v in paired_error(
            gen.map(pairs["noise"]), pairs["clean"]).items()})
        result["kdm"]["train_pairs_noise_scale"] = store.manifest["sampler"].get("noise_scale",
                                                                                1.0)
    if teacher is not None and gen.cfg.data.source == "checkerboard":
        result["kdm"].update(far_misses(kdm, target)[1])
    if gen.cfg.data.source == "checkerboard":
        real = sample_checkerboard(ecfg.n, torch.Generator().manual_seed(ecfg.reference_seed))
        result["kdm"]["sliced_wasserstein_to_data"] = sliced_wasserstein(
            kdm, real.numpy(), ecfg.projections, ecfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "eval.json", result)
    if make_plots:
        result["plots"] = _plots(run, gen, noise.numpy(), kdm,
                                 target if teacher is not None else None, out)
        write_json(out / "eval.json", result)
    return result


def _plots(run: Path, gen: Any, noise: np.ndarray, kdm: np.ndarray, teacher: np.ndarray | None,
           out: Path) -> dict[str, str]:
    m = min(len(noise), 10_000)
    nfe = gen.meta.get("nfe_teacher")
    panels = {f"teacher (NFE {nfe})": teacher[:m]} if teacher is not None else {}
    panels[gen.label] = kdm[:m]
    rows = {f"teacher (NFE {nfe})": (noise[:m], teacher[:m])} if teacher is not None else {}
    rows[gen.label] = (noise[:m], kdm[:m])
    paths = {
        "scatter": plots.scatter_compare(panels, out / "scatter.png"),
        "noise_structure": plots.noise_structure(rows, out / "noise_structure.png"),
    }
    if teacher is not None and gen.cfg.data.source == "checkerboard":
        paths["far_misses"] = plots.far_misses({gen.label: (noise, teacher, kdm)},
                                               out / "far_misses.png")
    K = getattr(gen.model, "K", None)  # baselines have no Koopman operator
    if K is not None:
        eig = {"K (applied)": torch.linalg.eigvals(K.matrix().detach().double()).numpy()}
        if hasattr(K, "eigenvalues"):
            lam = K.eigenvalues().detach().numpy()
            eig["λ (parametrised)"] = np.concatenate([lam, lam.conj()])
        paths["spectrum"] = plots.spectrum(eig, out / "spectrum.png")
    log = run / "log.jsonl"
    rows_log = read_log(log, skip_damaged=True) if log.is_file() else []
    if any("loss" in r for r in rows_log):
        paths["loss"] = plots.loss_curves(rows_log, out / "loss.png")
    return {k: str(v) for k, v in paths.items()}
