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
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import __version__, resources
from .config import (
    BENCH_SUITES,
    PRESETS,
    Config,
    apply_overrides,
    check_overrides_act,
    override_keys,
    preset,
)
from .data.arrays import load_array
from .domains import domain_for
from .errors import KDMError, Stopped, first_line
from .io import atomic_write, write_json
from .runs import read_run

EPILOG = ("Any config value can be set with --set section.field=value (repeatable), e.g. "
          "--set train.steps=5000 --set model.koopman=eigen; `kdm config` prints them all.")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise KDMError(f"{message} (see `{self.prog} --help`)")


DEFAULT_PRESET = "checkerboard"
# The config sections each training command reads. A teacher run's pairs section is the
# default of `kdm pairs`; a KDM run takes its data section from the pair store.
TEACHER_SECTIONS = ("data", "teacher", "teacher_train", "pairs")
TRAIN_SECTIONS = ("model", "train", "eval")


def _config(args: argparse.Namespace, base: Config | None = None) -> Config:
    cfg = base if base is not None else preset(args.preset or DEFAULT_PRESET)
    return apply_overrides(cfg, args.set or [])


def _refuse(args: argparse.Namespace, because: str, *options: str) -> None:
    """One-line error when any of ``options`` (``--name``) was given, since ``because``."""
    given = [o for o in options if getattr(args, o[2:].replace("-", "_"), None)]
    if given:
        raise KDMError(f"{' and '.join(given)} cannot be used {because}")


def _add_config_args(p: argparse.ArgumentParser, with_preset: bool = True) -> None:
    if with_preset:
        p.add_argument("--preset", help=f"named configuration (default: {DEFAULT_PRESET}); "
                       "see `kdm config`")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one config value, e.g. train.steps=2000")


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (through links, ``..`` or another spelling)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return a.resolve() == b.resolve()


def _check_writable(directory: Path, flag: str, path: object) -> None:
    """Refuse an output whose directory (or nearest existing ancestor, for a directory still
    to be made) is not a directory or cannot be written: found before any work, by a probe."""
    where = resources.nearest_existing(directory)
    if not where.is_dir():
        raise KDMError(f"{flag} {path}: {where} is a file, not a directory; pick another {flag}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".kdm-probe.", suffix=".tmp", dir=where)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise KDMError(f"{flag} {path}: cannot write in {where} ({e.strerror or e}); pick "
                       f"another {flag}") from None


def _output_file(path: str, suffix: str, flag: str, force: bool,
                 inputs: dict[str, str | None]) -> Path:
    """Check an output file before any work: its suffix, that it is none of ``inputs`` (flag
    -> path), that it replaces an existing file only with ``--force``, that it can be
    written."""
    if not path.endswith(suffix):
        raise KDMError(f"{flag} {path} must end in {suffix}")
    out = Path(path)
    for name, other in inputs.items():
        if other and _same_file(out, Path(other)):
            raise KDMError(f"{flag} {path} is the {name} file {other}; write to another file")
    if out.is_dir():
        raise KDMError(f"{flag} {path} is a directory; give a file name ending in {suffix}")
    return _replaceable(out, flag, force)


