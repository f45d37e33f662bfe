"""The one evaluation function: candidates scored side by side on the same noise.

A candidate is a :data:`~..protocols.Sampler` with its name, method and NFE. Every candidate
maps the same held-out noise (and labels) and is scored against the same reference with the
same metric settings by its domain's scorer; the candidate named ``paired_with`` (the teacher
at the sampler that made the pairs) gives the targets of the paired error, and throughput is
timed by :func:`.timer.throughput` on one batch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import KDMError
from ..protocols import Sampler
from .timer import throughput

if TYPE_CHECKING:
    from ..config import Config
    from ..domains import Domain
    from .extras import DatasetExtras


@dataclass(frozen=True)
class Candidate:
    """One sampler to score: ``name`` (display, e.g. ``teacher (Euler x4)``, ``KDM (1
    step)``), ``method`` (``teacher`` or the student's), network evaluations per sample
    ``nfe``, ``sample`` (device tensors in and out), parameters on its sampling path (None:
    not a module) and the seconds it trained (NaN: not known)."""

    name: str
    method: str
    nfe: int
    sample: Sampler
    params: int | None = None
    train_seconds: float = math.nan


@dataclass(frozen=True)
class Reference:
    """What every candidate is scored against: ``values`` (M, *shape) and what they are
    (``name``); for vectors also ``data`` (K, *shape), the data the teacher learned, and its
    ``data_name`` (None when that data is not known)."""

    values: np.ndarray
    name: str
    data: np.ndarray | None = None
    data_name: str | None = None


@dataclass(frozen=True)
class Scorer:
    """``score(samples (N, *shape), target (N, *shape) or None) -> metrics`` against one
    reference, and the settings it used (extractor weights, ...)."""

    score: Callable[[np.ndarray, np.ndarray | None], dict[str, float]]
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Shown:
    """A candidate as the plots see it: its evaluation noise and samples (N, *shape) and its
    sampler."""

    name: str
    noise: np.ndarray
    samples: np.ndarray
    sample: Sampler


@dataclass
class Evaluation:
    """The rows (one per candidate, in order), the settings every row was measured with, the
    reference's description, and the samples of the candidates asked to be kept."""

    rows: list[dict[str, Any]]
    settings: dict[str, Any]
    reference: dict[str, Any]
    samples: dict[str, np.ndarray]


@torch.no_grad()
def draw(sample: Sampler, noise: torch.Tensor, labels: torch.Tensor | None, batch: int,
         device: torch.device) -> np.ndarray:
    """``sample`` of noise (N, *shape) [and labels (N,)] in batches of ``batch`` rows on
    ``device``: float32 (N, *shape) on the CPU."""
    parts = []
    for i in range(0, len(noise), batch):
        y = None if labels is None else labels[i:i + batch].to(device)
        parts.append(sample(noise[i:i + batch].to(device), y).float().cpu().numpy())
    return np.concatenate(parts)


def evaluate(candidates: Sequence[Candidate], domain: Domain, noise: torch.Tensor,
             labels: torch.Tensor | None, reference: Reference, cfg: Config, *,
             device: torch.device, paired_with: str | None = None,
             extras: DatasetExtras | None = None, keep: Sequence[str] = (),
             announce: str | None = None) -> Evaluation:
    """Score every candidate on ``noise`` (N, *shape) and ``labels`` (N,) or None.

    Metrics are ``domain``'s against ``reference`` with ``cfg.eval``'s settings, plus the
    dataset's ``extras``; with ``paired_with`` (a candidate's name: the teacher at the
    sampler that made the pairs) the others are also paired with its outputs on the same
    noise, and ``speedup_vs_teacher`` is each row's throughput over its. Samples of the
    candidates named in ``keep`` are returned; with ``announce``, a ``[announce] NAME`` line
    is printed as each candidate starts.
    """
    names = [c.name for c in candidates]
    if len(set(names)) != len(names) or (paired_with is not None and paired_with not in names):
        raise KDMError(f"candidates need distinct names, and paired_with one of them: {names}")
    e = cfg.eval
    batch, timing = domain.sample_batch(e), domain.timing_batch(e)
    scorer = domain.scorer(cfg, reference, labels, device)
    by_name = {c.name: c for c in candidates}
    target = (draw(by_name[paired_with].sample, noise, labels, batch, device)
              if paired_with is not None else None)
    rows, kept = [], {}
    for c in candidates:
        if announce:
            print(f"[{announce}] {c.name}")
        x = target if c.name == paired_with else draw(c.sample, noise, labels, batch, device)
        metrics = scorer.score(x, target)
        if extras is not None:
            metrics.update(extras.metrics(x, target))
        rows.append({"method": c.method, "name": c.name, "nfe": c.nfe, "params": c.params,
                     "train_seconds": c.train_seconds, **metrics,
                     "samples_per_s": throughput(c.sample, noise[:timing],
                                                 None if labels is None else labels[:timing],
                                                 device)})
        if c.name in keep:
            kept[c.name] = x
    if paired_with is not None:
        full = rows[names.index(paired_with)]["samples_per_s"]
        for r in rows:
            r["speedup_vs_teacher"] = r["samples_per_s"] / full
    settings = {**dataclasses.asdict(e), "reference": reference.name, "data": reference.data_name,
                "throughput_batch": timing, "threads": torch.get_num_threads(),
                "device": str(device), **scorer.settings}
    ref = {"name": reference.name, "n": len(reference.values),
           **(extras.reference_metrics(reference.values) if extras is not None else {})}
    return Evaluation(rows, settings, ref, kept)

