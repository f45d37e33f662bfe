"""Teachers that are Python code of the user's: a denoiser network or any sampling function.

``--teacher denoiser:TARGET``: ``D(x, sigma, labels) -> x_0``, the EDM / k-diffusion
convention (x (B, *shape) at noise level sigma (B,), labels int64 class ids (B,) or None),
sampled here with the deterministic EDM sampler on the Karras schedule (``pairs.solver`` heun
or euler, ``pairs.steps``, default 18: 35 NFE).

``--teacher callable:TARGET``: ``f(noise, labels=None) -> x_0``, any deterministic map of a
batch of x_T (B, *shape) with std ``sigma_max`` to samples (B, *shape); it makes its own NFE.

``TARGET`` is ``package.module:name`` (imported; the current directory is searched first) or
``path/to/file.py:name``. The function says what it is with :func:`declare` (shape, class
count, noise scale, ...). The package never unpickles anything: a user loads their own network
in that module (the README shows an NVlabs EDM network). Identity and spec record the module's
file and its sha256, so a store is rebuilt only from the same code.
"""

from __future__ import annotations

import importlib
import math
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import PairsConfig
from ..errors import KDMError, first_line
from ..io import sha256_file
from .edm import heun_nfe, heun_sample, karras_sigmas
from .registry import TeacherUnavailable, register
from .trained import check_solver

DECLARATION = "kdm_teacher"  # the attribute declare() sets
DENOISER_SOLVERS = ("heun", "euler")
DENOISER_STEPS = 18  # EDM's default: 35 NFE with heun


def declare(shape: Sequence[int], sigma_max: float, num_classes: int = 0, *,
            nfe: int | None = None, sigma_min: float | None = None,
            rho: float | None = None) -> Callable[[Callable], Callable]:
    """Decorate a teacher function with what it is: one example's ``shape``, the std
    ``sigma_max`` of its noise x_T, ``num_classes`` (0 = unconditional); a callable's ``nfe``
    (default 1), a denoiser's Karras schedule ``sigma_min`` (default 0.002) and ``rho``
    (default 7). The same dict set by hand as ``f.kdm_teacher`` works too."""
    def mark(f: Callable) -> Callable:
        setattr(f, DECLARATION, {"shape": list(shape), "sigma_max": sigma_max,
                                 "num_classes": num_classes, "nfe": nfe,
                                 "sigma_min": sigma_min, "rho": rho})
        return f
    return mark


def resolve(target: str, kind: str) -> tuple[Callable, dict[str, Any]]:
    """The function ``target`` names and where it came from (``file``, ``name``, the file's
    sha256): ``module:name`` or ``file.py:name``."""
    where, sep, name = target.rpartition(":")
    if not (sep and where and name):
        raise KDMError(f"--teacher {kind}:{target}: give {kind}:MODULE:FUNCTION or "
                       f"{kind}:FILE.py:FUNCTION")
    if where.endswith(".py") or "/" in where:
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise KDMError(f"--teacher {kind}:{target}: no file {where}; give "
                           f"{kind}:FILE.py:FUNCTION with an existing file")
        module = _run_file(path, kind, target)
    else:
        module = _import(where, kind, target)
    f = getattr(module, name, None)
    if f is None or not callable(f):
        raise KDMError(f"--teacher {kind}:{target}: {where} has no function {name!r}")
    file = getattr(module, "__file__", None)
    origin = {"file": str(Path(file).resolve()) if file else None, "name": name,
              "file_sha256": sha256_file(file) if file else None}
    return f, origin


def _import(name: str, kind: str, target: str) -> Any:
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".")):
            raise KDMError(f"--teacher {kind}:{target}: no module {name!r}; give an importable "
                           f"module or {kind}:FILE.py:FUNCTION") from None
        raise KDMError(f"--teacher {kind}:{target}: importing {name} failed: "
                       f"{first_line(e)}") from None
    except Exception as e:  # the user's module raised while importing
        raise KDMError(f"--teacher {kind}:{target}: importing {name} failed: "
                       f"{type(e).__name__}: {first_line(e)}") from None


