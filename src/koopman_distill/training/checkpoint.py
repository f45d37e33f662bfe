"""Checkpoints: ``checkpoints/step-XXXXXXXX/`` holding ``model.safetensors``,
``ema.safetensors`` and ``state.pt`` (optimizer, RNG, data position; plain tensors and numbers,
loaded with ``weights_only=True``), plus a ``checkpoints/latest`` pointer.

A checkpoint directory is built under a temporary name and renamed into place, then the pointer
is replaced atomically, so the previous checkpoint stays valid until the new one is complete.
Old checkpoints are renamed away before they are deleted, so every ``step-*`` directory is
whole. Each checkpoint also keeps a copy of the run's ``config.json``, so that weights that do
not fit the model can be explained by the config fields that changed.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import KDMError, first_line
from ..io import atomic_write, remove_temp_files, write_failed

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
    """Write the checkpoint for ``step`` and point ``latest`` at it; keep the newest ``keep``.

    A failed write (e.g. a full disk) raises a KDMError and leaves the previous checkpoint and
    pointer as they were.
    """
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    final = root / name
    if not final.exists():
        tmp = root / f".tmp-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _write_files(tmp, Path(run_dir), model, ema, state)
        except (OSError, RuntimeError) as e:  # torch.save reports I/O errors as RuntimeError
            shutil.rmtree(tmp, ignore_errors=True)
            prev = latest_checkpoint(run_dir)
            kept = f"the previous checkpoint {prev.name} is kept" if prev else "nothing was kept"
            reason = e if isinstance(e, OSError) else OSError(first_line(e))
            raise write_failed(final, reason, kept) from None
        os.replace(tmp, final)
        _fsync_dir(root)
    atomic_write(root / LATEST, lambda p: Path(p).write_text(name + "\n"))
    _prune(root, name, keep)
    return final


def _prune(root: Path, current: str, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints, never ``current``."""
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in steps[:-max(keep, 1)]:
        if old.name != current:
            _remove(old)


def _write_files(tmp: Path, run_dir: Path, model: dict[str, torch.Tensor],
                 ema: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    tmp.mkdir()
    save_file({k: v.contiguous() for k, v in model.items()}, str(tmp / "model.safetensors"))
    save_file({k: v.contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
    torch.save(state, tmp / "state.pt")
    if (run_dir / "config.json").is_file():
        shutil.copyfile(run_dir / "config.json", tmp / "config.json")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def _remove(ckpt: Path) -> None:
    """Delete a checkpoint directory; it is renamed away first, so it never lies half-deleted."""
    trash = ckpt.parent / f".old-{ckpt.name}"
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(ckpt, trash)
    shutil.rmtree(trash, ignore_errors=True)


def discard_after(run_dir: str | os.PathLike, ckpt: Path | None, keep: int) -> None:
    """Finish what a killed save left: drop temporary directories and the checkpoints newer
    than ``ckpt`` (the one resumed from; None: all), which ``latest`` never pointed at, and
    prune to the newest ``keep``."""
    root = Path(run_dir) / CKPT_DIR
    for p in root.glob(".*-step-*"):
        shutil.rmtree(p, ignore_errors=True)
    remove_temp_files(root, LATEST)
    for p in root.glob("step-*"):
        if p.is_dir() and (ckpt is None or p.name > ckpt.name):
            _remove(p)
    if ckpt is not None:
        _prune(root, ckpt.name, keep)


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
        raise KDMError(f"cannot read weights {path}: {first_line(e)}") from None


def load_state(ckpt: Path) -> dict[str, Any]:
    """Trainer state of a checkpoint (no arbitrary unpickling)."""
    path = ckpt / "state.pt"
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it refuses anyway
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise KDMError(f"checkpoint {ckpt} has no state.pt; it is incomplete") from None
    except pickle.UnpicklingError:
        raise KDMError(f"cannot read {path}: it is not a plain tensor file (loading it would "
                       "unpickle arbitrary objects, which is refused); the checkpoint is "
                       "corrupt or not from koopman-distill") from None
    except Exception as e:
        raise KDMError(f"cannot read {path}: {first_line(e)}") from None


def load_into(model: nn.Module, weights: dict[str, torch.Tensor], ckpt: Path) -> None:
    """Load ``weights`` into ``model``, naming the changed config fields and every mismatched
    tensor in the error."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    shapes = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
    if missing or extra or shapes:
        parts = [f"{n}: {', '.join(v[:4])}" for n, v in
                 (("missing", missing), ("unexpected", extra), ("shape differs", shapes)) if v]
        changed = config_changes(ckpt)
        why = (f"the run's config.json differs from the checkpoint's in {', '.join(changed)}"
               if changed else "was the config changed?")
        raise KDMError(f"checkpoint {ckpt} does not match the model ({'; '.join(parts)}); "
                       f"{why}")
    model.load_state_dict(weights)


def config_changes(ckpt: Path, limit: int = 6) -> list[str]:
    """``field (checkpoint -> now)`` for each config field that differs between the copy saved
    with ``ckpt`` and the run's ``config.json`` (empty when either is missing or unreadable)."""
    try:
        saved = json.loads((ckpt / "config.json").read_text())
        now = json.loads((ckpt.parent.parent / "config.json").read_text())
    except (OSError, ValueError):
        return []
    a, b = _flatten(saved), _flatten(now)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    out = [f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in keys[:limit]]
    return out + ([f"{len(keys) - limit} more"] if len(keys) > limit else [])


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    return {k: v for key, sub in d.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}
