"""DDPM++-style UNet (the "SongUNet" layout of the KDM reference, §3.2) and the optional
dense latent projection (§3.3).

:class:`UNet` maps ``(B, in_channels, R, R)`` images plus a scalar conditioning input ``t``
(and optional one-hot labels) to ``(B, out_channels, R, R)``. KDM uses three of them: the x0
and xT encoders (3 -> 1 channel latent "image") and the decoder (1 -> 3). An EDM teacher
passes ``t = c_noise = ln(sigma) / 4``; KDM passes the constant 0 or 1.

Layout, with ``L = len(channel_mult)`` levels at resolutions ``R, R/2, ..., R/2^(L-1)``:

- embedding: positional(t) (+ label embedding) -> SiLU(Linear C->4C) -> SiLU(Linear 4C->4C);
- encoder: 3x3 stem conv, then per level (a down-sampling block on all but the first) and
  ``num_blocks`` blocks; every output is kept as a skip;
- decoder: at the lowest resolution two blocks (the first with attention), on the other
  levels an up-sampling block; then per level ``num_blocks + 1`` blocks, each taking one
  concatenated skip;
- output: GroupNorm, SiLU, 3x3 conv.

Layers marked "zero" (each block's second conv, the attention projection and the output conv)
start at 1e-5 times their xavier-uniform draw, so a fresh UNet outputs almost exactly 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import KDMError

_ZERO = 1e-5  # init scale of the "zero" layers
_ATTN = math.sqrt(0.2)  # init scale of the attention qkv conv
_SKIP = math.sqrt(0.5)  # residual scale


def _init(layer: nn.Linear | nn.Conv2d, scale: float = 1.0):
    """xavier-uniform weights times ``scale``, zero bias (in place); returns the layer."""
    nn.init.xavier_uniform_(layer.weight, gain=scale)
    nn.init.zeros_(layer.bias)
    return layer


def _linear(d_in: int, d_out: int, scale: float = 1.0) -> nn.Linear:
    return _init(nn.Linear(d_in, d_out), scale)


def _conv(c_in: int, c_out: int, kernel: int, scale: float = 1.0) -> nn.Conv2d:
    return _init(nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2), scale)


def _norm(c: int) -> nn.GroupNorm:
    groups = min(32, c // 4)
    if groups < 1 or c % groups:
        raise KDMError(f"UNet: a GroupNorm over {c} channels needs {c} divisible by "
                       f"min(32, {c}//4); choose `channels` so every width channels*mult "
                       f"is a multiple of 4 (of 32 from 128 up), e.g. 32 or 64")
    return nn.GroupNorm(groups, c, eps=1e-6)


def _resample(x: torch.Tensor, mode: str | None) -> torch.Tensor:
    """2x2 average pooling ("down"), nearest-neighbour 2x ("up") or identity (None)."""
    if mode == "down":
        return F.avg_pool2d(x, 2)
    if mode == "up":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    return x


class UNetBlock(nn.Module):
    """Residual block with additive embedding and optional resampling and attention.

    ``x (B, c_in, H, W), emb (B, E) -> (B, c_out, H', W')`` with ``H' = H/2`` for "down",
    ``2H`` for "up", else ``H``.
    """

    def __init__(self, c_in: int, c_out: int, emb_channels: int, resample: str | None = None,
                 attention: bool = False, dropout: float = 0.0):
        super().__init__()
        self.c_in, self.c_out, self.resample = c_in, c_out, resample
        self.norm0 = _norm(c_in)
        self.conv0 = _conv(c_in, c_out, 3)
        self.affine = _linear(emb_channels, c_out)
        self.norm1 = _norm(c_out)
        # a module, so the trainer can tell its global-generator draws from a loss's
        self.drop = nn.Dropout(dropout)
        self.conv1 = _conv(c_out, c_out, 3, _ZERO)
        # 1x1 projection on the skip path when the shape changes
        self.skip = _conv(c_in, c_out, 1) if (c_in != c_out or resample) else None
        self.attention = attention
        if attention:  # single-head self-attention over the H*W positions
            self.norm2 = _norm(c_out)
            self.qkv = _conv(c_out, 3 * c_out, 1, _ATTN)
            self.proj = _conv(c_out, c_out, 1, _ZERO)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(_resample(F.silu(self.norm0(x)), self.resample))
        h = h + self.affine(emb)[:, :, None, None]
        h = self.drop(F.silu(self.norm1(h)))
        h = self.conv1(h)
        s = x if self.skip is None else self.skip(_resample(x, self.resample))
        h = (h + s) * _SKIP
        if self.attention:
            B, C, H, W = h.shape
            # (B, 3C, H, W) -> three (B, 1, HW, C): one head, tokens are positions
            q, k, v = self.qkv(self.norm2(h)).reshape(B, 3, 1, C, H * W).transpose(3, 4).unbind(1)
            a = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v
            a = a.transpose(2, 3).reshape(B, C, H, W)
            h = (self.proj(a) + h) * _SKIP
        return h


class UNet(nn.Module):
    """DDPM++ UNet: ``(B, in_channels, R, R), t (B,), labels (B, label_dim) | None ->
    (B, out_channels, R, R)``.

    Args:
        resolution: image side R; must be divisible by ``2**(len(channel_mult) - 1)``.
        in_channels, out_channels: image channels in and out.
        channels: base width C (also the width of the positional embedding); the level
            widths are ``C * channel_mult[level]``, the embedding width is 4C.
        channel_mult: width multiplier per level; one level per entry, halving the
            resolution between levels.
        num_blocks: residual blocks per level in the encoder (the decoder has one more).
        attn_resolutions: resolutions whose blocks get self-attention; entries that are not
            a level resolution have no effect, so the paper's ``(16,)`` fits every size. The
            first block at the lowest resolution always has attention.
        dropout: dropout probability inside every block.
        label_dim: number of classes of the one-hot ``labels``; 0 for unconditional.
    """

    def __init__(self, resolution: int, in_channels: int, out_channels: int, channels: int = 64,
                 channel_mult: tuple[int, ...] = (1, 2, 2, 2), num_blocks: int = 4,
                 attn_resolutions: tuple[int, ...] = (16,), dropout: float = 0.1,
                 label_dim: int = 0):
        super().__init__()
        channel_mult = tuple(channel_mult)
        attn_resolutions = tuple(attn_resolutions)
        _check_args(resolution, in_channels, out_channels, channels, channel_mult, num_blocks,
                    attn_resolutions, dropout, label_dim)
        self.resolution, self.in_channels, self.out_channels = resolution, in_channels, out_channels
        self.channels, self.label_dim = channels, label_dim
        E = 4 * channels  # embedding width

        # positional-embedding frequencies f_k = (1/1e4)^(k / (C/2 - 1)), k = 0..C/2-1
        half = channels // 2
        freqs = (1.0 / 1e4) ** (torch.arange(half, dtype=torch.float32) / (half - 1))
        self.register_buffer("freqs", freqs, persistent=False)
        self.map_label = _linear(label_dim, channels) if label_dim > 0 else None
        self.map0 = _linear(channels, E)
        self.map1 = _linear(E, E)

        # encoder; skip_ch records the width of every output kept as a skip
        widths = [channels * m for m in channel_mult]
        self.stem = _conv(in_channels, widths[0], 3)
        self.enc = nn.ModuleList()
        skip_ch = [widths[0]]
        c = widths[0]
        for level, w in enumerate(widths):
            res = resolution >> level
            if level > 0:
                self.enc.append(UNetBlock(c, c, E, "down", dropout=dropout))
                skip_ch.append(c)
            for _ in range(num_blocks):
                self.enc.append(UNetBlock(c, w, E, attention=res in attn_resolutions,
                                          dropout=dropout))
                c = w
                skip_ch.append(c)

        # decoder; concat[i] says whether block i takes a skip
        self.dec = nn.ModuleList()
        concat: list[bool] = []
        for level in reversed(range(len(widths))):
            res = resolution >> level
            if level == len(widths) - 1:
                self.dec.append(UNetBlock(c, c, E, attention=True, dropout=dropout))
                self.dec.append(UNetBlock(c, c, E, dropout=dropout))
                concat += [False, False]
            else:
                self.dec.append(UNetBlock(c, c, E, "up", dropout=dropout))
                concat.append(False)
            for i in range(num_blocks + 1):
                attn = i == num_blocks and res in attn_resolutions
                self.dec.append(UNetBlock(c + skip_ch.pop(), widths[level], E, attention=attn,
                                          dropout=dropout))
                c = widths[level]
                concat.append(True)
        self.concat = concat
        self.out_norm = _norm(c)
        self.out_conv = _conv(c, out_channels, 3, _ZERO)

    def embed(self, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """``t (B,), labels (B, label_dim) | None -> (B, 4C)`` block embedding."""
        ang = t.to(self.freqs.dtype)[:, None] * self.freqs[None, :]
        emb = torch.cat([ang.sin(), ang.cos()], dim=1)
        if self.map_label is not None:
            emb = emb + self.map_label(labels * math.sqrt(self.label_dim))
        return F.silu(self.map1(F.silu(self.map0(emb))))

    def forward(self, x: torch.Tensor, t: torch.Tensor | float,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, in_channels, R, R)``, ``t (B,)`` or a scalar (broadcast),
        ``labels (B, label_dim)`` one-hot float or None -> ``(B, out_channels, R, R)``."""
        R = self.resolution
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.in_channels, R, R):
            raise KDMError(f"UNet: expected input of shape (B, {self.in_channels}, {R}, {R}), "
                           f"got {tuple(x.shape)}; resize the data or build the UNet to match")
        B = x.shape[0]
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.dim() == 0:
            t = t.expand(B)
        if tuple(t.shape) != (B,):
            raise KDMError(f"UNet: t must be a scalar or have shape ({B},), got {tuple(t.shape)}")
        if self.label_dim > 0:
            if labels is None or tuple(labels.shape) != (B, self.label_dim):
                got = None if labels is None else tuple(labels.shape)
                raise KDMError(f"UNet: conditional model needs one-hot labels of shape "
                               f"({B}, {self.label_dim}), got {got}")
            labels = labels.to(x.dtype)
        elif labels is not None:
            raise KDMError("UNet: labels given to an unconditional UNet (label_dim=0); pass "
                           "labels=None or build it with label_dim > 0")

        emb = self.embed(t, labels)
        h = self.stem(x)
        skips = [h]
        for block in self.enc:
            h = block(h, emb)
            skips.append(h)
        for block, cat in zip(self.dec, self.concat, strict=True):
            if cat:
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb)
        return self.out_conv(F.silu(self.out_norm(h)))


