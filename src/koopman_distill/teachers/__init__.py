"""Teachers: models whose deterministic ODE sampler maps noise x_T to clean x_0."""

from .flow import FlowMatchingTeacher
from .samplers import SAMPLERS, nfe, ode_sample

__all__ = ["FlowMatchingTeacher", "SAMPLERS", "nfe", "ode_sample"]
