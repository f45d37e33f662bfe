"""Quality against training steps, from the periodic evaluation every run's trainer logged.

At every ``train.eval_every`` steps the trainer scores the EMA student: its error on the
first training pairs (``eval/pair_mse``) and, on the first ``min(eval.n, 5000)`` noise draws
of ``kdm eval`` (``eval.seed``), the suite's held-out quality (images of a dataset trained
here: ``eval/fd``, ``eval/kid``, ``eval/class_accuracy``; the checkerboard: ``eval/inside``):
the same held-out noise for every run with the same eval settings, so the runs' curves compare
at every step. Reads each run's ``log.jsonl``; writes
``OUT/compute_efficiency.json`` and ``OUT/compute_efficiency.png`` and prints a markdown table.

    python benchmarks/compute_efficiency.py --run KDM=runs/pe/kdm-20000 \\
        --run KD=runs/pe/kd-20000 --metric eval/inside --out runs/compute
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from koopman_distill.analysis import plots
from koopman_distill.io import read_json
from koopman_distill.training.trainer import read_log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", required=True, metavar="NAME=DIR",
                    help="a student run and its name in the table (repeat)")
    ap.add_argument("--metric", default="eval/pair_mse", help="the logged field to plot")
    ap.add_argument("--higher-is-better", action="store_true")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    runs = {}
    for item in args.run:
        name, _, path = item.partition("=")
        rows = [r for r in read_log(Path(path) / "log.jsonl", skip_damaged=True)
                if any(k.startswith("eval/") for k in r)]
        if not rows:
            raise SystemExit(f"{path} logged no periodic evaluation (train.eval_every=0?)")
        cfg = read_json(Path(path) / "config.json")
        runs[name] = {"run": str(Path(path).resolve()), "eval": cfg["eval"],
                      "train": cfg["train"], "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    series = {name: [(r["step"], r[args.metric]) for r in run["rows"]]
              for name, run in runs.items()}
    plot = plots.quality_vs_nfe(series, args.metric, out / "compute_efficiency.png",
                                lower_is_better=not args.higher_is_better,
                                title="quality against training steps",
                                x_label="training steps")
    result = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"),
              "metric": args.metric, "runs": runs, "plot": str(plot)}
    (out / "compute_efficiency.json").write_text(json.dumps(result, indent=1) + "\n")
    steps = sorted({s for pts in series.values() for s, _ in pts})
    print(f"| steps | {' | '.join(runs)} |")
    print("|---:|" + "---:|" * len(runs))
    for s in steps:
        cells = [next((f"{v:.4g}" for k, v in series[n] if k == s), "-") for n in runs]
        print(f"| {s:,} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
