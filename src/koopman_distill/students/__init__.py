"""The students: one KDM (:mod:`.kdm`) and the offline baselines (:mod:`.baselines`), all built
from the domain plug-in's networks and satisfying :class:`~..protocols.Student`.

:func:`build_student` makes the student of ``model.method``; a baseline is sized to the
parameter count of the sampling path of the KDM the same settings make.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from ..config import ModelConfig
from ..domains.common import param_count
from ..errors import KDMError
from .adversarial import Adversarial
from .base import StudentModule
from .baselines import BASELINES, KD, RectifiedFlow
from .kdm import KDM, latent_noise

METHODS = ("kdm", *BASELINES)
# ModelConfig fields that only weigh or perturb KDM's own losses: a baseline, sized to KDM's
# sampling path, is the same model whatever they are (w_adv and disc_channels act on all)
KDM_LOSS_FIELDS = ("sigma_z", "sigma_z_schedule", "w_latent", "w_rec", "w_push", "w_inverse",
                   "w_spectrum")


def build_student(cfg: ModelConfig, shape: Sequence[int], sigma_max: float,
                  num_classes: int = 0) -> StudentModule:
    """The student of ``cfg.method`` for examples of ``shape`` with noise std ``sigma_max``
    and ``num_classes`` classes (0 = unconditional)."""
    if cfg.method == "kdm":
        return KDM(shape, cfg, sigma_max, num_classes)
    if cfg.method not in BASELINES:
        raise KDMError(f"unknown model.method {cfg.method!r}; choose one of "
                       f"{', '.join(METHODS)}")
    with torch.device("meta"):  # only counted; distance and critic do not change the path
        kdm = KDM(shape, replace(cfg, distance="l2", w_adv=0.0), sigma_max, num_classes)
    return BASELINES[cfg.method](shape, cfg, sigma_max, num_classes, sampling_path_params(kdm))


def sampling_path_params(student: StudentModule) -> int:
    """Parameters a student samples with: all but its training-only ones (a critic; KDM's
    E_0)."""
    return param_count(student, student.training_only)


def student_nfe(cfg: ModelConfig) -> int:
    """Network evaluations per sample of the student ``cfg.method`` at its own step count."""
    return cfg.sample_steps if cfg.method == "rectified" else 1


NAMES = {"kdm": "KDM", "kd": "KD", "rectified": "rectified flow"}


def student_name(cfg: ModelConfig) -> str:
    """Display name of the student of ``cfg``: ``KDM``, ``KD``, ``rectified flow``; a baseline
    with the adversarial term (``w_adv`` > 0) adds `` + adv.``."""
    name = NAMES[cfg.method]
    return f"{name} + adv." if cfg.method != "kdm" and cfg.w_adv > 0 else name


def student_label(method: str, steps: int = 1, name: str | None = None) -> str:
    """Display name at ``steps`` steps, e.g. ``KDM (1 step)``, ``rectified flow (4 steps)``;
    ``name`` replaces the method's (``KD + adv.``)."""
    return f"{name or NAMES[method]} ({steps} step{'s' if steps > 1 else ''})"


__all__ = ["KD", "KDM", "KDM_LOSS_FIELDS", "METHODS", "Adversarial", "RectifiedFlow",
           "StudentModule", "build_student", "latent_noise", "param_count",
           "sampling_path_params", "student_label", "student_name", "student_nfe"]
