"""Quality against the number of pairs: KDM and KD trained on pair stores of several sizes from
one teacher, at equal training steps, each scored by ``kdm eval`` on the same held-out noise.

Pairs are what a user pays for (a real teacher takes GPU-days to make them), so the question is
how many KDM needs to reach KD's quality. Every store is made by ``kdm pairs`` from the same
teacher and seed; every student trains the preset's steps and batch with its seed; every
evaluation uses the preset's ``eval`` settings (the same noise, reference and extractor), so
rows differ only in the pairs. Writes ``OUT/pair_efficiency.json`` and
``OUT/pair_efficiency.png`` and prints a markdown table.

    python benchmarks/pair_efficiency.py --teacher runs/teacher --preset checkerboard-demo \\
        --sizes 2000,5000,10000,20000 --out runs/pair-efficiency
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from stages import run, train

from koopman_distill.analysis import plots
from koopman_distill.config import preset
from koopman_distill.domains import domain_for
from koopman_distill.io import read_json

METHODS = ("kdm", "kd")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", required=True, help="teacher run directory")
    ap.add_argument("--preset", required=True, help="the students' preset")
    ap.add_argument("--sizes", required=True, help="pair counts, comma-separated")
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", action="append", default=[], help="extra --set for every student")
    args = ap.parse_args()
    out = Path(args.out)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    rows = []
    for n in sizes:
        pairs = out / f"pairs-{n}"
        if not (pairs / "manifest.json").exists():
            run("pairs", "--teacher", args.teacher, "--out", pairs, "--n", n)
        for method in METHODS:
            student, ev = out / f"{method}-{n}", out / f"{method}-{n}-eval"
            if not (student / "run.json").exists() or not (ev / "eval.json").exists():
                train(student, "--preset", args.preset, "--pairs", pairs,
                      "--set", f"model.method={method}", "--set", "train.progress=false",
                      *(a for s in args.set for a in ("--set", s)))
                run("eval", student, "--no-plots", "--out", ev, "--force")
            result = read_json(ev / "eval.json")
            rows.append({"method": method, "pairs": n, "student": result["student"],
                         "teacher": result.get("teacher")})
    shape = read_json(Path(args.teacher) / "run.json")["shape"]
    headline = domain_for(shape).headline
    metric = ("inside_fraction" if "inside_fraction" in rows[0]["student"] else headline)
    series = {m.upper(): [(r["pairs"], r["student"][metric]) for r in rows if r["method"] == m]
              for m in METHODS}
    plot = plots.quality_vs_nfe(series, metric, out / "pair_efficiency.png",
                                lower_is_better=metric != "inside_fraction",
                                title=f"quality against pairs, {args.preset}",
                                x_label="pairs the student trained on")
    result = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"),
              "preset": args.preset, "train": preset(args.preset).train.__dict__,
              "metric": metric, "rows": rows, "plot": str(plot)}
    (out / "pair_efficiency.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"| pairs | {' | '.join(m.upper() for m in METHODS)} |")
    print("|---|" + "---|" * len(METHODS))
    for n in sizes:
        cells = [f"{r['student'][metric]:.4g}" for m in METHODS for r in rows
                 if r["method"] == m and r["pairs"] == n]
        print(f"| {n:,} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
