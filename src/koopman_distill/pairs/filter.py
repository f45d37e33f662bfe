"""Filtering a pair store: a new store holding the pairs of an existing one that pass.

Criteria (any combination; a pair goes for the first of them that drops it, in this order):

- ``class``: its label is not among ``keep_classes`` or is among ``drop_classes`` (class ids,
  or the class names of the teacher's dataset where it has them);
- ``exclude_like``: its clean x_0 lies nearer than ``threshold`` to one of a set of examples
  to keep out;
- ``outlier``: its outlier score, the mean distance of x_0 to its ``neighbours`` nearest other
  x_0 of the store, is above ``max_outlier`` or among the ``drop_outliers`` fraction highest;
- ``error``: the error of a student run on it (its one-step output for the pair's noise and
  label against x_0, in the units of the run's paired error) is above ``max_error`` or among
  the ``drop_worst`` fraction highest.

Distances are measured in the domain's feature space (:meth:`~..domains.Images.features`:
the evaluation extractor's features for images, the vectors themselves for vectors); the
features of all pairs are held in memory, (N, F) float32, and the outlier score's neighbours
are searched among at most :data:`OUTLIER_POOL` of them (exact below that).

The new store holds the kept pairs in the parent's order, as stored (noise or per-pair seeds,
clean x_0 and labels bit for bit), with the parent's teacher, sampler, NFE and config, so
training, evaluation and bench treat it as they treat the parent. Its manifest's ``source``
records the parent (path, sha256 of its manifest, count, source), the filter settings and
how many pairs each criterion dropped; ``dropped.json`` beside it lists every dropped pair:
its index in the parent, the reason and the value that decided it. The parent is read one
shard at a time; the store is written into a temporary sibling directory and renamed into
place, so that it appears whole or not at all. Importing this module does not import torch
(the CLI checks the settings first).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from ..config import Config
from ..domains import domain_for
from ..errors import KDMError
from ..io import sha256_file, write_json
from ..resources import check_memory
from .manifest import ARRAY_NAMES, IDENTITY_KEYS, MANIFEST_NAME, new_manifest, num_shards

if TYPE_CHECKING:
    from .store import PairStore

REASONS = ("class", "exclude_like", "outlier", "error")  # the order criteria are applied in
DROPPED_NAME = "dropped.json"
OUTLIER_POOL = 20_000  # neighbours are searched among at most this many pairs (seeded subset)
_CHUNK = 1024  # query rows per distance block


def nearest_distances(queries: np.ndarray, pool: np.ndarray, k: int,
                      self_index: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distances of each query (Q, F) to its ``k`` nearest rows of ``pool`` (P, F),
    ascending: (Q, k) float64. ``self_index`` (Q,) gives each query's own row in the pool (-1:
    none), which is not its own neighbour."""
    import torch

    p = torch.from_numpy(np.ascontiguousarray(pool, np.float32))
    out = np.empty((len(queries), k))
    for i in range(0, len(queries), _CHUNK):
        q = torch.from_numpy(np.ascontiguousarray(queries[i:i + _CHUNK], np.float32))
        d = torch.cdist(q, p)
        if self_index is not None:
            rows = torch.from_numpy(self_index[i:i + _CHUNK])
            mine = rows >= 0
            d[torch.arange(len(q))[mine], rows[mine]] = math.inf
        out[i:i + len(q)] = d.topk(k, dim=1, largest=False).values.double().numpy()
    return out


def _fraction(value: float | None, flag: str) -> float | None:
    if value is not None and not (0 < value < 1):
        raise KDMError(f"{flag} must be a fraction in (0, 1), got {value}")
    return value


def _positive(value: float | None, flag: str) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise KDMError(f"{flag} must be a positive number, got {value}")
    return value


