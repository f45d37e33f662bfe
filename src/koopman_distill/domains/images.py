"""The image domain: examples of shape (C, H, W).

Networks are UNets; metrics are Fréchet distance and KID through an extractor, class accuracy
and paired error; plots are sample grids.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..config import ModelConfig
from ..errors import KDMError
from ..models.discriminator import PatchDiscriminator
from ..models.unet import (
    FlatDecoder,
    FlatEncoder,
    ProjectedDecoder,
    ProjectedEncoder,
    TimeScaledUNet,
    UNet,
)
from .common import Distance, elementwise_distance, nearest_size

DISTANCES = ("l2", "pseudo_huber", "lpips")


@dataclass(frozen=True)
class Images:
    """Examples (C, H, W); batches (B, C, H, W)."""

    shape: tuple[int, ...]
    name = "images"
    block = 256  # rows per network call and per noise draw when sampling

    # -- networks ----------------------------------------------------------------------------
    # Every network is called ``net(x, t, y)``: t a float or (B,), y one-hot (B, k) or None.
    # UNets take y through their label embedding and t through their positional embedding.

    def _side(self) -> int:
        C, H, W = self.shape
        if H != W:
            raise KDMError(f"the image networks need square images, got shape {self.shape}")
        return H

    def _unet(self, cls: type[UNet], cfg: ModelConfig, c_in: int, c_out: int, channels: int,
              num_classes: int) -> UNet:
        u = cfg.unet
        return cls(self._side(), c_in, c_out, channels, tuple(u.channel_mult), u.num_blocks,
                   tuple(u.attn_resolutions), u.dropout, num_classes)

    def kdm_networks(self, cfg: ModelConfig, num_classes: int
                     ) -> tuple[nn.Module, nn.Module, nn.Module, int]:
        """KDM's UNets E_T, E_0: (B, C, R, R) -> (B, d) and D: (B, d) -> (B, C, R, R), with
        a ``latent_channels`` x R x R latent map, flattened (``d = latent_channels R^2``) or
        linearly projected to ``d = cfg.projection``; and d."""
        C, R, Lc, c = self.shape[0], self._side(), cfg.latent_channels, cfg.unet.channels
        enc, dec = (UNet, UNet) if cfg.projection else (FlatEncoder, FlatDecoder)
        E_T = self._unet(enc, cfg, C, Lc, c, num_classes)
        E_0 = self._unet(enc, cfg, C, Lc, c, num_classes)
        D = self._unet(dec, cfg, Lc, C, c, num_classes)
        if not cfg.projection:
            return E_T, E_0, D, Lc * R * R
        d = cfg.projection  # the reference's FFHQ/AFHQ: dense maps between flat maps and d
        return ProjectedEncoder(E_T, d), ProjectedEncoder(E_0, d), ProjectedDecoder(D, d), d

    def student_network(self, cfg: ModelConfig, num_classes: int, target_params: int,
                        time_input: bool) -> nn.Module:
        """A baseline's UNet (B, C, R, R) -> (B, C, R, R) taking t in [0, 1] (always; a
        network without ``time_input`` is called with t = 0), with the width (a multiple of
        4) whose parameter count is nearest ``target_params``."""
        C = self.shape[0]
        width = nearest_size(
            lambda w: self._unet(TimeScaledUNet, cfg, C, C, w, num_classes), target_params,
            range(4, 4 * cfg.unet.channels + 1, 4))
        return self._unet(TimeScaledUNet, cfg, C, C, width, num_classes)

    def distance(self, cfg: ModelConfig) -> Distance:
        """``cfg.distance`` between image batches (B, C, R, R) as a scalar: l2, pseudo-Huber,
        or LPIPS from local weights (frozen, kept out of the checkpoints)."""
        if cfg.distance not in DISTANCES:
            raise KDMError(f"unknown distance {cfg.distance!r}; choose one of "
                           f"{', '.join(DISTANCES)}")
        if cfg.distance != "lpips":
            return lambda a, b: elementwise_distance(a, b, cfg.distance, cfg.huber_c)
        from ..models.lpips import LPIPS

        files = [p for p in cfg.lpips_weights.split(",") if p]
        if not files:
            raise KDMError("distance lpips needs local weights: set model.lpips_weights="
                           "VGG16_FILE,LPIPS_FILE (weights are never downloaded)")
        lpips = LPIPS.from_files(*files)
        return lambda a, b: lpips.to(a.device)(a, b).mean()

    def critic(self, cfg: ModelConfig) -> nn.Module:
        """The adversarial critic: a patch discriminator (B, C, R, R) -> (B, patches)."""
        return PatchDiscriminator(self.shape[0], self._side(), cfg.disc_channels)

    # -- evaluation --------------------------------------------------------------------------
