"""The ``kdm`` command line: thin argument parsing over :mod:`koopman_distill.api`.

Every user-facing failure prints one ``kdm: error: ...`` line and exits with code 2. Under
``torchrun`` every process runs the command and only rank 0 prints to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from . import __version__
from .config import BENCH_SUITES, Config, apply_overrides, preset
from .errors import KDMError
from .io import atomic_write, write_json

EPILOG = ("Any config value can be set with --set section.field=value (repeatable), e.g. "
          "--set train.steps=5000 --set model.koopman=eigen; `kdm config` prints them all.")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise KDMError(f"{message} (see `{self.prog} --help`)")


def _config(args: argparse.Namespace, base: Config | None = None) -> Config:
    cfg = base if base is not None else preset(args.preset)
    return apply_overrides(cfg, args.set or [])


def _add_config_args(p: argparse.ArgumentParser, with_preset: bool = True) -> None:
    if with_preset:
        p.add_argument("--preset", default="checkerboard",
                       help="named configuration (default: checkerboard); see `kdm config`")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one config value, e.g. train.steps=2000")


def _save_array(path: str, arr: np.ndarray) -> None:
    if not path.endswith(".npy"):
        raise KDMError(f"output file {path} must end in .npy")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, arr)

    atomic_write(path, write)


# -- commands ---------------------------------------------------------------------------------
def cmd_config(args: argparse.Namespace) -> None:
    print(_config(args).to_json())


def cmd_teacher_train(args: argparse.Namespace) -> None:
    from . import api

    if args.resume:
        print(f"teacher run: {api.resume_run(args.resume)}")
        return
    if not args.out:
        raise KDMError("give --out RUN_DIR for a new teacher run (or --resume RUN_DIR)")
    cfg = _config(args)
    if args.data:
        cfg.data.source = args.data
    print(f"teacher run: {api.train_teacher(cfg, args.out)}")


def _pair_count(text: str) -> int:
    """``--n``: a whole number, also written as a float (``5e4``, ``1e6``)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value.is_integer()):
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r} (give a whole number "
                                         "of pairs, e.g. 50000 or 5e4)")
    return int(value)


def cmd_pairs(args: argparse.Namespace) -> None:
    from . import api

    cfg, meta = api.read_run(args.teacher)
    cfg = _config(args, cfg)
    # what make_pairs reads of the config; other settings would be silently ignored
    used = ["pairs.n", "pairs.shard_size", "pairs.batch_size", "pairs.seed", "pairs.clean_dtype",
            "pairs.store_noise", "pairs.noise_scale", "teacher.steps",
            "train.device" if "shape" in meta else "teacher.sampler"]
    keys = [item.partition("=")[0].strip() for item in args.set or []]
    for key in keys:
        if key not in used:
            kind = "an image" if "shape" in meta else "a 2-D"
            raise KDMError(f"--set {key} has no effect on `kdm pairs` with {kind} teacher, "
                           f"which reads only {', '.join(used)}; drop it (the teacher's other "
                           "settings are its run's, the student's belong to `kdm train`)")
    for flag, key, value in (("--n", "pairs.n", args.n), ("--seed", "pairs.seed", args.seed)):
        if value is not None and key in keys:
            raise KDMError(f"give {flag} or --set {key}, not both")
        if value is not None:
            setattr(cfg.pairs, key.split(".")[1], value)
    store = api.make_pairs(args.teacher, args.out, cfg)
    m = store.manifest
    print(f"pair store: {args.out} ({m['count']} pairs, {len(m['shards'])} shards, "
          f"sampler {m['sampler']['method']} x{m['sampler']['steps']}, NFE {m['nfe']})")


