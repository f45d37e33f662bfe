"""``kdm export``: a KDM run's sampling path as a directory that loads without this package.

The directory holds ``model.safetensors`` (the EMA weights of E_T, K, B and D), ``config.json``
(the ``generator`` section the loader builds from, what the outputs are, where they came from,
the run's full config) and ``kdm_generator.py`` (the loader, :mod:`.standalone`); with
``onnx=True`` also ``model.onnx`` (:mod:`.onnx`), checked against PyTorch. It is written under
a temporary name and renamed into place, so a failed export leaves nothing.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from pathlib import Path
from typing import Any

from ..errors import KDMError
from ..runs import read_run
from .generator import CONFIG, GENERATOR_FORMAT, WEIGHTS

LOADER = "kdm_generator.py"
ONNX = "model.onnx"
SAMPLING_PATH = ("E_T", "K", "B", "D")  # the KDM modules a generator keeps
ONNX_PACKAGES = ("onnx", "onnxscript")  # what torch.onnx.export needs


@dataclasses.dataclass(frozen=True)
class ExportCheck:
    """How closely the export reproduces the run: max abs difference of the loader's (and the
    ONNX graph's) outputs from the run's on ``n`` seeded noise inputs (and labels)."""

    n: int = 1000
    seed: int = 0
    onnx_batch_sizes: tuple[int, ...] = (1, 250)


def check_export(run: str | Path, out: str | Path, onnx: bool = False,
                 force: bool = False) -> None:
    """The checks before any work: a KDM run with a checkpoint, an ``out`` that is free (or
    ``force``), and with ``onnx`` the packages torch's ONNX exporter needs."""
    from ..training.checkpoint import latest_checkpoint

    cfg, meta = read_run(run)
    if meta["kind"] != "kdm":
        raise KDMError(f"{run} is a {meta['kind']!r} run; kdm export ships a distilled KDM run")
    if cfg.model.method != "kdm":
        raise KDMError(f"{run} is a {cfg.model.method} baseline; kdm export ships KDM runs")
    if latest_checkpoint(run) is None:
        raise KDMError(f"{run} has no checkpoint yet; train it first (kdm train), then export")
    out = Path(out)
    if out.exists() and not force:
        raise KDMError(f"--out {out} already exists; add --force to replace it, or pick "
                       "another directory")
    if out.exists() and not out.is_dir():
        raise KDMError(f"--out {out} is a file; give a directory to export into")
    if onnx:
        missing = [p for p in ONNX_PACKAGES if importlib.util.find_spec(p) is None]
        if missing:
            raise KDMError(f"--format onnx needs the {' and '.join(missing)} package"
                           f"{'s' if len(missing) > 1 else ''}: pip install "
                           "'koopman-distill[onnx]'")


def export_run(run: str | Path, out: str | Path, onnx: bool = False, force: bool = False,
               check: ExportCheck = ExportCheck()) -> dict[str, Any]:
    """Export the EMA sampling path of the KDM ``run`` into the new directory ``out``
    (replacing it with ``force``); returns the written ``config.json``."""
    import torch
    from safetensors.torch import save_file

    from .. import __version__
    from ..api import StudentRun
    from ..io import atomic_directory, chmod_default, sha256_file, write_json
    from ..training.checkpoint import latest_checkpoint, step_of
    from .generator import OneStepGenerator
    from .standalone import loader_source

    check_export(run, out, onnx, force)
    run = Path(run)
    cfg, meta = read_run(run)
    student = StudentRun.load(run, latents=True)
    kdm = student.model
    generator = {"format": GENERATOR_FORMAT, "shape": list(student.shape),
                 "num_classes": student.num_classes, "sigma_max": student.sigma_max,
                 "block": student.block, "networks": {k: kdm.specs[k] for k in SAMPLING_PATH}}
    gen = OneStepGenerator(generator)
    keep = tuple(f"{k}." for k in SAMPLING_PATH)
    gen.load_state_dict({k: v for k, v in kdm.state_dict().items() if k.startswith(keep)})
    gen.eval()
    noise, labels = gen.noise(check.n, check.seed), gen.labels(check.n, check.seed)
    expected = torch.from_numpy(student.map(noise, labels))
    loader_error = (gen.map(noise, labels) - expected).abs().max().item()
    if not loader_error <= 1e-6:
        raise KDMError(f"the exported generator differs from the run by {loader_error:.2g} "
                       "(max abs); this is a bug, please report it")
    ckpt = latest_checkpoint(run)
    config: dict[str, Any] = {
        "generator": {**generator, "parameters": sum(p.numel() for p in gen.parameters())},
        "outputs": outputs(student, meta),
        "source": {"run": str(run.resolve()), "checkpoint": ckpt.name, "step": step_of(ckpt),
                   "weights": "ema", "weights_sha256": sha256_file(ckpt / "ema.safetensors")},
        "check": {"n": check.n, "seed": check.seed, "loader_max_abs_diff": loader_error},
        "koopman_distill": __version__,
        "run_config": cfg.to_dict(),
    }

    def fill(tmp: Path) -> None:
        save_file({k: v.contiguous() for k, v in gen.state_dict().items()}, tmp / WEIGHTS)
        config["weights_sha256"] = sha256_file(tmp / WEIGHTS)
        (tmp / LOADER).write_text(loader_source(__version__))
        if onnx:
            from .onnx import check_onnx, export_onnx

            export_onnx(gen, tmp / ONNX)
            config["onnx"] = check_onnx(tmp / ONNX, gen, noise, labels, expected,
                                        check.onnx_batch_sizes)
        write_json(tmp / CONFIG, config)
        for f in tmp.iterdir():
            chmod_default(f)

    atomic_directory(out, fill, replace=force)
    return config


def outputs(student: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """What the generator's outputs are; for a latent pipeline's student, the VAE that decodes
    them and how."""
    shape = list(student.shape)
    latent = (meta.get("teacher") or {}).get("latent")
    if latent:
        return {"kind": "latents", "shape": shape, "decoder": {
            "kind": "diffusers AutoencoderKL", "vae": latent["vae"],
            "scaling_factor": latent["scaling_factor"],
            "decode": "images = vae.decode(latents / scaling_factor).sample.clamp(-1, 1)"}}
    if len(shape) == 3:
        return {"kind": "images", "shape": shape, "range": [-1.0, 1.0],
                "to_uint8": "clip(floor(127.5 * x + 128), 0, 255)"}
    return {"kind": "vectors", "shape": shape}


def describe(config: dict[str, Any]) -> str:
    """One line on an export: what it makes, its size and how closely it matched the run."""
    g, o = config["generator"], config["outputs"]
    parts = [f"{o['kind']} {tuple(o['shape'])}",
             f"{g['num_classes']} classes" if g["num_classes"] else "unconditional",
             f"{g['parameters'] / 1e6:.2f}M parameters",
             f"loader max abs diff {config['check']['loader_max_abs_diff']:.1g}"]
    if "onnx" in config:
        worst = max(config["onnx"]["max_abs_diff"].values())
        parts.append(f"ONNX max abs diff {worst:.1g}" if math.isfinite(worst) else "ONNX")
    return ", ".join(parts)
