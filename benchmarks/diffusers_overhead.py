"""Pair generation through ``DiffusersTeacher`` against the same scheduler loop written directly
against diffusers: same model, batch, solver, steps and threads, side by side.

For each solver the two loops map the same noise batch; they alternate, ``--repeats`` times
each after one warm-up call, and the fastest call of each counts (a shared machine only ever
slows a call down). The outputs must agree bitwise. Writes ``OUT/diffusers_overhead.json``
and prints a markdown table.

    python benchmarks/diffusers_overhead.py --teacher runs/digits-ddpm --out runs/overhead
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from koopman_distill.config import PairsConfig
from koopman_distill.teachers import DiffusersTeacher
from koopman_distill.teachers.diffusers import SOLVERS


def direct(model: torch.nn.Module, scheduler_cls: type, config: dict, steps: int,
           noise: torch.Tensor) -> torch.Tensor:
    """The scheduler loop as a diffusers user writes it (pixel space, unconditional)."""
    sched = scheduler_cls.from_config(config)
    sched.set_timesteps(steps)
    x = noise
    with torch.no_grad():
        for t in sched.timesteps:
            eps = model(sched.scale_model_input(x, t), t).sample
            x = sched.step(eps, t, x).prev_sample
    return x


def seconds(call) -> float:
    """Wall time of one call."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", required=True, help="a diffusers pipeline folder")
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    import diffusers

    rows = []
    for solver, (cls_name, extra) in SOLVERS.items():
        teacher = DiffusersTeacher(args.teacher, PairsConfig(solver=solver, steps=args.steps))
        config = {**teacher.scheduler_config, **extra}
        g = torch.Generator().manual_seed(0)
        noise = teacher.sigma_max * torch.randn(args.batch_size, *teacher.shape, generator=g)
        def ours(teacher=teacher, noise=noise):
            return teacher.sample(noise)

        scheduler_cls = getattr(diffusers, cls_name)

        def theirs(teacher=teacher, noise=noise, cls=scheduler_cls, config=config):
            return direct(teacher.model, cls, config, args.steps, noise)

        same = torch.equal(ours(), theirs())  # also the warm-up of both
        times: dict[str, list[float]] = {"DiffusersTeacher": [], "direct": []}
        for _ in range(args.repeats):
            times["DiffusersTeacher"].append(seconds(ours))
            times["direct"].append(seconds(theirs))
        t_ours, t_direct = min(times["DiffusersTeacher"]), min(times["direct"])
        rows.append({"solver": solver, "nfe": teacher.nfe(), "batch": args.batch_size,
                     "seconds_teacher": t_ours, "seconds_direct": t_direct,
                     "ratio": t_ours / t_direct, "bitwise_equal": same, "all_seconds": times})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"teacher": str(Path(args.teacher).resolve()), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "diffusers": diffusers.__version__,
              "steps": args.steps, "repeats": args.repeats, "rows": rows}
    (out / "diffusers_overhead.json").write_text(json.dumps(result, indent=1))
    print("| solver | NFE | batch | DiffusersTeacher (s) | direct loop (s) | ratio | bitwise |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['solver']} | {r['nfe']} | {r['batch']} | {r['seconds_teacher']:.3f} | "
              f"{r['seconds_direct']:.3f} | {r['ratio']:.3f} | {r['bitwise_equal']} |")


if __name__ == "__main__":
    main()