def _run_file(path: Path, kind: str, target: str) -> Any:
    """Run ``path`` as a fresh module (compiled here, so no bytecode cache is written)."""
    module = types.ModuleType(f"kdm_teacher_{path.stem}")
    module.__file__ = str(path)
    try:
        exec(compile(path.read_bytes(), str(path), "exec"), module.__dict__)
    except Exception as e:
        raise KDMError(f"--teacher {kind}:{target}: running {path} failed: "
                       f"{type(e).__name__}: {first_line(e)}") from None
    return module


def _declaration(f: Callable, kind: str, target: str) -> dict[str, Any]:
    d = getattr(f, DECLARATION, None)
    if not isinstance(d, dict) or "shape" not in d or "sigma_max" not in d:
        raise KDMError(f"--teacher {kind}:{target} does not say what it makes; decorate it "
                       "with @koopman_distill.teachers.declare(shape=..., sigma_max=...)")
    shape = tuple(d["shape"]) if isinstance(d["shape"], (list, tuple)) else ()
    if not shape or not all(isinstance(s, int) and s > 0 for s in shape):
        raise KDMError(f"--teacher {kind}:{target} declares shape {d['shape']!r}; give positive "
                       "integers, e.g. (2,) or (3, 32, 32)")
    sigma = d["sigma_max"]
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise KDMError(f"--teacher {kind}:{target} declares sigma_max {sigma!r}; give a "
                       "positive number")
    k = d.get("num_classes") or 0
    if not isinstance(k, int) or k < 0:
        raise KDMError(f"--teacher {kind}:{target} declares num_classes {k!r}; give 0 "
                       "(unconditional) or the class count")
    return {**d, "shape": shape, "sigma_max": float(sigma), "num_classes": k}


def check_output(x: Any, noise: torch.Tensor, who: str) -> torch.Tensor:
    """A teacher's output for ``noise`` (B, *shape): a float tensor of the same shape with
    finite values, else a one-line KDMError saying how many values are bad and where."""
    if not isinstance(x, torch.Tensor):
        raise KDMError(f"{who} returned {type(x).__name__}, expected a tensor of shape "
                       f"{tuple(noise.shape)}")
    if tuple(x.shape) != tuple(noise.shape):
        raise KDMError(f"{who} returned shape {tuple(x.shape)} for noise of shape "
                       f"{tuple(noise.shape)}; it must return one sample per noise row, of the "
                       "same shape")
    bad = ~torch.isfinite(x.reshape(len(x), -1))
    if bad.any():
        rows = bad.any(1).nonzero().flatten().tolist()
        raise KDMError(f"{who} returned {int(bad.sum())} non-finite values (NaN/inf) in "
                       f"{len(rows)} of {len(x)} samples (rows {', '.join(map(str, rows[:5]))}"
                       f"{', ...' if len(rows) > 5 else ''} of the batch); fix the teacher")
    return x.float()


class _PythonTeacher:
    """What both adapters share: the declaration, the origin and the protocol's bookkeeping."""

    kind: str

    def __init__(self, target: str, pairs: PairsConfig | None = None):
        self.target = target
        self.fn, self.origin = resolve(target, self.kind)
        d = _declaration(self.fn, self.kind, target)
        self.shape, self.num_classes, self.sigma_max = d["shape"], d["num_classes"], d["sigma_max"]
        self.declared = d
        pairs = pairs or PairsConfig()
        if pairs.guidance != 1.0:
            raise KDMError(f"pairs.guidance is for diffusers teachers; a {self.kind} teacher "
                           "applies its own guidance: drop it")

    def labels_for(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        if labels is not None and not self.num_classes:
            raise KDMError(f"the {self.kind} teacher {self.target} is unconditional "
                           "(num_classes 0) but labels were given")
        if labels is None and self.num_classes:
            raise KDMError(f"the {self.kind} teacher {self.target} is class-conditional "
                           f"({self.num_classes} classes); give labels")
        return labels

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.origin["name"], "num_classes": self.num_classes,
                "file": self.origin["file"], "file_sha256": self.origin["file_sha256"],
                "declared": {k: list(v) if isinstance(v, tuple) else v
                             for k, v in self.declared.items()},
                "sampler": self.sampler(), "nfe": self.nfe(), "torch": torch.__version__}

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "file": self.origin["file"], "name": self.origin["name"],
                "target": self.target, "file_sha256": self.origin["file_sha256"],
                **self.sampler_settings()}

    def sampler_settings(self) -> dict[str, Any]:
        return {}

    def sampler(self) -> dict[str, Any]:
        raise NotImplementedError

    def nfe(self, steps: int | None = None, solver: str | None = None) -> int:
        raise NotImplementedError