def check_settings(*, keep_classes: Sequence[int | str] | None = None,
                   drop_classes: Sequence[int | str] | None = None,
                   drop_outliers: float | None = None, max_outlier: float | None = None,
                   neighbours: int = 5, run: str | os.PathLike | None = None,
                   max_error: float | None = None, drop_worst: float | None = None,
                   exclude_like: str | os.PathLike | None = None,
                   threshold: float | None = None) -> None:
    """Refuse filter settings that cannot work, before anything is read (the CLI's cheap
    checks): one line naming the setting."""
    given = [keep_classes, drop_classes, drop_outliers, max_outlier, max_error, drop_worst,
             exclude_like]
    if all(v is None for v in given):
        raise KDMError("give at least one criterion: --keep-class, --drop-class, "
                       "--drop-outliers, --max-outlier, --max-error, --drop-worst or "
                       "--exclude-like")
    for fraction, limit, names in ((drop_outliers, max_outlier, "--drop-outliers FRACTION or "
                                    "--max-outlier SCORE"),
                                   (drop_worst, max_error, "--drop-worst FRACTION or "
                                    "--max-error X")):
        if fraction is not None and limit is not None:
            raise KDMError(f"give {names}, not both")
    _fraction(drop_outliers, "--drop-outliers")
    _fraction(drop_worst, "--drop-worst")
    _positive(max_outlier, "--max-outlier")
    _positive(max_error, "--max-error")
    _positive(threshold, "--threshold")
    if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 1:
        raise KDMError(f"--neighbours must be a positive integer, got {neighbours!r}")
    if (max_error is not None or drop_worst is not None) and run is None:
        raise KDMError("--max-error and --drop-worst score pairs by a student run's error on "
                       "them: give --run RUN")
    if run is not None and max_error is None and drop_worst is None:
        raise KDMError("--run is for --max-error or --drop-worst; give one of them or drop it")
    if (exclude_like is None) != (threshold is None):
        raise KDMError("--exclude-like FILE and --threshold T go together: pairs nearer than "
                       "T to an example of FILE are dropped")
    for name, classes in (("--keep-class", keep_classes), ("--drop-class", drop_classes)):
        if classes is not None and not len(classes):
            raise KDMError(f"{name} names no class; give class ids or names, e.g. 3,5")


def class_ids(classes: Sequence[int | str], names: Sequence[str] | None,
              num_classes: int) -> list[int]:
    """Class ids of ``classes`` (ids, digit strings, or names of ``names``, any case), each in
    [0, num_classes); a one-line error for an unknown one."""
    lower = [n.lower() for n in names or ()]
    out = []
    for c in classes:
        text = str(c).strip()
        cid = (int(text) if text.lstrip("-").isdigit() else
               lower.index(text.lower()) if text.lower() in lower else None)
        if cid is None or not 0 <= cid < num_classes:
            known = f"0..{num_classes - 1}" + (
                f" or {', '.join(repr(n) for n in names)}" if names else "")
            raise KDMError(f"unknown class {text!r}; this store's classes are {known}")
        out.append(cid)
    return sorted(set(out))


def _top(scores: np.ndarray, fraction: float) -> np.ndarray:
    """Mask (N,) of the ``round(fraction * N)`` highest scores (ties: the lower index first)."""
    mask = np.zeros(len(scores), bool)
    mask[np.argsort(-scores, kind="stable")[:round(fraction * len(scores))]] = True
    return mask


def _summary(values: np.ndarray) -> dict[str, float]:
    q = np.quantile(values, [0.0, 0.5, 0.95, 1.0])
    return dict(zip(("min", "median", "p95", "max"), map(float, q), strict=True))


class _Scores:
    """The first reason (an index into :data:`REASONS`, -1: kept) and the value that decided
    it, per pair of the parent."""

    def __init__(self, n: int) -> None:
        self.reason = np.full(n, -1, np.int8)
        self.value = np.zeros(n)

    def drop(self, reason: str, mask: np.ndarray, values: np.ndarray) -> None:
        new = mask & (self.reason < 0)
        self.reason[new] = REASONS.index(reason)
        self.value[new] = values[new]

    def counts(self) -> dict[str, int]:
        return {r: int(np.sum(self.reason == i)) for i, r in enumerate(REASONS)}


def _per_shard(parent: PairStore, what: str, progress: bool,
               fn: Callable[[dict[str, np.ndarray]], np.ndarray], noise: bool = False
               ) -> np.ndarray:
    """``fn`` of each shard's arrays, concatenated: the arrays as stored (clean as float32),
    or with ``noise`` as :meth:`PairStore.load` gives them (x_T regenerated in seeded
    stores)."""
    size, parts = parent.manifest["shard_size"], []
    for i in tqdm(range(parent.num_shards), desc=what, unit="shard",
                  disable=None if progress else True):  # None: only on a terminal
        if noise:
            start = i * size
            arrays = parent.load(np.arange(start, start + parent.manifest["shards"][i]["count"]))
        else:
            arrays = dict(parent.shard_arrays(i))
        arrays["clean"] = np.array(arrays["clean"], np.float32)  # a writable copy of one shard
        parts.append(fn(arrays))
        if i == 0:  # the results of all pairs are held at once: (N, F) from (n_0, F)
            check_memory(parts[0].nbytes * len(parent) // max(1, len(parts[0])) * 2,
                         f"{what} of {len(parent)} pairs", "filter a smaller store (nothing "
                         "was written)")
    return np.concatenate(parts)


