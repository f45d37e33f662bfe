"""The exported one-step generator, rebuilt from an export directory (``config.json`` and
``model.safetensors``) with torch and safetensors alone.

``kdm export`` writes this module's code, preceded by the networks it builds, as the
directory's ``kdm_generator.py`` (:mod:`.standalone`), so the file a user ships is the code
tested here. Use it as::

    from kdm_generator import load
    g = load("export-dir")            # on the CPU; load(dir, device="cuda")
    x = g.sample(16, seed=0)          # (16, *shape), as `kdm sample --n 16 --seed 0`
    x = g.map(x_T, labels)            # given noise (N, *shape) [and class ids (N,)]

or from a shell: ``python kdm_generator.py --n 16 --out samples.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import KDMError
from ..models.sampling_path import SamplingPath
from ..models.spec import NETWORKS, build
from ..seeded import SeededDraws

CONFIG, WEIGHTS = "config.json", "model.safetensors"
GENERATOR_FORMAT = 1  # the layout of config.json's "generator" section


class OneStepGenerator(SeededDraws, SamplingPath, nn.Module):
    """``x_0 = D(K E_T(x_T / sigma_max) + B y)``: noise (B, *shape) [and class ids (B,) int64
    for a conditional model] -> samples (B, *shape), from the ``generator`` section of an
    export's ``config.json``."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        if config.get("format") != GENERATOR_FORMAT:
            raise KDMError(f"this loader reads generator format {GENERATOR_FORMAT}, the export "
                           f"has {config.get('format')!r}: export the run again")
        nets = config["networks"]
        self.shape = tuple(config["shape"])
        self.num_classes = int(config["num_classes"])
        self.sigma_max = float(config["sigma_max"])
        self.block = int(config["block"])  # rows per noise draw and per network call
        self.E_T, self.K, self.D = (build(nets[k], NETWORKS) for k in ("E_T", "K", "D"))
        self.B = build(nets["B"], NETWORKS) if nets.get("B") else None

    def forward(self, x_T: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """One step, unchecked (the graph ONNX export traces): x_T (B, *shape) [, labels (B,)
        int64] -> (B, *shape)."""
        if not self.num_classes:
            return self.generate(x_T, None)
        classes = torch.arange(self.num_classes, device=labels.device)
        return self.generate(x_T, (labels[:, None] == classes).to(x_T.dtype))  # one-hot

    @torch.no_grad()
    def map(self, x_T: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Samples (N, *shape) float32 on the CPU for noise (N, *shape) [and class ids (N,)],
        in batches of ``block`` rows on the generator's device."""
        if x_T.dim() != 1 + len(self.shape) or tuple(x_T.shape[1:]) != self.shape:
            raise KDMError(f"noise must have shape (N, {', '.join(map(str, self.shape))}), "
                           f"got {tuple(x_T.shape)}")
        if self.num_classes:
            if labels is None or tuple(labels.shape) != (len(x_T),):
                raise KDMError(f"this generator is class-conditional: pass {len(x_T)} class "
                               "ids")
            labels = labels.long()
            if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < self.num_classes:
                raise KDMError(f"class ids must lie in [0, {self.num_classes})")
        elif labels is not None:
            raise KDMError("this generator is unconditional; do not pass labels")
        param = next(self.parameters())
        out = []
        for i in range(0, len(x_T), self.block):
            x = x_T[i:i + self.block].to(param.device, param.dtype)
            y = None if labels is None else labels[i:i + self.block].to(param.device)
            out.append(self(x, y).float().cpu())
        return torch.cat(out) if out else torch.empty(0, *self.shape)

    def sample(self, n: int, seed: int = 0, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` samples from seeded noise (and labels, unless given): ``kdm sample``'s."""
        return self.map(self.noise(n, seed), self.labels(n, seed) if labels is None else labels)


def load(directory: str | Path, device: str = "cpu") -> OneStepGenerator:
    """The generator of an export directory, in eval mode on ``device``."""
    directory = Path(directory)
    config = json.loads((directory / CONFIG).read_text())["generator"]
    gen = OneStepGenerator(config)
    gen.load_state_dict(load_file(directory / WEIGHTS), strict=True)
    return gen.to(device).eval()


def _read_tensors(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file, or ``{"x_T": array}`` of a ``.npy``."""
    if path.endswith(".npy"):
        import numpy as np

        return {"x_T": torch.from_numpy(np.load(path, allow_pickle=False))}
    return load_file(path)


def _write_tensors(path: str, tensors: dict[str, torch.Tensor]) -> None:
    """``tensors`` into a ``.safetensors`` file, or the samples alone into a ``.npy``."""
    if path.endswith(".npy"):
        import numpy as np

        np.save(path, tensors["samples"].numpy())
    else:
        save_file({k: v.contiguous() for k, v in tensors.items()}, path)


def main(argv: list[str] | None = None) -> int:
    """Sample from the command line; see ``--help``."""
    p = argparse.ArgumentParser(description="one-step samples of an exported KDM generator")
    p.add_argument("directory", nargs="?", default=str(Path(__file__).resolve().parent),
                   help="the export directory (default: this file's)")
    p.add_argument("--n", type=int, default=16, help="samples from seeded noise (default 16)")
    p.add_argument("--seed", type=int, default=0, help="noise (and label) seed")
    p.add_argument("--class", dest="cls", type=int, help="conditional: one class for all")
    p.add_argument("--noise", help="map this noise instead: a .safetensors with x_T (and "
                   "labels) or a .npy (N, *shape)")
    p.add_argument("--out", required=True, help="output .safetensors (samples, labels) or .npy")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    try:
        gen = load(a.directory, a.device)
        if a.noise:
            given = _read_tensors(a.noise)
            x_T, labels = given["x_T"].float(), given.get("labels")
        else:
            x_T, labels = gen.noise(a.n, a.seed), gen.labels(a.n, a.seed)
        if a.cls is not None:
            labels = torch.full((len(x_T),), a.cls, dtype=torch.long)
        out = {"samples": gen.map(x_T, labels)}
        if labels is not None:
            out["labels"] = labels.long()
        _write_tensors(a.out, out)
    except (KDMError, OSError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(out['samples'])} samples to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