def _check_args(resolution, in_channels, out_channels, channels, channel_mult, num_blocks,
                attn_resolutions, dropout, label_dim):
    def pos_int(name, v, minimum=1):
        if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
            raise KDMError(f"UNet: {name} must be an integer >= {minimum}, got {v!r}")

    pos_int("resolution", resolution)
    pos_int("in_channels", in_channels)
    pos_int("out_channels", out_channels)
    pos_int("channels", channels, 4)
    pos_int("num_blocks", num_blocks, 0)
    pos_int("label_dim", label_dim, 0)
    if channels % 2:
        raise KDMError(f"UNet: channels must be even (it is the positional-embedding width), "
                       f"got {channels}; use e.g. 32 or 64")
    if not channel_mult:
        raise KDMError("UNet: channel_mult is empty; give one multiplier per level, "
                       "e.g. (1, 2, 2, 2)")
    for m in channel_mult:
        pos_int("every channel_mult entry", m)
    for r in attn_resolutions:
        pos_int("every attn_resolutions entry", r)
    down = 2 ** (len(channel_mult) - 1)
    if resolution % down:
        raise KDMError(f"UNet: resolution {resolution} is not divisible by 2**(levels-1) = "
                       f"{down} for {len(channel_mult)} levels; use fewer channel_mult entries "
                       f"or a resolution that is a multiple of {down}")
    if not 0.0 <= dropout < 1.0:
        raise KDMError(f"UNet: dropout must be in [0, 1), got {dropout}")


