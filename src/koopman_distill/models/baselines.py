"""Offline distillation baselines trained on the same pairs as KDM, sized to KDM's sampling path.

``kd`` (knowledge distillation, Luhman & Luhman 2021): one network regresses the teacher's
sample from its noise, ``x̂_0 = G(x_T / sigma_max)``, loss ``dist(x̂_0, x_0)``.

``rectified`` (rectified-flow distillation, Liu et al. 2022, on the teacher's coupling): with
``z = x_T / sigma_max`` and ``x_t = (1 - t) x_0 + t z``, ``t ~ U[0, 1]``, a network learns the
constant velocity ``v(x_t, t) ≈ z - x_0`` of the straight path; ``n`` Euler steps from
``t = 1`` to ``0`` give a sample (one step: ``x̂_0 = z - v(z, 1)``).

Networks are MLPs for vectors (B, dim) and UNets for images (B, C, R, R), with the width chosen
so the parameter count is the nearest to that of KDM's sampling path E_T, K, (B,) D built from
the same :class:`~..config.ModelConfig`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..errors import KDMError
from .features import TimeFeatures
from .kdm import distance
from .kdm_image import image_distance, param_count
from .mlp import MLP
from .unet import UNet

METHODS = ("kdm", "kd", "rectified")
# ModelConfig fields that only weigh or perturb KDM's own losses: a baseline, sized to KDM's
# sampling path, is the same model whatever they are
KDM_LOSS_FIELDS = ("sigma_z", "sigma_z_schedule", "w_latent", "w_rec", "w_push", "w_inverse",
                   "w_spectrum", "w_adv", "disc_channels")
TIME_FEATURES = 16  # sinusoidal features of t for the rectified MLP
T_SCALE = 1000.0  # the UNet's positional embedding sees 1000 t, as DDPM-style UNets do


def student_nfe(cfg: ModelConfig) -> int:
    """Network evaluations per sample of the student ``cfg.method`` when it samples."""
    return cfg.sample_steps if cfg.method == "rectified" else 1


def student_label(method: str, steps: int = 1) -> str:
    """Display name, e.g. ``KDM (1 step)``, ``rectified flow (4 steps)``."""
    name = {"kdm": "KDM", "kd": "KD", "rectified": "rectified flow"}[method]
    return f"{name} ({steps} step{'s' if steps > 1 else ''})"


def sampling_path_params(kdm: nn.Module) -> int:
    """Parameters used by KDM's one-step map: everything but E_0 and the critic."""
    return param_count(kdm, ("E_0.", "critic."))


def matched(build: Callable[[int], nn.Module], target: int, sizes: Iterable[int]) -> int:
    """The size in ``sizes`` whose module ``build(size)`` has the parameter count nearest
    ``target`` (modules are built on the meta device: no memory, no initialisation cost)."""
    best, best_gap = None, None
    with torch.device("meta"):
        for size in sizes:
            try:
                gap = abs(param_count(build(size), ()) - target)
            except KDMError:  # e.g. a UNet width its GroupNorm cannot split
                continue
            if best_gap is None or gap < best_gap:
                best, best_gap = size, gap
    if best is None:
        raise KDMError("no baseline network size fits; check the model settings")
    return best


class _Student(nn.Module):
    """Shared plumbing: the network ``net``, one-hot labels, the distance."""

    def __init__(self, shape: tuple[int, ...], cfg: ModelConfig, sigma_max: float,
                 num_classes: int):
        super().__init__()
        self.shape, self.cfg, self.sigma_max = tuple(shape), cfg, sigma_max
        self.num_classes = num_classes
        self.images = len(self.shape) == 3
        if self.images:
            self._distance = image_distance(cfg)
        elif cfg.distance in ("l2", "pseudo_huber"):
            self._distance = lambda a, b: distance(a, b, cfg.distance, cfg.huber_c)
        else:
            raise KDMError(f"unknown distance {cfg.distance!r}; choose l2 or pseudo_huber")

    def _onehot(self, label: torch.Tensor | None, n: int) -> torch.Tensor | None:
        if not self.num_classes:
            return None
        if label is None or label.shape != (n,):
            got = None if label is None else tuple(label.shape)
            raise KDMError(f"this model is class-conditional ({self.num_classes} classes); "
                           f"give labels of shape ({n},), got {got}")
        return F.one_hot(label.long(), self.num_classes).float()


def _unet(shape: tuple[int, ...], cfg: ModelConfig, num_classes: int,
          channels: int) -> UNet:
    u = cfg.unet
    C, R = shape[0], shape[1]
    return UNet(R, C, C, channels, tuple(u.channel_mult), u.num_blocks,
                tuple(u.attn_resolutions), u.dropout, num_classes)


