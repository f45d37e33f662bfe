"""Teachers trained by ``kdm teacher train``: ``teacher.kind`` picks the teacher class (flow:
:class:`.FlowMatchingTeacher`, edm: :class:`.EDMTeacher`), which supplies its training data
and builds itself for a run; :func:`load_run_teacher` loads one from its run directory, and
both kinds are registered so that their pair stores rebuild them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..errors import KDMError
from ..io import sha256_file
from ..runs import read_run
from ..training.checkpoint import complete_checkpoints, latest_checkpoint, load_into, load_weights
from .edm import EDMTeacher
from .flow import FlowMatchingTeacher
from .registry import TeacherUnavailable, register

KINDS = {"flow": FlowMatchingTeacher, "edm": EDMTeacher}  # teacher.kind -> class


def teacher_tensors(cfg: Config) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The training tensors of ``cfg``'s teacher and the ``run.json`` metadata describing them
    (a one-line error when the data do not suit the teacher)."""
    return KINDS[cfg.teacher.kind].training_data(cfg)


def build_teacher(cfg: Config, meta: dict[str, Any]) -> torch.nn.Module:
    """An untrained teacher of ``cfg.teacher.kind`` for the run ``meta`` describes."""
    return KINDS[cfg.teacher.kind].from_config(cfg, meta)


def load_run_teacher(run: str | Path, checkpoint: str | None = None, *, ema: bool = True,
                     steps: int | None = None, solver: str | None = None,
                     weights_sha256: str | None = None) -> tuple[torch.nn.Module, Config]:
    """A trained teacher in eval mode, and its run's config.

    ``checkpoint`` names one (default: the newest complete); ``ema`` picks its EMA weights (else
    the raw ones); ``steps`` and ``solver`` replace the run's sampler defaults; with
    ``weights_sha256`` a checkpoint holding other weights is refused (:class:`TeacherUnavailable`).
    """
    run = Path(run).resolve()
    cfg, meta = read_run(run)
    if meta.get("kind") != "teacher":
        raise KDMError(f"{run} is a {meta.get('kind')!r} run, not a teacher")
    t = cfg.teacher
    cfg = dataclasses.replace(cfg, teacher=dataclasses.replace(
        t, steps=t.steps if steps is None else steps, sampler=solver or t.sampler))
    if checkpoint is None:
        ckpt = latest_checkpoint(run)
        if ckpt is None:
            raise KDMError(f"{run} has no checkpoint yet; train it first")
    else:
        ckpt = next((c for c in complete_checkpoints(run) if c.name == checkpoint), None)
        if ckpt is None:
            raise TeacherUnavailable(f"teacher run {run} no longer holds checkpoint "
                                     f"{checkpoint}, the one that made the pairs")
    weights = "ema.safetensors" if ema else "model.safetensors"
    digest = sha256_file(ckpt / weights)
    if weights_sha256 is not None and digest != weights_sha256:
        raise TeacherUnavailable(f"{ckpt / weights} holds other weights than the teacher that "
                                 f"made the pairs (sha256 {digest[:12]}... vs "
                                 f"{weights_sha256[:12]}...)")
    model = build_teacher(cfg, meta)
    load_into(model, load_weights(ckpt / weights), ckpt)
    model.origin = {"run": str(run), "checkpoint": ckpt.name, "weights": weights,
                    "weights_sha256": digest}
    return model.eval(), cfg


def _load(spec: dict[str, Any], device: torch.device) -> torch.nn.Module:
    """Registry loader of both kinds. A spec is ``teacher.spec()``; a store written before specs
    were recorded stands for one with its teacher entry (``path``) and ``sampler``."""
    run = spec.get("run", spec.get("path"))
    if not isinstance(run, str) or not (Path(run) / "run.json").is_file():
        raise TeacherUnavailable(f"the {spec['kind']} teacher's run directory {run} is not on "
                                 "this machine")
    sampler = spec.get("sampler") or {}
    steps, solver = spec.get("steps", sampler.get("steps")), spec.get("solver",
                                                                       sampler.get("method"))
    if not (steps is None or (type(steps) is int and steps >= 1)) or not (
            solver is None or isinstance(solver, str)):
        raise KDMError(f"teacher spec has steps {steps!r} and solver {solver!r}; expected a "
                       "positive integer and a solver name")
    ema = spec.get("weights", "ema.safetensors") == "ema.safetensors"
    teacher, _ = load_run_teacher(
        run, spec.get("checkpoint"), ema=ema, weights_sha256=spec.get("weights_sha256"),
        steps=steps, solver={"heun-karras": "heun"}.get(solver, solver))  # EDM's old name
    return teacher.to(device)


for _cls in KINDS.values():
    register(_cls.kind, _load)
