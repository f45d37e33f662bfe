"""Pair-store manifest: layout constants, construction and validation.

A pair store is a directory with ``manifest.json`` and one plain ``.npy`` file per array per
shard (``noise-00000.npy``, ``clean-00000.npy``, optional ``label-00000.npy``). A store may
keep, instead of the noise itself, one int64 seed per pair (``noise_seed-00000.npy``) from
which the reader regenerates x_T bitwise (see :func:`.store.seeded_noise`). The pair
convention is fixed: ``noise`` is the teacher's initial noise x_T (std ``sigma_max``) and
``clean`` is the sample x_0 its ODE sampler produced from it; the manifest's ``order`` key
spells this out and every reader asserts it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import KDMError

FORMAT = "kdm-pairs"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
PAIR_ORDER = ["noise", "clean"]  # noise = x_T, clean = x_0
ARRAY_NAMES = ("noise", "clean", "label", "noise_seed")  # the order arrays are written in
REQUIRED_KEYS = ("format", "version", "complete", "count", "shard_size", "shape", "dtypes",
                 "order", "sigma_max", "seed", "teacher", "sampler", "nfe", "source", "config",
                 "shards")
# Settings that fix the content of a store: writing into a store whose manifest differs in
# any of them is refused rather than mixing two kinds of pairs.
IDENTITY_KEYS = ("count", "shard_size", "seed", "shape", "sigma_max", "teacher", "sampler",
                 "nfe")


def shard_file(name: str, index: int) -> str:
    """File name of array ``name`` in shard ``index``, e.g. ``noise-00003.npy``."""
    return f"{name}-{index:05d}.npy"


def num_shards(count: int, shard_size: int) -> int:
    """Number of shards holding ``count`` examples, ``shard_size`` per shard (last may be short)."""
    return math.ceil(count / shard_size)


def shard_len(count: int, shard_size: int, index: int) -> int:
    """Number of examples in shard ``index``."""
    return min(shard_size, count - index * shard_size)


def jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists, paths strings), for comparing."""
    return json.loads(json.dumps(obj, default=str))


def new_manifest(*, count: int, shard_size: int, shape: tuple[int, ...], sigma_max: float,
                 seed: int | None, teacher: dict, sampler: dict, nfe: int | None,
                 source: Any, config: dict | None) -> dict[str, Any]:
    """A manifest for an empty, incomplete store (dtypes gain ``label`` with the first shard)."""
    return jsonable({
        "format": FORMAT, "version": FORMAT_VERSION, "complete": False,
        "count": count, "shard_size": shard_size, "shape": list(shape),
        "dtypes": {"noise": "float32", "clean": "float32"}, "order": PAIR_ORDER,
        "sigma_max": float(sigma_max), "seed": seed, "teacher": teacher, "sampler": sampler,
        "nfe": nfe, "source": source, "config": config, "shards": [],
    })


def check_header(m: Any, path: Path) -> None:
    """Raise unless ``m`` is a kdm-pairs manifest of a version this package can read."""
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise KDMError(f"{path} is not a pair store manifest (format is not {FORMAT!r}); "
                       "point to a directory written by `kdm pairs` or an importer")
    version = m.get("version")
    if not isinstance(version, int):
        raise KDMError(f"{path} has no integer format version; the store is damaged, "
                       "regenerate it")
    if version > FORMAT_VERSION:
        raise KDMError(f"{path} was written by a newer koopman-distill (format version "
                       f"{version} > {FORMAT_VERSION}); upgrade the package")


def check_manifest(m: Any, path: Path) -> None:
    """Validate a manifest read from ``path`` for reading; raise a one-line KDMError if unusable."""
    check_header(m, path)
    missing = [k for k in REQUIRED_KEYS if k not in m]
    if missing:
        raise KDMError(f"{path} is missing keys {missing}; the store is damaged, regenerate it")

    def bad(what: str) -> KDMError:
        return KDMError(f"{path} is inconsistent ({what}); the store is damaged, regenerate it")

    if m["order"] != PAIR_ORDER:
        raise bad(f"pair order {m['order']!r}, expected {PAIR_ORDER!r}")
    count, size = m["count"], m["shard_size"]
    if not (isinstance(count, int) and isinstance(size, int) and count > 0 and size > 0):
        raise bad(f"count {count!r} and shard_size {size!r} must be positive integers")
    shape = m["shape"]
    if not (isinstance(shape, list) and shape
            and all(isinstance(s, int) and s > 0 for s in shape)):
        raise bad(f"shape {shape!r}")
    sigma = m["sigma_max"]
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise bad(f"sigma_max {sigma!r}")
    dtypes = m["dtypes"]
    if (not isinstance(dtypes, dict) or "clean" not in dtypes
            or ("noise" in dtypes) == ("noise_seed" in dtypes)
            or set(dtypes) - set(ARRAY_NAMES)
            or any(_dtype_kind(dtypes[k]) != "f" for k in PAIR_ORDER if k in dtypes)
            or dtypes.get("label", "int64") != "int64"
            or dtypes.get("noise_seed", "int64") != "int64"):
        raise bad(f"dtypes {dtypes!r}")
    shards, total = m["shards"], num_shards(count, size)
    if not (isinstance(shards, list) and all(isinstance(s, dict) for s in shards)):
        raise bad("shards is not a list of objects")
    if not m["complete"]:
        raise KDMError(f"pair store {path.parent} is incomplete ({len(shards)} of {total} "
                       "shards); rerun `kdm pairs` (or the import) with the same arguments to "
                       "resume")
    if len(shards) != total or [s.get("index") for s in shards] != list(range(total)):
        raise bad(f"the {len(shards)} listed shards are not shards 0..{total - 1} in order")
    for i, s in enumerate(shards):
        if s.get("count") != shard_len(count, size, i):
            raise bad(f"shard {i} count {s.get('count')!r}")
        if s.get("files") != {n: shard_file(n, i) for n in dtypes}:
            raise bad(f"shard {i} files {s.get('files')!r} are not those of dtypes "
                      f"{sorted(dtypes)}")
        digests = s.get("sha256")
        if not (isinstance(digests, dict) and set(digests) == set(dtypes) and all(
                isinstance(d, str) and len(d) == 64 for d in digests.values())):
            raise bad(f"shard {i} sha256 {digests!r}")


def _dtype_kind(name: Any) -> str | None:
    """numpy kind letter of a dtype name, or None if it is not one."""
    try:
        return np.dtype(name).kind
    except TypeError:
        return None


def settings_diff(old: dict, new: dict, keys: tuple[str, ...]) -> list[str]:
    """Human-readable differences between two manifests in ``keys`` (short values inline)."""
    out = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if a != b:
            scalar = not isinstance(a, (dict, list)) and not isinstance(b, (dict, list))
            out.append(f"{k} {a!r} vs {b!r}" if scalar else k)
    return out
