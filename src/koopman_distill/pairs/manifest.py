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
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

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
FLOAT_DTYPES = ("float16", "float32", "float64")  # what noise and clean may be stored as
MAX_VALUES = 2**60  # values in a store (1 EiB of float16): more is a damaged manifest
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def shard_file(name: str, index: int) -> str:
    """File name of array ``name`` in shard ``index``, e.g. ``noise-00003.npy``."""
    return f"{name}-{index:05d}.npy"


def num_shards(count: int, shard_size: int) -> int:
    """Number of shards holding ``count`` examples, ``shard_size`` per shard (last may be short)."""
    return -(-count // shard_size)  # integers: exact for any count


def shard_len(count: int, shard_size: int, index: int) -> int:
    """Number of examples in shard ``index``."""
    return min(shard_size, count - index * shard_size)


_HEADER_BYTES = 128  # np.save's header of one shard file
_ITEMSIZE = {"float16": 2, "float32": 4, "float64": 8, "int64": 8}
_ENTRY_BYTES = 1024  # a shard's entry in manifest.json, twice while the manifest is replaced


def store_bytes(n: int, shard_size: int, shape: Any, dtypes: Mapping[str, str],
                extra: int = 0) -> int:
    """Estimated bytes of ``n`` examples of ``shape`` in shards of ``shard_size`` holding the
    arrays ``dtypes`` (``extra`` more bytes per example): data, file headers, manifest."""
    values = math.prod(shape)
    per = extra + sum(_ITEMSIZE[dt] * (values if name in PAIR_ORDER else 1)
                      for name, dt in dtypes.items())
    return n * per + num_shards(n, shard_size) * (len(dtypes) * _HEADER_BYTES + _ENTRY_BYTES)


def jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists, paths strings), for comparing."""
    return json.loads(json.dumps(obj, default=str))


def new_manifest(*, count: int, shard_size: int, shape: tuple[int, ...], sigma_max: float,
                 seed: int | None, teacher: dict, sampler: dict, nfe: int | None,
                 source: Any, config: dict | None,
                 dtypes: dict[str, str] | None = None) -> dict[str, Any]:
    """A manifest for an empty, incomplete store. ``dtypes`` are the noise (or noise_seed) and
    clean arrays it will hold (default float32 noise and clean); ``label`` is added with the
    first shard."""
    if shard_size > MAX_VALUES:
        raise KDMError(f"shard size {shard_size} is larger than any store (at most 2**60 "
                       "examples); lower pairs.shard_size")
    for name, value in (("teacher", teacher), ("sampler", sampler), ("source", source)):
        if not isinstance(value, dict):
            raise KDMError(f"{name} must be a dict describing the pairs, got "
                           f"{type(value).__name__}")
    return jsonable({
        "format": FORMAT, "version": FORMAT_VERSION, "complete": False,
        "count": count, "shard_size": shard_size, "shape": list(shape),
        "dtypes": dtypes or {"noise": "float32", "clean": "float32"}, "order": PAIR_ORDER,
        "sigma_max": float(sigma_max), "seed": seed, "teacher": teacher, "sampler": sampler,
        "nfe": nfe, "source": source, "config": config, "shards": [],
    })


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    """A JSON number that is finite as a float (NaN, inf and huge integers are not)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and -1e300 < x < 1e300


def check_header(m: Any, path: Path) -> None:
    """Raise unless ``m`` is a kdm-pairs manifest of a version this package can read."""
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise KDMError(f"{path} is not a pair store manifest (format is not {FORMAT!r}); "
                       "point to a directory written by `kdm pairs` or an importer")
    version = m.get("version")
    if not _is_int(version) or version < 1:
        raise KDMError(f"{path} has no positive integer format version (got {version!r}); the "
                       "store is damaged, regenerate it")
    if version > FORMAT_VERSION:
        raise KDMError(f"{path} was written by a newer koopman-distill (format version "
                       f"{version} > {FORMAT_VERSION}); upgrade the package")


