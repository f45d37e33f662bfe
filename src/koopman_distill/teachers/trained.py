"""What the teachers trained by ``kdm teacher train`` share: where their weights came from, and
from that the :class:`~..protocols.Teacher` protocol's ``identity()`` and ``spec()``.

A trained teacher is built from a run directory by :func:`.runs.load_run_teacher`, which sets
its ``origin`` (run, checkpoint, weights file and its sha256); its spec names that checkpoint,
so the rebuilt teacher is the one that made the pairs even after the run trained on.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from ..errors import KDMError


class TrainedTeacher:
    """Mixin for the ``nn.Module`` teachers trained here (flow-matching MLP, EDM UNet).

    A subclass sets ``kind`` (its registry name), ``num_classes``, ``steps`` and ``solver`` (its
    own sampler, the one that makes its pairs), and defines ``nfe`` and :meth:`sampler`.
    ``origin`` is ``{"run", "checkpoint", "weights", "weights_sha256"}``, or None for a teacher
    built in memory (its identity then hashes its state dict; its spec cannot rebuild it).
    """

    kind: str
    num_classes: int
    steps: int
    solver: str
    origin: dict[str, str] | None = None

    def nfe(self, steps: int | None = None, solver: str | None = None) -> int:
        raise NotImplementedError

    def sampler(self) -> dict[str, Any]:
        """The sampler of :meth:`sample` with its defaults: ``{"method": solver, "steps": n}``
        plus whatever else fixes its output (a noise schedule)."""
        return {"method": self.solver, "steps": self.steps}

    def identity(self) -> dict[str, Any]:
        """Kind, classes, checkpoint, weights sha256, sampler and NFE: two teachers with the
        same identity make the same pairs."""
        origin = self.origin or {"checkpoint": None, "weights_sha256": state_sha256(self)}
        return {"kind": self.kind, "num_classes": self.num_classes,
                "checkpoint": origin["checkpoint"], "weights_sha256": origin["weights_sha256"],
                "sampler": self.sampler(), "nfe": self.nfe()}

    def spec(self) -> dict[str, Any]:
        """``{"kind", "run", "checkpoint", "weights", "weights_sha256", "steps", "solver"}``:
        what :func:`.registry.load_teacher_spec` rebuilds this teacher from (``run`` is None
        for a teacher built in memory, which only its object can stand for)."""
        origin = self.origin or {"run": None, "checkpoint": None, "weights": None,
                                 "weights_sha256": state_sha256(self)}
        return {"kind": self.kind, **origin, "steps": self.steps, "solver": self.solver}


def state_sha256(module: Any) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes and values, in order)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def check_solver(solver: str, choices: tuple[str, ...] | list[str], teacher: str) -> str:
    """``solver`` if it is one of ``choices``, else a one-line KDMError naming them."""
    if solver not in choices:
        raise KDMError(f"unknown solver {solver!r} for the {teacher} teacher; choose one of: "
                       f"{', '.join(choices)}")
    return solver
