"""LPIPS perceptual distance (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep
Features as a Perceptual Metric") on a VGG16 backbone, loaded only from local files.

As the KDM reference uses it: the VGG16 max-pools are replaced by 2x2 average pools
(``replace_pooling=True``), inputs in [-1, 1] go to [0, 1] and are then normalised with the
ImageNet mean/std without any resizing, and no dropout is applied to the linear heads.

Parameter names follow the files users already have, so they load unchanged:
torchvision's ``vgg16()`` state dict (``features.0.weight`` ... ``features.28.bias``; its
``classifier.*`` entries are ignored) and the LPIPS v0.1 linear heads
(``lin0.model.1.weight`` ... ``lin4.model.1.weight``).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import KDMError

# VGG16 "features": conv3x3 widths, "M" marks a pooling layer
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
# indices in the features stack (it ends at relu5_3) of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_TAPS = (3, 8, 15, 22, 29)
_WIDTHS = (64, 128, 256, 512, 512)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_HINT = ("LPIPS needs local VGG16 and LPIPS weights: torchvision's VGG16 ImageNet state dict "
         "(features.* keys) and the LPIPS v0.1 VGG linear heads (lin0..lin4); weights are never "
         "downloaded")


class _Lin(nn.Module):
    """Per-channel weights of one layer as a 1x1 conv, C -> 1, no bias. Slot 0 of ``model``
    held dropout in the original files; it is the identity here so the keys still match."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """Frozen LPIPS distance: ``forward(a, b)`` with a, b (B, C, R, R) in [-1, 1], C in {1, 3},
    R >= 16 -> (B,). Gradients flow to the inputs; the weights never train.

    Build it with :meth:`from_files`; ``LPIPS()`` alone has random weights.
    """

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in _VGG16:
            if width == "M":
                layers.append(nn.AvgPool2d(2))
            else:
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
                channels = width
        self.features = nn.Sequential(*layers)
        for i, width in enumerate(_WIDTHS):
            self.add_module(f"lin{i}", _Lin(width))
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)
        self.requires_grad_(False)

    @classmethod
    def from_files(cls, vgg_path: str | Path, lin_path: str | Path | None = None) -> LPIPS:
        """Load VGG16 weights (``features.*``, or bare ``0.weight`` ... from
        ``vgg16().features``) and the LPIPS heads (``lin{i}.model.1.weight``) from ``.pth`` or
        ``.safetensors`` files; ``lin_path=None`` means ``vgg_path`` holds both."""
        paths = [Path(vgg_path)] + ([] if lin_path is None else [Path(lin_path)])
        state: dict[str, torch.Tensor] = {}
        for path in paths:
            for key, value in _read(path).items():
                if key.startswith("classifier."):
                    continue  # the full torchvision vgg16() file also has the classifier
                if re.fullmatch(r"\d+\.(weight|bias)", key):
                    key = f"features.{key}"
                state[key] = value
        model = cls()
        expected = model.state_dict()
        names = ", ".join(str(p) for p in paths)
        missing = [k for k in expected if k not in state]
        if missing:
            raise KDMError(f"LPIPS weights in {names} lack {len(missing)} keys: "
                           f"{_some(missing)}; {_HINT}")
        unexpected = [k for k in state if k not in expected]
        if unexpected:
            raise KDMError(f"LPIPS weights in {names} have unexpected keys: {_some(unexpected)}")
        for key, value in expected.items():
            if state[key].shape != value.shape:
                raise KDMError(f"LPIPS weight {key} in {names} has shape "
                               f"{tuple(state[key].shape)}, expected {tuple(value.shape)}")
        model.load_state_dict(state)
        return model

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a, b (B, C, R, R) in [-1, 1] -> LPIPS distance (B,)."""
        if a.shape != b.shape or a.ndim != 4 or a.shape[1] not in (1, 3):
            raise KDMError(f"LPIPS needs two image batches of equal shape (B, 1 or 3, R, R), got "
                           f"{tuple(a.shape)} and {tuple(b.shape)}")
        if min(a.shape[2:]) < 16:
            raise KDMError(f"LPIPS needs images of at least 16x16 (four 2x2 poolings before "
                           f"relu5_3), got {a.shape[2]}x{a.shape[3]}")
        x = torch.cat([a, b]).expand(-1, 3, -1, -1)  # 1 channel -> 3 (no-op for 3)
        x = ((x + 1) / 2 - self.mean) / self.std
        total = a.new_zeros(a.shape[0])
        layer = 0
        for i, module in enumerate(self.features):
            x = module(x)
            if i == _TAPS[layer]:
                # unit length along channels; eps inside rsqrt keeps the gradient finite at 0
                f = x * torch.rsqrt(x.square().sum(1, keepdim=True) + 1e-10)
                fa, fb = f.chunk(2)
                total = total + getattr(self, f"lin{layer}")((fa - fb).square()).mean((1, 2, 3))
                layer += 1
        return total


def _read(path: Path) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} dict from a .safetensors or torch.save'd .pth file."""
    if not path.is_file():
        raise KDMError(f"{path} not found; {_HINT}")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign file: report it as one line
        raise KDMError(f"cannot read LPIPS weights {path}: not a tensor-only .pth (read with "
                       f"torch.load(weights_only=True)) or .safetensors file "
                       f"({type(e).__name__})") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise KDMError(f"{path} is not a flat state dict of tensors; {_HINT}")
    return state


def _some(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")