class FlatEncoder(UNet):
    """A UNet whose output map is the flat latent: ``(B, in, R, R) -> (B, out R R)``
    (row-major)."""

    def forward(self, x: torch.Tensor, t: torch.Tensor | float,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x, t, labels).flatten(1)


class FlatDecoder(UNet):
    """A UNet reading a flat latent as its input map: ``(B, in R R) -> (B, out, R, R)``."""

    def forward(self, z: torch.Tensor, t: torch.Tensor | float,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        R = self.resolution
        if z.dim() != 2 or z.shape[1] != self.in_channels * R * R:
            raise KDMError(f"FlatDecoder: expected latents of shape (B, "
                           f"{self.in_channels * R * R}), got {tuple(z.shape)}")
        return super().forward(z.view(z.shape[0], self.in_channels, R, R), t, labels)


T_SCALE = 1000.0  # DDPM-style UNets see times in [0, 1000]


class TimeScaledUNet(UNet):
    """A UNet taking a time ``t`` in [0, 1] (a scalar or (B,)), which its positional embedding
    sees as ``1000 t``, as DDPM-style UNets do."""

    def forward(self, x: torch.Tensor, t: torch.Tensor | float,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x, T_SCALE * t, labels)


class ProjectedEncoder(nn.Module):
    """UNet then a dense projection (§3.3): ``(B, in, R, R) -> (B, proj_dim)``.

    The UNet output ``(B, out, R, R)`` is flattened row-major to ``R*R*out`` features.
    """

    def __init__(self, unet: UNet, proj_dim: int):
        super().__init__()
        _check_proj(unet, proj_dim)
        self.unet = unet
        self.proj = _linear(unet.out_channels * unet.resolution ** 2, proj_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(self.unet(x, t, labels).flatten(1))


class ProjectedDecoder(nn.Module):
    """A dense lift then the UNet (§3.3): ``(B, proj_dim) -> (B, out, R, R)``.

    The lifted ``(B, R*R*in)`` vector is reshaped to ``(B, in, R, R)`` before the UNet.
    """

    def __init__(self, unet: UNet, proj_dim: int):
        super().__init__()
        _check_proj(unet, proj_dim)
        self.unet, self.proj_dim = unet, proj_dim
        self.proj = _linear(proj_dim, unet.in_channels * unet.resolution ** 2)

    def forward(self, z: torch.Tensor, t: torch.Tensor | float,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.proj_dim:
            raise KDMError(f"ProjectedDecoder: expected latents of shape (B, {self.proj_dim}), "
                           f"got {tuple(z.shape)}")
        u = self.unet
        h = self.proj(z).reshape(z.shape[0], u.in_channels, u.resolution, u.resolution)
        return u(h, t, labels)


def _check_proj(unet, proj_dim):
    if not isinstance(unet, UNet):
        raise KDMError(f"projection wrappers need a UNet, got {type(unet).__name__}")
    if not isinstance(proj_dim, int) or isinstance(proj_dim, bool) or proj_dim < 1:
        raise KDMError(f"proj_dim must be an integer >= 1, got {proj_dim!r}")