def cmd_pairs_import(args: argparse.Namespace) -> None:
    from .pairs import import_npz_folder, import_trajectory

    src = Path(args.src)
    if args.shard_size < 1:
        raise KDMError(f"--shard-size must be a positive integer, got {args.shard_size}")
    if args.sigma_max is not None and not (math.isfinite(args.sigma_max) and args.sigma_max > 0):
        raise KDMError(f"--sigma-max must be a positive number, got {args.sigma_max}")
    kw = {"order": args.order, "sigma_max": args.sigma_max, "shard_size": args.shard_size}
    if src.is_dir():
        store = import_npz_folder(str(src), args.out, **kw)
    elif src.is_file():
        store = import_trajectory(str(src), args.out, **kw)
    elif src.exists():
        raise KDMError(f"import source {src} is neither a file nor a directory; give a (T, N, D) "
                       ".npy file or a folder of .npz files")
    else:
        raise KDMError(f"import source not found: {src}")
    m = store.manifest
    print(f"pair store: {args.out} ({m['count']} pairs of shape {tuple(m['shape'])}, "
          f"sigma_max {m['sigma_max']:g})")


def cmd_pairs_verify(args: argparse.Namespace) -> None:
    from .pairs import PairStore

    store = PairStore(args.store)
    store.check_intact(deep=True)
    print(f"{args.store}: ok ({len(store)} pairs in {store.num_shards} shards: checksums, "
          "headers and values checked)")


def cmd_train(args: argparse.Namespace) -> None:
    from . import api

    if args.resume:
        print(f"run: {api.resume_run(args.resume)}")
        return
    if not (args.pairs and args.out):
        raise KDMError("give --pairs STORE and --out RUN_DIR (or --resume RUN_DIR)")
    print(f"run: {api.train_kdm(_config(args), args.pairs, args.out)}")


def cmd_sample(args: argparse.Namespace) -> None:
    from .api import load_run
    from .data.arrays import load_array

    if not args.out.endswith(".npy"):
        raise KDMError(f"--out {args.out} must end in .npy")
    if not 0 <= args.seed < 2**63 - 1:
        raise KDMError(f"--seed must lie in [0, 2**63 - 1), got {args.seed}")
    gen = load_run(args.run, ema=not args.raw, device=args.device)
    if args.grid and len(gen.shape) != 3:
        raise KDMError("--grid is for image runs")
    labels = None
    if args.labels:
        labels = load_array(args.labels, what="labels")
    if args.noise:
        noise = load_array(args.noise, shape=gen.shape, what="noise")
        n = len(noise)
    else:
        if args.n is None or args.n < 1:
            raise KDMError("give --n N (>= 1) or --noise NOISE.npy")
        noise, n = gen.noise(args.n, args.seed), args.n
    if args.cls is not None:
        labels = np.full(n, args.cls, dtype=np.int64)
    if labels is None and not args.noise:
        labels = gen.labels(n, args.seed)
    samples = gen.map(noise, labels)
    _save_array(args.out, samples)
    print(f"wrote {len(samples)} samples to {args.out}")
    if args.grid:
        from .analysis.plots import image_grids

        print(f"grid: {image_grids({gen.label: samples[:100]}, args.grid)}")


def cmd_eval(args: argparse.Namespace) -> None:
    if args.samples:
        _eval_samples(args)
        return
    if not args.run:
        raise KDMError("give a RUN directory, or --samples FILE.npy")
    from .api import read_run
    from .evaluate import evaluate_run

    cfg, _ = read_run(args.run)
    cfg = _config(args, cfg)
    result = evaluate_run(args.run, cfg.eval, args.out, make_plots=not args.no_plots)
    _print_eval(result)


def _eval_samples(args: argparse.Namespace) -> None:
    import torch

    from .data.arrays import load_points
    from .data.checkerboard import sample_checkerboard
    from .metrics.twod import evaluate_2d

    cfg = _config(args)
    x = load_points(args.samples, what="samples")
    if args.reference:
        ref, name = load_points(args.reference, what="reference"), args.reference
    else:
        g = torch.Generator().manual_seed(cfg.eval.reference_seed)
        ref, name = sample_checkerboard(len(x), g).numpy(), "checkerboard samples"
    res = {"samples": args.samples, "settings": {**cfg.eval.__dict__, "reference": name},
           **evaluate_2d(x, reference=ref, projections=cfg.eval.projections,
                         seed=cfg.eval.seed, energy_n=cfg.eval.energy_n)}
    if args.out:
        write_json(Path(args.out) / "eval.json", res)
    print(json.dumps(res, indent=2))


