"""A thin, generic trainer: Adam, LR schedule, EMA, non-finite guard, progress bar, periodic
evaluation, ``log.jsonl`` and exact resume.

The model only has to provide ``loss(batch, rng) -> (scalar tensor, {name: float})``, drawing
its per-example noise from ``rng`` (:class:`.rng.ExampleRNG`); the batch source provides
``next()``, ``state_dict()`` and ``load_state_dict()``. Optionally the model has
``set_progress(fraction)`` (called before each step) and ``objectives()``: extra
:class:`~..protocols.Objective` s (an adversary's critic) with their own parameters, each with
its own Adam (state ``<name>_optimizer``). The model's loss is computed with those parameters
frozen; each objective's loss follows the model's backward pass and its optimizer steps before
the model's, so the model's gradient uses the objectives' parameters as they were before this
step.

Under ``torchrun`` every process runs this loop on its rows of each global batch (the data
source splits it, see :class:`.data.Batches`), optionally cut further into
``cfg.micro_batch``-row micro-batches whose gradients are accumulated; gradients and logged
values are then averaged over processes, so all processes take the same step. Per-example noise
drawn from the ``rng`` argument is the same however the batch is split, so such a run follows
the single-process run with the same global batch up to floating-point rounding (dropout masks
differ, and BatchNorm, as in the image critic, sees per-micro-batch statistics); a loss that
draws from torch's global generator instead is stopped with an error
(:class:`.rng.GlobalDrawCheck`). Only rank 0 logs, evaluates and saves. An optional
:class:`.board.Board` gets every log row and, at each evaluation, the EMA model (TensorBoard).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..errors import KDMError, Stopped, first_line
from ..io import atomic_write, remove_temp_files, write_failed
from ..protocols import Objective
from ..threads import CPUThreads, cpu_threads
from . import rng
from .board import Board
from .checkpoint import (
    discard_after,
    latest_checkpoint,
    load_into,
    load_state,
    load_weights,
    save_checkpoint,
    step_of,
)
from .data import Prefetch
from .distributed import all_reduce_mean_, barrier, broadcast_, is_main, rank, world_size
from .ema import EMA

Evaluate = Callable[[nn.Module, int], dict[str, float]]
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def use_deterministic_kernels() -> None:
    """Make CUDA computations repeat bitwise: deterministic algorithms only (an op without one
    raises), no cuDNN autotuning, and a fixed cuBLAS workspace (read when cuBLAS starts)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def compile_networks(model: nn.Module) -> None:
    """``torch.compile`` the forward of each direct submodule with parameters, in place (the
    model's own ``loss`` stays eager, so its logging does not break the graphs)."""
    for child in model.children():
        if next(child.parameters(), None) is not None:
            child.compile()


def _micro_batches(rows: int, micro_batch: int) -> int:
    """How many ``micro_batch``-row pieces a process's ``rows`` of a batch make."""
    if rows % micro_batch:
        raise KDMError(f"train.micro_batch {micro_batch} does not divide the {rows} rows each "
                       f"process takes of a batch; pick a divisor of {rows}")
    return rows // micro_batch


def _part_seed(seed: int, step: int, rank: int, part: int) -> int:
    """Seed of the global generator for micro-batch ``part`` of ``rank`` at ``step``."""
    return (((seed * 1_000_003 + step) * 1_009 + rank) * 1_013 + part) % 2**63