def _replaceable(out: Path, flag: str, force: bool) -> Path:
    """``out`` where it replaces an existing output only with ``--force`` and its parent can
    be written."""
    if out.exists() and not force:
        raise KDMError(f"{flag} {out} already exists; add --force to replace it, or pick "
                       f"another {flag}")
    _check_writable(out.parent, flag, str(out))
    return out


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` header that ``np.save`` writes for a float32 array of ``shape``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False,
                                               "shape": shape})
    return buf.getvalue()


def _finite(chunks: Iterator[np.ndarray], n: int) -> Iterator[np.ndarray]:
    """The chunks (rows, *shape) of ``n`` samples, passed through; after the last, a KDMError
    when any row held NaN/inf (counted over all chunks, up to a chunk of nothing else)."""
    bad, first, done = 0, -1, 0
    for c in chunks:
        rows = ~np.isfinite(c.reshape(len(c), -1)).all(axis=1)
        if rows.any():
            if not bad:
                first = done + int(np.flatnonzero(rows)[0])
            bad += int(rows.sum())
        yield c
        done += len(c)
        if rows.all():  # a diverged model: the rest would be no better
            break
    if bad:
        of = f"{n}" if done == n else f"the first {done} (sampling stopped there)"
        raise KDMError(f"{bad} of {of} samples are NaN/inf (first at row {first}), so "
                       "nothing was written; the run's weights are probably not finite "
                       "(a diverged run): sample an earlier checkpoint or retrain")


Sink = Callable[[np.ndarray, int], None]  # (chunk, index of its first row)


def _write_samples(chunks: Iterator[np.ndarray], shape: tuple[int, ...], n: int, *,
                   out: Path | None, png_dir: Path | None = None,
                   labels: np.ndarray | None = None, replace: bool = False,
                   progress: bool = False,
                   then: Callable[[np.ndarray], None] | None = None) -> None:
    """Stream float32 chunks (rows, *shape), n rows in all, into the ``.npy`` file ``out``
    (the bytes ``np.save`` writes for their concatenation) and/or a folder ``png_dir`` of one
    PNG per sample (with ``labels.npy`` when ``labels`` (n,) are given; an existing folder is
    replaced only when ``replace``), with a progress bar on a terminal if ``progress``. Rows
    with NaN/inf are an error; ``then(first 100 rows)`` runs before anything is put in place.
    On any failure or interrupt nothing is left: no file, no folder, no temp file, no new
    directory (with both outputs the folder is renamed into place just before the ``.npy``,
    so only a failure of that last rename leaves the folder alone)."""
    from .io import atomic_directory

    def stream(sinks: list[Sink]) -> None:
        head, done = [], 0
        with tqdm(total=n, unit="sample", desc="sample",
                  disable=None if progress else True, leave=False) as bar:
            for c in _finite(chunks, n):
                for sink in sinks:
                    sink(c, done)
                if done < 100:
                    head.append(c[:100 - done])
                done += len(c)
                bar.update(len(c))
        if then is not None:
            then(np.concatenate(head))

    def to_pngs(sinks: list[Sink]) -> None:
        if png_dir is None:
            stream(sinks)
            return
        from .data.folders import write_labels, write_pngs

        def fill(tmp: Path) -> None:
            stream([*sinks, lambda c, start: write_pngs(c, tmp, start, n)])
            if labels is not None:
                write_labels(labels, tmp)

        atomic_directory(png_dir, fill, replace=replace)

    if out is None:
        to_pngs([])
        return

    def write(tmp: str) -> None:  # the folder goes in place first, the .npy last
        with open(tmp, "wb") as f:
            f.write(_npy_header((n, *shape)))
            to_pngs([lambda c, _: f.write(np.ascontiguousarray(c, "<f4").tobytes())])

    made = [d for d in [out.parent, *out.parent.parents] if not d.exists()]
    try:
        atomic_write(out, write)
    except BaseException:
        for d in made:  # deepest first; only what this call made, and only if empty
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def _count(text: str) -> int:
    """A count typed as 1000, 1_000 or 1e6 (a float only when it is a whole number)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not (math.isfinite(x) and x.is_integer()):
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r} (give a whole number, "
                                         "e.g. 1000, 1_000 or 1e6)")
    return int(x)


# -- commands ---------------------------------------------------------------------------------
def cmd_config(args: argparse.Namespace) -> None:
    print(_config(args).to_json())


def _resume(args: argparse.Namespace, kind: str, *fixed: str) -> None:
    """``--resume RUN``: only ``--set`` of the trainer's resumable settings may come along."""
    from . import api

    _refuse(args, "with --resume (the run keeps its own; only --set train.steps=N and other "
            "bookkeeping settings may change)", *fixed)
    run = api.resume_run(args.resume, kind, args.set or [])
    print(f"{'teacher run' if kind == 'teacher' else 'run'}: {api.run_summary(run)}")


def cmd_teacher_train(args: argparse.Namespace) -> None:
    from . import api

    if args.resume:
        _resume(args, "teacher", "--out", "--data", "--preset")
        return
    if not args.out:
        raise KDMError("give --out RUN_DIR for a new teacher run (or --resume RUN_DIR)")
    cfg = _config(args)
    check_overrides_act(cfg, args.set or [], TEACHER_SECTIONS, "kdm teacher train")
    if args.data:
        cfg.data.source = args.data
    print(f"teacher run: {api.run_summary(api.train_teacher(cfg, args.out))}")


def cmd_pairs_make(args: argparse.Namespace) -> None:
    if not (args.teacher and args.out):  # `kdm pairs` alone, or without one of them
        raise KDMError("give --teacher RUN and --out STORE to make a pair store (`kdm pairs "
                       "make`), or use `kdm pairs import SRC --out STORE` or `kdm pairs "
                       "verify STORE`")
    kind, sep, _ = args.teacher.partition(":")
    adapter = bool(sep) and not Path(args.teacher).exists()
    if adapter:  # kind:TARGET, a teacher of the user's
        cfg = _config(args, Config())
        read = ("pairs", "train.device", "train.threads")
    else:
        cfg, meta = read_run(args.teacher)
        if meta["kind"] != "teacher":
            raise KDMError(f"{args.teacher} is a {meta['kind']!r} run, not a teacher")
        cfg = _config(args, cfg)
        read = ("pairs", "teacher.steps", "teacher.sampler", "train.device", "train.threads")
    # what make_pairs reads of the config; other settings would be silently ignored
    check_overrides_act(cfg, args.set or [], read, "kdm pairs")
    keys = override_keys(args.set or [])
    for flag, key, value in (("--n", "pairs.n", args.n), ("--seed", "pairs.seed", args.seed)):
        if value is not None and key in keys:
            raise KDMError(f"give {flag} or --set {key}, not both")
        if value is not None:
            setattr(cfg.pairs, key.split(".")[1], value)
    teacher = args.teacher
    if adapter:
        from .teachers import teacher_from_arg, teacher_prefixes

        teacher = teacher_from_arg(args.teacher, cfg.pairs)
        if teacher is None:
            raise KDMError(f"--teacher {args.teacher}: unknown teacher kind {kind!r}; give a "
                           "teacher run directory or KIND:TARGET with KIND one of "
                           f"{', '.join(p.rstrip(':') for p in teacher_prefixes())}")
        meta = {"shape": list(teacher.shape), "num_classes": teacher.num_classes}
    if not Path(args.out).exists():  # a new store must fit (a run: before torch is imported)
        _check_store_fits(args.out, cfg, meta)
    from . import api

    store = api.make_pairs(teacher, args.out, cfg)
    m = store.manifest
    print(f"pair store: {args.out} ({m['count']} pairs, {len(m['shards'])} shards, "
          f"sampler {m['sampler']['method']} x{m['sampler']['steps']}, NFE {m['nfe']})")


