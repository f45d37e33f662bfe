"""Checkpoints: ``checkpoints/step-XXXXXXXX/`` holding ``model.safetensors``,
``ema.safetensors`` and ``state.pt`` (optimizer, RNG, data position; plain tensors and numbers,
loaded with ``weights_only=True``), plus a ``checkpoints/latest`` pointer.

A checkpoint directory is built under a temporary name and renamed into place, then the pointer
is replaced atomically, so the previous checkpoint stays valid until the new one is complete.
Old checkpoints are renamed away before they are deleted, so every ``step-*`` directory is
whole. Each checkpoint also keeps a copy of the run's ``config.json``, so that weights that do
not fit the model can be explained by the config fields that changed.

The checkpoint a run continues from (or samples with) is the newest complete ``step-*``
directory; ``latest`` normally names it, and when the pointer is missing, unreadable or names
anything else (another directory, a missing or older checkpoint) a warning says so. Nothing
here deletes a complete checkpoint other than by pruning the oldest beyond ``keep``, and a
``step-*`` directory that is not complete is left alone.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import KDMError, first_line, warn
from ..io import atomic_write, chmod_default, remove_temp_files, write_failed

CKPT_DIR = "checkpoints"
LATEST = "latest"
FILES = ("model.safetensors", "ema.safetensors", "state.pt")  # what makes a checkpoint whole
_STEP = re.compile(r"step-(\d{8,})")


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
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    final = root / name
    if final.exists() and not _complete(final):  # damaged from outside: kept under a new name
        aside = _free_name(root, f"{name}.incomplete")
        os.replace(final, aside)
        warn(f"{final} was incomplete; moved to {aside.name} and written anew")
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


def _free_name(root: Path, name: str) -> Path:
    """``root/name``, or ``root/name-N`` with the first N that is not taken."""
    path, n = root / name, 1
    while path.exists():
        path, n = root / f"{name}-{n}", n + 1
    return path


def _prune(root: Path, current: str, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints, never ``current``."""
    for old in complete_checkpoints(root.parent)[:-max(keep, 1)]:
        if old.name != current:
            _remove(old)


def _write_files(tmp: Path, run_dir: Path, model: dict[str, torch.Tensor],
                 ema: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    tmp.mkdir()
    save_file({k: v.contiguous() for k, v in model.items()}, str(tmp / "model.safetensors"))
    save_file({k: v.contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
    torch.save(_canonical(state), tmp / "state.pt")
    if (run_dir / "config.json").is_file():
        shutil.copyfile(run_dir / "config.json", tmp / "config.json")
    for f in tmp.iterdir():
        chmod_default(f)  # safetensors creates 0600 files; give every file the usual mode
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def _canonical(obj: Any) -> Any:
    """``obj`` rebuilt with every string interned and no container shared, so that equal state
    pickles to equal bytes whether it was computed or loaded (pickle's memo follows object
    identity)."""
    if isinstance(obj, str):
        return sys.intern(obj)
    if isinstance(obj, dict):
        return {_canonical(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_canonical(v) for v in obj)
    return obj


def _remove(ckpt: Path) -> None:
    """Delete a checkpoint directory; it is renamed away first, so it never lies half-deleted."""
    trash = ckpt.parent / f".old-{ckpt.name}"
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(ckpt, trash)
    shutil.rmtree(trash, ignore_errors=True)


def discard_after(run_dir: str | os.PathLike, ckpt: Path | None, keep: int) -> None:
    """Finish what a killed save left: drop temporary directories and pointer files and, when
    resuming from ``ckpt``, point ``latest`` at it and prune to the newest ``keep`` complete
    checkpoints. Complete
    checkpoints newer than ``ckpt`` cannot exist (it is the newest) and incomplete ones are
    left alone."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return
    for p in root.glob(".*-step-*"):
        shutil.rmtree(p, ignore_errors=True)
    remove_temp_files(root, LATEST)
    if ckpt is not None:
        if _pointer(root) != ckpt.name:  # repair a lost or stale pointer
            atomic_write(root / LATEST, lambda p: Path(p).write_text(ckpt.name + "\n"))
        _prune(root, ckpt.name, keep)


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    """``run_dir/checkpoints``; a KDMError when that path exists and is not a directory."""
    root = Path(run_dir) / CKPT_DIR
    if root.exists() and not root.is_dir():
        raise KDMError(f"{root} is not a directory; a run keeps its checkpoints there, so move "
                       "that file away")
    return root


def step_of(ckpt: Path) -> int:
    """The step in a checkpoint directory's name, ``step-00000020`` -> 20."""
    return int(_STEP.fullmatch(ckpt.name).group(1))


def _complete(path: Path) -> bool:
    return path.is_dir() and all((path / f).is_file() for f in FILES)


def complete_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The run's complete ``step-*`` checkpoint directories, oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP.fullmatch(p.name) and _complete(p)]
    return sorted(found, key=step_of)


def _pointer(root: Path) -> str | None:
    """The checkpoint name ``latest`` holds, or None when it is missing or unreadable."""
    try:
        with open(root / LATEST, "rb") as f:
            return f.read(64).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint to continue from or sample with: the newest complete one (None when the
    run has no checkpoint directory yet). Warns when ``latest`` does not name it, and raises
    a KDMError when ``step-*`` directories exist but none is complete (nothing is deleted)."""
    root = checkpoints_dir(run_dir)
    found = complete_checkpoints(run_dir)
    partial = sorted(p.name for p in root.glob("step-*")
                     if _STEP.fullmatch(p.name) and not _complete(p)) if root.is_dir() else []
    if not found:
        if partial:
            missing = [f for f in FILES if not (root / partial[-1] / f).is_file()]
            raise KDMError(f"{root} holds no complete checkpoint ({partial[-1]} lacks "
                           f"{', '.join(missing)}); restore the missing files, or move the "
                           "step-* directories away to start the run over")
        return None
    newest, name = found[-1], _pointer(root)
    if name != newest.name:
        why = ("is missing or unreadable" if name is None
               else f"names {name!r}, which is not a complete checkpoint of this run"
               if not (_STEP.fullmatch(name) and _complete(root / name))
               else f"names the older {name}")
        warn(f"{root / LATEST} {why}; using the newest complete checkpoint {newest.name}")
    for p in partial:
        if p > newest.name:
            warn(f"{root / p} is incomplete and left as it is; using {newest.name}")
    return newest


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors weight file with a one-line error if it is missing or corrupt."""
    path = Path(path)
    try:
        with open(path, "rb"):  # tells a missing file from one that cannot be read
            pass
    except FileNotFoundError:
        raise KDMError(f"weights not found: {path}") from None
    except OSError as e:
        raise KDMError(f"cannot read weights {path}: {e.strerror or e}") from None
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
