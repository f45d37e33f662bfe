"""LPIPS with random weights written to local files in the layouts users have."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from koopman_distill.errors import KDMError
from koopman_distill.models.lpips import LPIPS

VGG_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
POOL_BEFORE = (5, 10, 17, 24)
TAPS_AFTER = (2, 7, 14, 21, 28)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Random weights: vgg.pth as ``vgg16().features.state_dict()`` (bare keys) plus a stray
    classifier entry, lin.safetensors as the LPIPS v0.1 heads, and both in one combined file."""
    torch.manual_seed(0)
    ref = LPIPS()
    for i in range(5):
        getattr(ref, f"lin{i}").model[1].weight.uniform_(0, 1)  # LPIPS heads are >= 0
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    vgg = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    lin = {k: v for k, v in state.items() if k.startswith("lin")}
    root = tmp_path_factory.mktemp("lpips")
    torch.save({**vgg, "classifier.0.bias": torch.zeros(4)}, root / "vgg.pth")
    save_file(lin, root / "lin.safetensors")
    save_file(state, root / "both.safetensors")
    torch.save({k: v for k, v in lin.items() if not k.startswith("lin4")}, root / "lin3.pth")
    return {"root": root, "state": state, "vgg": root / "vgg.pth",
            "lin": root / "lin.safetensors", "both": root / "both.safetensors",
            "lin_short": root / "lin3.pth"}


@pytest.fixture(scope="module")
def lpips(files):
    return LPIPS.from_files(files["vgg"], files["lin"])


def images(seed, n=2, c=3, r=16):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, r, r, generator=g) * 2 - 1


def test_round_trip_and_frozen(files, lpips):
    assert lpips.state_dict().keys() == files["state"].keys()
    assert all(torch.equal(v, files["state"][k]) for k, v in lpips.state_dict().items())
    assert "features.28.weight" in files["state"] and "lin4.model.1.weight" in files["state"]
    assert sum(p.numel() for p in lpips.features.parameters()) == 14_714_688  # VGG16 features
    assert not any(p.requires_grad for p in lpips.parameters())
    both = LPIPS.from_files(files["both"])
    a, b = images(1), images(2)
    assert torch.equal(both(a, b), lpips(a, b))


def manual_lpips(state, a, b):
    """The distance written out with functional ops, from the state dict alone."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = ((torch.cat([a, b]) + 1) / 2 - mean) / std
    total, layer = 0.0, 0
    for i in VGG_CONVS:
        if i in POOL_BEFORE:
            x = F.avg_pool2d(x, 2)
        x = F.relu(F.conv2d(x, state[f"features.{i}.weight"], state[f"features.{i}.bias"],
                            padding=1))
        if i in TAPS_AFTER:
            f = x / x.norm(dim=1, keepdim=True)
            diff = (f[: len(a)] - f[len(a):]) ** 2
            w = state[f"lin{layer}.model.1.weight"].view(1, -1, 1, 1)
            total = total + (diff * w).sum(1).mean((1, 2))
            layer += 1
    return total


def test_distance_properties(files, lpips):
    a, b = images(1), images(2)
    d = lpips(a, b)
    assert d.shape == (2,) and (d > 0).all()
    assert torch.allclose(d, manual_lpips(files["state"], a, b), rtol=1e-4)
    assert torch.equal(lpips(a, a), torch.zeros(2))
    assert torch.allclose(lpips(b, a), d, rtol=1e-5)
    noise = torch.randn(a.shape, generator=torch.Generator().manual_seed(3))
    assert (lpips(a, a + 0.01 * noise) < lpips(a, a + 0.3 * noise)).all()
    # one channel is the same image repeated to three
    g1, g2 = images(4, c=1), images(5, c=1)
    assert torch.equal(lpips(g1, g2), lpips(g1.repeat(1, 3, 1, 1), g2.repeat(1, 3, 1, 1)))


def test_gradient_reaches_inputs_only(files, lpips):
    a, b = images(1).requires_grad_(), images(2)
    lpips(a, b).sum().backward()
    ref = images(1).requires_grad_()  # the gradient of the reference formula
    manual_lpips(files["state"], ref, b).sum().backward()
    torch.testing.assert_close(a.grad, ref.grad, rtol=1e-3, atol=1e-7)
    assert a.grad.abs().sum() > 0
    assert all(p.grad is None for p in lpips.parameters())
    # at a == b the distance is at its minimum 0: the gradient is 0 there (and finite)
    c = images(1).requires_grad_()
    lpips(c, images(1)).sum().backward()
    assert torch.equal(c.grad, torch.zeros_like(c.grad))


def test_input_errors(lpips):
    with pytest.raises(KDMError, match="equal shape"):
        lpips(images(1), images(2, c=1))
    with pytest.raises(KDMError, match="at least 16x16"):
        lpips(images(1, r=8), images(2, r=8))


def test_file_errors(files, tmp_path):
    with pytest.raises(KDMError, match="not found; LPIPS needs local VGG16 and LPIPS weights.*"
                                       "never downloaded") as e:
        LPIPS.from_files(tmp_path / "vgg16.pth", files["lin"])
    assert "\n" not in str(e.value)
    with pytest.raises(KDMError, match="lack 1 keys: lin4.model.1.weight"):
        LPIPS.from_files(files["vgg"], files["lin_short"])
    with pytest.raises(KDMError, match=r"lack 26 keys: features\.0\.weight"):
        LPIPS.from_files(files["lin"])
    extra = tmp_path / "extra.pth"
    torch.save({"lin5.model.1.weight": torch.zeros(1, 8, 1, 1)}, extra)
    with pytest.raises(KDMError, match="unexpected keys: lin5.model.1.weight"):
        LPIPS.from_files(files["both"], extra)
    wrong = tmp_path / "wrong.pth"
    torch.save({"lin0.model.1.weight": torch.zeros(1, 32, 1, 1)}, wrong)
    with pytest.raises(KDMError, match=r"lin0\.model\.1\.weight .* shape \(1, 32, 1, 1\)"):
        LPIPS.from_files(files["both"], wrong)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(KDMError, match="cannot read LPIPS weights") as e:
        LPIPS.from_files(junk, files["lin"])
    assert "\n" not in str(e.value)
