"""Process-group setup and collectives for multi-process runs launched with ``torchrun``.

Single-process runs need no distributed setup at all: without torchrun's environment
(``WORLD_SIZE`` > 1) :func:`init` does nothing and every helper here is a no-op or returns
rank 0 of 1. Under torchrun, :func:`init` joins the process group with the backend chosen from
the hardware: NCCL for CUDA tensors (gloo for CPU tensors) when GPUs are present, gloo
otherwise; each process uses GPU ``LOCAL_RANK``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ..errors import KDMError

T = TypeVar("T")


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Only rank 0 writes logs, checkpoints and samples."""
    return rank() == 0


def launched() -> bool:
    """True when started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def backend() -> str:
    """``cpu:gloo,cuda:nccl`` when CUDA is available (NCCL for GPU tensors), else ``gloo``."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def init() -> bool:
    """Join torchrun's process group (idempotent); False in a single process."""
    if dist.is_available() and dist.is_initialized():
        return True
    if not launched():
        return False
    if not dist.is_available():
        raise KDMError("torchrun started several processes but this PyTorch build has no "
                       "torch.distributed; run a single process")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend())
    return True


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def on_main(fn: Callable[[], T]) -> T:
    """Call ``fn`` on rank 0 only and hand its (picklable) result to every rank; a KDMError
    raised there is raised on every rank. Doubles as a barrier."""
    if world_size() == 1:
        return fn()
    box: list[Any] = [None]
    if is_main():
        try:
            box[0] = ("ok", fn())
        except KDMError as e:
            box[0] = ("error", str(e))
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise KDMError(value)
    return value


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's picklable ``obj``, in rank order, on rank 0 (None elsewhere)."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def _flat_groups(tensors: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    return list(groups.values())


@torch.no_grad()
def _collective_(tensors: Sequence[torch.Tensor], op: Callable[[torch.Tensor], None]) -> None:
    """Apply ``op`` to one flat copy per (dtype, device) of ``tensors``, then copy back."""
    for group in _flat_groups(tensors):
        flat = torch.cat([t.reshape(-1) for t in group])
        op(flat)
        torch._foreach_copy_(group, [p.view_as(t) for p, t in
                                     zip(flat.split([t.numel() for t in group]), group,
                                         strict=True)])


def all_reduce_mean_(tensors: Sequence[torch.Tensor]) -> None:
    """Average ``tensors`` over all ranks in place (one all-reduce per dtype and device)."""
    if world_size() > 1 and tensors:
        def op(flat: torch.Tensor) -> None:
            dist.all_reduce(flat)
            flat.div_(world_size())

        _collective_(tensors, op)


def broadcast_(tensors: Sequence[torch.Tensor]) -> None:
    """Overwrite ``tensors`` on every rank with rank 0's values."""
    if world_size() > 1 and tensors:
        _collective_(tensors, lambda flat: dist.broadcast(flat, 0))
