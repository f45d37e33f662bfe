"""``kdm eval`` for image runs: Fréchet distance and KID against real data, class accuracy,
paired error against the teacher, throughput, and sample grids.

Protocol: ``eval.n`` noise images from seed ``eval.seed`` (and, for class-conditional runs,
uniform labels from the same seed) are mapped by KDM in one step and by the teacher's Heun
sampler at its full NFE. Both sets are scored against ``eval.n`` real images (the dataset's
test split when it has one) with the same feature extractor (``eval.extractor``), so the
teacher's score is what a perfect student could reach. Throughput is timed on one batch of
``eval.batch_size`` after a warm-up, on the same device and threads for both.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .analysis import plots
from .api import OneStepGenerator
from .config import Config, EvalConfig
from .data.images import image_data, load_images
from .errors import KDMError
from .evaluate import run_teacher
from .io import write_json
from .metrics.extractors import build_extractor, load_or_train_classifier
from .metrics.images import (
    extract_features,
    feature_stats,
    frechet_distance,
    kernel_inception_distance,
)


def cache_dir() -> Path:
    """Where trained evaluation classifiers are kept: ``$KDM_CACHE`` or
    ``~/.cache/koopman-distill``."""
    return Path(os.environ.get("KDM_CACHE") or Path.home() / ".cache" / "koopman-distill")


def classifier_for(cfg: Config, progress: bool = True) -> Any:
    """The small classifier trained (once, then cached) on the run's real training data."""
    data = load_images(cfg.data.source, cfg.data.resolution, cfg.data.channels or None)
    if data.labels is None:
        raise KDMError(f"the classifier extractor needs a labelled dataset; {cfg.data.source} "
                       "has no labels: use eval.extractor=effnet or inception")
    return load_or_train_classifier(cache_dir(), data.images, data.labels, data.num_classes,
                                    progress=progress, steps=cfg.eval.classifier_steps)


def reference_images(cfg: Config, n: int) -> tuple[np.ndarray, str]:
    """Up to ``n`` real images: the test split when the source has one, else training data."""
    try:
        data = load_images(cfg.data.source, cfg.data.resolution, cfg.data.channels or None,
                           split="test")
        split = "test"
    except KDMError:
        data, split = image_data(cfg), "train"
    if "no separate test split" in data.source:
        split = "train (no test split)"
    keep = np.random.default_rng(cfg.eval.reference_seed).permutation(len(data.images))[:n]
    return data.images[np.sort(keep)], f"{data.source} [{split}], n={len(keep)}"


def _throughput(fn: Any, batch: int) -> float:
    """Samples per second of ``fn(batch)`` after one warm-up call."""
    fn(batch)
    t = time.perf_counter()
    fn(batch)
    return batch / (time.perf_counter() - t)


def image_scores(extractor: Any, images: np.ndarray, ref_feats: np.ndarray,
                 ecfg: EvalConfig) -> dict[str, float]:
    """Fréchet distance and KID of ``images`` (N, C, R, R) against reference features."""
    feats = extract_features(extractor, images, batch_size=ecfg.batch_size)
    mu, sigma = feature_stats(feats)
    mu_r, sigma_r = feature_stats(ref_feats)
    kid, kid_std = kernel_inception_distance(feats, ref_feats, subset_size=ecfg.kid_subset,
                                             seed=ecfg.seed)
    return {"fd": frechet_distance(mu, sigma, mu_r, sigma_r), "kid": kid, "kid_std": kid_std}


