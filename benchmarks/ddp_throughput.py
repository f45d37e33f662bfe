"""KDM training throughput with 1 and 2 processes (torchrun, gloo), side by side.

Writes a checkerboard pair store (noise x_T ~ N(0, I), clean x_0 = checkerboard points; the
pairing does not matter for speed), then runs ``kdm train`` with the checkerboard preset's
networks (three 256x5 MLPs) for a fixed number of steps at each global batch size:

- 1 process, 1 thread (``OMP_NUM_THREADS=1``, ``train.threads=1``);
- 2 processes, 1 thread each (``torchrun --standalone --nproc_per_node 2``, gloo);
- 1 process, 2 threads (the same cores used by intra-op threads instead, for reference).

Samples/s come from ``log.jsonl`` between the first and the last logged step (start-up, data
loading and the final checkpoint excluded). Prints a markdown table and writes it, with the raw
numbers, to ``OUT/ddp_throughput.{md,json}``.

    python benchmarks/ddp_throughput.py --out runs/ddp-bench [--steps 400] [--batches 256,4096]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from koopman_distill.data.checkerboard import sample_checkerboard
from koopman_distill.pairs import write_arrays

SETUPS = {  # name: (processes, threads per process)
    "1 process x 1 thread": (1, 1),
    "2 processes x 1 thread (torchrun, gloo)": (2, 1),
    "1 process x 2 threads": (1, 2),
}


def make_store(out: Path, n: int = 50_000) -> Path:
    """A checkerboard pair store of ``n`` pairs (N, 2)."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(n, 2, generator=g).numpy()
    clean = sample_checkerboard(n, g).numpy().astype(np.float32)
    write_arrays(out, noise, clean, shard_size=10_000, sigma_max=1.0,
                 teacher={"kind": "synthetic"}, sampler={"method": "none"}, nfe=None,
                 source={"kind": "benchmark"})
    return out


def train(store: Path, run: Path, procs: int, threads: int, steps: int, batch: int) -> float:
    """Samples/s of ``kdm train`` between the first and last logged step."""
    shutil.rmtree(run, ignore_errors=True)
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc_per_node", str(procs)] if procs > 1 else [sys.executable])
    sets = [f"train.steps={steps}", f"train.batch_size={batch}", "train.eval_every=0",
            f"train.ckpt_every={steps}", f"train.log_every={steps // 10}", "train.device=cpu",
            "train.progress=false", f"train.threads={threads}"]
    cmd = [*launcher, "-m", "koopman_distill.cli", "train", "--preset", "checkerboard",
           "--pairs", str(store), "--out", str(run), *(a for s in sets for a in ("--set", s))]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    first, last = rows[0], rows[-1]
    return (last["step"] - first["step"]) * batch / (last["time"] - first["time"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batches", default="256,4096", help="global batch sizes, comma-separated")
    args = p.parse_args()
    store = args.out / "pairs"
    if not (store / "manifest.json").exists():
        make_store(store)
    results = []
    for batch in map(int, args.batches.split(",")):
        base = None
        for name, (procs, threads) in SETUPS.items():
            rate = train(store, args.out / "run", procs, threads, args.steps, batch)
            base = base or rate
            results.append({"batch": batch, "setup": name, "steps": args.steps,
                            "samples_per_s": rate, "speedup": rate / base})
            print(f"batch {batch}, {name}: {rate:,.0f} samples/s", flush=True)
    lines = ["| global batch | setup | steps | samples/s | vs 1 process x 1 thread |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['setup']} | {r['steps']} | {r['samples_per_s']:,.0f} | "
              f"{r['speedup']:.2f}x |" for r in results]
    table = "\n".join(lines)
    print("\n" + table)
    (args.out / "ddp_throughput.md").write_text(table + "\n")
    result = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"),
              "torch": torch.__version__, "cpus": os.cpu_count(), "rows": results}
    (args.out / "ddp_throughput.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