def _student_errors(parent: PairStore, run: str | os.PathLike, device: str,
                    progress: bool) -> tuple[np.ndarray, dict[str, Any]]:
    """The error (N,) of the student ``run`` on every pair, and what it was."""
    from ..api import StudentRun

    gen = StudentRun.load(run, device=device, latents=True)  # latents, as the store holds
    if gen.shape != parent.shape:
        raise KDMError(f"run {run} maps examples of shape {gen.shape} but the pairs of "
                       f"{parent.path} have shape {parent.shape}; give a run trained on "
                       "pairs of this teacher")
    if gen.sigma_max != parent.sigma_max:
        raise KDMError(f"run {run} takes noise of sigma_max {gen.sigma_max:g} but the pairs of "
                       f"{parent.path} have {parent.sigma_max:g}; give a run trained on pairs "
                       "of this teacher")
    if gen.num_classes and not parent.has_labels:
        raise KDMError(f"run {run} is class-conditional but {parent.path} has no labels; give "
                       "an unconditional run")

    def errors(a: dict[str, np.ndarray]) -> np.ndarray:
        y = a["label"] if gen.num_classes else None
        return gen.domain.pair_errors(gen.map(a["noise"], y), a["clean"])

    return _per_shard(parent, "student error", progress, errors, noise=True), {
        "run": str(Path(run).resolve()), "run_method": gen.method}


def filter_pairs(store: str | os.PathLike | PairStore, out: str | os.PathLike, *,
                 keep_classes: Sequence[int | str] | None = None,
                 drop_classes: Sequence[int | str] | None = None,
                 drop_outliers: float | None = None, max_outlier: float | None = None,
                 neighbours: int = 5, run: str | os.PathLike | None = None,
                 max_error: float | None = None, drop_worst: float | None = None,
                 exclude_like: str | os.PathLike | None = None,
                 threshold: float | None = None, cfg: Config | None = None,
                 device: str = "cpu", progress: bool = True) -> PairStore:
    """Write a new pair store ``out`` holding the pairs of ``store`` that pass every criterion
    given (see the module docstring); returns it.

    ``keep_classes`` / ``drop_classes``: class ids or names. ``drop_outliers`` (a fraction) or
    ``max_outlier`` (a score) with ``neighbours``: the outlier score. ``run`` with
    ``max_error`` or ``drop_worst`` (a fraction): a student run's error on each pair.
    ``exclude_like`` (a ``.npy`` of examples (M, *shape), or for images a folder of PNGs)
    with ``threshold``. ``cfg``'s ``eval`` settings choose the image feature extractor
    (default: the store's recorded config, else the defaults). ``device`` runs the student
    and the extractor. Refused with a one-line error before anything is written: a setting
    that cannot work, ``out`` that exists, a store that is not one, an unknown class, a run
    or examples of another shape, and a filter that would keep no pair.
    """
    check_settings(keep_classes=keep_classes, drop_classes=drop_classes,
                   drop_outliers=drop_outliers, max_outlier=max_outlier,
                   neighbours=neighbours, run=run, max_error=max_error, drop_worst=drop_worst,
                   exclude_like=exclude_like, threshold=threshold)
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise KDMError(f"--out {out} already exists; a filtered store is always new: pick "
                       "another --out or delete it")
    from ..api import resolve_device
    from .store import PairStore

    dev = resolve_device(device)
    parent = store if isinstance(store, PairStore) else PairStore(store)
    parent.check_intact()
    m, n = parent.manifest, len(parent)
    domain = domain_for(parent.shape)
    data_known = bool(m.get("config"))
    cfg = cfg or (Config.from_dict(m["config"]) if data_known else Config())
    settings: dict[str, Any] = {}
    stats: dict[str, dict[str, float]] = {}
    scores = _Scores(n)

    if keep_classes is not None or drop_classes is not None:
        if not parent.has_labels:
            raise KDMError(f"pair store {parent.path} has no labels; --keep-class and "
                           "--drop-class need the pairs of a class-conditional teacher")
        labels = np.concatenate([parent.shard_arrays(i)["label"]
                                 for i in range(parent.num_shards)])
        from ..data.images import class_names

        k = int(m["teacher"].get("num_classes") or labels.max() + 1)
        names = class_names(cfg.data.source) if data_known else None
        going = np.zeros(n, bool)
        if keep_classes is not None:
            settings["keep_classes"] = class_ids(keep_classes, names, k)
            going |= ~np.isin(labels, settings["keep_classes"])
        if drop_classes is not None:
            settings["drop_classes"] = class_ids(drop_classes, names, k)
            going |= np.isin(labels, settings["drop_classes"])
        scores.drop("class", going, labels.astype(np.float64))

    excluded = None
    if exclude_like is not None:  # read before the long work: a wrong shape fails at once
        excluded = domain.read_examples(Path(exclude_like))
    if exclude_like is not None or drop_outliers is not None or max_outlier is not None:
        embed, space = domain.features(cfg, data_known, dev)
        settings["features"] = space
        feats = _per_shard(parent, "features", progress, lambda a: embed(a["clean"]))
        if excluded is not None:
            d = nearest_distances(feats, embed(excluded), 1)[:, 0]
            settings.update(exclude_like=str(Path(exclude_like).resolve()),
                            exclude_like_count=len(excluded), threshold=threshold)
            stats["exclude_like"] = _summary(d)
            scores.drop("exclude_like", d < threshold, d)
        if drop_outliers is not None or max_outlier is not None:
            pool = (np.arange(n) if n <= OUTLIER_POOL else
                    np.sort(np.random.default_rng(0).choice(n, OUTLIER_POOL, replace=False)))
            if len(pool) <= neighbours:
                raise KDMError(f"--neighbours {neighbours} needs more than {neighbours} pairs; "
                               f"the store has {n}")
            self_index = np.full(n, -1, np.int64)
            self_index[pool] = np.arange(len(pool))
            score = nearest_distances(feats, feats[pool], neighbours, self_index).mean(axis=1)
            settings.update(neighbours=neighbours, outlier_pool=len(pool),
                            **({"drop_outliers": drop_outliers} if drop_outliers is not None
                               else {"max_outlier": max_outlier}))
            stats["outlier"] = _summary(score)
            scores.drop("outlier", _top(score, drop_outliers) if drop_outliers is not None
                        else score > max_outlier, score)

    if run is not None:
        err, about = _student_errors(parent, run, str(dev), progress)
        settings.update(about, **({"drop_worst": drop_worst} if drop_worst is not None
                                  else {"max_error": max_error}))
        stats["error"] = _summary(err)
        scores.drop("error", _top(err, drop_worst) if drop_worst is not None
                    else err > max_error, err)

    kept = np.flatnonzero(scores.reason < 0)
    counts = {r: c for r, c in scores.counts().items() if c}
    if not len(kept):
        raise KDMError(f"the filter would keep none of the {n} pairs of {parent.path} "
                       f"(dropped: {', '.join(f'{r} {c}' for r, c in counts.items())}); "
                       "loosen it")
    source = {"kind": "filtered", "parent": {
        "path": str(parent.path.resolve()), "manifest_sha256": sha256_file(
            parent.path / MANIFEST_NAME), "count": n, "seed": m["seed"], "source": m["source"]},
        "filter": settings, "scores": stats, "kept": len(kept), "dropped": counts,
        "dropped_file": DROPPED_NAME}
    return _write(parent, out, kept, scores, source)