def evaluate_image_run(run: str | Path, ecfg: EvalConfig | None = None,
                       out: str | Path | None = None, make_plots: bool = True) -> dict[str, Any]:
    """Evaluate the EMA weights of an image KDM run; writes ``eval.json`` and grids under
    ``out`` (default ``RUN/eval``) and returns the result."""
    run = Path(run)
    gen = OneStepGenerator.load(run, device="auto")
    cfg, ecfg = gen.cfg, ecfg or gen.cfg.eval
    out = Path(out) if out else run / "eval"
    noise, labels = gen.noise(ecfg.n, ecfg.seed), gen.labels(ecfg.n, ecfg.seed)
    kdm = gen.map(noise, labels, ecfg.batch_size)
    t0 = time.perf_counter()
    clf = classifier_for(cfg, progress=cfg.train.progress) if (
        ecfg.extractor == "classifier" or gen.num_classes) else None
    extractor = clf if ecfg.extractor == "classifier" else build_extractor(
        ecfg.extractor, ecfg.extractor_weights or None,
        **({"resolution": ecfg.effnet_resolution} if ecfg.extractor == "effnet" else {}))
    extractor = extractor.to(gen.device)
    reference, ref_name = reference_images(cfg, ecfg.n)
    ref_feats = extract_features(extractor, reference, batch_size=ecfg.batch_size)
    result: dict[str, Any] = {"run": str(run.resolve()), "method": gen.cfg.model.method,
                              "settings": {**dataclasses.asdict(ecfg), "weights": "ema",
                                           "reference": ref_name,
                                           "extractor_settings": extractor.settings,
                                           "threads": torch.get_num_threads(),
                                           "device": str(gen.device)}}

    def kdm_batch(b: int) -> Any:
        return gen.map(noise[:b], None if labels is None else labels[:b], b)

    result["kdm"] = {"nfe": gen.nfe, "samples_per_s": _throughput(kdm_batch, ecfg.batch_size),
                     **image_scores(extractor, kdm, ref_feats, ecfg)}
    teacher_out = None
    teacher = run_teacher(gen.meta, gen.device)
    if teacher is not None:
        device = gen.device

        def teacher_batch(b: int) -> torch.Tensor:
            y = None if labels is None else labels[:b].to(device)
            return teacher.sample(noise[:b].to(device), y)

        teacher_out = np.concatenate([
            teacher.sample(noise[i:i + ecfg.batch_size].to(device),
                           None if labels is None else labels[i:i + ecfg.batch_size].to(device))
            .cpu().numpy() for i in range(0, ecfg.n, ecfg.batch_size)])
        result["teacher"] = {"nfe": teacher.nfe(),
                             "samples_per_s": _throughput(teacher_batch, ecfg.batch_size),
                             **image_scores(extractor, teacher_out, ref_feats, ecfg)}
        result["kdm"]["paired_mse"] = float(np.mean((kdm - teacher_out) ** 2))
        result["ratios"] = {
            "fd_kdm_over_teacher": result["kdm"]["fd"] / result["teacher"]["fd"],
            "speedup_kdm_over_teacher": result["kdm"]["samples_per_s"]
            / result["teacher"]["samples_per_s"]}
    if clf is not None and labels is not None:
        y = labels.numpy()
        result["kdm"]["class_accuracy"] = float(np.mean(clf.predict(kdm) == y))
        if teacher_out is not None:
            result["teacher"]["class_accuracy"] = float(np.mean(clf.predict(teacher_out) == y))
        result["settings"]["classifier_heldout_accuracy"] = clf.settings.get("heldout_accuracy")
    result["seconds"] = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    if make_plots:
        result["plots"] = _grids(gen, teacher, ecfg.seed, out)
    write_json(out / "eval.json", result)
    return result


def _grids(gen: OneStepGenerator, teacher: Any, seed: int, out: Path,
           per_row: int = 10) -> dict[str, str]:
    """Teacher vs KDM on the same noise; conditional runs get one row per class."""
    k = gen.num_classes
    rows = [str(c) for c in range(k)] if k else None
    n = per_row * (k or per_row)
    noise = gen.noise(n, seed + 7)
    labels = torch.arange(k).repeat_interleave(per_row) if k else None
    panels = {}
    if teacher is not None:
        y = None if labels is None else labels.to(gen.device)
        panels[f"teacher (NFE {teacher.nfe()})"] = teacher.sample(noise.to(gen.device),
                                                                y).cpu().numpy()
    panels[gen.label] = gen.map(noise, labels)
    return {"samples": str(plots.image_grids(panels, out / "samples.png", per_row, rows))}
