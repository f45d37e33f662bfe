"""``kdm analyze``: the computations on closed-form cases (an identity KDM, whose latent
neighbours are its noise neighbours; isometric maps, whose rank correlation is 1), the
within-label neighbours of conditional runs, and the command on the tiny checkerboard run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import kdm
from torch import nn

from koopman_distill.analysis import analyze_run, latent
from koopman_distill.api import StudentRun
from koopman_distill.config import apply_overrides, preset
from koopman_distill.errors import KDMError
from koopman_distill.students.kdm import KDM

PLOTS = {"neighbours", "interpolation", "spectrum", "eigen_directions", "outliers"}


class Identity(nn.Module):
    def forward(self, x, t=0.0, y=None):
        return x


def identity_kdm(tmp: Path, K: torch.Tensor, checkerboard: bool) -> StudentRun:
    """A KDM on 2-D points with E_T = D = identity and the dense K given: its sample of x_T
    is ``K x_T`` (sigma_max 1); with ``checkerboard`` its data is the board (squares as
    labels), else unknown."""
    cfg = apply_overrides(preset("checkerboard-tiny"), ["model.latent_dim=2",
                                                        "model.koopman_bias=false"])
    model = KDM((2,), cfg.model, 1.0, 0)
    model.E_T, model.D = Identity(), Identity()
    with torch.no_grad():
        model.K.linear.weight.copy_(K)
    meta = {"kind": "kdm", "shape": [2], "sigma_max": 1.0, "num_classes": 0,
            "pairs": str(tmp / "no-store"), "teacher_data": checkerboard}
    return StudentRun(model, cfg, meta)


def test_identity_kdm_latent_neighbours_are_noise_neighbours(tmp_path):
    r = analyze_run(identity_kdm(tmp_path, torch.eye(2), checkerboard=True), tmp_path / "a",
                    n=400, k=5, make_plots=False, progress=False)
    p = r["proximity"]
    assert r["settings"]["semantic_label"] == "square"
    assert p["agreement"]["latent"] == p["agreement"]["noise"]  # the same neighbours
    assert p["output_distance"]["latent"] == pytest.approx(p["output_distance"]["noise"])
    # N(0, 1) points on the board, half of them in its gaps (which agree with nothing):
    # neighbours share a square four times as often as random ones
    assert p["unlabelled_fraction"] == pytest.approx(0.5, abs=0.05)
    assert p["agreement"]["latent"] > 0.4 > 0.15 > p["agreement"]["random"]
    assert p["output_distance"]["random"] > 5 * p["output_distance"]["latent"]
    assert p["rank_correlation"]["latent_vs_output"] == pytest.approx(1.0)
    assert p["rank_correlation"]["noise_vs_output"] == pytest.approx(1.0)
    ratio = r["interpolation"]["path_length_over_end_distance"]
    assert ratio["latent"] == pytest.approx(1.0)  # a straight line decoded by the identity
    assert ratio["noise"] > 1.0  # the spherical path bends
    s = r["spectrum"]
    assert s["spectral_radius"] == pytest.approx(1.0) and s["outside_unit_circle"] == 0
    assert s["leading"][0]["output_change_per_std"] == pytest.approx(
        s["leading"][0]["latent_std_along"], rel=1e-5)  # D = identity: unit gain
    top = r["outliers"]["samples"]["top"]
    assert [t["score"] for t in top] == sorted((t["score"] for t in top), reverse=True)
    # for points, the lonely samples come from the noise's far tail
    assert np.mean([t["noise_norm_percentile"] for t in top]) > 80
    assert r["outliers"]["pairs"] is None  # no store on this machine
    assert r["plots"] == {}
    assert json.loads((tmp_path / "a" / "analysis.json").read_text())["proximity"] == p


def test_isometric_latent_rank_correlation_is_one(tmp_path):
    """K a scaled rotation: latent distances are noise distances times 3, and the outputs
    (K x_T) too, so both rank correlations are 1; a shear breaks it for the noise only."""
    c, s = np.cos(0.7), np.sin(0.7)
    rot = analyze_run(identity_kdm(tmp_path, torch.tensor([[3 * c, -3 * s], [3 * s, 3 * c]]),
                                   checkerboard=False), tmp_path / "rot", n=300, k=4,
                      make_plots=False, progress=False)["proximity"]
    assert "agreement" not in rot  # unknown data: no semantic label
    assert rot["rank_correlation"]["latent_vs_output"] == pytest.approx(1.0)
    assert rot["rank_correlation"]["noise_vs_output"] == pytest.approx(1.0)
    shear = analyze_run(identity_kdm(tmp_path, torch.tensor([[1.0, 4.0], [0.0, 1.0]]),
                                     checkerboard=False), tmp_path / "shear", n=300, k=4,
                        make_plots=False, progress=False)["proximity"]
    assert shear["rank_correlation"]["latent_vs_output"] == pytest.approx(1.0)
    assert shear["rank_correlation"]["noise_vs_output"] < 0.9
    assert shear["output_distance"]["latent"] < shear["output_distance"]["noise"]


def test_neighbours_stay_within_their_group():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    groups = np.repeat([0, 1, 2], 20)
    x[groups == 1] += 100  # far apart, yet only members of its group are neighbours
    for idx in (latent.neighbours(x, 4, groups), latent.random_neighbours(60, 4, groups, rng)):
        assert (groups[idx] == groups[:, None]).all()
        assert (idx != np.arange(60)[:, None]).all()
        assert all(len(set(row)) == 4 for row in idx)
    i, j = latent.random_pairs(60, 500, groups, rng)
    assert (groups[i] == groups[j]).all() and (i != j).all()
    nearest = latent.neighbours(x, 1)[:, 0]
    d = np.linalg.norm(x[:, None] - x[None], axis=-1) + np.diag(np.full(60, np.inf))
    assert (nearest == d.argmin(1)).all()
    with pytest.raises(KDMError, match="--n 60 is too small for --k 20 .* requested label"):
        latent.check_neighbours(groups, 60, 20)


def test_slerp_keeps_the_norm():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 50, generator=g)
    b = torch.randn(3, 50, generator=g)
    b = b / b.norm(dim=1, keepdim=True) * a.norm(dim=1, keepdim=True)
    path = latent.slerp(a, b, torch.linspace(0, 1, 7))
    assert torch.allclose(path[:, 0], a, atol=1e-5) and torch.allclose(path[:, -1], b, atol=1e-5)
    assert torch.allclose(path.norm(dim=-1), a.norm(dim=1, keepdim=True).expand(3, 7))
    assert not torch.allclose(latent.lerp(a, b, torch.linspace(0, 1, 7)).norm(dim=-1),
                              path.norm(dim=-1))  # a straight line shrinks the norm


def test_analyze_command_on_the_tiny_run(tiny, tmp_path, capsys):
    out = tmp_path / "an"
    assert kdm("analyze", tiny["kdm"], "--out", out, "--n", 300, "--k", 5, "--device",
               "cpu") == 0
    printed = capsys.readouterr().out
    assert "same square as the k=5 neighbours: latent" in printed
    r = json.loads((out / "analysis.json").read_text())
    assert set(r) >= {"run", "settings", "proximity", "outliers", "spectrum", "plots"}
    assert r["settings"]["n"] == 300 and r["settings"]["noise"] == "eval.seed"
    assert set(r["plots"]) == PLOTS | {"noise_structure"}
    for path in r["plots"].values():
        assert Path(path).is_file() and Path(path).parent == out.resolve()
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    p = r["proximity"]
    for rates in (p["agreement"], ):
        assert all(0 <= v <= 1 for v in rates.values())
    assert all(-1 <= v <= 1 for v in p["rank_correlation"].values())
    assert p["output_distance"]["latent"] <= p["output_distance"]["random"]
    pairs = r["outliers"]["pairs"]
    assert pairs["rows"] == 300 and len(pairs["top"]) == 16
    assert all(0 <= t["index"] < 512 and 0 < t["noise_norm_percentile"] < 100
               for t in pairs["top"])
    assert r["spectrum"]["d"] == 16 and len(r["spectrum"]["leading"]) == 4
    assert kdm("analyze", tiny["kdm"], "--out", out, "--n", 300) == 2  # without --force
    assert "already holds an analysis" in capsys.readouterr().err


def test_eigen_directions_of_a_rotation_and_a_decay():
    """K = 0.9 R(0.4) on (e1, e2) and 0.5 on e3: one of the conjugate pair 0.9 e^{±0.4i}
    first, its direction in the plane it rotates, then 0.5 along e3."""
    K = torch.zeros(3, 3, dtype=torch.float64)
    c, s = np.cos(0.4), np.sin(0.4)
    K[:2, :2] = 0.9 * torch.tensor([[c, -s], [s, c]])
    K[2, 2] = 0.5
    lam, V = latent.eigen_directions(K, 4)
    np.testing.assert_allclose(lam, [0.9 * np.exp(0.4j), 0.5], atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(V, axis=0), 1.0)
    assert abs(V[2, 0]) < 1e-12 and abs(abs(V[2, 1]) - 1) < 1e-12


def test_three_dimensional_pictures_are_projected(tmp_path):
    """D > 2: paths and outliers on the first two principal axes; D = 1: no picture."""
    from koopman_distill.domains import Vectors

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3)) * [5.0, 2.0, 0.1]
    walk = np.linspace(x[:2], x[2:4], 5, axis=1)  # (2, 5, 3)
    d = Vectors((3,))
    assert d.sequences({"walk": walk}, tmp_path / "w.png", x, None).is_file()
    scores = latent.knn_scores(x, 3)
    assert d.outliers({"points": (x, x, scores)}, tmp_path / "o.png", None, 5).is_file()
    one = Vectors((1,))
    assert one.sequences({"walk": walk[..., :1]}, tmp_path / "w1.png", x[:, :1], None) is None
    assert not (tmp_path / "w1.png").exists()
