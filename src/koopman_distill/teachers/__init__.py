"""Teachers: models whose deterministic sampler maps noise x_T to clean x_0 (the
:class:`~..protocols.Teacher` protocol), the registry that rebuilds a pair store's teacher,
the two teachers trained here (flow-matching MLP, EDM UNet) and the adapters for a user's own
(:mod:`.python`: a denoiser network or any sampling function)."""

from .diffusers import DiffusersTeacher
from .edm import EDMTeacher
from .flow import FlowMatchingTeacher
from .python import CallableTeacher, DenoiserTeacher, declare
from .registry import (
    TeacherUnavailable,
    latent_decoder,
    load_teacher_spec,
    register,
    store_teacher,
    teacher_from_arg,
    teacher_kinds,
    teacher_prefixes,
)
from .runs import build_teacher, load_run_teacher, teacher_tensors
from .samplers import SAMPLERS, nfe, ode_sample

__all__ = ["build_teacher", "CallableTeacher", "declare", "DenoiserTeacher", "DiffusersTeacher",
           "EDMTeacher", "FlowMatchingTeacher", "latent_decoder", "load_run_teacher",
           "load_teacher_spec", "nfe", "ode_sample", "register", "SAMPLERS", "store_teacher",
           "teacher_from_arg", "teacher_kinds", "teacher_prefixes", "teacher_tensors",
           "TeacherUnavailable"]