def _write(parent: PairStore, out: Path, kept: np.ndarray, scores: _Scores,
           source: dict[str, Any]) -> PairStore:
    """Write the rows ``kept`` (ascending global indices) of ``parent`` as a store ``out``,
    with ``dropped.json``, through a temporary sibling directory renamed into place."""
    from .store import PairStore, _open_checked

    m, size = parent.manifest, parent.manifest["shard_size"]
    names = [a for a in ARRAY_NAMES if a in m["dtypes"]]
    fresh = new_manifest(count=len(kept), shard_size=size, shape=parent.shape,
                         sigma_max=parent.sigma_max, seed=None, teacher=m["teacher"],
                         sampler=m["sampler"], nfe=m["nfe"], source=source, config=m["config"],
                         dtypes={a: m["dtypes"][a] for a in names if a != "label"})
    tmp = out.parent / f".{out.name}.filtering"
    if tmp.exists():  # left by a filter that was killed
        shutil.rmtree(tmp)
    try:
        writer = _open_checked(tmp, fresh, IDENTITY_KEYS + ("source",), False,
                               parent.has_labels)
        for i in range(num_shards(len(kept), size)):
            shard, row = np.divmod(kept[i * size:(i + 1) * size], size)
            parts = [(parent.shard_arrays(int(s)), row[shard == s]) for s in np.unique(shard)]
            writer.write(i, {a: np.concatenate([maps[a][r] for maps, r in parts])
                             for a in names})
        gone = np.flatnonzero(scores.reason >= 0)
        write_json(tmp / DROPPED_NAME, {
            "parent": source["parent"]["path"],
            "parent_manifest_sha256": source["parent"]["manifest_sha256"],
            "count": len(gone), "index": gone.tolist(),
            "reason": [REASONS[r] for r in scores.reason[gone]],
            "value": scores.value[gone].tolist()})
        writer.manifest["source"]["dropped_sha256"] = sha256_file(tmp / DROPPED_NAME)
        writer.finish()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PairStore(out)
