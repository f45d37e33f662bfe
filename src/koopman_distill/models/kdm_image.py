"""The Koopman Distillation Model for images.

Networks (all :class:`~.unet.UNet`): noise encoder ``E_T`` (t = 1), clean encoder ``E_0``
(t = 0) and decoder ``D`` (t = 0). The latent is a ``latent_channels x R x R`` map, flattened
to ``d = latent_channels R^2`` (or linearly projected to ``d = projection``) for the Koopman
operator ``K``. Class-conditional models feed the one-hot label into all three UNets and add
a learned control after ``K``: ``ẑ_0 = K z_T + B y``. One-step generation is
``x_0 = D(K E_T(x_T) + B y)``.

Loss per batch (same terms as the vector KDM, :mod:`.kdm`), plus, with ``w_adv > 0``, the
non-saturating generator loss ``w_adv · BCE(critic(x̂_0), 1)`` of a patch discriminator
(:attr:`critic`) that the trainer updates on teacher outputs x_0 ("real") against the
detached one-step outputs ("fake").

Unlike the reference, E_T sees ``x_T / sigma_max`` (unit variance) rather than raw std-80 noise,
LPIPS weights stay out of the checkpoints, and K is sized from the actual latent.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..errors import KDMError
from ..training import rng
from .discriminator import PatchDiscriminator
from .kdm import TrainingProgress, distance, latent_noise
from .koopman import build_koopman
from .unet import ProjectedDecoder, ProjectedEncoder, UNet

DISTANCES = ("l2", "pseudo_huber", "lpips")
Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def image_distance(cfg: ModelConfig) -> Distance:
    """``cfg.distance`` between image batches (B, C, R, R) as a scalar: l2, pseudo-Huber, or
    LPIPS from local weights (frozen, kept out of the checkpoints)."""
    if cfg.distance not in DISTANCES:
        raise KDMError(f"unknown distance {cfg.distance!r}; choose one of {', '.join(DISTANCES)}")
    if cfg.distance != "lpips":
        return lambda a, b: distance(a, b, cfg.distance, cfg.huber_c)
    from .lpips import LPIPS

    files = [p for p in cfg.lpips_weights.split(",") if p]
    if not files:
        raise KDMError("distance lpips needs local weights: set model.lpips_weights="
                       "VGG16_FILE,LPIPS_FILE (weights are never downloaded)")
    lpips = LPIPS.from_files(*files)
    return lambda a, b: lpips.to(a.device)(a, b).mean()


class ImageKDM(TrainingProgress, nn.Module):
    """KDM on images ``(B, C, R, R)``; labels are int64 class ids ``(B,)`` when conditional."""

    def __init__(self, shape: tuple[int, int, int], cfg: ModelConfig, sigma_max: float,
                 num_classes: int = 0):
        super().__init__()
        C, R, R2 = shape
        if R != R2:
            raise KDMError(f"image KDM needs square images, got shape {tuple(shape)}")
        self.shape, self.cfg, self.sigma_max = (C, R, R), cfg, sigma_max
        self.num_classes, Lc, u = num_classes, cfg.latent_channels, cfg.unet

        def unet(c_in: int, c_out: int) -> UNet:
            return UNet(R, c_in, c_out, u.channels, tuple(u.channel_mult), u.num_blocks,
                        tuple(u.attn_resolutions), u.dropout, num_classes)

        self.E_T, self.E_0, self.D = unet(C, Lc), unet(C, Lc), unet(Lc, C)
        self.d = cfg.projection or Lc * R * R
        if cfg.projection:  # encoders: flat -> d; decoder: d -> flat (the reference's FFHQ/AFHQ)
            self.E_T = ProjectedEncoder(self.E_T, self.d)
            self.E_0 = ProjectedEncoder(self.E_0, self.d)
            self.D = ProjectedDecoder(self.D, self.d)
        self.K = build_koopman(self.d, cfg)
        self.B = nn.Linear(num_classes, self.d) if num_classes else None
        self.critic = PatchDiscriminator(C, R, cfg.disc_channels) if cfg.w_adv > 0 else None
        self._distance = image_distance(cfg)

    # -- the three networks and K --------------------------------------------------------------
    def _onehot(self, label: torch.Tensor | None, n: int) -> torch.Tensor | None:
        if not self.num_classes:
            return None
        if label is None:
            raise KDMError(f"this KDM is class-conditional ({self.num_classes} classes); "
                           "give labels")
        if label.shape != (n,):
            raise KDMError(f"labels must have shape ({n},), got {tuple(label.shape)}")
        return F.one_hot(label.long(), self.num_classes).float()

    def encode_noise(self, x_T: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """z_T = E_T(x_T / sigma_max): (B, C, R, R) -> (B, d)."""
        return self.E_T(x_T / self.sigma_max, 1.0, y).flatten(1)

    def encode_clean(self, x_0: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """z_0 = E_0(x_0): (B, C, R, R) -> (B, d)."""
        return self.E_0(x_0, 0.0, y).flatten(1)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """x = D(z): (B, d) -> (B, C, R, R)."""
        if not self.cfg.projection:
            z = z.view(len(z), self.cfg.latent_channels, *self.shape[1:])
        return self.D(z, 0.0, y)

    def koopman(self, z_T: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Pushed latent K z_T (+ B y): (B, d) -> (B, d)."""
        z = self.K(z_T)
        return z + self.B(y) if self.B is not None else z

    def forward(self, x_T: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """One-step generation: noise (B, C, R, R) [, labels (B,)] -> images (B, C, R, R)."""
        y = self._onehot(label, len(x_T))
        return self.decode(self.koopman(self.encode_noise(x_T, y), y), y)

    # -- training ------------------------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """The KDM loss on ``{"noise": x_T, "clean": x_0, ["label"]}``, images (B, C, R, R)."""
        cfg = self.cfg
        x_T, x_0 = batch["noise"], batch["clean"]
        y = self._onehot(batch.get("label"), len(x_0))
        z_0 = self.encode_clean(x_0, y)
        z_T = self.encode_noise(x_T, y)
        sigma_z = latent_noise(cfg, self.progress)
        z_push = self.koopman(z_T + sigma_z * rng.randn_like(z_T), y)
        x_rec = self.decode(z_0 + sigma_z * rng.randn_like(z_0), y)
        x_push = self.decode(z_push, y)
        terms = {"latent": (z_push - z_0).square().mean(),
                 "rec": self._distance(x_rec, x_0),
                 "push": self._distance(x_push, x_0)}
        weights = {"latent": cfg.w_latent, "rec": cfg.w_rec, "push": cfg.w_push,
                   "inverse": cfg.w_inverse, "spectrum": cfg.w_spectrum, "adv": cfg.w_adv}
        terms.update(self.K.aux_losses())
        if self.critic is not None:
            logits = self.critic(x_push)
            terms["adv"] = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
            self._fake = x_push.detach()
        loss = sum(weights[k] * v for k, v in terms.items())
        logs = {k: v.item() for k, v in terms.items()}
        logs["push_mse"] = (x_push.detach() - x_0).square().mean().item()
        return loss, logs

    def critic_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Discriminator loss: teacher outputs x_0 are real, the last one-step outputs fake."""
        real, fake = self.critic(batch["clean"]), self.critic(self._fake)
        l_real = F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
        l_fake = F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
        return l_real + l_fake, {"critic_real": l_real.item(), "critic_fake": l_fake.item()}

    @torch.no_grad()
    def sample(self, n: int, label: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``x_T ~ N(0, sigma_max^2 I)`` (B, C, R, R) and map it in one step."""
        x_T = self.sigma_max * torch.randn(n, *self.shape, generator=generator)
        return x_T, self(x_T, label)


def param_count(module: nn.Module, exclude: tuple[str, ...] = ("critic.",)) -> int:
    """Trainable parameters of ``module``, leaving out the named submodules (the critic)."""
    return sum(p.numel() for n, p in module.named_parameters()
               if p.requires_grad and not n.startswith(exclude))


__all__ = ["ImageKDM", "param_count"]