def _print_eval(result: dict) -> None:
    from .demo import results_table

    print(results_table(result))
    student = result.get("kdm", {})
    held_out, own = "paired_sq_error_per_sample", "train_pairs_paired_sq_error_per_sample"
    if held_out in student and own in student:
        line = (f"paired sq. err per sample: held-out {student[held_out]:.2e} ± "
                f"{student[held_out + '_se']:.1e}, on its training pairs {student[own]:.2e}")
        if student.get("train_pairs_noise_scale", 1.0) != 1.0:
            line += f" (their noise drawn {student['train_pairs_noise_scale']:g}x wider)"
        if "far_miss_fraction" in student:
            line += (f"; {student['far_miss_fraction']:.2%} of held-out samples land more than "
                     f"half a square from the teacher's, with "
                     f"{student['paired_sq_error_share_from_far_misses']:.0%} of the error")
        print(line)
    for k, v in result.get("timings", {}).items():
        print(f"{k}: {v:.0f} s")
    for k, v in result.get("plots", {}).items():
        print(f"{k}: {v}")


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    cfg = _config(args)
    result = run_demo(cfg, args.out)
    print(f"\nResults ({cfg.preset}, N = {result['settings']['n']}):")
    _print_eval(result)
    print(f"eval: {Path(args.out) / 'kdm' / 'eval' / 'eval.json'}")


def cmd_bench(args: argparse.Namespace) -> None:
    from .bench import bench_markdown, run_bench

    result = run_bench(args.suite, args.out, quick=args.quick, overrides=args.set or [],
                       teacher=args.teacher, pairs=args.pairs, preset_name=args.preset)
    print("\n" + bench_markdown(result))
    print(f"results: {Path(args.out) / 'bench.json'}, {Path(args.out) / 'bench.md'}, "
          f"{result['plot']}")


