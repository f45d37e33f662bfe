"""Pair store: a resumable, atomic writer and a memory-mapped reader.

Layout of a store directory (see :mod:`.manifest`): ``manifest.json`` plus, per shard ``i``,
``noise-{i:05d}.npy`` (x_T, float32, ``(n_i, *shape)``), ``clean-{i:05d}.npy`` (x_0, float32,
``(n_i, *shape)``) and optionally ``label-{i:05d}.npy`` (int64 class ids, ``(n_i,)``).
Clean images may be stored as float16 (half the bytes), and the noise may be replaced by
``noise_seed-{i:05d}.npy`` (one int64 per pair, 8 bytes instead of ``4 * prod(shape)``),
from which the reader regenerates x_T bitwise with :func:`seeded_noise`.

Writing is crash-safe: each file is written to a temporary file and renamed into place, and
the manifest (rewritten atomically after every shard) lists only shards whose files are all
in place. Generated stores are deterministic per shard, so an interrupted run resumes by
producing just the shards the manifest does not list yet. Under ``torchrun`` the processes
generate different shards, round by round, and rank 0 alone writes them, so the store is
bitwise the one a single process writes.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from tqdm import tqdm

from ..errors import KDMError, first_line
from ..io import atomic_write, read_json, sha256_file, write_failed, write_json
from ..resources import check_disk, check_memory
from ..training.distributed import gather_to_main, is_main, on_main, rank, world_size
from .manifest import (
    ARRAY_NAMES,
    FORMAT_VERSION,
    IDENTITY_KEYS,
    MANIFEST_NAME,
    PAIR_ORDER,
    check_header,
    check_manifest,
    new_manifest,
    num_shards,
    settings_diff,
    shard_file,
    shard_len,
    store_bytes,
)

__all__ = ["FORMAT_VERSION", "PairStore", "draw_noise", "draw_seeded_noise", "seeded_noise",
           "shard_seed", "write_arrays", "write_pairs"]

_SEED_STRIDE = 1_000_003
_DATA_RE = re.compile(r"(noise|clean|label|noise_seed)-\d{5,}\.npy")
# temporary files of io.atomic_write: ".{name}.{random}.tmp"
_TEMP_RE = re.compile(r"\.(manifest\.json|(noise|clean|label|noise_seed)-\d{5,}\.npy)\..+\.tmp")
CLEAN_DTYPES = ("float32", "float16")

# generate(noise_generator, count) -> {"noise": (count, *shape), "clean": (count, *shape),
#     optional "label": (count,) integer, "noise_seed": (count,) int64 (stores without noise)}
Generate = Callable[[torch.Generator, int], Mapping[str, Any]]


def shard_seed(seed: int, index: int) -> int:
    """Seed of shard ``index``'s noise generator: ``(seed * 1_000_003 + index) mod 2**63``."""
    return (seed * _SEED_STRIDE + index) % 2**63


def seeded_noise(seeds: Any, shape: tuple[int, ...], sigma_max: float) -> np.ndarray:
    """x_T for per-pair seeds (n,): ``sigma_max * randn(shape)`` from a CPU generator seeded
    with each seed; float32 ``(n, *shape)``, bitwise reproducible."""
    out = torch.empty(len(seeds), *shape)
    for i, s in enumerate(np.asarray(seeds).tolist()):
        torch.randn(shape, generator=torch.Generator().manual_seed(s), out=out[i])
    return (out * sigma_max).numpy()


