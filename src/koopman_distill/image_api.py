"""The image side of the pipeline: EDM teacher, image pairs and the image KDM.

:mod:`.api` dispatches here when ``data.resolution > 0``. Batches are dicts of tensors:
teacher training ``{"image": (B, C, R, R) in [-1, 1], "label": (B,)}``, KDM training
``{"noise": x_T, "clean": x_0, "label": (B,)}``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .config import Config
from .data.images import ImageData, load_images
from .errors import KDMError
from .models.unet import UNet
from .pairs import PairStore
from .pairs.store import draw_seeded_noise
from .teachers.edm import EDMTeacher, heun_nfe


def image_data(cfg: Config, split: str = "train") -> ImageData:
    """The dataset named by ``cfg.data`` at its resolution; ``data.n`` > 0 keeps a seeded
    subset of that many images (train split only)."""
    d = cfg.data
    data = load_images(d.source, d.resolution, d.channels or None, split)
    if d.conditional and data.labels is None:
        raise KDMError(f"data.conditional is set but {d.source} has no labels; give a "
                       "labelled dataset or set data.conditional=false")
    if split == "train" and 0 < d.n < len(data.images):
        keep = np.sort(np.random.default_rng(d.seed).choice(len(data.images), d.n, False))
        data.images = data.images[keep]
        data.labels = None if data.labels is None else data.labels[keep]
    return data


def num_classes(cfg: Config, data: ImageData) -> int:
    return data.num_classes if cfg.data.conditional else 0


def build_teacher(cfg: Config, shape: tuple[int, int, int], n_classes: int) -> EDMTeacher:
    """An untrained EDM teacher for images of ``shape`` (C, R, R)."""
    t, u = cfg.teacher, cfg.teacher.unet
    net = UNet(shape[1], shape[0], shape[0], u.channels, tuple(u.channel_mult), u.num_blocks,
               tuple(u.attn_resolutions), u.dropout, n_classes)
    return EDMTeacher(net, sigma_min=t.sigma_min, sigma_max=t.sigma_max, rho=t.rho,
                      steps=t.steps, sigma_data=t.sigma_data, P_mean=t.P_mean, P_std=t.P_std,
                      num_classes=n_classes)


def teacher_tensors(cfg: Config) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Training tensors for the EDM teacher and the run metadata describing them."""
    data = image_data(cfg)
    k = num_classes(cfg, data)
    tensors = {"image": torch.from_numpy(data.images)}
    if k:
        tensors["label"] = torch.from_numpy(data.labels)
    meta = {"kind": "teacher", "teacher": "edm", "shape": list(data.images.shape[1:]),
            "num_classes": k, "n_data": len(data.images), "data_source": data.source,
            "sigma_max": cfg.teacher.sigma_max}
    return tensors, meta


def pair_generator(teacher: EDMTeacher, cfg: Config, shape: tuple[int, ...],
                   device: torch.device) -> Any:
    """``generate(g, count)`` for :func:`~.pairs.write_pairs`: seeded noise (and uniform
    labels for a conditional teacher) on the CPU, the teacher's Heun sampler on ``device``."""
    sigma, bs, k = cfg.teacher.sigma_max, cfg.pairs.batch_size, teacher.num_classes

    def generate(g: torch.Generator, count: int) -> dict[str, torch.Tensor]:
        seeds, noise = draw_seeded_noise(g, count, tuple(shape), sigma)
        label = torch.randint(0, k, (count,), generator=g) if k else None
        clean = []
        for i in range(0, count, bs):
            y = None if label is None else label[i:i + bs].to(device)
            clean.append(teacher.sample(noise[i:i + bs].to(device), y).cpu())
        out = {"noise": noise, "clean": torch.cat(clean), "noise_seed": seeds}
        if label is not None:
            out["label"] = label
        return out

    return generate


def teacher_nfe(cfg: Config) -> int:
    return heun_nfe(cfg.teacher.steps)


def store_classes(store: PairStore, cfg: Config) -> int:
    """Number of classes a KDM on ``store`` is conditioned on (0 = unconditional)."""
    if not cfg.data.conditional:
        return 0
    if not store.has_labels:
        raise KDMError(f"data.conditional is set but pair store {store.path} has no labels; "
                       "make the pairs with a conditional teacher or set "
                       "data.conditional=false")
    teacher = store.manifest.get("teacher") or {}
    if teacher.get("num_classes"):
        return int(teacher["num_classes"])
    return 1 + max(int(store.shard_arrays(i)["label"].max()) for i in range(store.num_shards))


def to_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Pair-store arrays as training tensors: float32 images, int64 labels, seeds dropped."""
    return {k: torch.from_numpy(np.ascontiguousarray(
        v, dtype=np.int64 if k == "label" else np.float32))
        for k, v in arrays.items() if k != "noise_seed"}


class StoreBatches:
    """Endless shuffled batches streamed from a pair store (float32 tensors), resumable.

    Epoch ``e``'s order is the store's ``epoch_order(seed, e)``, cut into global batches of
    ``batch_size * world_size`` pairs; rank ``r`` reads only its rows
    ``r * batch_size:(r + 1) * batch_size`` of each (``batch_size`` is per rank), so the ranks
    together see the batches of one process with the whole global batch. The state is (epoch,
    global batches taken), so :meth:`load_state_dict` resumes exactly.
    """

    def __init__(self, store: PairStore, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        if len(store) // world_size < batch_size:
            raise KDMError(f"batch size {batch_size} is larger than the "
                           f"{len(store) // world_size} pairs per process; lower "
                           "train.batch_size or make more pairs")
        self.store, self.batch_size, self.seed = store, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.taken = 0, 0
        self._order = store.epoch_order(seed, 0)

    def __iter__(self) -> StoreBatches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        step = self.batch_size * self.world_size
        if (self.taken + 1) * step > len(self.store):
            self.epoch, self.taken = self.epoch + 1, 0
            self._order = self.store.epoch_order(self.seed, self.epoch)
        start = self.taken * step + self.rank * self.batch_size
        self.taken += 1
        return to_tensors(self.store.load(self._order[start:start + self.batch_size]))

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "taken": self.taken}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.taken = int(state["epoch"]), int(state["taken"])
        self._order = self.store.epoch_order(self.seed, self.epoch)
