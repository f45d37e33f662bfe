"""The vector domain: examples of shape (D,), any dimension D.

Networks are MLPs; metrics are sliced Wasserstein, energy distance and paired error (against
the teacher and against the user's own data); plots are scatter plots (D = 2) or projections.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..config import ModelConfig
from ..errors import KDMError
from ..models.mlp import MLP, ConditionedMLP
from .common import Distance, elementwise_distance, nearest_size

TIME_FEATURES = 16  # sinusoidal features of a student network's time input


@dataclass(frozen=True)
class Vectors:
    """Examples (D,); batches (B, D)."""

    shape: tuple[int, ...]
    name = "vectors"
    block = 65536  # rows per network call and per noise draw when sampling

    # -- networks ----------------------------------------------------------------------------
    # Every network is called ``net(x, t, y)``: t a float or (B,), y one-hot (B, k) or None.
    # MLPs take y concatenated to their input; a time input enters as sinusoidal features.

    def kdm_networks(self, cfg: ModelConfig, num_classes: int
                     ) -> tuple[nn.Module, nn.Module, nn.Module, int]:
        """KDM's E_T, E_0: (B, D) -> (B, d) and D: (B, d) -> (B, D), MLPs of ``cfg.width`` x
        ``cfg.depth``, and the latent size ``d = cfg.latent_dim``."""
        D, d = self.shape[0], cfg.latent_dim
        E_T = ConditionedMLP(D, d, cfg.width, cfg.depth, num_classes)
        E_0 = ConditionedMLP(D, d, cfg.width, cfg.depth, num_classes)
        return E_T, E_0, ConditionedMLP(d, D, cfg.width, cfg.depth, num_classes), d

    def student_network(self, cfg: ModelConfig, num_classes: int, target_params: int,
                        time_input: bool) -> nn.Module:
        """A baseline's network (B, D) -> (B, D): an MLP of twice KDM's depth whose width
        gives the parameter count nearest ``target_params``."""
        D, depth = self.shape[0], 2 * cfg.depth
        n_t = TIME_FEATURES if time_input else 0
        width = nearest_size(lambda w: ConditionedMLP(D, D, w, depth, num_classes, n_t),
                             target_params, range(8, 4 * cfg.width + 1))
        return ConditionedMLP(D, D, width, depth, num_classes, n_t)

    def distance(self, cfg: ModelConfig) -> Distance:
        """``cfg.distance`` between batches (B, D) as a scalar: l2 or pseudo-Huber."""
        if cfg.distance not in ("l2", "pseudo_huber"):
            raise KDMError(f"unknown distance {cfg.distance!r}; choose l2 or pseudo_huber")
        return lambda a, b: elementwise_distance(a, b, cfg.distance, cfg.huber_c)

    def critic(self, cfg: ModelConfig) -> nn.Module:
        """The adversarial critic: (B, D) -> (B, 1) real/fake logits, a 3-layer MLP of width
        ``cfg.disc_channels``."""
        return MLP(self.shape[0], 1, cfg.disc_channels, 3)

    # -- evaluation --------------------------------------------------------------------------