class Trainer:
    """Train ``model`` on ``data`` for ``cfg.steps`` steps, writing into ``run_dir``."""

    def __init__(self, model: nn.Module, data: Iterator[dict[str, torch.Tensor]],
                 cfg: TrainConfig, run_dir: str | Path, evaluate: Evaluate | None = None,
                 device: str | torch.device = "cpu", name: str = "train",
                 resume_hint: str = "", board: Board | None = None):
        lr_at(cfg, 0)  # validates the schedule name before any work
        if cfg.precision not in PRECISIONS:
            raise KDMError(f"unknown train.precision {cfg.precision!r}; choose fp32, bf16 or fp16")
        if cfg.micro_batch < 0 or cfg.prefetch < 0:
            raise KDMError("train.micro_batch and train.prefetch must be >= 0")
        if cfg.micro_batch:
            _micro_batches(cfg.batch_size // world_size(), cfg.micro_batch)
        if cfg.deterministic:
            use_deterministic_kernels()
        layout = torch.channels_last if cfg.channels_last else torch.preserve_format
        self.model, self.cfg, self.world = model.to(device, memory_format=layout), cfg, world_size()
        self.run_dir, self.evaluate, self.device = Path(run_dir), evaluate, torch.device(device)
        self.data = (Prefetch(data, cfg.prefetch, pin=self.device.type == "cuda")
                     if cfg.prefetch else data)
        if self.world > 1:  # every process starts from rank 0's weights
            broadcast_([*model.parameters(), *model.buffers()])
        self.objectives, own = _objectives(model)
        self.params = [p for p in model.parameters() if id(p) not in own]
        betas = (cfg.beta1, cfg.beta2)
        self.opt = torch.optim.Adam(self.params, lr=cfg.lr, betas=betas)
        self.objective_opts = [torch.optim.Adam(o.parameters(), lr=cfg.lr, betas=betas)
                               for o in self.objectives]
        self.ema = EMA(model, cfg.ema_decay, cfg.ema_warmup)
        if cfg.compile:
            compile_networks(model)
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.precision == "fp16" else None
        # Split batches (several processes or micro-batches) draw per-example noise from their
        # own generator, started where the global one stands; otherwise the global one is used.
        self.part_gen, self.draw_check = None, None
        if self.world > 1 or cfg.micro_batch:
            self.part_gen = torch.Generator(self.device)
            self.part_gen.set_state(self._device_rng().get("rng_cuda", torch.get_rng_state()))
            # compiled dropout seeds itself from the global generator inside the graph
            if not cfg.compile or not _has_dropout(model):
                self.draw_check = rng.GlobalDrawCheck(model, self.device)
        self.step, self.elapsed, self.nonfinite_total = 0, 0.0, 0
        self.log_path = self.run_dir / "log.jsonl"
        # the progress bar's label, and the command that continues the run after a stop
        self.name, self.resume_hint = name, resume_hint
        self.board = board  # TensorBoard events of the log rows and evaluations, or None
        self._signal: int | None = None  # SIGTERM / SIGINT received: checkpoint and stop

    # -- state -------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        extra = {f"{o.name}_optimizer": opt.state_dict()
                 for o, opt in zip(self.objectives, self.objective_opts, strict=True)}
        if self.scaler is not None:
            extra["scaler"] = self.scaler.state_dict()
        return {**extra, "step": self.step, "optimizer": self.opt.state_dict(),
                "ema_updates": self.ema.updates, "data": self.data.state_dict(),
                "rng_torch": torch.get_rng_state(),
                "nonfinite_total": self.nonfinite_total, **self._device_rng(),
                **self._part_rng()}

    def _device_rng(self) -> dict[str, torch.Tensor]:
        cuda = self.device.type == "cuda"
        return {"rng_cuda": torch.cuda.get_rng_state(self.device)} if cuda else {}

    def _part_rng(self) -> dict[str, torch.Tensor]:
        """Split batches: the noise generator's state, under the key of its device's global
        generator (the stream per-example noise comes from in either mode)."""
        if self.part_gen is None:
            return {}
        return {"rng_cuda" if self.device.type == "cuda" else "rng_torch":
                self.part_gen.get_state()}

    def save(self) -> Path:
        return save_checkpoint(self.run_dir, self.step, self.model.state_dict(),
                               self.ema.model.state_dict(), self._state(),
                               self.cfg.keep_checkpoints)

    def resume(self) -> bool:
        """Restore the newest complete checkpoint; False when the run has none yet. The whole
        checkpoint is read and checked before anything is written; then what a killed run
        wrote after it (log rows, temporary files) is dropped."""
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            self._discard_after(None)
            return False
        model_w = load_weights(ckpt / "model.safetensors")
        ema_w = load_weights(ckpt / "ema.safetensors")
        state = load_state(ckpt)
        self._check_state(state, ckpt)
        load_into(self.model, model_w, ckpt)
        load_into(self.ema.model, ema_w, ckpt)
        try:
            self.opt.load_state_dict(state["optimizer"])
            for o, opt in zip(self.objectives, self.objective_opts, strict=True):
                opt.load_state_dict(state[f"{o.name}_optimizer"])
            torch.set_rng_state(state["rng_torch"])
            if "rng_cuda" in state and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["rng_cuda"], self.device)
            part_key = "rng_cuda" if self.device.type == "cuda" else "rng_torch"
            if self.part_gen is not None and part_key in state:
                self.part_gen.set_state(state[part_key])
            if self.scaler is not None and "scaler" in state:
                self.scaler.load_state_dict(state["scaler"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
            raise KDMError(f"{ckpt / 'state.pt'} does not fit this run's optimizer or random "
                           f"state ({first_line(e)}); the checkpoint is damaged or from another "
                           "run") from None
        self.ema.updates = state["ema_updates"]
        self.data.load_state_dict(state["data"])
        self.step = state["step"]
        self.nonfinite_total = state["nonfinite_total"]
        self._discard_after(ckpt)
        return True

    def _check_state(self, state: Any, ckpt: Path) -> None:
        """Raise a one-line KDMError unless ``state`` (a loaded state.pt) has every entry this
        trainer restores, with the right types and ranges."""
        where = ckpt / "state.pt"

        def bad(what: str) -> KDMError:
            return KDMError(f"{where} {what}; the checkpoint is damaged or not from "
                            "koopman-distill")

        if not isinstance(state, dict):
            raise bad(f"holds a {type(state).__name__}, not the trainer's state")
        need = {"step": int, "optimizer": dict, "ema_updates": int, "data": dict,
                "rng_torch": torch.Tensor, "nonfinite_total": int}
        need.update({f"{o.name}_optimizer": dict for o in self.objectives})
        missing = sorted(set(need) - set(state))
        if missing:
            raise bad(f"lacks {', '.join(missing)}")
        for key, tp in need.items():
            if not isinstance(state[key], tp) or isinstance(state[key], bool):
                raise bad(f"has {key} of type {type(state[key]).__name__}")
        for key in ("optimizer", *(f"{o.name}_optimizer" for o in self.objectives)):
            opt = state.get(key)
            if opt is not None and not (isinstance(opt.get("state"), dict) and isinstance(
                    opt.get("param_groups"), list) and all(
                    isinstance(g, dict) for g in opt["param_groups"])):
                raise bad(f"has {key} without its state dict and list of parameter groups")
        for key in ("step", "ema_updates", "nonfinite_total"):
            if state[key] < 0:
                raise bad(f"has a negative {key} ({state[key]})")
        if state["step"] != step_of(ckpt):
            raise bad(f"is at step {state['step']} but lies in {ckpt.name}")
        position = self.data.state_dict()
        if (set(state["data"]) != set(position) or not all(
                type(v) is int and v >= 0 for v in state["data"].values())):
            raise bad(f"has data position {state['data']!r}, expected non-negative integers "
                      f"{sorted(position)}")

    def _discard_after(self, ckpt: Path | None) -> None:
        if not is_main():
            return
        have = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        rows = [r for r in read_log(self.log_path) if r["step"] <= self.step] if have else []
        # the wall time so far is the last kept row's (state.pt holds no wall time, so that a
        # resumed run's checkpoints are bitwise those of an uninterrupted one)
        times = [r["time"] for r in rows if type(r.get("time")) in (int, float)]
        self.elapsed = float(times[-1]) if times and math.isfinite(times[-1]) else 0.0
        discard_after(self.run_dir, ckpt, self.cfg.keep_checkpoints)
        remove_temp_files(self.run_dir, self.log_path.name)
        text = "".join(json.dumps(r) + "\n" for r in rows)
        if text != have:
            atomic_write(self.log_path, lambda p: Path(p).write_text(text))

    # -- loop --------------------------------------------------------------------------------
    def _log(self, row: dict[str, Any]) -> None:
        if is_main():
            try:
                with open(self.log_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
            except OSError as e:
                ckpt = latest_checkpoint(self.run_dir)
                raise write_failed(self.log_path, e, f"the last checkpoint is "
                                   f"{ckpt.name if ckpt else 'none'}") from None
            if self.board is not None:
                self.board.row(row)

    @contextlib.contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """While training, SIGTERM (a cluster's pre-emption notice) and SIGINT (Ctrl-C) let the
        current step finish; the run then checkpoints and stops. A second Ctrl-C interrupts at
        once. (Signals can only be caught in the main thread; elsewhere they act as usual.)"""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self._signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._signal = signum

        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _stop_requested(self) -> bool:
        """Whether any process got a stop signal (all processes agree, so they stop at the
        same step)."""
        if self.world == 1:
            return self._signal is not None
        flag = torch.tensor([float(self._signal is not None)], device=self.device)
        all_reduce_mean_([flag])
        return bool(flag.item() > 0)

    def _stopped(self) -> Stopped:
        sig = self._signal or signal.SIGTERM
        ckpt = latest_checkpoint(self.run_dir) if is_main() else None
        written = f"checkpoint {ckpt.name} written" if ckpt else "checkpoint written"
        hint = f"; continue with `{self.resume_hint}`" if self.resume_hint else ""
        return Stopped(f"stopped by {signal.Signals(sig).name} at step {self.step}, {written}"
                       f"{hint}", 128 + sig)

    def fit(self) -> dict[str, float]:
        """Run to ``cfg.steps``; returns the last evaluation (empty when none ran). On SIGTERM
        or SIGINT the run writes a checkpoint at the current step and raises :class:`Stopped`."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=self.cfg.steps, initial=self.step, dynamic_ncols=True, desc=self.name,
                   disable=not (self.cfg.progress and is_main()))
        if self.board is not None and is_main():
            self.board.open(self.step)
        try:
            with self._stop_on_signals(), cpu_threads(self.cfg.threads) as threads:
                return self._loop(bar, threads)
        finally:
            bar.close()
            if self.board is not None:
                self.board.close()
            if isinstance(self.data, Prefetch):
                self.data.close()

    def _loop(self, bar: tqdm, threads: CPUThreads) -> dict[str, float]:
        cfg = self.cfg
        sums: dict[str, float] = {}
        count, consecutive, last_eval = 0, 0, {}
        t_start = time.perf_counter() - self.elapsed
        self.model.train()
        while self.step < cfg.steps:
            threads.apply()
            batch = {k: self._to_device(v) for k, v in next(self.data).items()}
            if hasattr(self.model, "set_progress"):  # e.g. KDM's latent-noise schedule
                self.model.set_progress(self.step / cfg.steps)
            lr = lr_at(cfg, self.step)
            for opt in (self.opt, *self.objective_opts):
                for group in opt.param_groups:
                    group["lr"] = lr
            loss, logs, finite, objectives_ok = self._gradients(batch)
            if finite:
                if self.scaler is not None:
                    self.scaler.unscale_(self.opt)
                grads = [p.grad for p in self.params if p.grad is not None]
                norm = nn.utils.get_total_norm(grads)  # one reduction; inf/NaN if any is
                finite = bool(torch.isfinite(norm))
            if not finite:
                consecutive += 1
                self.nonfinite_total += 1
                for opt in (self.opt, *self.objective_opts):
                    opt.zero_grad(set_to_none=True)
                if self.scaler is not None:  # back off also when the loss itself overflowed
                    self.scaler.update(self.scaler.get_scale() * self.scaler.get_backoff_factor())
                if consecutive >= cfg.max_nonfinite:
                    self._log({"step": self.step, "nonfinite": self.nonfinite_total,
                               "stopped": "non-finite"})
                    ckpt = latest_checkpoint(self.run_dir)
                    raise KDMError(
                        f"training stopped: {consecutive} consecutive non-finite losses or "
                        f"gradients at step {self.step}; last good checkpoint: "
                        f"{ckpt.name if ckpt else 'none'}; lower train.lr or set train.grad_clip")
            else:
                consecutive = 0
                if cfg.grad_clip > 0:
                    nn.utils.clip_grads_with_norm_(grads, cfg.grad_clip, norm)
                for i in range(len(self.objectives)):
                    logs = {**logs, **self._objective_step(i, batch, objectives_ok)}
                self._opt_step(self.opt)
                if self.scaler is not None:
                    self.scaler.update()
                self.ema.update(self.model)
                for k, v in {"loss": loss, **logs}.items():
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
            if (self.evaluate and is_main() and cfg.eval_every
                    and (self.step % cfg.eval_every == 0 or done)):
                last_eval = self.evaluate(self.ema.model, self.step)
                self._log({"step": self.step, **{f"eval/{k}": v for k, v in last_eval.items()}})
                if self.board is not None:
                    self.board.picture(self.ema.model, self.step)
                self.model.train()
            stop = self._stop_requested()
            if is_main() and (self.step % cfg.ckpt_every == 0 or done or stop):
                self.save()
            if stop and not done:
                barrier()
                raise self._stopped()
        barrier()  # no process leaves before rank 0 has written the last checkpoint
        return last_eval

    # -- one step ----------------------------------------------------------------------------
    def _to_device(self, v: torch.Tensor) -> torch.Tensor:
        v = v.to(self.device, non_blocking=True)
        if self.cfg.channels_last and v.dim() == 4 and v.is_floating_point():
            v = v.contiguous(memory_format=torch.channels_last)
        return v

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = PRECISIONS[self.cfg.precision]
        return torch.autocast(self.device.type, dtype) if dtype else contextlib.nullcontext()

    def _backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def _opt_step(self, opt: torch.optim.Optimizer) -> None:
        self.scaler.step(opt) if self.scaler is not None else opt.step()

    def _model_loss(self, batch: dict[str, torch.Tensor], draws: rng.ExampleRNG
                    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``model.loss`` with the objectives' parameters frozen, so they get no gradient
        from it."""
        frozen = [p for o in self.objectives for p in o.parameters() if p.requires_grad]
        with self._autocast():
            for p in frozen:
                p.requires_grad_(False)
            try:
                return self.model.loss(batch, draws)
            finally:
                for p in frozen:
                    p.requires_grad_(True)

    def _objective_loss(self, i: int, batch: dict[str, torch.Tensor], draws: rng.ExampleRNG
                        ) -> tuple[torch.Tensor, dict[str, float]]:
        with self._autocast():
            return self.objectives[i].loss(batch, draws)

    def _gradients(self, batch: dict[str, torch.Tensor]
                   ) -> tuple[float, dict[str, float], bool, list[bool] | None]:
        """The model's gradients for this process's rows of the global batch, averaged over
        processes. Returns the loss and logs (means over the global batch), whether every loss
        was finite and, for split batches, whether every loss of each objective was (their
        gradients are then accumulated alongside; None: each objective steps on the whole
        batch later)."""
        self.opt.zero_grad(set_to_none=True)
        if self.part_gen is None:
            loss, logs = self._model_loss(batch, rng.GLOBAL)
            finite = bool(torch.isfinite(loss))
            if finite:
                self._backward(loss)
            return loss.item(), logs, finite, None
        n = len(next(iter(batch.values())))
        m = self.cfg.micro_batch or n
        k, total, first = _micro_batches(n, m), n * self.world, rank() * n
        start = self.part_gen.get_state()
        for opt in self.objective_opts:
            opt.zero_grad(set_to_none=True)
        bad, sums = [0.0] * (1 + len(self.objectives)), {}  # non-finite losses seen, per loss
        for j in range(k):
            self.part_gen.set_state(start)  # every part draws the whole batch's noise
            torch.manual_seed(_part_seed(self.cfg.seed, self.step, rank(), j))  # e.g. dropout
            micro = {name: v[j * m:(j + 1) * m] for name, v in batch.items()}
            draws = rng.batch_part(total, first + j * m, first + (j + 1) * m, self.part_gen)
            with self._draws_checked(f"{type(self.model).__name__}.loss"):
                loss, logs = self._model_loss(micro, draws)
            if torch.isfinite(loss):
                self._backward(loss / k)
            else:
                bad[0] = 1.0
            for i, o in enumerate(self.objectives):
                with self._draws_checked(f"the {o.name} objective's loss"):
                    o_loss, o_logs = self._objective_loss(i, micro, draws)
                if torch.isfinite(o_loss):
                    self._backward(o_loss / k)
                else:
                    bad[1 + i] = 1.0
                logs = {**logs, **o_logs}
            for name, v in {"loss": loss.item(), **logs}.items():
                sums[name] = sums.get(name, 0.0) + v / k
        if self.world > 1:
            for p in self.model.parameters():
                if p.grad is None and p.requires_grad:
                    p.grad = torch.zeros_like(p)
            names = sorted(sums)
            stats = torch.tensor(bad + [sums[s] for s in names], dtype=torch.float64,
                                 device=self.device)
            all_reduce_mean_([*(p.grad for p in self.model.parameters() if p.grad is not None),
                              stats])
            bad = stats[:len(bad)].tolist()
            sums = dict(zip(names, stats[len(bad):].tolist(), strict=True))
        loss = sums.pop("loss")
        return loss, sums, bad[0] == 0, [b == 0 for b in bad[1:]]

    def _draws_checked(self, what: str) -> contextlib.AbstractContextManager:
        return (self.draw_check.watch(what) if self.draw_check is not None
                else contextlib.nullcontext())

    def _objective_step(self, i: int, batch: dict[str, torch.Tensor],
                        accumulated: list[bool] | None) -> dict[str, float]:
        """One update of objective ``i`` (skipped when its loss is not finite).
        ``accumulated``: its gradients are in place already and were all finite (True) or not
        (False); None: compute them on ``batch``."""
        opt = self.objective_opts[i]
        if accumulated is None:
            opt.zero_grad(set_to_none=True)
            loss, logs = self._objective_loss(i, batch, rng.GLOBAL)
            ok = bool(torch.isfinite(loss))
            if ok:
                self._backward(loss)
        else:
            logs, ok = {}, accumulated[i]
        if ok:
            self._opt_step(opt)
        opt.zero_grad(set_to_none=True)
        return logs


def _objectives(model: nn.Module) -> tuple[list[Objective], set[int]]:
    """The model's extra objectives and the ids of their parameters, which must be the model's
    own (so they are checkpointed, broadcast and averaged with it) and nobody else's."""
    objectives = list(getattr(model, "objectives", tuple)())
    mine = {id(p) for p in model.parameters()}
    own: set[int] = set()
    for o in objectives:
        ids = {id(p) for p in o.parameters()}
        if not ids <= mine or ids & own:
            raise KDMError(f"objective {o.name!r} of {type(model).__name__} has parameters "
                           "outside the model or shared with another objective; register "
                           "them as a submodule of the model, once")
        own |= ids
    if len({o.name for o in objectives}) < len(objectives):
        raise KDMError(f"{type(model).__name__} has two objectives of the same name")
    return objectives, own


def _has_dropout(model: nn.Module) -> bool:
    return any(isinstance(m, rng.DROPOUT) and m.p > 0 for m in model.modules())


def read_log(path: Path, skip_damaged: bool = False) -> list[dict[str, Any]]:
    """The rows of a ``log.jsonl``, up to a torn last line (a killed run's). A damaged line
    before the last is a KDMError rather than a reason to drop the rows after it, or, with
    ``skip_damaged`` (for plots), left out."""
    lines = path.read_text(errors="replace").splitlines()
    rows = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            row = None
        if not (isinstance(row, dict) and type(row.get("step")) is int):
            if skip_damaged or i == len(lines) - 1:
                continue
            raise KDMError(f"{path} line {i + 1} is not a log row; fix or delete that line")
        rows.append(row)
    return rows
