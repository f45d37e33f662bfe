"""EDM teacher (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models") in small pieces: the noise schedule, the preconditioned denoiser, the training loss and
the deterministic Heun sampler.

Convention: ``x_sigma = x_0 + sigma n`` with ``n ~ N(0, I)``; the denoiser ``D(x; sigma)``
estimates ``x_0``. The probability-flow ODE is ``dx/dsigma = (x - D(x; sigma)) / sigma``;
sampling integrates it from ``sigma_max`` (pure noise of std ``sigma_max``) down to 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..config import Config
from ..data.images import image_data
from ..errors import KDMError
from ..models.unet import UNet
from ..training.rng import ExampleRNG
from .trained import TrainedTeacher, check_solver

# D(x (B, ...), sigma (B,), labels (B, label_dim) or None) -> (B, ...)
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                  rho: float = 7.0) -> torch.Tensor:
    """Noise levels ``sigma_0 = sigma_max > ... > sigma_{steps-1} = sigma_min`` spaced evenly in
    ``sigma^(1/rho)``, with a final 0 appended: (steps + 1,) float64."""
    if steps < 1:
        raise KDMError(f"EDM sampler steps must be >= 1, got {steps}")
    if not 0 < sigma_min <= sigma_max:
        raise KDMError(f"need 0 < sigma_min <= sigma_max, got {sigma_min} and {sigma_max}")
    i = torch.arange(steps, dtype=torch.float64) / max(steps - 1, 1)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.cat([(hi + i * (lo - hi)) ** rho, torch.zeros(1, dtype=torch.float64)])


def heun_nfe(steps: int) -> int:
    """Denoiser evaluations of :func:`heun_sample` with ``steps`` steps (the last one is Euler)."""
    if steps < 1:
        raise KDMError(f"EDM sampler steps must be >= 1, got {steps}")
    return 2 * steps - 1


def _per_sample(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Scalar or (B,) sigma -> (B, 1, ..., 1) broadcastable against x (B, ...)."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise KDMError(f"sigma must be a scalar or have shape ({x.shape[0]},), "
                       f"got {tuple(sigma.shape)}")
    return sigma.reshape(-1, *[1] * (x.ndim - 1))


class EDMPrecond(nn.Module):
    """``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise, labels)`` around a raw network F.

    ``net(x (B, C, R, R), t (B,), labels (B, label_dim) or None) -> (B, C, R, R)``; with
    ``c_skip = sd^2 / (sigma^2 + sd^2)``, ``c_out = sigma sd / sqrt(sigma^2 + sd^2)``,
    ``c_in = 1 / sqrt(sigma^2 + sd^2)``, ``c_noise = ln(sigma) / 4`` and ``sd = sigma_data``.
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        self.net, self.sigma_data = net, sigma_data

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(c_skip, c_out, c_in, c_noise)``, each shaped like ``sigma``."""
        sd2 = self.sigma_data**2
        r = (sigma**2 + sd2).sqrt()
        return sd2 / r**2, sigma * self.sigma_data / r, 1 / r, sigma.log() / 4

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, R, R), sigma scalar or (B,), labels (B, label_dim) or None -> (B, C, R, R)."""
        s = _per_sample(sigma, x)
        c_skip, c_out, c_in, c_noise = self.coefficients(s)
        return c_skip * x + c_out * self.net(c_in * x, c_noise.reshape(-1), labels)


def edm_loss(denoiser: Denoiser, x0: torch.Tensor, rng: ExampleRNG,
             labels: torch.Tensor | None = None, P_mean: float = -1.2, P_std: float = 1.2,
             sigma_data: float = 0.5) -> torch.Tensor:
    """EDM training loss on clean data x0 (B, ...): ``ln sigma ~ N(P_mean, P_std^2)`` per sample,
    ``lambda(sigma) ||D(x0 + sigma n; sigma) - x0||^2`` with
    ``lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``, averaged over all elements;
    sigma and n are drawn from ``rng``.

    Its minimum is 1 when the data have per-element variance ``sigma_data^2`` (Gaussian case).
    """
    sigma = (rng.randn(x0.shape[0], device=x0.device, dtype=x0.dtype) * P_std + P_mean).exp()
    s = _per_sample(sigma, x0)
    weight = (s**2 + sigma_data**2) / (s * sigma_data) ** 2
    denoised = denoiser(x0 + s * rng.randn_like(x0), sigma, labels)
    return (weight * (denoised - x0).square()).mean()


