"""In-memory batch source with an exact, resumable position."""

from __future__ import annotations

import torch

from ..errors import KDMError


class TensorBatches:
    """Endless shuffled batches over equal-length tensors ``{name: (N, ...)}``.

    Epoch ``e`` uses the permutation from a generator seeded with ``(seed, e)``; rank ``r`` of
    ``world_size`` takes every ``world_size``-th index of it, so ranks read disjoint parts.
    ``batch_size`` is per rank; the last incomplete batch of an epoch is dropped. The position
    (epoch, offset) is the whole state, so :meth:`load_state_dict` resumes exactly.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        lengths = {len(t) for t in tensors.values()}
        if len(lengths) != 1:
            raise KDMError(f"data arrays differ in length: {sorted(lengths)}")
        self.n = lengths.pop()
        if self.n // world_size < batch_size:
            raise KDMError(f"batch size {batch_size} is larger than the {self.n // world_size} "
                           "examples per process; lower train.batch_size or add data")
        self.tensors, self.batch_size, self.seed = tensors, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.offset = 0, 0
        self._perm = self._permutation()

    def _permutation(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g)[self.rank::self.world_size]

    def __iter__(self) -> TensorBatches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.offset + self.batch_size > len(self._perm):
            self.epoch, self.offset = self.epoch + 1, 0
            self._perm = self._permutation()
        idx = self._perm[self.offset:self.offset + self.batch_size]
        self.offset += self.batch_size
        return {k: t[idx] for k, t in self.tensors.items()}

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self._perm = self._permutation()