def _check_store_fits(out: str, cfg: Config, meta: dict) -> None:
    """Refuse a new pair store of ``cfg.pairs`` for the teacher run ``meta`` that does not fit
    on the disk of ``out``."""
    from .pairs.manifest import store_bytes

    shape = meta["shape"]
    dtypes = {"noise" if cfg.pairs.store_noise else "noise_seed":
              "float32" if cfg.pairs.store_noise else "int64", "clean": cfg.pairs.clean_dtype}
    if meta.get("num_classes"):
        dtypes["label"] = "int64"
    need = store_bytes(cfg.pairs.n, cfg.pairs.shard_size, shape, dtypes)
    resources.check_disk(out, need, f"{cfg.pairs.n} pairs", "make fewer pairs (--n) or put "
                         "--out on a larger disk (nothing was written)")


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


def cmd_pairs_filter(args: argparse.Namespace) -> None:
    from .io import read_json
    from .pairs.filter import filter_pairs

    def classes(text: str | None) -> list[str] | None:
        return None if text is None else [c for c in text.split(",") if c.strip()]

    _check_writable(Path(args.out).parent, "--out", args.out)
    cfg = None
    if args.set:  # eval.* of the store's recorded config: the image feature extractor
        manifest = Path(args.store, "manifest.json")
        record = read_json(manifest, "pair store manifest") if manifest.is_file() else None
        record = record.get("config") if isinstance(record, dict) else None
        cfg = Config.from_dict(record) if isinstance(record, dict) else Config()
        check_overrides_act(cfg, args.set, ("eval",), "kdm pairs filter")
        cfg = apply_overrides(cfg, args.set)
    store = filter_pairs(
        args.store, args.out, keep_classes=classes(args.keep_class),
        drop_classes=classes(args.drop_class), drop_outliers=args.drop_outliers,
        max_outlier=args.max_outlier, neighbours=args.neighbours, run=args.run,
        max_error=args.max_error, drop_worst=args.drop_worst, exclude_like=args.exclude_like,
        threshold=args.threshold, cfg=cfg, device=args.device)
    src = store.manifest["source"]
    dropped = ", ".join(f"{r} {c}" for r, c in src["dropped"].items()) or "none"
    print(f"pair store: {args.out} (kept {src['kept']} of {src['parent']['count']} pairs; "
          f"dropped: {dropped}; why each went: {Path(args.out) / src['dropped_file']})")
    for name, q in src["scores"].items():
        print(f"{name} score: min {q['min']:.4g}, median {q['median']:.4g}, 95% "
              f"{q['p95']:.4g}, max {q['max']:.4g}")


def cmd_train(args: argparse.Namespace) -> None:
    from . import api

    if args.resume:
        _resume(args, "kdm", "--out", "--pairs", "--preset")
        return
    if not (args.pairs and args.out):
        raise KDMError("give --pairs STORE and --out RUN_DIR (or --resume RUN_DIR)")
    cfg = _config(args)
    # data.*: what a teacher of the user's learned, for a store that does not record it
    check_overrides_act(cfg, args.set or [], (*TRAIN_SECTIONS, "data"), "kdm train")
    teacher_data = any(k.startswith("data.") for k in override_keys(args.set or []))
    print(f"run: {api.run_summary(api.train_kdm(cfg, args.pairs, args.out, teacher_data))}")