def heun_sample(denoiser: Denoiser, x_T: torch.Tensor, sigmas: torch.Tensor,
                labels: torch.Tensor | None = None, second_order: bool = True) -> torch.Tensor:
    """Deterministic EDM sampler (Algorithm 1 without churn): Heun steps along ``sigmas``
    (N + 1,), an Euler step wherever the next sigma is 0 (everywhere if not ``second_order``).

    ``x_T`` (B, ...) is already scaled to std ``sigmas[0]``; returns x_0 (B, ...) after
    ``2 N - 1`` denoiser calls when only the last sigma is 0 (``N`` for Euler).
    """
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise KDMError(f"sigmas must be 1-D with at least 2 entries, got {tuple(sigmas.shape)}")
    x = x_T
    levels = sigmas.tolist()

    def slope(y: torch.Tensor, s: float) -> torch.Tensor:
        sigma = torch.full((y.shape[0],), s, dtype=y.dtype, device=y.device)
        return (y - denoiser(y, sigma, labels)) / s

    for s, s_next in zip(levels[:-1], levels[1:], strict=True):
        d = slope(x, s)
        x_next = x + (s_next - s) * d
        if second_order and s_next > 0:
            x_next = x + (s_next - s) * 0.5 * (d + slope(x_next, s_next))
        x = x_next
    return x


