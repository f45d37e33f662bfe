"""Which sampler should make the pairs: KDM distilled from the pairs of each deterministic
solver at several step counts, against the pairs' own quality and what they cost to make.

For every ``SOLVER=STEPS,...`` of ``--grid``, on a diffusers teacher folder:

- ``kdm pairs make`` of ``--n`` pairs (the same noise seeds for every sampler);
- a KDM trained on them with the ``--preset`` budget and ``--set`` overrides (the same for
  every sampler, so rows differ only in the pairs);
- ``kdm eval`` of it with ``--eval-set``: the teacher's row there is that sampler on the same
  held-out noise, extractor and reference as the student, so it is the pairs' own quality;
- the sampler's discretisation error: the mean squared difference, per pixel, of its outputs
  from the same solver's solve at ``--exact-steps`` steps of the same noise, on one batch
  (against its own fine solve: on a DDPM folder the solvers need not share an endpoint, since
  DDIM and Heun clip their x_0 predictions when the folder's ``clip_sample`` asks for it);
- generation time, side by side: every sampler maps the same batch of ``--batch-size``
  noises, all samplers in turn, ``--repeats`` rounds after a warm-up; the fastest call of
  each counts (a shared machine only slows a call down), as seconds per 1,000 pairs.

Stages already on disk are reused; ``--timing-only`` re-measures the times alone (do it on a
quiet machine). Writes ``OUT/pair_cost.json`` and prints a markdown table.

    python examples/train_digits_ddpm.py --out runs/ddpm
    python benchmarks/pair_cost.py --teacher runs/ddpm --out runs/pair-cost \\
        --grid ddim=5,10,25 --grid dpm++2m=5,10,25 --grid heun=10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from stages import run, train

from koopman_distill.config import PairsConfig
from koopman_distill.io import read_json
from koopman_distill.teachers import DiffusersTeacher
from koopman_distill.threads import cpu_threads

# The digits example's student budget and evaluation (docs/benchmarks.md, "A diffusers teacher")
TRAIN = ["train.steps=1500", "train.batch_size=64", "train.eval_every=0", "train.ckpt_every=500",
         "train.lr=2e-3", "train.progress=false", "data.source=digits", "data.resolution=8",
         "data.conditional=false"]
EVAL = ["eval.n=2000", "eval.extractor=effnet", "eval.effnet_resolution=64",
        "eval.batch_size=250"]


def grid(items: list[str]) -> list[tuple[str, int]]:
    """``["ddim=5,10", "heun=10"]`` -> ``[("ddim", 5), ("ddim", 10), ("heun", 10)]``."""
    out = []
    for item in items:
        solver, _, steps = item.partition("=")
        out += [(solver, int(s)) for s in steps.split(",")]
    return out


def distilled(args: argparse.Namespace, out: Path, solver: str, steps: int) -> dict:
    """Pairs of one sampler, the KDM trained on them and its evaluation (each reused when
    done); the evaluation's teacher and student rows, and the pair stage's wall time."""
    tag = f"{solver}-{steps}"
    pairs, student, ev = out / f"pairs-{tag}", out / f"kdm-{tag}", out / f"eval-{tag}"
    wall = out / f"pairs-{tag}.seconds"  # written once the store is complete
    if not wall.exists():
        start = time.perf_counter()
        run("pairs", "make", "--teacher", f"diffusers:{args.teacher}", "--out", pairs,
            "--n", args.n, "--set", f"pairs.solver={solver}", "--set", f"pairs.steps={steps}",
            "--set", f"pairs.batch_size={args.batch_size}", "--set", "pairs.shard_size=1000")
        wall.write_text(f"{time.perf_counter() - start:.3f}\n")
    train(student, "--preset", args.preset, "--pairs", pairs,
          *(a for s in [*TRAIN, *args.set] for a in ("--set", s)))
    if not (ev / "eval.json").exists():
        run("eval", student, "--no-plots", "--out", ev,
            *(a for s in [*EVAL, *args.eval_set] for a in ("--set", s)))
    result = read_json(ev / "eval.json")
    return {"teacher": result["teacher"], "kdm": result["student"],
            "settings": result["settings"], "reference": result["reference"],
            "pairs_wall_seconds": float(wall.read_text())}


def timing(args: argparse.Namespace, samplers: list[tuple[str, int]]) -> dict:
    """Seconds per 1,000 pairs of each sampler (fastest of ``--repeats`` side-by-side rounds)
    and its error against its own solve at ``--exact-steps`` of the same batch."""
    teachers = {s: DiffusersTeacher(args.teacher, PairsConfig(solver=s[0], steps=s[1]))
                for s in samplers}
    first = next(iter(teachers.values()))
    g = torch.Generator().manual_seed(0)
    noise = first.sigma_max * torch.randn(args.batch_size, *first.shape, generator=g)
    with torch.no_grad(), cpu_threads(0, every_module_call=True):  # no cliff beside others
        exact = {s: first.sample(noise, solver=s, steps=args.exact_steps)
                 for s in {s for s, _ in samplers}}
        outputs = {s: t.sample(noise) for s, t in teachers.items()}  # also the warm-up
        times: dict[tuple[str, int], list[float]] = {s: [] for s in samplers}
        for _ in range(args.repeats):
            for s, t in teachers.items():
                start = time.perf_counter()
                t.sample(noise)
                times[s].append(time.perf_counter() - start)
    return {f"{s}-{k}": {"solver": s, "steps": k, "nfe": teachers[(s, k)].nfe(),
                         "seconds_per_1000": 1000 * min(times[(s, k)]) / args.batch_size,
                         "all_seconds": times[(s, k)],
                         "ode_mse": float((outputs[(s, k)] - exact[s]).square().mean())}
            for s, k in samplers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", required=True, help="a diffusers pipeline folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--grid", action="append", required=True,
                    help="SOLVER=STEPS,STEPS,... (repeat for each solver)")
    ap.add_argument("--n", type=int, default=5000, help="pairs per sampler")
    ap.add_argument("--preset", default="digits8", help="the students' preset")
    ap.add_argument("--set", action="append", default=[], help="extra --set for every KDM")
    ap.add_argument("--eval-set", action="append", default=[],
                    help="extra --set for every evaluation")
    ap.add_argument("--exact-steps", type=int, default=200,
                    help="steps of each solver's fine solve")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timing-only", action="store_true",
                    help="re-measure the generation times only, into an existing result")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    samplers = grid(args.grid)
    path = out / "pair_cost.json"
    if args.timing_only:
        result = read_json(path)
    else:
        rows = {f"{s}-{k}": {"solver": s, "steps": k, **distilled(args, out, s, k)}
                for s, k in samplers}
        result = {"command": " ".join(sys.argv), "teacher": str(Path(args.teacher).resolve()),
                  "n_pairs": args.n, "preset": args.preset, "train": [*TRAIN, *args.set],
                  "eval": [*EVAL, *args.eval_set], "rows": rows}
        path.write_text(json.dumps(result, indent=1) + "\n")  # the times are added next
    measured = timing(args, samplers)
    for key, t in measured.items():
        result["rows"][key].update(t)
    result.update(date=time.strftime("%Y-%m-%d"), threads=torch.get_num_threads(),
                  torch=torch.__version__, exact_steps=args.exact_steps,
                  timing_batch=args.batch_size,
                  repeats=args.repeats)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print("| sampler | NFE | s / 1k pairs | solver MSE | pairs FD | KDM FD | KDM paired MSE |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in result["rows"].values():
        print(f"| {r['solver']} x{r['steps']} | {r['nfe']} | {r['seconds_per_1000']:.2f} | "
              f"{r['ode_mse']:.2e} | {r['teacher']['fd']:.2f} | {r['kdm']['fd']:.2f} | "
              f"{r['kdm']['paired_mse']:.4f} |")


if __name__ == "__main__":
    main()
