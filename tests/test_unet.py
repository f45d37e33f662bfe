"""UNet backbone, latent projection and patch discriminator: shapes, init, counts, errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from koopman_distill.errors import KDMError
from koopman_distill.models.discriminator import PatchDiscriminator
from koopman_distill.models.unet import ProjectedDecoder, ProjectedEncoder, UNet, UNetBlock

TINY = dict(channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: one intra-op thread is faster, most of all on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def n_params(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


@pytest.mark.parametrize("res,cin,cout,kw", [
    (8, 3, 1, TINY),
    (8, 1, 3, dict(TINY, label_dim=10)),
    (16, 2, 2, dict(channels=8, channel_mult=(1, 2, 2), num_blocks=2, attn_resolutions=(16, 4))),
    (12, 1, 1, dict(channels=12, channel_mult=(1, 3), num_blocks=1, attn_resolutions=(6,))),
    (8, 3, 3, dict(channels=4, channel_mult=(1,), num_blocks=0, attn_resolutions=())),
    (8, 1, 1, dict(channels=8, channel_mult=(1, 1, 1, 1), num_blocks=1, dropout=0.0)),
])
def test_unet_output_shape(res, cin, cout, kw):
    torch.manual_seed(0)
    net = UNet(res, cin, cout, **kw)
    B = 3
    labels = F.one_hot(torch.tensor([0, 3, 9]), 10).float() if kw.get("label_dim") else None
    y = net(torch.randn(B, cin, res, res), torch.rand(B), labels)
    assert y.shape == (B, cout, res, res)
    assert torch.isfinite(y).all()
    # a scalar t broadcasts to the batch
    assert net(torch.randn(B, cin, res, res), 1.0, labels).shape == (B, cout, res, res)


def test_block_layout_matches_reference():
    net = UNet(32, 3, 1)  # CIFAR encoder
    # encoder: 4 levels x 4 blocks + 3 down blocks; decoder: 2 + 3 up + 4 x 5
    assert len(net.enc) == 19 and len(net.dec) == 25
    attn = [b for b in [*net.enc, *net.dec] if b.attention]
    # 4 encoder blocks at 16x16, the first block at 4x4, the last decoder block at 16x16
    assert len(attn) == 6
    assert sum(b.resample == "down" for b in net.enc) == 3
    assert sum(b.resample == "up" for b in net.dec) == 3
    assert [b.c_out for b in net.dec[-5:]] == [64] * 5


def test_positional_embedding_frequencies():
    net = UNet(8, 1, 1, **TINY)
    f = net.freqs
    assert f.shape == (4,)
    # endpoint=True: from 1 down to exactly 1/max_positions
    assert torch.allclose(f, torch.tensor([1.0, 1e-4 ** (1 / 3), 1e-4 ** (2 / 3), 1e-4]))
    # embedding is [sin, cos]: at t = 0 it is [0, 0, 0, 0, 1, 1, 1, 1] before the MLP
    t = torch.tensor([0.0, 2.0])
    ang = t[:, None] * f[None]
    raw = torch.cat([ang.sin(), ang.cos()], 1)
    expected = F.silu(net.map1(F.silu(net.map0(raw))))
    assert torch.allclose(net.embed(t, None), expected)
    assert torch.equal(raw[0], torch.tensor([0.0] * 4 + [1.0] * 4))


def test_output_near_zero_at_init():
    torch.manual_seed(0)
    net = UNet(16, 3, 1, channels=16, channel_mult=(1, 2), num_blocks=1).eval()
    x = torch.randn(4, 3, 16, 16)
    y = net(x, torch.zeros(4))
    assert y.abs().max() < 1e-3
    assert y.abs().max() > 0  # small, not dead: gradients reach every layer
    enc = ProjectedEncoder(UNet(8, 3, 1, **TINY), 16).eval()
    assert enc(torch.randn(2, 3, 8, 8), 1.0).abs().max() < 1e-3


def test_init_scales():
    torch.manual_seed(0)
    block = UNetBlock(64, 64, 32, attention=True)

    def bound(w):  # xavier-uniform bound for a conv weight
        fan_in, fan_out = w.shape[1] * w[0, 0].numel(), w.shape[0] * w[0, 0].numel()
        return math.sqrt(6 / (fan_in + fan_out))

    for layer, scale in [(block.conv0, 1.0), (block.conv1, 1e-5), (block.qkv, math.sqrt(0.2)),
                         (block.proj, 1e-5)]:
        w = layer.weight
        assert w.abs().max() <= scale * bound(w) + 1e-12
        assert w.abs().max() > 0.9 * scale * bound(w)
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))


def test_attention_is_single_head_scaled_dot_product():
    torch.manual_seed(0)
    block = UNetBlock(8, 8, 4, attention=True).eval()
    for p in (block.conv1.weight, block.proj.weight):  # make every path visible
        nn.init.normal_(p)
    x, emb = torch.randn(2, 8, 4, 4), torch.randn(2, 4)
    # reference computation written out with plain matrix products
    h = block.conv0(F.silu(block.norm0(x))) + block.affine(emb)[:, :, None, None]
    h = (block.conv1(F.silu(block.norm1(h))) + x) * math.sqrt(0.5)
    q, k, v = block.qkv(block.norm2(h)).flatten(2).chunk(3, dim=1)  # (B, C, N) each
    w = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(8), dim=-1)  # (B, N, N)
    a = (v @ w.transpose(1, 2)).reshape(2, 8, 4, 4)
    expected = (block.proj(a) + h) * math.sqrt(0.5)
    assert torch.allclose(block(x, emb), expected, atol=1e-5)


def test_resampling_blocks():
    torch.manual_seed(0)
    down, up = UNetBlock(8, 8, 4, "down").eval(), UNetBlock(8, 4, 4, "up").eval()
    x, emb = torch.randn(1, 8, 8, 8), torch.randn(1, 4)
    assert down(x, emb).shape == (1, 8, 4, 4) and up(x, emb).shape == (1, 4, 16, 16)
    assert down.skip is not None and up.skip is not None  # resampling always projects the skip
    assert UNetBlock(8, 8, 4).skip is None


def test_projection_shapes():
    torch.manual_seed(0)
    enc = ProjectedEncoder(UNet(8, 3, 1, **TINY), 16)
    dec = ProjectedDecoder(UNet(8, 1, 3, **dict(TINY, label_dim=4)), 16)
    z = enc(torch.randn(2, 3, 8, 8), torch.ones(2))
    assert z.shape == (2, 16)
    assert enc.proj.in_features == 64 and dec.proj.out_features == 64
    assert dec(z, 0.0, torch.eye(4)[:2]).shape == (2, 3, 8, 8)


def test_parameter_counts_match_reference():
    """Reference §10: trainable parameters (no LPIPS, discriminator separate)."""
    e, d = UNet(32, 3, 1), UNet(32, 1, 3)
    K = nn.Linear(1024, 1024)
    assert n_params(e) == pytest.approx(15.48e6, rel=1e-3)
    assert n_params(e, e, d, K) == pytest.approx(47_476_165, rel=0.01)
    ec, dc = UNet(32, 3, 1, label_dim=10), UNet(32, 1, 3, label_dim=10)
    assert n_params(ec, ec, dc, K, nn.Linear(10, 1024)) == pytest.approx(47_489_541, rel=0.01)
    ef = ProjectedEncoder(UNet(64, 3, 1, channels=32), 512)
    df = ProjectedDecoder(UNet(64, 1, 3, channels=32), 512)
    assert n_params(ef) == pytest.approx(5.98e6, rel=1e-3)
    assert n_params(ef, ef, df, nn.Linear(512, 512)) == pytest.approx(18_203_365, rel=0.01)


def test_discriminator_count_and_shapes():
    assert n_params(PatchDiscriminator(3, 32)) == 663_745
    assert n_params(PatchDiscriminator(3, 64)) == 663_745
    for res, layers, logits in [(8, 1, 1), (16, 2, 1), (32, 3, 1), (48, 3, 9), (64, 3, 25)]:
        D = PatchDiscriminator(3, res, channels=8)
        assert D.n_layers == layers and D.n_logits == logits
        assert D(torch.randn(2, 3, res, res)).shape == (2, logits)
    assert PatchDiscriminator(1, 64, channels=8, n_layers=4)(torch.randn(2, 1, 64, 64)).shape \
        == (2, 1)


def test_two_step_training_smoke():
    torch.manual_seed(0)
    net = UNet(8, 1, 1, **dict(TINY, dropout=0.0))
    D = PatchDiscriminator(1, 8, channels=8)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.randn(8, 1, 8, 8)
    losses = []
    for _ in range(3):  # two updates, then the loss after them
        x_hat = net(x, 0.0)
        adv = F.softplus(-D(x_hat)).mean()  # generator's non-saturating GAN term
        loss = F.mse_loss(x_hat, x) + 0.01 * adv
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
        assert all(torch.isfinite(p.grad).all() for p in D.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("kwargs,match", [
    (dict(resolution=12), "not divisible by 2\\*\\*\\(levels-1\\) = 8"),
    (dict(channels=6, channel_mult=(1, 7)), "GroupNorm over 42 channels"),
    (dict(channels=9), "channels must be even"),
    (dict(channel_mult=()), "channel_mult is empty"),
    (dict(channel_mult=(1, 0)), "channel_mult entry"),
    (dict(dropout=1.0), "dropout must be in"),
    (dict(label_dim=-1), "label_dim must be an integer >= 0"),
    (dict(num_blocks=1.5), "num_blocks must be an integer"),
])
def test_unet_bad_arguments(kwargs, match):
    args = dict(resolution=16, in_channels=3, out_channels=1, channels=8) | kwargs
    with pytest.raises(KDMError, match=match):
        UNet(**args)


def test_forward_bad_inputs():
    net = UNet(8, 3, 1, **TINY)
    cond = UNet(8, 3, 1, **dict(TINY, label_dim=5))
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(KDMError, match=r"expected input of shape \(B, 3, 8, 8\)"):
        net(torch.randn(2, 3, 16, 16), 0.0)
    with pytest.raises(KDMError, match="t must be a scalar or have shape"):
        net(x, torch.zeros(3))
    with pytest.raises(KDMError, match="needs one-hot labels of shape"):
        cond(x, 0.0)
    with pytest.raises(KDMError, match="unconditional UNet"):
        net(x, 0.0, torch.eye(5)[:2])
    with pytest.raises(KDMError, match="proj_dim must be"):
        ProjectedEncoder(net, 0)
    with pytest.raises(KDMError, match=r"latents of shape \(B, 4\)"):
        ProjectedDecoder(UNet(8, 1, 1, **TINY), 4)(torch.randn(2, 5), 0.0)


def test_discriminator_bad_arguments():
    with pytest.raises(KDMError, match="too small.*at least 8x8"):
        PatchDiscriminator(3, 4)
    with pytest.raises(KDMError, match="use n_layers <= 2"):
        PatchDiscriminator(3, 16, n_layers=3)
    with pytest.raises(KDMError, match="n_layers must be an integer >= 1"):
        PatchDiscriminator(3, 16, n_layers=0)
    with pytest.raises(KDMError, match=r"expected input of shape \(B, 3, 16, 16\)"):
        PatchDiscriminator(3, 16)(torch.randn(2, 3, 32, 32))
