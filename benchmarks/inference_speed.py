"""Samples per second of an exported one-step generator against its teacher at full NFE:
the exported model in PyTorch (fp32, and bf16 where the CPU runs it), in onnxruntime, and the
teacher with the sampler that made its pairs; same batch, same threads, in one run.

Speed depends on the architecture, not on the weights, so each preset's teacher and KDM are
trained only a few steps here (``--steps``); the networks are the preset's. Each sampler maps
the same batch, ``--repeats`` times after a warm-up, and the fastest call counts. Writes
``OUT/inference_speed.json`` and prints a markdown table.

    python benchmarks/inference_speed.py --out runs/speed
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from koopman_distill.cli import main as kdm
from koopman_distill.export import export_run, load
from koopman_distill.export.onnx import ort_map, ort_session
from koopman_distill.pairs import PairStore
from koopman_distill.teachers import store_teacher


def best(call, repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls after one warm-up."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def bf16_runs() -> bool:
    """Whether this CPU computes a bf16 matmul (natively or emulated)."""
    try:
        torch.ones(4, 4, dtype=torch.bfloat16) @ torch.ones(4, 4, dtype=torch.bfloat16)
        return True
    except RuntimeError:
        return False


def bench_preset(preset: str, root: Path, batch: int, steps: int, repeats: int) -> dict:
    teacher_steps = ["--set", f"teacher_train.steps={steps}"]
    kdm_steps = ["--set", f"train.steps={steps}", "--set", "train.eval_every=0"]
    t, p, k = root / f"{preset}-teacher", root / f"{preset}-pairs", root / f"{preset}-kdm"
    if not t.exists():
        assert kdm(["teacher", "train", "--preset", preset, "--out", str(t),
                    *teacher_steps]) == 0
    if not p.exists():
        assert kdm(["pairs", "--teacher", str(t), "--out", str(p), "--set",
                    f"pairs.n={batch}"]) == 0
    if not k.exists():
        assert kdm(["train", "--preset", preset, "--pairs", str(p), "--out", str(k),
                    *kdm_steps]) == 0
    e = root / f"{preset}-export"
    if not e.exists():
        export_run(k, e, onnx=True)
    gen = load(e)
    x, y = gen.noise(batch, 1), gen.labels(batch, 1)
    store = PairStore(p)
    teacher = store_teacher(store, torch.device("cpu"))
    rows = {}
    rows["KDM, PyTorch fp32"] = best(lambda: gen.map(x, y), repeats)
    if bf16_runs():
        g16 = load(e).to(torch.bfloat16)
        rows["KDM, PyTorch bf16"] = best(lambda: g16.map(x, y), repeats)
    session = ort_session(e / "model.onnx", threads=torch.get_num_threads())
    rows["KDM, onnxruntime fp32"] = best(lambda: ort_map(session, x, y, gen.block), repeats)
    sampler = store.manifest["sampler"]
    name = f"teacher ({sampler['method']} x{sampler['steps']}, NFE {teacher.nfe()})"
    with torch.no_grad():
        rows[name] = best(lambda: teacher.sample(x, y), repeats)
    return {"preset": preset, "shape": list(gen.shape), "batch": batch,
            "parameters": sum(q.numel() for q in gen.parameters()),
            "teacher_nfe": teacher.nfe(),
            "samples_per_second": {n: batch / s for n, s in rows.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--presets", default="fashion16-cond,checkerboard-demo")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--steps", type=int, default=20, help="training steps (speed only)")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    root = Path(a.out)
    root.mkdir(parents=True, exist_ok=True)
    results = {"threads": torch.get_num_threads(), "torch": torch.__version__,
               "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
               "date": time.strftime("%Y-%m-%d"),
               "suites": [bench_preset(p, root, a.batch, a.steps, a.repeats)
                          for p in a.presets.split(",")]}
    (root / "inference_speed.json").write_text(json.dumps(results, indent=2))
    for s in results["suites"]:
        print(f"\n{s['preset']} {tuple(s['shape'])}, batch {s['batch']}, "
              f"{results['threads']} threads")
        print("| sampler | samples/s | vs teacher |\n|---|---:|---:|")
        rates = s["samples_per_second"]
        teacher = next(v for k, v in rates.items() if k.startswith("teacher"))
        for n, v in rates.items():
            print(f"| {n} | {v:,.0f} | {v / teacher:.1f}x |")


if __name__ == "__main__":
    main()
