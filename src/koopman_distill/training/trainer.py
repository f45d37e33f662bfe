"""A thin, generic trainer: Adam, LR schedule, EMA, non-finite guard, progress bar, periodic
evaluation, ``log.jsonl`` and exact resume.

The model only has to provide ``loss(batch) -> (scalar tensor, {name: float})``; the batch
source provides ``next()``, ``state_dict()`` and ``load_state_dict()``. A model with an
adversary has a ``critic`` submodule and ``critic_loss(batch)``, called right after
``loss(batch)``; the critic gets its own Adam and is stepped after the generator's backward
pass, so the generator's gradient uses the critic as it was before this step.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..errors import KDMError
from ..io import atomic_write
from .checkpoint import latest_checkpoint, load_into, load_state, load_weights, save_checkpoint
from .distributed import is_main
from .ema import EMA

Evaluate = Callable[[nn.Module, int], dict[str, float]]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; call before building models."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate for ``step`` (0-based): linear warm-up, then constant or cosine to 0."""
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule == "cosine":
        span = max(cfg.steps - cfg.warmup, 1)
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(step - cfg.warmup, span) / span))
    raise KDMError(f"unknown lr_schedule {cfg.lr_schedule!r}; choose constant or cosine")


class Trainer:
    """Train ``model`` on ``data`` for ``cfg.steps`` steps, writing into ``run_dir``."""

    def __init__(self, model: nn.Module, data: Iterator[dict[str, torch.Tensor]],
                 cfg: TrainConfig, run_dir: str | Path, evaluate: Evaluate | None = None,
                 device: str | torch.device = "cpu"):
        lr_at(cfg, 0)  # validates the schedule name before any work
        self.model, self.data, self.cfg = model.to(device), data, cfg
        self.run_dir, self.evaluate, self.device = Path(run_dir), evaluate, torch.device(device)
        self.critic = getattr(model, "critic", None)
        self.params = [p for n, p in model.named_parameters() if not n.startswith("critic.")]
        betas = (cfg.beta1, cfg.beta2)
        self.opt = torch.optim.Adam(self.params, lr=cfg.lr, betas=betas)
        self.critic_opt = (torch.optim.Adam(self.critic.parameters(), lr=cfg.lr, betas=betas)
                           if self.critic is not None else None)
        self.ema = EMA(model, cfg.ema_decay, cfg.ema_warmup)
        self.step, self.elapsed, self.nonfinite_total = 0, 0.0, 0
        self.log_path = self.run_dir / "log.jsonl"

    # -- state -------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        extra = {"critic_optimizer": self.critic_opt.state_dict()} if self.critic_opt else {}
        return {**extra, "step": self.step, "optimizer": self.opt.state_dict(),
                "ema_updates": self.ema.updates, "data": self.data.state_dict(),
                "rng_torch": torch.get_rng_state(), "elapsed": self.elapsed,
                "nonfinite_total": self.nonfinite_total}

    def save(self) -> Path:
        return save_checkpoint(self.run_dir, self.step, self.model.state_dict(),
                               self.ema.model.state_dict(), self._state(),
                               self.cfg.keep_checkpoints)

    def resume(self) -> bool:
        """Restore the latest checkpoint; False when the run has none."""
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            return False
        load_into(self.model, load_weights(ckpt / "model.safetensors"), ckpt)
        load_into(self.ema.model, load_weights(ckpt / "ema.safetensors"), ckpt)
        state = load_state(ckpt)
        self.opt.load_state_dict(state["optimizer"])
        if self.critic_opt is not None:
            self.critic_opt.load_state_dict(state["critic_optimizer"])
        self.ema.updates = int(state["ema_updates"])
        self.data.load_state_dict(state["data"])
        torch.set_rng_state(state["rng_torch"])
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        self.nonfinite_total = int(state["nonfinite_total"])
        if is_main() and self.log_path.exists():
            rows = [r for r in _read_log(self.log_path) if r["step"] <= self.step]
            atomic_write(self.log_path, lambda p: Path(p).write_text(
                "".join(json.dumps(r) + "\n" for r in rows)))
        return True

    # -- loop --------------------------------------------------------------------------------
    def _log(self, row: dict[str, Any]) -> None:
        if is_main():
            with open(self.log_path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def fit(self) -> dict[str, float]:
        """Run to ``cfg.steps``; returns the last evaluation (empty when none ran)."""
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (cfg.progress and is_main()),
                   dynamic_ncols=True, desc="train")
        sums: dict[str, float] = {}
        count, consecutive, last_eval = 0, 0, {}
        t_start = time.perf_counter() - self.elapsed
        self.model.train()
        while self.step < cfg.steps:
            batch = {k: v.to(self.device, non_blocking=True) for k, v in next(self.data).items()}
            lr = lr_at(cfg, self.step)
            for opt in (self.opt, self.critic_opt):
                for group in opt.param_groups if opt else ():
                    group["lr"] = lr
            loss, logs = self.model.loss(batch)
            self.opt.zero_grad(set_to_none=True)
            finite = bool(torch.isfinite(loss))
            if finite:
                loss.backward()
                grads = [p.grad for p in self.params if p.grad is not None]
                norm = nn.utils.get_total_norm(grads)  # one reduction; inf/NaN if any is
                finite = bool(torch.isfinite(norm))
            if not finite:
                consecutive += 1
                self.nonfinite_total += 1
                self.opt.zero_grad(set_to_none=True)
                if consecutive >= cfg.max_nonfinite:
                    ckpt = latest_checkpoint(self.run_dir)
                    raise KDMError(
                        f"training stopped: {consecutive} consecutive non-finite losses or "
                        f"gradients at step {self.step}; last good checkpoint: "
                        f"{ckpt.name if ckpt else 'none'}; lower train.lr or set train.grad_clip")
            else:
                consecutive = 0
                if cfg.grad_clip > 0:
                    nn.utils.clip_grads_with_norm_(grads, cfg.grad_clip, norm)
                if self.critic_opt is not None:
                    logs = {**logs, **self._critic_step(batch)}
                self.opt.step()
                self.ema.update(self.model)
                for k, v in {"loss": loss.item(), **logs}.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
            self.step += 1
            bar.update(1)
            self.elapsed = time.perf_counter() - t_start
            done = self.step == cfg.steps
            if self.step % cfg.log_every == 0 or done:
                row = {"step": self.step, "lr": lr, "time": round(self.elapsed, 3),
                       "nonfinite": self.nonfinite_total,
                       **{k: v / max(count, 1) for k, v in sums.items()}}
                self._log(row)
                bar.set_postfix({k: f"{v:.3g}" for k, v in row.items()
                                 if k in ("loss", "latent", "rec", "push", "fm")})
                sums, count = {}, 0
            if self.evaluate and cfg.eval_every and (self.step % cfg.eval_every == 0 or done):
                last_eval = self.evaluate(self.ema.model, self.step)
                self._log({"step": self.step, **{f"eval/{k}": v for k, v in last_eval.items()}})
                self.model.train()
            if is_main() and (self.step % cfg.ckpt_every == 0 or done):
                self.save()
        bar.close()
        return last_eval

    def _critic_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One critic update (skipped when its loss is not finite)."""
        self.critic_opt.zero_grad(set_to_none=True)  # drop what the generator loss left
        loss, logs = self.model.critic_loss(batch)
        if torch.isfinite(loss):
            loss.backward()
            self.critic_opt.step()
        self.critic_opt.zero_grad(set_to_none=True)
        return logs


def _read_log(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn last line from a killed run
    return rows