def _sample_chunk(out: Path, n: int, shape: tuple[int, ...], classes: int, block: int) -> int:
    """Rows per chunk for ``n`` samples of ``shape`` streamed to ``out``, after checking that
    the file fits on disk and a chunk (with the labels) in memory: a multiple of ``block``
    near 64 MB of samples, or less when memory is short."""
    row = 4 * math.prod(shape)
    what = f"--n {n} (samples of shape {shape})"
    resources.check_disk(out, len(_npy_header((n, *shape))) + n * row, what,
                         "pick a smaller --n or an --out on a larger disk")
    labels = 8 * n if classes else 0
    room = min(64 << 20, max(resources.available_memory() - labels, 0) // 8)
    chunk = max(block, room // row // block * block)
    resources.check_memory(4 * chunk * row + labels, what, "pick a smaller --n")
    return chunk


def _output_folder(path: str, flag: str, force: bool) -> Path:
    """Check a new output folder before any work: not a file, an existing folder replaced
    only with ``--force``, a parent that can be written."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise KDMError(f"{flag} {path} is a file; give a new folder")
    return _replaceable(out, flag, force)


def cmd_sample(args: argparse.Namespace) -> None:
    inputs = {"--noise": args.noise, "--labels": args.labels}
    if not (args.out or args.png_dir):
        raise KDMError("give --out FILE.npy, --png-dir DIR, or both")
    out = _output_file(args.out, ".npy", "--out", args.force, inputs) if args.out else None
    png_dir = _output_folder(args.png_dir, "--png-dir", args.force) if args.png_dir else None
    if args.grid:
        _output_file(args.grid, ".png", "--grid", args.force, {**inputs, "--out": args.out})
    if args.seed is not None and not 0 <= args.seed < 2**63 - 1:
        raise KDMError(f"--seed must lie in [0, 2**63 - 1), got {args.seed}")
    if args.noise and args.n is not None:
        raise KDMError("give --n or --noise, not both: the noise file sets the count; drop --n")
    if args.noise and args.seed is not None:
        raise KDMError("--seed draws the noise, so with --noise it would be ignored; drop "
                       "--seed (conditional runs take --labels or --class with --noise)")
    if args.labels and args.cls is not None:
        raise KDMError("give --labels (a class per sample) or --class (one for all), not both")
    if not args.noise and (args.n is None or args.n < 1):
        raise KDMError("give --n N (>= 1) or --noise NOISE.npy")
    _, meta = read_run(args.run)  # the cheap checks, before torch is imported
    if meta["kind"] != "kdm":
        raise KDMError(f"{args.run} is a {meta['kind']!r} run, not a KDM run")
    shape = tuple(meta["shape"])
    if png_dir is not None and (args.latents or domain_for(shape).name != "images"):
        raise KDMError("--png-dir writes images; this run's samples are "
                       f"{'latents' if args.latents else 'vectors'}: use --out FILE.npy")
    if args.n is not None:
        _sample_chunk(out or png_dir, args.n, shape, meta.get("num_classes", 0),
                      domain_for(shape).block)
    from .api import load_run

    gen = load_run(args.run, ema=not args.raw, device=args.device, latents=args.latents)
    if png_dir is not None and gen.output_shape[0] not in (1, 3):
        raise KDMError(f"--png-dir writes grey or RGB PNGs; this run's images have "
                       f"{gen.output_shape[0]} channels: use --out FILE.npy")
    noise = load_array(args.noise, shape=gen.shape, what="noise") if args.noise else None
    n = len(noise) if noise is not None else args.n
    labels = load_array(args.labels, what="labels") if args.labels else None
    if (labels is not None or args.cls is not None) and not gen.num_classes:
        raise KDMError("this model is unconditional; do not pass labels (--labels, --class)")
    if args.cls is not None:
        labels = np.full(n, args.cls, dtype=np.int64)
    if labels is None and noise is None:
        labels = gen.labels(n, args.seed or 0)  # what sample_chunks draws
    chunk = _sample_chunk(out or png_dir, n, gen.output_shape, gen.num_classes, gen.block)
    chunks = (gen.map_chunks(noise, labels, chunk) if noise is not None
              else gen.sample_chunks(n, args.seed or 0, labels, chunk))
    grid = None

    def write_grid(head: np.ndarray) -> None:
        nonlocal grid
        grid = gen.domain.picture({gen.name: head}, Path(args.grid))

    _write_samples(chunks, gen.output_shape, n, out=out, png_dir=png_dir,
                   labels=None if labels is None else np.asarray(labels, np.int64),
                   replace=args.force, progress=len(gen.spans(n, chunk)) > 1,
                   then=write_grid if args.grid else None)
    for path in (out, png_dir):
        if path is not None:
            print(f"wrote {n} samples to {path}"
                  + (" (one PNG each)" if path == png_dir else ""))
    if grid is not None:
        print(f"grid: {grid}")


EVAL_FILES = ("eval.json", "scatter.png", "noise_structure.png", "far_misses.png",
              "spectrum.png", "loss.png", "samples.png")


def _eval_out(out: Path, force: bool, files: tuple[str, ...]) -> None:
    """Check an eval output directory before any work: a directory (or one to make) that can
    be written, holding no earlier evaluation unless ``--force``."""
    if out.exists() and not out.is_dir():
        raise KDMError(f"--out {out} is a file; kdm eval writes eval.json (and plots) into a "
                       "directory: give a directory")
    old = [f for f in files if (out / f).exists()]
    if old and not force:
        raise KDMError(f"{out} already holds an evaluation ({old[0]}); add --force to replace "
                       "it, or pick another --out")
    _check_writable(out, "--out", out)


def cmd_eval(args: argparse.Namespace) -> None:
    given = [f for f, v in (("RUN", args.run), ("--samples", args.samples),
                            ("--samples-dir", args.samples_dir)) if v]
    if len(given) > 1:
        raise KDMError(f"give one of RUN, --samples FILE or --samples-dir DIR, not "
                       f"{' and '.join(given)} (a run is evaluated on samples it draws itself)")
    if args.samples:
        _eval_samples(args)
        return
    if args.samples_dir:
        _eval_samples_dir(args)
        return
    if not args.run:
        raise KDMError("give a RUN directory, --samples FILE.npy or --samples-dir DIR")
    if args.reference:
        raise KDMError("--reference is for --samples; a run is scored against fresh samples "
                       "of its teacher (or its training pairs): drop --reference")
    if args.preset is not None:
        raise KDMError("--preset does not apply to a run: kdm eval uses the run's own config; "
                       "drop --preset (change eval settings with --set eval.KEY=VALUE)")
    cfg, meta = read_run(args.run)
    cfg = _config(args, cfg)
    check_overrides_act(cfg, args.set or [], ("eval",), "kdm eval RUN")
    out = Path(args.out) if args.out else Path(args.run) / "eval"
    _eval_out(out, args.force, EVAL_FILES)
    resources.check_memory(domain_for(meta["shape"]).memory_needed(cfg.eval),
                           f"eval.n={cfg.eval.n}", "lower it with --set eval.n=N")
    from .evaluation.runs import evaluate_run

    result = evaluate_run(args.run, cfg.eval, out, make_plots=not args.no_plots)
    _print_eval(result)


def _eval_samples(args: argparse.Namespace) -> None:
    import torch

    from .data.arrays import load_points
    from .data.checkerboard import sample_checkerboard
    from .evaluation.extras import dataset_extras
    from .metrics.vectors import evaluate_vectors

    cfg = _config(args)
    check_overrides_act(cfg, args.set or [], ("eval",), "kdm eval --samples")
    if args.out:
        _eval_out(Path(args.out), args.force, ("eval.json",))
    x = load_points(args.samples, dim=None, what="samples")
    if args.reference:
        ref, name = load_points(args.reference, dim=x.shape[1], what="reference"), args.reference
        extras = None
    else:
        if x.shape[1] != 2:
            raise KDMError(f"samples {args.samples} are {x.shape[1]}-dimensional; the default "
                           "reference is the 2-D checkerboard: give --reference FILE.npy")
        g = torch.Generator().manual_seed(cfg.eval.reference_seed)
        ref, name = sample_checkerboard(len(x), g).numpy(), "checkerboard samples"
        extras = dataset_extras("checkerboard")
    res = {"samples": args.samples, "settings": {**cfg.eval.__dict__, "reference": name},
           **evaluate_vectors(x, reference=ref, projections=cfg.eval.projections,
                              seed=cfg.eval.seed, energy_n=cfg.eval.energy_n)}
    if extras is not None:
        res.update(extras.metrics(x, None))
        res.update({f"{k}_reference": v for k, v in extras.reference_metrics(ref).items()})
    if args.out:
        write_json(Path(args.out) / "eval.json", res)
    print(json.dumps(res, indent=2))


def _eval_samples_dir(args: argparse.Namespace) -> None:
    from .data.folders import png_files

    cfg = _config(args)
    check_overrides_act(cfg, args.set or [], ("eval", "data"), "kdm eval --samples-dir")
    png_files(args.samples_dir)  # the cheap checks first
    if args.reference and not Path(args.reference).exists():
        raise KDMError(f"--reference {args.reference} not found; give a folder of PNGs or a "
                       ".npy (N, C, H, W)")
    if args.out:
        _eval_out(Path(args.out), args.force, ("eval.json",))
    from .evaluation.folders import evaluate_folder

    res = evaluate_folder(args.samples_dir, cfg, args.reference)
    if args.out:
        write_json(Path(args.out) / "eval.json", res)
    print(json.dumps(res, indent=2))


def _print_eval(result: dict) -> None:
    from .demo import results_table

    print(results_table(result))
    student = result.get("student", {})
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
                       teacher=args.teacher, pairs=args.pairs, preset_name=args.preset,
                       seeds=args.seeds, adv=args.adv, teacher_data=True)
    print("\n" + bench_markdown(result))
    print(f"results: {Path(args.out) / 'bench.json'}, {Path(args.out) / 'bench.md'}, "
          f"{result['plot']}")


def cmd_analyze(args: argparse.Namespace) -> None:
    cfg, meta = read_run(args.run)  # the cheap checks, before torch is imported
    if meta["kind"] != "kdm" or cfg.model.method != "kdm":
        what = "teacher" if meta["kind"] == "teacher" else f"{cfg.model.method!r} student"
        raise KDMError(f"{args.run} is a {what} run without a Koopman latent; kdm analyze needs "
                       "a KDM run (model.method=kdm)")
    if not any(Path(args.run, "checkpoints").glob("step-*")):
        raise KDMError(f"{args.run} has no checkpoint yet; train it first")
    if args.k < 1 or args.n <= args.k:
        raise KDMError(f"--n {args.n} is too small for --k {args.k} neighbours: every sample "
                       f"needs {args.k} others; raise --n or lower --k (k >= 1)")
    out = Path(args.out) if args.out else Path(args.run) / "analysis"
    if out.exists() and not out.is_dir():
        raise KDMError(f"--out {out} is a file; kdm analyze writes analysis.json (and plots) "
                       "into a directory: give a directory")
    if (out / "analysis.json").exists() and not args.force:
        raise KDMError(f"{out} already holds an analysis (analysis.json); add --force to "
                       "replace it, or pick another --out")
    _check_writable(out, "--out", out)
    from .analysis import analyze_run

    r = analyze_run(args.run, out, n=args.n, k=args.k, seed=args.seed, device=args.device)
    prox = r["proximity"]
    spaces = ("latent", "noise", "random")
    within = " (within the requested label)" if r["settings"]["within_requested_label"] else ""
    if "agreement" in prox:
        print(f"same {prox['label']} as the k={args.k} neighbours{within}: " + ", ".join(
            f"{s} {prox['agreement'][s]:.3f}" for s in spaces))
    print(f"mean output distance to the neighbours{within}: " + ", ".join(
        f"{s} {prox['output_distance'][s]:.4g}" for s in spaces))
    rank = prox["rank_correlation"]
    print(f"rank correlation with output distance: latent {rank['latent_vs_output']:.3f}, "
          f"noise {rank['noise_vs_output']:.3f}")
    for name, path in r["plots"].items():
        print(f"{name}: {path}")
    print(f"analysis: {out / 'analysis.json'}")


def cmd_report(args: argparse.Namespace) -> None:
    from .report import report_kind, write_report

    report_kind(args.path)  # a one-line error, before anything else, for another directory
    out = Path(args.out) if args.out else Path(args.path) / "report.html"
    _output_file(str(out), ".html", "--out", True, {})
    print(f"report: {write_report(args.path, out)}")


def cmd_fid_stats(args: argparse.Namespace) -> None:
    out = _output_file(args.out, ".npz", "--out", args.force, {})
    folder = Path(args.source).is_dir()
    if not folder and args.source not in PRESETS:
        raise KDMError(f"{args.source} is neither a folder of PNGs nor a preset; presets: "
                       f"{', '.join(PRESETS)}")
    cfg = apply_overrides(preset(DEFAULT_PRESET if folder else args.source), args.set or [])
    check_overrides_act(cfg, args.set or [], ("eval",), "kdm fid-stats")
    from .data.folders import read_pngs
    from .domains.images import extractor_for, reference_images
    from .metrics.images import extract_features, feature_stats
    from .metrics.reference_stats import write_stats

    if folder:
        images = read_pngs(args.source)
        what = f"{len(images)} PNGs of {args.source}"
    else:
        images, what = reference_images(cfg, cfg.eval.n)
    extractor = extractor_for(cfg, data_known=not folder)
    mu, sigma = feature_stats(extract_features(extractor, images, cfg.eval.batch_size))
    write_stats(out, mu, sigma)
    print(f"wrote {out}: mu and sigma of {extractor.name} features ({extractor.dim}-d) of {what}")


def cmd_export(args: argparse.Namespace) -> None:
    from .export.bundle import check_export

    check_export(args.run, args.out, args.format == "onnx", args.force)
    _check_writable(Path(args.out).parent, "--out", args.out)
    from .export import describe, export_run

    config = export_run(args.run, args.out, onnx=args.format == "onnx", force=args.force)
    print(f"exported {args.run} to {args.out}: {describe(config)}")
    print(f"load it with torch and safetensors alone: python {Path(args.out, 'kdm_generator.py')}"
          " --n 16 --out samples.safetensors")


# -- the record of commands -------------------------------------------------------------------
def _results_dir(args: argparse.Namespace) -> Path | None:
    """The run, evaluation or bench directory the command wrote (None: it wrote none)."""
    if args.command in ("train", "teacher") and (args.resume or args.out):
        return Path(args.resume or args.out)
    if args.command == "eval" and (args.out or args.run):
        return Path(args.out) if args.out else Path(args.run) / "eval"
    if args.command == "analyze":
        return Path(args.out) if args.out else Path(args.run) / "analysis"
    if args.command in ("bench", "demo"):
        return Path(args.out)
    return None


def _record(args: argparse.Namespace | None, argv: list[str], status: str) -> None:
    """Append the command line to ``commands.jsonl`` in the directory it wrote, for `kdm
    report` (rank 0 only; a failed write is a warning, not a failure of the command)."""
    from .report import COMMANDS

    where = _results_dir(args) if args is not None else None
    if where is None or not where.is_dir() or os.environ.get("RANK", "0") != "0":
        return
    row = {"argv": ["kdm", *argv], "cwd": os.getcwd(), "status": status,
           "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "version": __version__}
    try:
        with open(where / COMMANDS, "a") as f:
            f.write(json.dumps(row) + "\n")
    except OSError as e:
        print(f"kdm: warning: could not record the command in {where / COMMANDS}: "
              f"{e.strerror or e}", file=sys.stderr)


# -- parser -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="kdm", description="Koopman distillation: one-step generators from "
                "diffusion and flow-matching teachers.", epilog=EPILOG)
    p.add_argument("--version", action="version", version=f"kdm {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser,
                           metavar="{config,teacher,pairs,train,sample,eval,demo,bench,analyze,"
                                   "report,export,fid-stats}")

    s = sub.add_parser("config", help="print the resolved config of a preset as JSON")
    _add_config_args(s)
    s.set_defaults(fn=cmd_config)

    s = sub.add_parser("teacher", help="teacher commands: `kdm teacher train`")
    tsub = s.add_subparsers(dest="teacher_command", required=True, parser_class=_Parser,
                            metavar="{train}")
    t = tsub.add_parser("train", help="train a teacher (flow-matching MLP for points, EDM UNet "
                        "for images)", epilog=EPILOG)
    t.add_argument("--out", help="new run directory")
    t.add_argument("--data", help="training data (data.source): a .npy point cloud (N, 2), or "
                   "for image presets digits, fashion-mnist[:DIR], mnist:DIR or a .npy/.npz")
    t.add_argument("--resume", metavar="RUN", help="continue an interrupted run")
    _add_config_args(t)
    t.set_defaults(fn=cmd_teacher_train)

    # `kdm pairs make|import|verify`; `kdm pairs` with make's options and no subcommand is make
    s = sub.add_parser("pairs", help="pair stores: make (run a teacher on seeded noise), "
                       "import (another tool's pairs), verify, filter", epilog=EPILOG,
                       description="`kdm pairs --teacher RUN --out STORE` is short for "
                       "`kdm pairs make --teacher RUN --out STORE`.")
    _add_make_args(s, required=False)
    s.set_defaults(fn=cmd_pairs_make)
    psub = s.add_subparsers(parser_class=_Parser, metavar="{make,import,verify,filter}")
    m = psub.add_parser("make", help="run a teacher on seeded noise into a pair store "
                        "(resumable)", epilog=EPILOG)
    _add_make_args(m, required=True)
    m.set_defaults(fn=cmd_pairs_make)
    m = psub.add_parser("import", help="a pair store from a (T, N, D) trajectory .npy or a "
                        "folder of per-example .npz")
    m.add_argument("src", help="a (T, N, D) trajectory .npy, or a folder of per-example .npz")
    m.add_argument("--out", required=True, help="new pair store directory")
    m.add_argument("--order", choices=["auto", "noise-first", "clean-first"], default="auto",
                   help="which trajectory end is noise (auto: detect from statistics)")
    m.add_argument("--sigma-max", type=float, help="noise scale (default: measured)")
    m.add_argument("--shard-size", type=int, default=10_000)
    m.set_defaults(fn=cmd_pairs_import)
    m = psub.add_parser("verify", help="check every shard of a pair store: sha256, header "
                        "and NaN/inf")
    m.add_argument("store", help="pair store directory")
    m.set_defaults(fn=cmd_pairs_verify)
    m = psub.add_parser("filter", help="a new pair store of the pairs that pass a filter: by "
                        "class, outlier score, a student's error, likeness to examples to keep "
                        "out", description="Distances are measured between clean x_0: in the "
                        "eval extractor's features for images, as they are for vectors. A pair "
                        "goes for the first criterion that drops it; OUT/dropped.json says "
                        "which, for each.")
    m.add_argument("store", help="pair store directory")
    m.add_argument("--out", required=True, help="new pair store directory (must not exist)")
    m.add_argument("--keep-class", metavar="CLASSES", help="keep only these classes: ids or "
                   "the dataset's class names, comma-separated, e.g. 3,5 or Sandal,Bag")
    m.add_argument("--drop-class", metavar="CLASSES", help="drop these classes")
    m.add_argument("--drop-outliers", type=float, metavar="FRACTION", help="drop this "
                   "fraction of pairs with the highest outlier score (the mean distance of "
                   "x_0 to its --neighbours nearest others)")
    m.add_argument("--max-outlier", type=float, metavar="SCORE", help="drop pairs whose "
                   "outlier score is above SCORE")
    m.add_argument("--neighbours", type=int, default=5, help="neighbours of the outlier "
                   "score (default 5)")
    m.add_argument("--run", help="a student run: its error on each pair, for --max-error "
                   "and --drop-worst")
    m.add_argument("--max-error", type=float, metavar="X", help="drop pairs on which --run "
                   "errs more than X (squared error per sample for vectors, MSE per image)")
    m.add_argument("--drop-worst", type=float, metavar="FRACTION", help="drop this fraction "
                   "of pairs on which --run errs most")
    m.add_argument("--exclude-like", metavar="FILE", help="examples to keep out: a .npy "
                   "(N, *shape), or a folder of PNGs for images")
    m.add_argument("--threshold", type=float, metavar="T", help="with --exclude-like: drop "
                   "pairs nearer than T to one of its examples")
    m.add_argument("--device", default="cpu", help="where the student and the extractor run "
                   "(cpu, cuda or auto)")
    m.add_argument("--set", action="append", metavar="KEY=VALUE", help="an eval setting of "
                   "the image feature extractor, e.g. eval.extractor=effnet")
    m.set_defaults(fn=cmd_pairs_filter)

    s = sub.add_parser("train", help="distill a pair store into a one-step KDM", epilog=EPILOG)
    s.add_argument("--pairs", help="pair store directory")
    s.add_argument("--out", help="new run directory")
    s.add_argument("--resume", metavar="RUN", help="continue an interrupted run")
    _add_config_args(s)
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("sample", help="one-step samples from a KDM run")
    s.add_argument("run")
    s.add_argument("--n", type=_count, help="number of samples (e.g. 10000 or 1e6; beyond "
                   "memory they are streamed to --out in chunks, with the same values)")
    s.add_argument("--out", help="output .npy (N, D) or (N, C, R, R)")
    s.add_argument("--png-dir", metavar="DIR", help="image runs: also (or instead) write one "
                   "8-bit PNG per sample into this new folder (000000.png, ...; the class ids "
                   "of a conditional run in labels.npy), the input of external FID tools")
    s.add_argument("--force", action="store_true", help="replace an existing --out, --png-dir "
                   "or --grid")
    s.add_argument("--seed", type=int, help="noise (and label) seed (default 0)")
    s.add_argument("--noise", help="map this noise .npy (N, D) or (N, C, R, R) instead of "
                   "drawing it")
    s.add_argument("--labels", help="conditional runs: class ids .npy (N,) (default: uniform "
                   "from --seed)")
    s.add_argument("--class", dest="cls", type=int, help="conditional runs: one class for all")
    s.add_argument("--grid", help="also write a PNG of the first 100 samples (a grid of "
                   "images; a scatter plot of vectors)")
    s.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    s.add_argument("--raw", action="store_true", help="use the raw weights, not the EMA")
    s.add_argument("--latents", action="store_true", help="a latent pipeline's student: "
                   "write its latents, not the images its VAE decodes them to")
    s.set_defaults(fn=cmd_sample)

    s = sub.add_parser("eval", help="metrics and plots of a KDM run (or of a samples file)",
                       epilog="Eval settings are set with --set eval.KEY=VALUE (repeatable), "
                       "e.g. --set eval.n=5000; `kdm config` prints them all.")
    s.add_argument("run", nargs="?")
    s.add_argument("--samples", help="evaluate this .npy (N, D) instead of a run")
    s.add_argument("--samples-dir", metavar="DIR", help="evaluate a folder of PNGs (one size; "
                   "class ids in DIR/labels.npy, optional) made by anything, against the real "
                   "images of --preset's data (or --reference, or eval.reference_stats)")
    s.add_argument("--reference", help="with --samples: reference .npy (N, D) (default: "
                   "checkerboard samples, for D = 2); with --samples-dir: a folder of PNGs or "
                   "a .npy (N, C, H, W) in [-1, 1]")
    s.add_argument("--out", help="output directory (default RUN/eval)")
    s.add_argument("--force", action="store_true", help="replace an earlier evaluation in --out")
    s.add_argument("--no-plots", action="store_true")
    _add_config_args(s)
    for a in s._actions:
        if a.dest == "preset":
            a.help = ("with --samples or --samples-dir: the preset whose eval settings (and, "
                      "for --samples-dir, data) are used (default checkerboard); a run uses "
                      "its own config")
        if a.dest == "set":
            a.help = ("override an eval setting, e.g. eval.n=5000 (only eval.* apply; data.* "
                      "too with --samples-dir)")
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
    s.add_argument("suite", choices=list(BENCH_SUITES), help="checkerboard (2-D), fashion16 "
                   "(class-conditional Fashion-MNIST 16x16) or digits (8x8 digits; give a "
                   "diffusers teacher with --teacher diffusers:DIR)")
    s.add_argument("--out", required=True, help="output directory (stages in it are reused)")
    s.add_argument("--quick", action="store_true", help="toy budgets (seconds), for a smoke "
                   "test; the image suites then use the 8x8 digits")
    s.add_argument("--teacher", help="reuse this teacher run, or a teacher spec such as "
                   "diffusers:DIR, instead of training one; a teacher of yours is taken to "
                   "have learned the suite's data (its real images are the reference)")
    s.add_argument("--pairs", help="reuse this pair store (its teacher must be on this machine)")
    s.add_argument("--preset", help="budget preset on the suite's data (default: checkerboard-"
                   "demo / fashion16-cond / digits; e.g. checkerboard for the full 2-D "
                   "budget)")
    s.add_argument("--seeds", type=_count, default=1, metavar="N", help="train every student N "
                   "times, with train.seed, train.seed + 1, ...; rows show mean ± std (default 1)")
    from .config import BENCH_ADV  # kept with the bench parser it serves

    s.add_argument("--adv", choices=BENCH_ADV, default="kdm",
                   help="which students get the adversarial term at model.w_adv: kdm (default),"
                   " all, none, or both (each student with and without it)")
    _add_config_args(s, with_preset=False)
    s.set_defaults(fn=cmd_bench)

    s = sub.add_parser("analyze", help="inside a KDM: latent neighbours, interpolation, the "
                       "Koopman spectrum and outliers (analysis.json and plots)")
    s.add_argument("run", help="KDM run directory")
    s.add_argument("--out", help="output directory (default RUN/analysis)")
    s.add_argument("--n", type=_count, default=2000, help="held-out noise inputs (default "
                   "2000, seed eval.seed)")
    s.add_argument("--k", type=int, default=10, help="neighbours per sample (default 10)")
    s.add_argument("--seed", type=int, help="noise seed (default: the run's eval.seed)")
    s.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    s.add_argument("--force", action="store_true", help="replace an earlier analysis in --out")
    s.set_defaults(fn=cmd_analyze)
    s = sub.add_parser("report", help="one self-contained HTML page of a run, an evaluation "
                       "or a bench: commands, results, curves, plots, config")
    s.add_argument("path", help="a run, eval or bench directory")
    s.add_argument("--out", help="the page (default PATH/report.html; replaced if it exists)")
    s.set_defaults(fn=cmd_report)
    s = sub.add_parser("fid-stats", help="reference statistics (mu, sigma) of a PNG folder or "
                       "of a preset's real images, in the .npz layout of EDM and pytorch-fid")
    s.add_argument("source", help="a folder of PNGs, or a preset name (its eval reference "
                   "images)")
    s.add_argument("--out", required=True, help="output .npz")
    s.add_argument("--force", action="store_true", help="replace an existing --out")
    _add_config_args(s, with_preset=False)
    s.set_defaults(fn=cmd_fid_stats)
    s = sub.add_parser("export", help="ship a KDM run's one-step generator: safetensors, "
                       "config and a loader needing only torch (and an ONNX graph)")
    s.add_argument("run", help="KDM run directory")
    s.add_argument("--out", required=True, help="new export directory")
    s.add_argument("--format", choices=("torch", "onnx"), default="torch", help="torch "
                   "(default): model.safetensors, config.json, kdm_generator.py; onnx: also "
                   "model.onnx (needs the [onnx] extra)")
    s.add_argument("--force", action="store_true", help="replace an existing --out")
    s.set_defaults(fn=cmd_export)
    return p


def _add_make_args(p: argparse.ArgumentParser, required: bool) -> None:
    """The options of ``kdm pairs make`` (also those of ``kdm pairs`` itself, where they are
    optional so that a subcommand can stand alone)."""
    p.add_argument("--teacher", required=required, help="teacher run directory, or a teacher "
                   "of yours: denoiser:MODULE:FUNCTION, callable:MODULE:FUNCTION (MODULE may "
                   "be FILE.py), diffusers:DIR")
    p.add_argument("--out", required=required, help="pair store directory (resumed if it "
                   "exists)")
    p.add_argument("--n", type=_count, help="number of pairs (pairs.n), e.g. 50000 or 5e4")
    p.add_argument("--seed", type=int, help="base noise seed (pairs.seed)")
    _add_config_args(p, with_preset=False)


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


def _continue_hint(argv: list[str]) -> str:
    """What continues a command that was interrupted."""
    def value(flag: str) -> str | None:
        return argv[argv.index(flag) + 1] if flag in argv[:-1] else None

    run = value("--resume") or value("--out")
    if argv[:2] == ["teacher", "train"] and run:
        return f"continue with `kdm teacher train --resume {run}`"
    if argv[:1] == ["train"] and run:
        return f"continue with `kdm train --resume {run}`"
    if argv[:1] in (["pairs"], ["demo"], ["bench"]):
        return "rerun the same command to continue where it stopped"
    return "nothing was written; rerun the command"


def _fail(message: str, code: int = 2) -> int:
    _end_progress_bars()
    print(f"kdm: error: {' '.join(message.splitlines())}", file=sys.stderr)
    return code


def _out_of_memory(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or (
        isinstance(e, RuntimeError) and any(s in str(e) for s in (
            "can't allocate memory", "out of memory", "not enough memory")))


def main(argv: list[str] | None = None) -> int:
    """Run ``kdm``; every failure ends in one ``kdm: error:`` line and exit code 2 (a run
    stopped by a signal after its checkpoint: one line and 128 + the signal number)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = None
    try:
        args = build_parser().parse_args(argv)
        _run(args)
        _record(args, argv, "done")
        sys.stdout.flush()  # a closed pipe shows here, inside the guard
    except KDMError as e:  # one line, even when the message quotes a multi-line input
        return _fail(str(e))
    except Stopped as e:
        _record(args, argv, "stopped")
        return _fail(str(e), e.code)
    except KeyboardInterrupt:
        return _fail(f"interrupted; {_continue_hint(argv)}", 130)
    except BrokenPipeError:  # e.g. `kdm config | head -1`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        return _fail(f"cannot access{where}: {e.strerror or e}; check the path, its "
                     "permissions and free space")
    except RecursionError:
        return _fail("input nested too deeply to read; check the files given")
    except (MemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise
        return _fail(f"out of memory ({first_line(e)}); use a smaller --n, batch size or "
                     "model, or a machine with more memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
