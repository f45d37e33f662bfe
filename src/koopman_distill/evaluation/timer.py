"""The one throughput timer: every row of ``kdm eval``, ``kdm demo`` and ``kdm bench``.

A call is timed between two device synchronisations (a GPU runs kernels asynchronously, so
without them the clock stops at kernel launch), after one untimed warm-up call (lazy
initialisation, allocator and kernel caches), and the fastest of several calls is kept: the
minimum is the time least disturbed by other work on the machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from ..protocols import Sampler

REPEATS = 3


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu" and hasattr(getattr(torch, device.type, None), "synchronize"):
        getattr(torch, device.type).synchronize()


def best_seconds(call: Callable[[], Any], device: torch.device, repeats: int = REPEATS) -> float:
    """Wall seconds of the fastest of ``repeats`` calls of ``call()`` after one warm-up call,
    each between two synchronisations of ``device``."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    call()
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        call()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


@torch.no_grad()
def throughput(sample: Sampler, noise: torch.Tensor, labels: torch.Tensor | None,
               device: torch.device, repeats: int = REPEATS) -> float:
    """Samples per second of ``sample`` on one batch: noise (B, *shape) [and labels (B,)],
    moved to ``device`` before the clock starts."""
    x = noise.to(device)
    y = None if labels is None else labels.to(device)
    return len(x) / best_seconds(lambda: sample(x, y), device, repeats)