class EDMTeacher(TrainedTeacher, nn.Module):
    """EDM-trained image teacher: the :class:`~..protocols.Teacher` protocol plus ``loss``.

    ``net(x (B, C, R, R), t (B,), labels (B, num_classes) or None) -> (B, C, R, R)`` is the raw
    network F, wrapped in :class:`EDMPrecond`; ``shape`` is one image's (C, R, R).
    ``num_classes = 0`` is unconditional; otherwise int labels (B,) become one-hot
    (B, num_classes) and are required. ``steps`` and ``solver`` (heun or euler on the Karras
    schedule) are the sampler's defaults.
    """

    kind = "edm-unet"
    SOLVERS = ("heun", "euler")

    def __init__(self, net: nn.Module, shape: tuple[int, ...], sigma_min: float = 0.002,
                 sigma_max: float = 80.0, rho: float = 7.0, steps: int = 18,
                 sigma_data: float = 0.5, P_mean: float = -1.2, P_std: float = 1.2,
                 num_classes: int = 0, solver: str = "heun"):
        super().__init__()
        karras_sigmas(steps, sigma_min, sigma_max, rho)  # validates the schedule
        if num_classes < 0:
            raise KDMError(f"num_classes must be >= 0, got {num_classes}")
        self.precond = EDMPrecond(net, sigma_data)
        self.shape = tuple(int(s) for s in shape)
        self.sigma_min, self.sigma_max, self.rho, self.steps = sigma_min, sigma_max, rho, steps
        self.sigma_data, self.P_mean, self.P_std = sigma_data, P_mean, P_std
        self.num_classes = num_classes
        self.solver = check_solver(solver, self.SOLVERS, "EDM")

    @classmethod
    def training_data(cls, cfg: Config) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Training tensors ``{"image": (N, C, R, R) in [-1, 1], "label": (N,)}`` (labels only
        when conditional) and the run metadata describing them."""
        if not cfg.data.resolution:
            raise KDMError("teacher.kind=edm learns images but data.resolution is 0 (vectors); "
                           "set data.resolution to the image side, or teacher.kind=flow")
        data = image_data(cfg)
        k = data.num_classes if cfg.data.conditional else 0
        tensors = {"image": torch.from_numpy(data.images)}
        if k:
            tensors["label"] = torch.from_numpy(data.labels)
        meta = {"kind": "teacher", "teacher": "edm", "shape": list(data.images.shape[1:]),
                "num_classes": k, "n_data": len(data.images), "data_source": data.source,
                "sigma_max": cfg.teacher.sigma_max}
        return tensors, meta

    @classmethod
    def from_config(cls, cfg: Config, meta: dict[str, Any]) -> EDMTeacher:
        """An untrained teacher (a UNet of ``cfg.teacher.unet``) for the run ``meta`` describes."""
        t, u, shape, k = cfg.teacher, cfg.teacher.unet, meta["shape"], meta["num_classes"]
        net = UNet(shape[1], shape[0], shape[0], u.channels, tuple(u.channel_mult), u.num_blocks,
                   tuple(u.attn_resolutions), u.dropout, k)
        return cls(net, shape, sigma_min=t.sigma_min, sigma_max=t.sigma_max, rho=t.rho,
                   steps=t.steps, sigma_data=t.sigma_data, P_mean=t.P_mean, P_std=t.P_std,
                   num_classes=k, solver=t.sampler)

    def one_hot(self, labels: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
        """Int labels (B,) -> one-hot (B, num_classes) in x's dtype; None if unconditional."""
        if not self.num_classes:
            return None
        if labels is None:
            raise KDMError(f"this EDM teacher is class-conditional ({self.num_classes} classes): "
                           "labels are required")
        if labels.shape != (x.shape[0],) or labels.is_floating_point():
            raise KDMError(f"labels must be integer class ids of shape ({x.shape[0]},), got "
                           f"{labels.dtype} {tuple(labels.shape)}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise KDMError(f"labels must lie in [0, {self.num_classes}), got "
                           f"[{labels.min().item()}, {labels.max().item()}]")
        return F.one_hot(labels.long(), self.num_classes).to(x.dtype)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        """Denoiser D(x; sigma): x (B, C, R, R), sigma scalar or (B,), int labels (B,)."""
        _check_images(x, "x")
        return self.precond(x, sigma, self.one_hot(labels, x))

    def loss(self, batch: dict[str, torch.Tensor], rng: ExampleRNG
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """EDM loss on ``{"image": (B, C, R, R) in [-1, 1], "label": (B,) int64}``; the label is
        needed only when conditional and ignored otherwise."""
        x0 = batch["image"]
        _check_images(x0, "batch['image']")
        labels = self.one_hot(batch.get("label"), x0)
        loss = edm_loss(self.precond, x0, rng, labels, self.P_mean, self.P_std, self.sigma_data)
        return loss, {"edm": loss.item()}

    def nfe(self, steps: int | None = None, solver: str | None = None) -> int:
        """Denoiser evaluations per sample: ``2 steps - 1`` for heun, ``steps`` for euler."""
        steps = self.steps if steps is None else steps
        if check_solver(solver or self.solver, self.SOLVERS, "EDM") == "euler":
            karras_sigmas(steps)  # validates steps
            return steps
        return heun_nfe(steps)

    def sampler(self) -> dict[str, Any]:
        return {**super().sampler(), "schedule": "karras", "sigma_min": self.sigma_min,
                "sigma_max": self.sigma_max, "rho": self.rho}

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, labels: torch.Tensor | None = None, *,
               steps: int | None = None, solver: str | None = None) -> torch.Tensor:
        """Deterministic map of noise (B, C, R, R) with std sigma_max to images (B, C, R, R);
        ``steps`` and ``solver`` (heun: 2 steps - 1 NFE, euler: ``steps`` NFE, on the same
        Karras schedule) default to the teacher's."""
        solver = check_solver(solver or self.solver, self.SOLVERS, "EDM")
        _check_images(noise, "noise")
        if labels is not None and not self.num_classes:
            raise KDMError("this EDM teacher is unconditional (num_classes=0) but labels were "
                           "given")
        steps = self.steps if steps is None else steps
        sigmas = karras_sigmas(steps, self.sigma_min, self.sigma_max, self.rho)
        return heun_sample(self.precond, noise, sigmas, self.one_hot(labels, noise),
                           second_order=solver == "heun")


def _check_images(x: torch.Tensor, name: str) -> None:
    if x.ndim != 4:
        raise KDMError(f"{name} must be images of shape (B, C, R, R), got {tuple(x.shape)}")

