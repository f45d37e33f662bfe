"""Flow-matching teacher for vectors (D,) of any dimension D and any scale.

Path (CondOT): ``x_t = (1 - t) x_T + t z`` with ``x_T ~ N(0, sigma_max^2 I)`` at ``t = 0`` and
standardised data ``z = (x_0 - shift) / scale`` at ``t = 1``; the MLP regresses the velocity
``z - x_T``. Sampling integrates the learned ODE from noise with a fixed-step solver from
:mod:`.samplers` and maps back, ``x_0 = shift + scale z``.

Data of any scale: the network's defaults (``sigma_max`` 1, Fourier frequencies up to
``x_fmax`` per unit) suit coordinates of spread about 1 to 4 around 0, the checkerboard's
(std 2.6). Data already at that scale are used as they are (shift 0, scale 1, so the
checkerboard teachers are unchanged bit for bit); other data are standardised per coordinate
to mean 0 and std 1. :func:`standardization` decides; the run records it in ``run.json``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import Config, TeacherConfig
from ..data.arrays import vector_data
from ..errors import KDMError
from ..models.features import FourierFeatures, TimeFeatures
from ..models.mlp import MLP
from ..training.rng import ExampleRNG
from .samplers import SAMPLERS, nfe, ode_sample
from .trained import TrainedTeacher, check_solver

UNIT_STD = (0.25, 4.0)  # per-coordinate std of data used as they are
UNIT_MEAN = 4.0  # and the largest |mean|


def standardization(x: torch.Tensor) -> dict[str, list[float]]:
    """``{"shift": (D,), "scale": (D,)}`` for data ``x`` (N, D): zeros and ones when every
    coordinate has a std in :data:`UNIT_STD` and a mean within :data:`UNIT_MEAN` of 0, else
    each coordinate's mean and std (1 for a constant coordinate)."""
    x = x.double()
    mean, std = x.mean(0), x.std(0) if len(x) > 1 else torch.zeros(x.shape[1:])
    if bool(((std >= UNIT_STD[0]) & (std <= UNIT_STD[1]) & (mean.abs() <= UNIT_MEAN)).all()):
        return {"shift": [0.0] * x.shape[1], "scale": [1.0] * x.shape[1]}
    return {"shift": mean.tolist(), "scale": torch.where(std > 0, std, 1.0).tolist()}


class FlowMatchingTeacher(TrainedTeacher, nn.Module):
    """Velocity field v(z, t) as an MLP on ``[z, fourier(z), features(t)]``; z is (B, dim).

    ``standardize`` is ``{"shift", "scale"}`` (see :func:`standardization`; None: the data are
    used as they are). :meth:`loss` takes batches of standardised data (:meth:`standardize`);
    :meth:`sample` returns data in the original units.
    """

    kind = "flow-matching-mlp"
    num_classes = 0

    def __init__(self, dim: int, cfg: TeacherConfig,
                 standardize: dict[str, list[float]] | None = None):
        super().__init__()
        self.dim, self.cfg, self.shape = dim, cfg, (dim,)
        self.sigma_max, self.steps = float(cfg.sigma_max), cfg.steps
        self.solver = check_solver(cfg.sampler, tuple(SAMPLERS), "flow-matching")
        self.time = TimeFeatures(cfg.time_features)
        self.fourier = FourierFeatures(dim, cfg.x_features, cfg.x_fmax)
        self.net = MLP(self.fourier.out_dim + 2 * (cfg.time_features // 2), dim, cfg.width,
                       cfg.depth)
        std = standardize or {"shift": [0.0] * dim, "scale": [1.0] * dim}
        if len(std["shift"]) != dim or len(std["scale"]) != dim:
            raise KDMError(f"the standardisation has {len(std['shift'])} shifts and "
                           f"{len(std['scale'])} scales for data of dimension {dim}")
        for name in ("shift", "scale"):  # derived from the data, so not part of the weights
            self.register_buffer(name, torch.tensor(std[name], dtype=torch.float32),
                                 persistent=False)

    @classmethod
    def training_data(cls, cfg: Config) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Standardised training data ``{"x": (N, D)}`` and the run metadata recording it."""
        if cfg.data.resolution:
            raise KDMError(f"teacher.kind=flow learns vectors but data.resolution="
                           f"{cfg.data.resolution} asks for images; set teacher.kind=edm, or "
                           "data.resolution=0 for vectors")
        x = torch.from_numpy(vector_data(cfg))
        std = standardization(x)
        z = (x - torch.tensor(std["shift"])) / torch.tensor(std["scale"])
        return {"x": z}, {"kind": "teacher", "shape": [int(x.shape[1])], "num_classes": 0,
                          "n_data": len(x), "sigma_max": cfg.teacher.sigma_max,
                          "standardize": std}

    @classmethod
    def from_config(cls, cfg: Config, meta: dict[str, Any]) -> FlowMatchingTeacher:
        """An untrained teacher for the run described by ``meta`` (``run.json``)."""
        return cls(meta["shape"][0], cfg.teacher, meta.get("standardize"))

    def standardize(self, x0: torch.Tensor) -> torch.Tensor:
        """Data (B, dim) in their own units -> the standardised z the network learns."""
        return (x0 - self.shift) / self.scale

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(B, dim), (B,) -> (B, dim)."""
        return self.net(torch.cat([self.fourier(x), self.time(t)], dim=1))

    def loss(self, batch: dict[str, torch.Tensor], rng: ExampleRNG
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """Conditional flow-matching loss on a batch ``{"x": (B, dim)}`` of data, drawing
        x_T and t from ``rng``."""
        x0 = batch["x"]
        x_T = self.cfg.sigma_max * rng.randn_like(x0)
        t = rng.rand(x0.shape[0], device=x0.device)
        x_t = (1 - t[:, None]) * x_T + t[:, None] * x0
        loss = (self.velocity(x_t, t) - (x0 - x_T)).square().mean()
        return loss, {"fm": loss.item()}

    def nfe(self, steps: int | None = None, solver: str | None = None) -> int:
        """Velocity evaluations per sample: steps times the solver's evaluations per step."""
        solver = check_solver(solver or self.solver, tuple(SAMPLERS), "flow-matching")
        return nfe(solver, self.steps if steps is None else steps)

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, labels: torch.Tensor | None = None, *,
               steps: int | None = None, solver: str | None = None) -> torch.Tensor:
        """Deterministic ODE map of noise x_T (B, dim) with std sigma_max -> x_0 (B, dim) in the
        data's units; ``solver`` euler, midpoint, heun or rk4 (default the teacher's own)."""
        solver = check_solver(solver or self.solver, tuple(SAMPLERS), "flow-matching")
        if labels is not None:
            raise KDMError("the flow-matching teacher is unconditional; pass no labels")
        z = ode_sample(self.velocity, noise, self.steps if steps is None else steps, solver)
        return z * self.scale + self.shift