class CallableTeacher(_PythonTeacher):
    """``f(noise, labels=None) -> x_0`` as a teacher; its NFE is the declared one."""

    kind = "callable"

    def sampler(self) -> dict[str, Any]:
        return {"method": "callable", "steps": 1}

    def nfe(self, steps: int | None = None, solver: str | None = None) -> int:
        return int(self.declared.get("nfe") or 1)

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, labels: torch.Tensor | None = None, *,
               steps: int | None = None, solver: str | None = None) -> torch.Tensor:
        """x_0 (B, *shape) of noise (B, *shape); ``steps``/``solver`` are the function's own
        affair and ignored."""
        y = self.labels_for(labels)
        out = self.fn(noise) if y is None else self.fn(noise, y)
        return check_output(out, noise, f"callable teacher {self.target}")


class DenoiserTeacher(_PythonTeacher):
    """``D(x, sigma, labels) -> x_0`` sampled by the EDM sampler (no churn) on the Karras
    schedule from the declared ``sigma_max`` to ``sigma_min`` with exponent ``rho``."""

    kind = "denoiser"

    def __init__(self, target: str, pairs: PairsConfig | None = None):
        super().__init__(target, pairs)
        pairs = pairs or PairsConfig()
        self.solver = check_solver(pairs.solver or "heun", DENOISER_SOLVERS, "denoiser")
        self.steps = pairs.steps or DENOISER_STEPS
        self.sigma_min = float(self.declared.get("sigma_min") or 0.002)
        self.rho = float(self.declared.get("rho") or 7.0)
        karras_sigmas(self.steps, self.sigma_min, self.sigma_max, self.rho)  # validates

    def sampler_settings(self) -> dict[str, Any]:
        return {"solver": self.solver, "steps": self.steps}

    def sampler(self) -> dict[str, Any]:
        return {"method": self.solver, "steps": self.steps, "schedule": "karras",
                "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "rho": self.rho}

    def nfe(self, steps: int | None = None, solver: str | None = None) -> int:
        steps = self.steps if steps is None else steps
        if check_solver(solver or self.solver, DENOISER_SOLVERS, "denoiser") == "euler":
            return steps
        return heun_nfe(steps)

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, labels: torch.Tensor | None = None, *,
               steps: int | None = None, solver: str | None = None) -> torch.Tensor:
        """x_0 (B, *shape) of noise (B, *shape) with std sigma_max, after :meth:`nfe`
        denoiser calls."""
        solver = check_solver(solver or self.solver, DENOISER_SOLVERS, "denoiser")
        y = self.labels_for(labels)
        sigmas = karras_sigmas(self.steps if steps is None else steps, self.sigma_min,
                               self.sigma_max, self.rho)
        who = f"denoiser teacher {self.target}"

        def D(x: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
            return check_output(self.fn(x, sigma, y), x, who)

        return heun_sample(D, noise, sigmas, y, second_order=solver == "heun")


def _loader(cls: type[_PythonTeacher]) -> Callable[[dict[str, Any], torch.device], Any]:
    def load(spec: dict[str, Any], device: torch.device) -> _PythonTeacher:
        file, name = spec.get("file"), spec.get("name")
        if not file or not Path(file).is_file():
            raise TeacherUnavailable(f"the {cls.kind} teacher's file {file} is not on this "
                                     "machine")
        if sha256_file(file) != spec.get("file_sha256"):
            raise TeacherUnavailable(f"the {cls.kind} teacher's file {file} changed since it "
                                     "made the pairs")
        pairs = PairsConfig(solver=spec.get("solver", ""), steps=spec.get("steps", 0))
        return cls(f"{file}:{name}", pairs)
    return load


for _cls in (CallableTeacher, DenoiserTeacher):
    register(_cls.kind, _loader(_cls), _cls)
