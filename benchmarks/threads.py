"""Training and pair generation on a busy machine: ``train.threads`` at its default (0: follow
the load) against a fixed 2 threads (PyTorch's default on 2 cores) and a fixed 1, each alone and
beside one other CPU-bound process (a busy loop), in one run.

Each measurement is a fresh ``kdm`` process: ``kdm pairs`` making ``--pairs`` pairs with the
checkerboard-demo teacher (its network and sampler, Heun x25; trained a few steps only, since
speed does not depend on the weights) and ``kdm train --preset checkerboard-demo`` for
``--steps`` KDM steps (the trainer's own wall time, from ``log.jsonl``). With ``--repeats N``
every cell is measured N times, the cells in turn within each round (so that a drift of the
machine's speed reaches all of them alike); a row holds the mean and, per quantity, its runs
and their sample standard deviation. Writes ``OUT/threads.json`` and prints a markdown table.

    python benchmarks/threads.py --out runs/threads --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

MODES = {"fixed 2": 2, "fixed 1": 1, "auto (default)": 0}
KDM = [sys.executable, "-m", "koopman_distill.cli"]


def kdm(*args: str) -> float:
    """Run ``kdm ARGS`` in a fresh process; its wall seconds."""
    start = time.perf_counter()
    subprocess.run([*KDM, *map(str, args)], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


@contextmanager
def competitor(on: bool):
    """One other CPU-bound process while the block runs (or none)."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if on else None
    try:
        time.sleep(0.5 if on else 0)
        yield
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


def train_seconds(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return float([r for r in rows if "time" in r][-1]["time"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=1000, help="KDM steps per measurement")
    ap.add_argument("--pairs", type=int, default=20000, help="pairs per measurement")
    ap.add_argument("--repeats", type=int, default=1, help="measurements per cell")
    args = ap.parse_args()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    teacher, pairs = root / "teacher", root / "pairs"
    if not teacher.exists():
        kdm("teacher", "train", "--preset", "checkerboard-demo", "--out", teacher, "--set",
            "teacher_train.steps=50")
    if not pairs.exists():
        kdm("pairs", "--teacher", teacher, "--out", pairs, "--n", args.pairs)
    cells = [(loaded, mode) for loaded in (False, True) for mode in MODES]
    runs: dict[tuple[bool, str], dict[str, list[float]]] = {
        c: {"pairs_s": [], "train_s": []} for c in cells}
    for _ in range(args.repeats):
        for loaded, mode in cells:
            threads = ["--set", f"train.threads={MODES[mode]}"]
            tmp = root / "tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            with competitor(loaded):
                pair_s = kdm("pairs", "--teacher", teacher, "--out", tmp / "p", "--n",
                             args.pairs, *threads)
                kdm("train", "--preset", "checkerboard-demo", "--pairs", pairs, "--out",
                    tmp / "k", "--set", f"train.steps={args.steps}", "--set",
                    "train.eval_every=0", "--set", f"train.ckpt_every={args.steps}",
                    "--set", "train.progress=false", *threads)
            runs[loaded, mode]["pairs_s"].append(pair_s)
            runs[loaded, mode]["train_s"].append(train_seconds(tmp / "k"))
            print(mode, loaded, {k: v[-1] for k, v in runs[loaded, mode].items()}, flush=True)
    shutil.rmtree(root / "tmp", ignore_errors=True)
    rows = []
    for loaded, mode in cells:
        row: dict = {"threads": mode, "other_process": loaded}
        for key, values in runs[loaded, mode].items():
            row[key] = statistics.fmean(values)
            row[f"{key}_runs"] = values
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
        rows.append(row)
    result = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"),
              "machine": {"cpus": os.cpu_count(), "processor": platform.processor(),
                          "python": platform.python_version()},
              "steps": args.steps, "pairs": args.pairs, "repeats": args.repeats, "rows": rows}
    (root / "threads.json").write_text(json.dumps(result, indent=2) + "\n")
    one = {r["other_process"]: r for r in rows if r["threads"] == "fixed 1"}
    print("| threads | other process | pairs (s) | x fixed 1 | train (s) | x fixed 1 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        base = one[r["other_process"]]
        print(f"| {r['threads']} | {'yes' if r['other_process'] else 'no'} | "
              f"{r['pairs_s']:.1f} | {r['pairs_s'] / base['pairs_s']:.2f} | "
              f"{r['train_s']:.1f} | {r['train_s'] / base['train_s']:.2f} |")


if __name__ == "__main__":
    main()