def check_manifest(m: Any, path: Path, *, partial: bool = False) -> None:
    """Validate a manifest read from ``path``: every field the package reads has its type and
    range; raise a one-line KDMError if unusable. A complete store must list all its shards;
    ``partial`` (a store being resumed) also accepts an incomplete one listing some of them,
    in order."""
    check_header(m, path)
    missing = [k for k in REQUIRED_KEYS if k not in m]
    if missing:
        raise KDMError(f"{path} is missing keys {missing}; the store is damaged, regenerate it")

    def bad(what: str) -> KDMError:
        return KDMError(f"{path} is inconsistent ({what}); the store is damaged, regenerate it")

    if m["order"] != PAIR_ORDER:
        raise bad(f"pair order {m['order']!r}, expected {PAIR_ORDER!r}")
    count, size = m["count"], m["shard_size"]
    if not (_is_int(count) and _is_int(size) and count > 0 and 0 < size <= MAX_VALUES):
        raise bad(f"count {count!r} and shard_size {size!r} must be positive integers, "
                  "shard_size at most 2**60")
    shape = m["shape"]
    if not (isinstance(shape, list) and shape and all(_is_int(s) and s > 0 for s in shape)):
        raise bad(f"shape {shape!r}")
    if count * math.prod(shape) > MAX_VALUES:
        raise bad(f"{count} examples of shape {shape} are more values than any store holds")
    if not (_is_number(m["sigma_max"]) and m["sigma_max"] > 0):
        raise bad(f"sigma_max {m['sigma_max']!r}")
    if not (m["seed"] is None or _is_int(m["seed"])):
        raise bad(f"seed {m['seed']!r} is not an integer or null")
    if not (m["nfe"] is None or (_is_int(m["nfe"]) and m["nfe"] >= 0)):
        raise bad(f"nfe {m['nfe']!r} is not a count or null")
    if not isinstance(m["complete"], bool):
        raise bad(f"complete {m['complete']!r} is not true or false")
    _check_descriptions(m, bad)
    dtypes = m["dtypes"]
    if (not isinstance(dtypes, dict) or "clean" not in dtypes
            or ("noise" in dtypes) == ("noise_seed" in dtypes)
            or set(dtypes) - set(ARRAY_NAMES)
            or any(dtypes[k] not in FLOAT_DTYPES for k in PAIR_ORDER if k in dtypes)
            or dtypes.get("label", "int64") != "int64"
            or dtypes.get("noise_seed", "int64") != "int64"):
        raise bad(f"dtypes {dtypes!r}")
    shards, total = m["shards"], num_shards(count, size)
    if not (isinstance(shards, list) and all(isinstance(s, dict) for s in shards)):
        raise bad("shards is not a list of objects")
    for s in shards:
        _check_shard(s, count, size, dtypes, bad)
    listed = [s["index"] for s in shards]
    if partial and not m["complete"]:
        if listed != sorted(set(listed)):
            raise bad(f"the listed shards {listed} are not in order")
        return
    if not m["complete"]:
        raise KDMError(f"pair store {path.parent} is incomplete ({len(shards)} of {total} "
                       "shards); rerun `kdm pairs` (or the import) with the same arguments to "
                       "resume")
    if len(shards) != total or listed != list(range(total)):
        raise bad(f"the {len(shards)} listed shards are not shards 0..{total - 1} in order")


def _check_descriptions(m: dict, bad: Callable[[str], KDMError]) -> None:
    """teacher, sampler, source and config: objects, with the fields other modules read."""
    for key in ("teacher", "sampler", "source"):
        if not isinstance(m[key], dict):
            raise bad(f"{key} {m[key]!r} is not an object")
    if not (m["config"] is None or isinstance(m["config"], dict)):
        raise bad(f"config {m['config']!r} is not an object or null")
    teacher, sampler = m["teacher"], m["sampler"]
    _check_teacher(teacher, bad)
    if m["source"].get("kind") == "filtered":
        _check_filtered(m["source"], m["count"], bad)
    if not isinstance(sampler.get("method", ""), str):
        raise bad(f"sampler method {sampler['method']!r} is not a string")
    if not (_is_int(sampler.get("steps", 1)) and sampler.get("steps", 1) > 0):
        raise bad(f"sampler steps {sampler['steps']!r} is not a positive integer")
    scale = sampler.get("noise_scale", 1.0)
    if not (_is_number(scale) and scale > 0):
        raise bad(f"sampler noise_scale {scale!r} is not a positive number")


