"""Checkpoints: ``checkpoints/step-XXXXXXXX/`` holding ``model.safetensors``,
``ema.safetensors`` and ``state.pt`` (optimizer, RNG, data position; plain tensors and numbers,
loaded with ``weights_only=True``), plus a ``checkpoints/latest`` pointer.

A checkpoint directory is built under a temporary name and renamed into place, then the pointer
is replaced atomically, so the previous checkpoint stays valid until the new one is complete.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import KDMError
from ..io import atomic_write

CKPT_DIR = "checkpoints"
LATEST = "latest"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run_dir: str | os.PathLike, step: int, model: dict[str, torch.Tensor],
                    ema: dict[str, torch.Tensor], state: dict[str, Any], keep: int = 2) -> Path:
    """Write the checkpoint for ``step`` and point ``latest`` at it; keep the newest ``keep``."""
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    final = root / name
    if not final.exists():
        tmp = root / f".tmp-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file({k: v.contiguous() for k, v in model.items()}, str(tmp / "model.safetensors"))
        save_file({k: v.contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
        torch.save(state, tmp / "state.pt")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(root)
    atomic_write(root / LATEST, lambda p: Path(p).write_text(name + "\n"))
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in steps[:-max(keep, 1)]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint ``latest`` points at, or None when the run has none yet."""
    pointer = Path(run_dir) / CKPT_DIR / LATEST
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not path.is_dir():
        raise KDMError(f"checkpoint pointer {pointer} names a missing checkpoint {path.name}")
    return path


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors weight file with a one-line error if it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise KDMError(f"weights not found: {path}")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several types for corrupt headers
        raise KDMError(f"cannot read weights {path}: {str(e).splitlines()[0]}") from None


def load_state(ckpt: Path) -> dict[str, Any]:
    """Trainer state of a checkpoint (no arbitrary unpickling)."""
    try:
        return torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise KDMError(f"checkpoint {ckpt} has no state.pt; it is incomplete") from None
    except Exception as e:
        raise KDMError(f"cannot read {ckpt / 'state.pt'}: {str(e).splitlines()[0]}") from None


def load_into(model: nn.Module, weights: dict[str, torch.Tensor], ckpt: Path) -> None:
    """Load ``weights`` into ``model``, naming every mismatched tensor in the error."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    shapes = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
    if missing or extra or shapes:
        parts = [f"{n}: {', '.join(v[:4])}" for n, v in
                 (("missing", missing), ("unexpected", extra), ("shape differs", shapes)) if v]
        raise KDMError(f"checkpoint {ckpt} does not match the model ({'; '.join(parts)}); "
                       "was the config changed?")
    model.load_state_dict(weights)