def draw_seeded_noise(g: torch.Generator, count: int, shape: tuple[int, ...],
                      sigma_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair seeds (count,) int64 drawn from ``g`` and their noise (count, *shape)."""
    seeds = torch.randint(0, 2**62, (count,), generator=g)
    return seeds, torch.from_numpy(seeded_noise(seeds.numpy(), shape, sigma_max))


def draw_noise(g: torch.Generator, count: int, shape: tuple[int, ...], std: float,
               seeded: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A shard's x_T (count, *shape) with std ``std`` from ``g``, and its per-pair seeds.

    ``seeded`` (a store that keeps seeds instead of noise): one seed per pair from ``g`` and
    the noise regenerated from each (:func:`draw_seeded_noise`); otherwise one draw of all the
    noise at once, and no seeds. The store's reader regenerates seeded noise bit for bit.
    """
    if seeded:
        seeds, noise = draw_seeded_noise(g, count, shape, std)
        return noise, seeds
    return std * torch.randn(count, *shape, generator=g), None


class PairStore:
    """Read-only view of a complete pair store.

    Per example: ``noise`` is x_T (float, shape :attr:`shape`, std :attr:`sigma_max`, times
    the manifest's ``sampler.noise_scale`` where pairs were drawn wider than sampling's noise),
    ``clean`` is x_0 (same shape), optional ``label`` an int64 class id. Global example ``g``
    is row ``g % shard_size`` of shard ``g // shard_size``.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise KDMError(f"pair store not found: {self.path} is not a directory; create it "
                           "with `kdm pairs` or an import")
        manifest_path = self.path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise KDMError(f"{self.path} is not a pair store (no {MANIFEST_NAME}); create it "
                           "with `kdm pairs` or an import")
        self.manifest: dict[str, Any] = read_json(manifest_path, "pair store manifest")
        check_manifest(self.manifest, manifest_path)
        self.shape: tuple[int, ...] = tuple(self.manifest["shape"])
        self.sigma_max: float = float(self.manifest["sigma_max"])
        # std of the stored x_T: pairs may be drawn wider than sampling's noise
        self.noise_std: float = self.sigma_max * self.manifest["sampler"].get("noise_scale", 1.0)
        self.has_labels: bool = "label" in self.manifest["dtypes"]
        self.seeded: bool = "noise_seed" in self.manifest["dtypes"]  # x_T regenerated
        self._names = [n for n in ARRAY_NAMES if n in self.manifest["dtypes"]]
        self._maps: dict[int, dict[str, np.ndarray]] = {}  # shard index -> open memmaps

    def __len__(self) -> int:
        return self.manifest["count"]

    def __repr__(self) -> str:
        return (f"PairStore({str(self.path)!r}, n={len(self)}, shape={self.shape}, "
                f"sigma_max={self.sigma_max}, labels={self.has_labels})")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = {}  # memmaps would pickle as full in-memory copies; reopen instead
        return state

    @property
    def num_shards(self) -> int:
        """Number of shards."""
        return len(self.manifest["shards"])

    def _example_shape(self, name: str) -> tuple[int, ...]:
        return () if name in ("label", "noise_seed") else self.shape

    def _with_noise(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``arrays`` with ``noise`` regenerated from ``noise_seed`` in seeded stores."""
        if not self.seeded:
            return arrays
        out = {"noise": seeded_noise(arrays["noise_seed"], self.shape, self.noise_std)}
        return {**out, **arrays}

    def shard_arrays(self, i: int) -> dict[str, np.ndarray]:
        """Read-only memory maps of shard ``i`` as stored: ``noise``/``clean`` ``(n_i, *shape)``,
        ``label``/``noise_seed`` ``(n_i,)``; shape and dtype are checked against the manifest."""
        if not 0 <= i < self.num_shards:
            raise IndexError(f"shard index {i} out of range [0, {self.num_shards})")
        if i in self._maps:
            return self._maps[i]
        arrays = {}
        for name in self._names:
            arr = self._open_file(i, name)
            if isinstance(arr, str):
                f = self.path / self.manifest["shards"][i]["files"][name]
                raise KDMError(f"shard file {f} {arr}; the store is damaged, regenerate it")
            arrays[name] = arr
        self._maps[i] = arrays
        return arrays

    def _open_file(self, i: int, name: str) -> np.ndarray | str:
        """Memory map of array ``name`` of shard ``i`` after checking its header against the
        manifest (no data is read), or what is wrong with the file."""
        entry = self.manifest["shards"][i]
        try:
            arr = np.load(self.path / entry["files"][name], mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            return "is missing"
        except (ValueError, OSError, EOFError) as e:
            return f"is unreadable or truncated ({first_line(e)})"
        want_shape = (entry["count"], *self._example_shape(name))
        want_dtype = np.dtype(self.manifest["dtypes"][name])
        if not isinstance(arr, np.ndarray) or arr.shape != want_shape or arr.dtype != want_dtype:
            got = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else "an archive"
            return f"holds {got} but the manifest says {want_dtype} {want_shape}"
        return arr

    def load(self, indices: Any = None) -> dict[str, np.ndarray]:
        """All examples (or those at global ``indices``, in that order) as in-memory arrays:
        ``noise``/``clean`` ``(M, *shape)`` (noise regenerated in seeded stores), ``label``
        ``(M,)``."""
        if indices is None:
            shards = [self.shard_arrays(i) for i in range(self.num_shards)]
            return self._with_noise({n: np.concatenate([s[n] for s in shards])
                                     for n in self._names})
        return self._gather(np.asarray(indices, dtype=np.int64).reshape(-1))

    def _gather(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Rows at global indices ``idx`` (M,), reading each touched shard once, rows ascending."""
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"example indices must lie in [0, {len(self)})")
        shard, row = np.divmod(idx, self.manifest["shard_size"])
        order = np.lexsort((row, shard))
        groups = [pos for pos in np.split(order, np.flatnonzero(np.diff(shard[order])) + 1)
                  if pos.size]
        maps = [self.shard_arrays(int(shard[pos[0]])) for pos in groups]  # headers checked
        out = {n: np.empty((idx.size, *self._example_shape(n)), self.manifest["dtypes"][n])
               for n in self._names}
        for pos, arrays in zip(groups, maps, strict=True):
            for name, dst in out.items():
                dst[pos] = arrays[name][row[pos]]
        return self._with_noise(out)

    def verify(self, deep: bool = False) -> list[str]:
        """Recompute every shard file's sha256; one line per problem (empty list: all intact).
        ``deep`` also checks, for files whose checksum matches, their ``.npy`` header (shape and
        dtype against the manifest) and that noise and clean hold no NaN/inf (reads the store
        once more)."""
        problems = []
        for i, entry in enumerate(self.manifest["shards"]):
            for name, fname in entry["files"].items():
                f = self.path / fname
                if not f.is_file():
                    problems.append(f"{fname}: missing")
                    continue
                try:
                    got, want = sha256_file(f), entry["sha256"][name]
                except OSError as e:
                    problems.append(f"{fname}: unreadable ({e.strerror or e})")
                    continue
                if got != want:
                    problems.append(f"{fname}: sha256 {got[:12]}... differs from the manifest's "
                                    f"{want[:12]}... (file changed or corrupt)")
                elif deep:
                    problems += self._deep_problems(i, name)
        return problems

    def _deep_problems(self, i: int, name: str) -> list[str]:
        """What is wrong with the header or values of array ``name`` of shard ``i``."""
        fname = self.manifest["shards"][i]["files"][name]
        arr = self._open_file(i, name)
        if isinstance(arr, str):
            return [f"{fname} {arr}"]
        if name not in PAIR_ORDER:
            return []
        count, rows = _nonfinite(arr)
        if not count:
            return []
        rows += i * self.manifest["shard_size"]
        return [f"{fname} has {count} non-finite values (NaN/inf), at example indices "
                f"{rows.tolist()}"]

    def check_intact(self, deep: bool = False) -> None:
        """Raise a KDMError listing every missing or changed shard file (see :meth:`verify`;
        ``deep``: also bad headers and NaN/inf)."""
        problems = self.verify(deep)
        if problems:
            raise KDMError(f"pair store {self.path} is damaged, {len(problems)} problem(s): "
                           f"{'; '.join(problems)}; regenerate it or restore the files")

    def check_finite(self) -> None:
        """Raise a KDMError if any noise/clean value is NaN or inf (reads the whole store)."""
        total, first = 0, None
        for i in range(self.num_shards):
            arrays = self.shard_arrays(i)
            for name in (n for n in PAIR_ORDER if n in arrays):  # seeded noise is finite
                count, rows = _nonfinite(arrays[name])
                total += count
                if count and first is None:
                    first = (name, i, count, (rows + i * self.manifest["shard_size"]).tolist())
        if first:
            name, i, count, rows = first
            more = f" (and {total - count} more in later shards)" if total > count else ""
            raise KDMError(f"pair store {self.path} has {count} non-finite values (NaN/inf) in "
                           f"{name} shard {i} at example indices {rows}{more}; regenerate or "
                           "re-import the pairs")


def _nonfinite(arr: np.ndarray, chunk_values: int = 1 << 22) -> tuple[int, np.ndarray]:
    """Count of non-finite values in ``arr`` (n, ...) and the first <= 5 rows holding any."""
    step = max(1, chunk_values // max(1, math.prod(arr.shape[1:])))
    count, rows = 0, []
    for start in range(0, len(arr), step):
        bad = ~np.isfinite(arr[start:start + step])
        if bad.any():
            count += int(bad.sum())
            if len(rows) < 5:
                rows.extend(start + np.flatnonzero(bad.reshape(len(bad), -1).any(axis=1)))
    return count, np.asarray(rows[:5], dtype=np.int64)


class _HashingFile:
    """Write-only file wrapper that feeds every written byte through sha256."""

    def __init__(self, f: BinaryIO) -> None:
        self._f, self.sha256 = f, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self._f.write(data)


def _save_npy(path: Path, arr: np.ndarray) -> str:
    """Atomically write ``arr`` as ``.npy`` at ``path``; return the file's sha256 hex digest."""
    digest = ""

    def write(tmp: str) -> None:
        nonlocal digest
        with open(tmp, "wb") as f:
            hf = _HashingFile(f)
            np.save(hf, arr, allow_pickle=False)  # type: ignore[arg-type]
            digest = hf.sha256.hexdigest()

    atomic_write(path, write)
    return digest


def _as_shard(out: Any, count: int, shape: tuple[int, ...], where: str, store: Path,
              clean_dtype: str = "float32") -> dict[str, np.ndarray]:
    """Check one shard's arrays and convert them: noise -> float32, clean -> ``clean_dtype``
    ``(count, *shape)``, label/noise_seed -> int64 ``(count,)``. Rejects NaN/inf, naming how
    many, ``where`` (the shard) and the ``store``."""
    if (not isinstance(out, Mapping) or set(PAIR_ORDER) - set(out)
            or set(out) - set(ARRAY_NAMES)):
        keys = sorted(out) if isinstance(out, Mapping) else type(out).__name__
        raise KDMError(f"{where} must be a dict with 'noise', 'clean' and optionally 'label' "
                       f"and 'noise_seed', got {keys}")
    arrays, bad = {}, {}
    for name in (n for n in ARRAY_NAMES if n in out):
        a = out[name]
        a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        want = (count,) if name in ("label", "noise_seed") else (count, *shape)
        if a.shape != want:
            raise KDMError(f"{where}: {name} has shape {a.shape}, expected {want}")
        if name in ("label", "noise_seed"):
            if a.dtype.kind not in "iu":
                raise KDMError(f"{where}: {name} must hold integers, got {a.dtype}")
            arrays[name] = np.ascontiguousarray(a, dtype=np.int64)
        else:
            if a.dtype.kind != "f":
                raise KDMError(f"{where}: {name} must be floating point, got {a.dtype}")
            dtype = clean_dtype if name == "clean" else "float32"
            arrays[name] = np.ascontiguousarray(a, dtype=dtype)
            bad[name] = int(np.count_nonzero(~np.isfinite(arrays[name])))
    if sum(bad.values()):
        raise KDMError(f"{where} has {sum(bad.values())} non-finite values (NaN/inf) "
                       f"(noise: {bad['noise']}, clean: {bad['clean']}); nothing was written "
                       f"for it into pair store {store}; check the teacher and sampler "
                       "settings or the input data")
    return arrays


def _keep_noise_or_seeds(arrays: dict[str, np.ndarray], store_noise: bool, sigma_max: float,
                         where: str) -> dict[str, np.ndarray]:
    """Drop ``noise_seed`` (noise stored) or ``noise`` (seeds stored, after checking that they
    regenerate the noise bitwise)."""
    if store_noise:
        arrays.pop("noise_seed", None)
        return arrays
    if "noise_seed" not in arrays:
        raise KDMError(f"{where} has no 'noise_seed'; a store without noise needs per-pair "
                       "seeds (draw the noise with draw_seeded_noise)")
    shape = arrays["noise"].shape[1:]
    if not np.array_equal(seeded_noise(arrays["noise_seed"], shape, sigma_max), arrays["noise"]):
        raise KDMError(f"{where}: noise_seed does not regenerate the noise; draw the noise "
                       "with draw_seeded_noise")
    del arrays["noise"]
    return arrays


class _StoreWriter:
    """Writes the shards of one store; the manifest lists a shard only once its files exist."""

    def __init__(self, out: Path, manifest: dict[str, Any]) -> None:
        self.out, self.manifest = out, manifest
        self.done = {s["index"] for s in manifest["shards"]}

    def write(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        """Write shard ``index`` (arrays as returned by :func:`_as_shard`), then list it."""
        m = self.manifest
        if not m["shards"]:  # the first shard fixes which arrays a store holds
            m["dtypes"] = {n: a.dtype.name for n, a in arrays.items()}
        elif {n: a.dtype.name for n, a in arrays.items()} != m["dtypes"]:
            raise KDMError(f"shard {index} has arrays {sorted(arrays)} but earlier shards have "
                           f"{m['dtypes']}; every shard must hold the same arrays and dtypes")
        entry = {"index": index, "count": len(arrays["clean"]), "files": {}, "sha256": {}}
        for name, arr in arrays.items():
            entry["files"][name] = shard_file(name, index)
            entry["sha256"][name] = _save_npy(self.out / entry["files"][name], arr)
        m["shards"] = sorted([s for s in m["shards"] if s["index"] != index] + [entry],
                             key=lambda s: s["index"])
        write_json(self.out / MANIFEST_NAME, m)
        self.done.add(index)

    def finish(self) -> PairStore:
        """Mark the store complete and open it."""
        self.manifest["complete"] = True
        write_json(self.out / MANIFEST_NAME, self.manifest)
        return PairStore(self.out)


def _open_checked(out: Path, fresh: dict[str, Any], keys: tuple[str, ...], resume: bool,
                  labels: bool) -> _StoreWriter | PairStore:
    """:func:`_open_for_writing` once one shard of ``fresh`` is known to fit in memory (a
    labelled store takes 8 more bytes per pair)."""
    _check_memory(min(fresh["count"], fresh["shard_size"]), tuple(fresh["shape"]))
    return _open_for_writing(out, fresh, keys, resume=resume, extra_bytes=8 if labels else 0)


def _open_for_writing(out: Path, fresh: dict[str, Any], keys: tuple[str, ...],
                      resume: bool, extra_bytes: int = 0) -> _StoreWriter | PairStore:
    """Prepare ``out`` for the store described by ``fresh``.

    Returns the existing store if it is complete with the same settings (``keys``, and the
    arrays ``fresh["dtypes"]`` names); otherwise a writer that keeps the shards already listed
    (``resume``) or starts over. Refuses a store with other settings, a directory that holds
    anything but pair-store files, and a store that does not fit on the disk (counting
    ``extra_bytes`` per example besides ``fresh["dtypes"]``) before writing anything.
    """
    manifest_path = out / MANIFEST_NAME
    if manifest_path.is_file():
        old = read_json(manifest_path, "pair store manifest")
        check_header(old, manifest_path)
        diffs = settings_diff(old, fresh, keys)
        check_manifest(old, manifest_path, partial=True)
        kinds = [{k: v for k, v in d.items() if k != "label"}
                 for d in (old["dtypes"], fresh["dtypes"])]
        if old["shards"] and kinds[0] != kinds[1]:
            diffs.append(f"arrays {kinds[0]} vs {kinds[1]}")
        if diffs:
            raise KDMError(f"{out} already holds a pair store with other settings "
                           f"({'; '.join(diffs)}); use another --out or delete it")
        if old["complete"]:
            return PairStore(out)
        if resume:
            fresh["shards"] = [s for s in old["shards"]
                               if all((out / f).is_file() for f in s["files"].values())]
            if fresh["shards"]:
                fresh["dtypes"] = old["dtypes"]
    elif out.exists():
        if not out.is_dir():
            raise KDMError(f"{out} exists and is not a directory; use another --out")
        foreign = sorted(p.name for p in out.iterdir()
                         if not (_DATA_RE.fullmatch(p.name) or _TEMP_RE.fullmatch(p.name)))
        if foreign:
            raise KDMError(f"{out} exists and is not a pair store (it holds {foreign[0]!r}); "
                           "use another --out or delete it")
    left = fresh["count"] - sum(s["count"] for s in fresh["shards"])
    extra = 0 if "label" in fresh["dtypes"] else extra_bytes  # resumed: labels are listed
    _check_disk(out, left, store_bytes(left, fresh["shard_size"], fresh["shape"],
                                       fresh["dtypes"], extra))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a read-only parent, a file on the way
        raise write_failed(out, e, "nothing was written") from None
    for p in out.iterdir():  # temp files of an interrupted write
        if _TEMP_RE.fullmatch(p.name):
            p.unlink()
    write_json(manifest_path, fresh)
    return _StoreWriter(out, fresh)


def _check_disk(out: Path, n: int, need: int) -> None:
    """Refuse ``n`` examples (``need`` bytes) unless the disk of ``out`` has them free."""
    check_disk(out, need, f"{n} pairs", "make fewer pairs (--n) or put --out on a larger disk "
               "(nothing was written)")


def _check_memory(shard_size: int, shape: tuple[int, ...]) -> None:
    """Refuse shards whose arrays (noise, clean and their converted copies: about 16 bytes
    per value) do not fit in the available memory."""
    check_memory(16 * shard_size * math.prod(shape), f"one shard of {shard_size} pairs of "
                 f"shape {shape}", "lower pairs.shard_size (nothing was written)")


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise KDMError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _check_sigma(sigma_max: Any) -> float:
    if not (isinstance(sigma_max, (int, float)) and not isinstance(sigma_max, bool)
            and 0 < sigma_max < 1e300):  # NaN and inf fail the comparisons
        raise KDMError(f"sigma_max must be a positive number, got {sigma_max!r}")
    return float(sigma_max)


def write_pairs(out_dir: str | os.PathLike, generate: Generate, n: int, shard_size: int,
                seed: int, *, sigma_max: float, shape: tuple[int, ...] | list[int],
                teacher: dict, sampler: dict, nfe: int, config: dict | None = None,
                source: Any = None, progress: bool = True, clean_dtype: str = "float32",
                store_noise: bool = True, labels: bool = False,
                reports_progress: bool = False) -> PairStore:
    """Generate ``n`` teacher pairs into the store ``out_dir`` (resumable, deterministic).

    Shard ``i`` (``count_i = min(shard_size, n - i * shard_size)`` examples) is
    ``generate(torch.Generator().manual_seed(shard_seed(seed, i)), count_i)``, which must return
    ``{"noise": (count_i, *shape), "clean": (count_i, *shape)}`` tensors (noise = x_T drawn
    from the given CPU generator and scaled by ``sigma_max``, clean = the teacher's x_0), plus
    optionally ``"label": (count_i,)`` integer class ids. Draw the noise on the CPU generator
    and move it to the device afterwards, so that shards do not depend on the device.
    ``clean_dtype`` float16 halves the clean arrays; ``store_noise=False`` keeps per-pair
    seeds instead of the noise: ``generate`` must then also return ``"noise_seed"`` and draw
    the noise with :func:`draw_noise` (``seeded``), its std ``sigma_max`` times the
    ``sampler``'s ``noise_scale`` (default 1). ``labels``: whether ``generate`` returns labels
    (counted in the disk estimate). With ``reports_progress`` it is called as
    ``generate(g, count, advance)`` and calls ``advance(k)`` after each ``k`` pairs it
    finished, so that the progress bar (in pairs) moves within a shard.

    Before anything is written the store's size is estimated and refused if it does not fit
    on the disk of ``out_dir`` (or one shard in memory).

    Rerunning with the same arguments after an interruption generates only the shards the
    manifest does not list and yields a store bitwise identical to an uninterrupted run; a
    complete store with the same settings is returned as is. A store in ``out_dir`` that
    differs in n, shard_size, seed, shape, sigma_max, teacher, sampler or nfe is refused.
    """
    n, shard_size = _positive_int(n, "n"), _positive_int(shard_size, "shard_size")
    if clean_dtype not in CLEAN_DTYPES:
        raise KDMError(f"clean_dtype must be one of {', '.join(CLEAN_DTYPES)}, got "
                       f"{clean_dtype!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise KDMError(f"seed must be an integer, got {seed!r}")
    shape = tuple(_positive_int(s, "every shape entry") for s in shape)
    if not shape:
        raise KDMError("shape must have at least one dimension, e.g. (2,) or (3, 32, 32)")
    out = Path(out_dir)
    dtypes = ({"noise": "float32"} if store_noise else {"noise_seed": "int64"}) | {
        "clean": clean_dtype}
    fresh = new_manifest(count=n, shard_size=shard_size, shape=shape,
                         sigma_max=_check_sigma(sigma_max), seed=int(seed), teacher=teacher,
                         sampler=sampler, nfe=nfe, config=config,
                         source={"kind": "generated"} if source is None else source,
                         dtypes=dtypes)

    made_here = on_main(lambda: not out.exists())
    writer = on_main(lambda: _open_checked(out, fresh, IDENTITY_KEYS, True, bool(labels)))
    if isinstance(writer, PairStore):
        return writer
    noise_std = fresh["sigma_max"] * fresh["sampler"].get("noise_scale", 1.0)
    bar = tqdm(total=n, initial=sum(s["count"] for s in writer.manifest["shards"]),
               desc="pairs", unit="pair", disable=not (progress and is_main()))

    def shard(i: int) -> dict[str, np.ndarray]:
        count, moved = shard_len(n, shard_size, i), [0]

        def advance(k: int) -> None:
            moved[0] += k
            bar.update(k)

        g = torch.Generator().manual_seed(shard_seed(int(seed), i))
        result = generate(g, count, advance) if reports_progress else generate(g, count)
        bar.update(count - moved[0])
        where = f"teacher output for shard {i}"
        arrays = _as_shard(result, count, shape, where, out, clean_dtype)
        return _keep_noise_or_seeds(arrays, store_noise, noise_std, where)

    todo = (i for i in range(num_shards(n, shard_size)) if i not in writer.done)
    while this_round := list(itertools.islice(todo, world_size())):  # a shard per process
        mine = this_round[rank()] if rank() < len(this_round) else None
        try:
            done = None if mine is None else (mine, shard(mine))
        except KDMError as e:
            done = e
        try:
            _write_round(writer, gather_to_main(done), out if made_here else None)
        except KDMError:
            bar.leave = False  # cleared from a terminal, so that the error line stands alone
            bar.close()
            raise
        bar.update(sum(shard_len(n, shard_size, i) for i in this_round if i != mine))
    bar.close()
    return on_main(writer.finish)


def _write_round(writer: _StoreWriter, results: list[Any] | None,
                 discard: Path | None = None) -> None:
    """Rank 0 writes the shards of one round, ``(index, arrays)`` per process (None: no shard,
    a KDMError: its generation failed), then every process raises the first failure. A
    failure before the store's first shard removes ``discard``, the directory this call made,
    so that a teacher that fails at once leaves nothing behind."""
    def write() -> None:
        for r in results:
            if isinstance(r, tuple):
                writer.write(*r)
        for r in results:
            if isinstance(r, KDMError):
                if discard is not None and not writer.manifest["shards"]:
                    shutil.rmtree(discard, ignore_errors=True)
                raise r

    on_main(write)


def write_arrays(out_dir: str | os.PathLike, noise: np.ndarray, clean: np.ndarray,
                 label: np.ndarray | None = None, *, shard_size: int, sigma_max: float,
                 teacher: dict, sampler: dict, nfe: int | None, source: Any,
                 config: dict | None = None, seed: int | None = None,
                 progress: bool = False) -> PairStore:
    """Write already-computed pairs as a store: ``noise`` (x_T) and ``clean`` (x_0) of shape
    ``(N, *shape)``, optional integer ``label`` ``(N,)``.

    Same layout and atomicity as :func:`write_pairs`; arrays may be memory-mapped, they are
    read one shard at a time. A complete store with the same settings (including ``source``)
    is returned as is; an incomplete one is rewritten from the start.
    """
    noise, clean = np.asanyarray(noise), np.asanyarray(clean)
    if noise.ndim < 2 or noise.shape != clean.shape or len(noise) == 0:
        raise KDMError(f"noise {noise.shape} and clean {clean.shape} must share one shape "
                       "(N, *example_shape) with N >= 1")
    n, shape = len(noise), tuple(noise.shape[1:])
    if label is not None and np.shape(label) != (n,):
        raise KDMError(f"label has shape {np.shape(label)}, expected ({n},) class ids")
    shard_size = _positive_int(shard_size, "shard_size")
    out = Path(out_dir)
    fresh = new_manifest(count=n, shard_size=shard_size, shape=shape,
                         sigma_max=_check_sigma(sigma_max), seed=seed, teacher=teacher,
                         sampler=sampler, nfe=nfe, source=source, config=config)
    writer = _open_checked(out, fresh, IDENTITY_KEYS + ("source",), False, label is not None)
    if isinstance(writer, PairStore):
        return writer
    with tqdm(total=n, desc="pairs", unit="pair", disable=not progress) as bar:
        for i in range(num_shards(n, shard_size)):
            part = slice(i * shard_size, i * shard_size + shard_len(n, shard_size, i))
            arrays = {"noise": noise[part], "clean": clean[part]}
            if label is not None:
                arrays["label"] = np.asarray(label[part])
            writer.write(i, _as_shard(arrays, part.stop - part.start, shape, f"shard {i}", out))
            bar.update(part.stop - part.start)
    return writer.finish()
