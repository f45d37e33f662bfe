"""The one batch source (:class:`Batches`, over tensors or a pair store) with an exact,
resumable position, and a background prefetcher."""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from ..errors import KDMError
from ..resources import available_memory
from .distributed import world_size

if TYPE_CHECKING:
    from ..pairs import PairStore


class BatchSource(Protocol):
    def __next__(self) -> dict[str, torch.Tensor]: ...
    def state_dict(self) -> dict[str, int]: ...
    def load_state_dict(self, state: dict[str, int]) -> None: ...


def rank_batch_size(batch_size: int) -> int:
    """Rows of a global batch that each of the current processes takes."""
    w = world_size()
    if batch_size % w:
        raise KDMError(f"batch size {batch_size} does not split evenly across {w} processes; "
                       f"pick a multiple of {w}")
    return batch_size // w


def to_tensors(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Pair-store arrays as training tensors: float32 noise and clean (float16 widened), int64
    labels; per-pair noise seeds are dropped (the store has regenerated the noise)."""
    return {k: torch.from_numpy(np.ascontiguousarray(
        v, dtype=np.int64 if k == "label" else np.float32))
        for k, v in arrays.items() if k != "noise_seed"}


class Batches:
    """Endless shuffled batches of rows ``{name: (B, ...)}`` with an exact, resumable position.

    ``rows`` is equal-length tensors ``{name: (N, ...)}``, or a pair store (rows ``noise``,
    ``clean`` and optional ``label`` as :func:`to_tensors` makes them). A store whose tensors
    fit ``memory_budget`` bytes (default: a quarter of the available memory) is read into
    memory once; a larger one is read batch by batch, by index. Either way the batches are the
    same, bit for bit.

    Epoch ``e`` uses ``torch.randperm(N)`` from a generator seeded with
    ``seed * 1_000_003 + e``, cut into global batches of ``batch_size * world_size``
    consecutive indices; rank ``r`` takes rows ``r * batch_size:(r + 1) * batch_size`` of each,
    so ranks read disjoint parts and together see exactly the batches of one process with batch
    ``batch_size * world_size``. ``batch_size`` is per rank; the last incomplete global batch of
    an epoch is dropped. The position (epoch, offset into the permutation) is the whole state,
    so :meth:`load_state_dict` resumes exactly, also with another number of processes.
    """

    def __init__(self, rows: Mapping[str, torch.Tensor] | PairStore, batch_size: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1,
                 memory_budget: int | None = None):
        if isinstance(rows, Mapping):
            lengths = {len(t) for t in rows.values()}
            if len(lengths) != 1:
                raise KDMError(f"data arrays differ in length: {sorted(lengths)}")
            self.n, self.tensors, self.store = lengths.pop(), dict(rows), None
        else:
            for i in range(rows.num_shards):  # headers checked: N is the files' count
                rows.shard_arrays(i)
            budget = available_memory() // 4 if memory_budget is None else memory_budget
            self.n, self.store = len(rows), rows
            self.tensors = to_tensors(rows.load()) if _tensor_bytes(rows) <= budget else None
        if self.n // world_size < batch_size:
            raise KDMError(f"batch size {batch_size} is larger than the {self.n // world_size} "
                           "examples per process; lower train.batch_size or add data")
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.offset = 0, 0
        self._perm = self._permutation()

    def _permutation(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g)

    def rows(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rows at indices ``idx`` (M,), in that order: ``{name: (M, ...)}``."""
        if self.tensors is not None:
            return {k: t[idx] for k, t in self.tensors.items()}
        return to_tensors(self.store.load(idx.numpy()))

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        step = self.batch_size * self.world_size
        if self.offset + step > self.n:
            self.epoch, self.offset = self.epoch + 1, 0
            self._perm = self._permutation()
        start = self.offset + self.rank * self.batch_size
        idx = self._perm[start:start + self.batch_size]
        self.offset += step
        return self.rows(idx)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self._perm = self._permutation()


def _tensor_bytes(store: PairStore) -> int:
    """Bytes of a store's rows as training tensors: float32 noise and clean, int64 labels."""
    return len(store) * (8 * math.prod(store.shape) + 8 * store.has_labels)


class Prefetch:
    """Loads the next ``depth`` batches of ``source`` in a background thread, in pinned memory
    when ``pin`` (for asynchronous copies to a GPU).

    The batches are the source's, in the same order; :meth:`state_dict` is the position after
    the batches handed out so far, so checkpoints resume exactly.
    """

    def __init__(self, source: BatchSource, depth: int, pin: bool = False):
        self.source, self.depth, self.pin = source, depth, pin
        self._state = source.state_dict()
        self._thread: threading.Thread | None = None

    def _start(self) -> None:
        self._queue: queue.Queue[tuple[Any, Any]] = queue.Queue(self.depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._queue, self._stop),
                                        daemon=True, name="kdm-prefetch")
        self._thread.start()

    def _run(self, q: queue.Queue, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                batch = next(self.source)
                if self.pin:
                    batch = {k: v.pin_memory() for k, v in batch.items()}
                item: tuple[Any, Any] = (batch, self.source.state_dict())
            except BaseException as e:  # handed to the consumer, which raises it
                item = (e, None)
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[1] is None:
                return

    def __iter__(self) -> Prefetch:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._thread is None:
            self._start()
        batch, state = self._queue.get()
        if state is None:
            self._thread = None
            raise batch
        self._state = state
        return batch

    def close(self) -> None:
        """Stop the background thread (a later ``next`` starts it again)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def state_dict(self) -> dict[str, int]:
        return dict(self._state)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.close()
        self.source.load_state_dict(state)
        self._state = dict(state)
