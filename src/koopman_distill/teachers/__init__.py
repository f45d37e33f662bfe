"""Teachers: models whose deterministic sampler maps noise x_T to clean x_0 (the
:class:`~..protocols.Teacher` protocol), the registry that rebuilds a pair store's teacher,
and the two teachers trained here (flow-matching MLP, EDM UNet)."""

from .edm import EDMTeacher
from .flow import FlowMatchingTeacher
from .registry import (
    TeacherUnavailable,
    load_teacher_spec,
    register,
    store_teacher,
    teacher_kinds,
)
from .runs import build_teacher, load_run_teacher, teacher_tensors
from .samplers import SAMPLERS, nfe, ode_sample

__all__ = ["EDMTeacher", "FlowMatchingTeacher", "SAMPLERS", "TeacherUnavailable",
           "build_teacher", "load_run_teacher", "load_teacher_spec", "nfe", "ode_sample",
           "register", "store_teacher", "teacher_kinds", "teacher_tensors"]