def _check_teacher(teacher: dict, bad: Callable[[str], KDMError]) -> None:
    """The teacher entry: its identity (``teacher.identity()``: kind, num_classes, checkpoint,
    weights_sha256, sampler, nfe) and the ``spec`` that rebuilds it, each field optional (an
    imported store knows little of its teacher) but of its type where present; ``path`` is
    where stores written before specs named the teacher run."""
    for key in ("kind", "path", "checkpoint"):
        if not (isinstance(teacher.get(key, ""), str)
                or (key == "checkpoint" and teacher[key] is None)):  # a teacher built in memory
            raise bad(f"teacher {key} {teacher[key]!r} is not a string")
    if not (_is_int(teacher.get("num_classes", 0)) and teacher.get("num_classes", 0) >= 0):
        raise bad(f"teacher num_classes {teacher['num_classes']!r} is not a count")
    nfe = teacher.get("nfe")
    if not (nfe is None or (_is_int(nfe) and nfe >= 0)):
        raise bad(f"teacher nfe {nfe!r} is not a count")
    sha = teacher.get("weights_sha256")
    if not (sha is None or (isinstance(sha, str) and _SHA256_RE.fullmatch(sha))):
        raise bad(f"teacher weights_sha256 {sha!r} is not a sha256 hex digest")
    if not isinstance(teacher.get("sampler", {}), dict):
        raise bad(f"teacher sampler {teacher['sampler']!r} is not an object")
    spec = teacher.get("spec", {"kind": teacher.get("kind", "")})
    if not (isinstance(spec, dict) and isinstance(spec.get("kind"), str)):
        raise bad(f"teacher spec {spec!r} is not an object with a kind")
    if "kind" in teacher and spec["kind"] != teacher["kind"]:
        raise bad(f"teacher spec kind {spec['kind']!r} is not the teacher's {teacher['kind']!r}")


def _check_filtered(source: dict, count: int, bad: Callable[[str], KDMError]) -> None:
    """The source of a filtered store of ``count`` pairs (:func:`.filter.filter_pairs`): its
    parent (path, manifest sha256, count), the filter settings and the kept and dropped
    counts."""
    parent = source.get("parent")
    if not (isinstance(parent, dict) and isinstance(parent.get("path"), str)
            and isinstance(parent.get("manifest_sha256"), str)
            and _SHA256_RE.fullmatch(parent["manifest_sha256"])
            and _is_int(parent.get("count")) and parent["count"] > 0):
        raise bad("filtered source: its parent is not an object with a path, a "
                  "manifest_sha256 and a count")
    dropped = source.get("dropped")
    if not (isinstance(source.get("filter"), dict) and source.get("kept") == count
            and isinstance(dropped, dict)
            and all(_is_int(v) and v >= 0 for v in dropped.values())
            and source["kept"] + sum(dropped.values()) == parent["count"]):
        raise bad("filtered source: its kept and dropped counts do not add up to the store's "
                  "and its parent's")


def _check_shard(s: dict, count: int, size: int, dtypes: dict,
                 bad: Callable[[str], KDMError]) -> None:
    """One entry of ``shards``: its index, count, file names and digests."""
    i = s.get("index")
    if not (_is_int(i) and 0 <= i < num_shards(count, size)):
        raise bad(f"shard index {i!r} is not one of 0..{num_shards(count, size) - 1}")
    n = s.get("count")
    if not (_is_int(n) and n == shard_len(count, size, i)):
        raise bad(f"shard {i} count {n!r}")
    if s.get("files") != {name: shard_file(name, i) for name in dtypes}:
        raise bad(f"shard {i} files {s.get('files')!r} are not those of dtypes {sorted(dtypes)}")
    digests = s.get("sha256")
    if not (isinstance(digests, dict) and set(digests) == set(dtypes) and all(
            isinstance(d, str) and _SHA256_RE.fullmatch(d) for d in digests.values())):
        raise bad(f"shard {i} sha256 {digests!r}")


def settings_diff(old: dict, new: dict, keys: tuple[str, ...]) -> list[str]:
    """Human-readable differences between two manifests in ``keys`` (short values inline)."""
    out = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if a != b:
            scalar = not isinstance(a, (dict, list)) and not isinstance(b, (dict, list))
            out.append(f"{k} {a!r} vs {b!r}" if scalar else k)
    return out