def _network(shape: tuple[int, ...], cfg: ModelConfig, num_classes: int, target: int,
             extra_in: int) -> nn.Module:
    """An MLP ((B, dim + extra_in) -> (B, dim), twice KDM's depth) or a UNet, sized to
    ``target`` parameters."""
    if len(shape) == 3:
        c = cfg.unet.channels
        size = matched(lambda w: _unet(shape, cfg, num_classes, w), target,
                       range(4, 4 * c + 1, 4))
        return _unet(shape, cfg, num_classes, size)
    dim, depth = shape[0], 2 * cfg.depth
    width = matched(lambda w: MLP(dim + extra_in, dim, w, depth), target,
                    range(8, 4 * cfg.width + 1))
    return MLP(dim + extra_in, dim, width, depth)


class KDGenerator(_Student):
    """Direct regression noise -> clean: ``G(x_T / sigma_max [, y])``."""

    def __init__(self, shape: tuple[int, ...], cfg: ModelConfig, sigma_max: float,
                 num_classes: int = 0, target_params: int = 0):
        super().__init__(shape, cfg, sigma_max, num_classes)
        if num_classes and not self.images:
            raise KDMError("class-conditional baselines need image data")
        self.G = _network(self.shape, cfg, num_classes, target_params, 0)

    def forward(self, x_T: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """Noise (B, *shape) [, labels (B,)] -> samples (B, *shape)."""
        z = x_T / self.sigma_max
        if self.images:
            return self.G(z, 0.0, self._onehot(label, len(z)))
        return self.G(z)

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """``dist(G(x_T), x_0)`` on ``{"noise", "clean"[, "label"]}``."""
        x_hat = self(batch["noise"], batch.get("label"))
        loss = self._distance(x_hat, batch["clean"])
        return loss, {"push": loss.item(),
                      "push_mse": (x_hat.detach() - batch["clean"]).square().mean().item()}


class RectifiedFlow(_Student):
    """Velocity ``v(x_t, t [, y])`` of the straight path from ``z = x_T / sigma_max`` (t = 1)
    to the teacher's sample x_0 (t = 0); ``forward`` samples in ``cfg.sample_steps`` steps."""

    def __init__(self, shape: tuple[int, ...], cfg: ModelConfig, sigma_max: float,
                 num_classes: int = 0, target_params: int = 0):
        if cfg.distance == "lpips":
            raise KDMError("rectified regresses velocities; use model.distance=l2 or "
                           "pseudo_huber")
        if cfg.sample_steps < 1:
            raise KDMError(f"model.sample_steps must be >= 1, got {cfg.sample_steps}")
        super().__init__(shape, cfg, sigma_max, num_classes)
        if num_classes and not self.images:
            raise KDMError("class-conditional baselines need image data")
        self.time = None if self.images else TimeFeatures(TIME_FEATURES)
        self.v = _network(self.shape, cfg, num_classes, target_params,
                          0 if self.images else TIME_FEATURES)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """(B, *shape), t (B,), one-hot labels (B, classes) or None -> (B, *shape)."""
        if self.images:
            return self.v(x, T_SCALE * t, y)
        return self.v(torch.cat([x, self.time(t)], dim=1))

    def generate(self, x_T: torch.Tensor, label: torch.Tensor | None = None,
                 steps: int | None = None) -> torch.Tensor:
        """Euler from t = 1 to 0 in ``steps`` (default ``cfg.sample_steps``) uniform steps."""
        steps = steps or self.cfg.sample_steps
        y = self._onehot(label, len(x_T))
        x = x_T / self.sigma_max
        for i in range(steps):
            t = torch.full((len(x),), 1.0 - i / steps, dtype=x.dtype, device=x.device)
            x = x - self.velocity(x, t, y) / steps
        return x

    def forward(self, x_T: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """Noise (B, *shape) [, labels (B,)] -> samples (B, *shape)."""
        return self.generate(x_T, label)

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """``dist(v(x_t, t), z - x_0)`` at uniform t on ``{"noise", "clean"[, "label"]}``."""
        x_0, z = batch["clean"], batch["noise"] / self.sigma_max
        t = torch.rand(len(x_0), device=x_0.device)
        t_b = t.view(-1, *[1] * (x_0.dim() - 1))
        v = self.velocity((1 - t_b) * x_0 + t_b * z, t, self._onehot(batch.get("label"),
                                                                     len(x_0)))
        loss = self._distance(v, z - x_0)
        return loss, {"fm": loss.item()}


def build_baseline(method: str, shape: tuple[int, ...], cfg: ModelConfig, sigma_max: float,
                   num_classes: int, target_params: int) -> nn.Module:
    """The ``kd`` or ``rectified`` student sized to ``target_params``."""
    classes = {"kd": KDGenerator, "rectified": RectifiedFlow}
    if method not in classes:
        raise KDMError(f"unknown model.method {method!r}; choose one of {', '.join(METHODS)}")
    return classes[method](shape, cfg, sigma_max, num_classes, target_params)