# -- parser -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="kdm", description="Koopman distillation: one-step generators from "
                "diffusion and flow-matching teachers.", epilog=EPILOG)
    p.add_argument("--version", action="version", version=f"kdm {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser,
                           metavar="{config,teacher,pairs,train,sample,eval,demo,bench}")

    s = sub.add_parser("config", help="print the resolved config of a preset as JSON")
    _add_config_args(s)
    s.set_defaults(fn=cmd_config)

    s = sub.add_parser("teacher", help="teacher commands: `kdm teacher train`")
    tsub = s.add_subparsers(dest="teacher_command", required=True, parser_class=_Parser)
    t = tsub.add_parser("train", help="train a teacher (flow-matching MLP for points, EDM UNet "
                        "for images)", epilog=EPILOG)
    t.add_argument("--out", help="new run directory")
    t.add_argument("--data", help="training data (data.source): a .npy point cloud (N, 2), or "
                   "for image presets digits, fashion-mnist[:DIR], mnist:DIR or a .npy/.npz")
    t.add_argument("--resume", metavar="RUN", help="continue an interrupted run")
    _add_config_args(t)
    t.set_defaults(fn=cmd_teacher_train)

    s = sub.add_parser("pairs", help="run a teacher on seeded noise into a pair store; "
                       "`kdm pairs import` / `kdm pairs verify`", epilog=EPILOG)
    s.add_argument("--teacher", required=True, help="teacher run directory")
    s.add_argument("--out", required=True, help="pair store directory (resumed if it exists)")
    s.add_argument("--n", type=_pair_count, help="number of pairs (pairs.n), e.g. 50000 or "
                   "5e4")
    s.add_argument("--seed", type=int, help="base noise seed (pairs.seed)")
    _add_config_args(s, with_preset=False)
    s.set_defaults(fn=cmd_pairs)

    s = sub.add_parser("pairs-import")
    s.prog = "kdm pairs import"
    s.add_argument("src", help="a (T, N, D) trajectory .npy, or a folder of per-example .npz")
    s.add_argument("--out", required=True, help="new pair store directory")
    s.add_argument("--order", choices=["auto", "noise-first", "clean-first"], default="auto",
                   help="which trajectory end is noise (auto: detect from statistics)")
    s.add_argument("--sigma-max", type=float, help="noise scale (default: measured)")
    s.add_argument("--shard-size", type=int, default=10_000)
    s.set_defaults(fn=cmd_pairs_import)

    s = sub.add_parser("pairs-verify")
    s.prog = "kdm pairs verify"
    s.add_argument("store")
    s.set_defaults(fn=cmd_pairs_verify)

    s = sub.add_parser("train", help="distill a pair store into a one-step KDM", epilog=EPILOG)
    s.add_argument("--pairs", help="pair store directory")
    s.add_argument("--out", help="new run directory")
    s.add_argument("--resume", metavar="RUN", help="continue an interrupted run")
    _add_config_args(s)
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("sample", help="one-step samples from a KDM run")
    s.add_argument("run")
    s.add_argument("--n", type=int, help="number of samples")
    s.add_argument("--out", required=True, help="output .npy (N, D) or (N, C, R, R)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--noise", help="map this noise .npy (N, D) or (N, C, R, R) instead of "
                   "drawing it")
    s.add_argument("--labels", help="conditional runs: class ids .npy (N,) (default: uniform "
                   "from --seed)")
    s.add_argument("--class", dest="cls", type=int, help="conditional runs: one class for all")
    s.add_argument("--grid", help="image runs: also write a PNG grid of the first 100")
    s.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    s.add_argument("--raw", action="store_true", help="use the raw weights, not the EMA")
    s.set_defaults(fn=cmd_sample)

    s = sub.add_parser("eval", help="metrics and plots of a KDM run (or of a samples file)",
                       epilog=EPILOG)
    s.add_argument("run", nargs="?")
    s.add_argument("--samples", help="evaluate this .npy (N, 2) instead of a run")
    s.add_argument("--reference", help="with --samples: reference .npy (default: checkerboard)")
    s.add_argument("--out", help="output directory (default RUN/eval)")
    s.add_argument("--no-plots", action="store_true")
    _add_config_args(s)
    s.set_defaults(fn=cmd_eval)

    s = sub.add_parser("demo", help="the whole pipeline (teacher, pairs, KDM, eval) for a "
                       "preset; default: the checkerboard in a few minutes",
                       epilog=EPILOG)
    s.add_argument("--out", default="kdm-demo", help="output directory (default: kdm-demo)")
    _add_config_args(s)
    s.set_defaults(fn=cmd_demo, preset="checkerboard-demo")
    for a in s._actions:
        if a.dest == "preset":
            a.default = "checkerboard-demo"

    s = sub.add_parser("bench", help="KDM vs the kd and rectified baselines and the teacher "
                       "at several NFE, trained on the same pairs and measured in one run",
                       epilog=EPILOG)
    s.add_argument("suite", choices=list(BENCH_SUITES), help="checkerboard (2-D) or fashion16 "
                   "(class-conditional Fashion-MNIST 16x16)")
    s.add_argument("--out", required=True, help="output directory (stages in it are reused)")
    s.add_argument("--quick", action="store_true", help="toy budgets (seconds), for a smoke "
                   "test; the image suite then uses the 8x8 digits")
    s.add_argument("--teacher", help="reuse this teacher run instead of training one")
    s.add_argument("--pairs", help="reuse this pair store (its teacher must be on this machine)")
    s.add_argument("--preset", help="budget preset on the suite's data (default: checkerboard-"
                   "demo / fashion16-cond; e.g. checkerboard for the full 2-D budget)")
    _add_config_args(s, with_preset=False)
    s.set_defaults(fn=cmd_bench)
    return p


def _run(args: argparse.Namespace) -> None:
    """Run the command; under torchrun (WORLD_SIZE > 1) inside the process group, with the
    stdout of ranks other than 0 dropped."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        args.fn(args)
        return
    from .training import distributed

    distributed.init()
    try:
        with (contextlib.nullcontext() if distributed.is_main()
              else contextlib.redirect_stdout(io.StringIO())):
            args.fn(args)
    finally:
        distributed.shutdown()


def _end_progress_bars() -> None:
    """Close the progress bars an error interrupted, so that the error gets a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] == "pairs" and argv[1] in ("import", "verify"):
        argv = [f"pairs-{argv[1]}", *argv[2:]]
    try:
        args = build_parser().parse_args(argv)
        _run(args)
    except KDMError as e:  # one line, even when the message quotes a multi-line input
        _end_progress_bars()
        print(f"kdm: error: {' '.join(str(e).splitlines())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdm: interrupted; rerun the same command (or --resume RUN) to continue",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
