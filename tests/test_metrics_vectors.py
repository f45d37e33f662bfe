"""Vector metrics (any dimension D) against closed-form answers."""

import numpy as np
import pytest
import torch
from scipy import special
from scipy.stats import wasserstein_distance

from koopman_distill.data.checkerboard import sample_checkerboard
from koopman_distill.errors import KDMError
from koopman_distill.metrics import vectors
from koopman_distill.metrics.vectors import (
    energy_distance,
    evaluate_vectors,
    paired_error,
    random_directions,
    sliced_wasserstein,
)


def _normal(n: int, seed: int, shift=(0.0, 0.0)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 2)) + np.asarray(shift)


def test_directions_are_unit_and_seeded():
    u = random_directions(64, 3, seed=5)
    assert u.shape == (64, 3)
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0)
    np.testing.assert_array_equal(u, random_directions(64, 3, seed=5))


def test_sliced_wasserstein_of_a_set_with_itself_is_zero():
    x = _normal(1000, 0)
    assert sliced_wasserstein(x, x) == 0.0


def test_sliced_wasserstein_matches_scipy_for_unequal_sizes():
    x, y = _normal(301, 1), _normal(207, 2, shift=(0.3, -0.1)) * 1.5
    u = random_directions(16, 2, seed=7)
    expected = np.mean([wasserstein_distance(x @ v, y @ v) for v in u])
    assert sliced_wasserstein(x, y, projections=16, seed=7) == pytest.approx(expected, rel=1e-12)


def test_translation_moves_by_exactly_the_mean_projected_shift():
    x, m = _normal(5000, 3), np.array([1.5, -2.0])
    u = random_directions(128, 2, seed=11)
    expected = np.mean(np.abs(u @ m))  # each 1-D W1 is exactly |m . u|
    assert sliced_wasserstein(x, x + m, projections=128, seed=11) == pytest.approx(expected,
                                                                                    rel=1e-9)


def test_gaussian_shift_matches_closed_form():
    # E_u |m . u| = 2 |m| / pi for u uniform on the circle.
    m = np.array([2.0, 0.0])
    sw = sliced_wasserstein(_normal(10_000, 4), _normal(10_000, 5, shift=m), projections=1024)
    # direction noise ~0.02 (1 sigma) plus a finite-sample bias of ~0.01
    assert sw == pytest.approx(2 * np.linalg.norm(m) / np.pi, abs=0.08)


def test_sliced_wasserstein_chunking_is_exact(monkeypatch):
    x, y = _normal(200, 6), _normal(150, 7, shift=(1.0, 0.0))
    full = sliced_wasserstein(x, y, projections=50)
    monkeypatch.setattr(vectors, "_CHUNK_ELEMENTS", 1000)
    assert sliced_wasserstein(x, y, projections=50) == pytest.approx(full, rel=1e-12)


def _energy_brute(x: np.ndarray, y: np.ndarray) -> float:
    def d(a, b):
        return np.linalg.norm(a[:, None] - b[None], axis=-1)

    n, m = len(x), len(y)
    return (2 * d(x, y).mean() - d(x, x).sum() / (n * (n - 1)) - d(y, y).sum() / (m * (m - 1)))


def test_energy_distance_matches_brute_force_u_statistic(monkeypatch):
    x, y = _normal(300, 8), _normal(250, 9, shift=(0.5, 0.5))
    expected = _energy_brute(x, y)
    assert energy_distance(x, y) == pytest.approx(expected, rel=1e-10)
    monkeypatch.setattr(vectors, "_CHUNK_ELEMENTS", 500)  # many small blocks
    assert energy_distance(x, y) == pytest.approx(expected, rel=1e-10)


def test_energy_distance_same_vs_shifted():
    same = energy_distance(_normal(3000, 10), _normal(3000, 11), n=2000)
    shifted = energy_distance(_normal(3000, 10), _normal(3000, 11, shift=(1.0, 0.0)), n=2000)
    assert abs(same) < 0.01
    # Population value for a unit shift m of N(0, I) in 2-D: X - Y ~ N(m, 2I), X - X' ~ N(0, 2I),
    # so 2 E|X - Y| - 2 E|X - X'| with the Rice mean sqrt(pi) L_1/2(-|m|^2 / 4) and sqrt(pi):
    # 0.4298. The estimate's spread over seeds at n = 2000 is 0.022.
    x = -0.25
    rice = np.exp(x / 2) * ((1 - x) * special.i0(-x / 2) - x * special.i1(-x / 2))
    population = 2 * np.sqrt(np.pi) * (rice - 1)
    assert population == pytest.approx(0.4298, abs=1e-4)
    assert shifted == pytest.approx(population, abs=0.07)


def test_energy_distance_subsample_is_seeded():
    x, y = _normal(500, 12), _normal(500, 13, shift=(0.2, 0.0))
    assert energy_distance(x, y, n=100, seed=1) == energy_distance(x, y, n=100, seed=1)
    assert energy_distance(x, y, n=100, seed=1) != energy_distance(x, y, n=100, seed=2)


def test_paired_error_closed_form():
    target = _normal(4, 14)
    pred = target + np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    err = paired_error(torch.tensor(pred), target)
    sq = np.array([25.0, 0.0, 1.0, 4.0])
    assert err["sq_error_per_sample"] == pytest.approx(sq.mean())
    assert err["mse"] == pytest.approx(sq.mean() / 2)
    assert err["rmse_per_sample"] == pytest.approx(np.sqrt(sq.mean()))
    assert err["max_sq_error_per_sample"] == pytest.approx(25.0)
    assert err["median_sq_error_per_sample"] == pytest.approx(2.5)
    # sample standard deviation of (25, 0, 1, 4) over sqrt(4)
    assert err["sq_error_per_sample_se"] == pytest.approx(np.sqrt(417 / 3) / 2)
    assert np.isnan(paired_error(pred[:1], target[:1])["sq_error_per_sample_se"])
    with pytest.raises(KDMError, match="same shape"):
        paired_error(pred[:3], target)


def test_evaluate_vectors_on_checkerboard():
    gen = torch.Generator().manual_seed(0)
    samples, ref, ref2 = (sample_checkerboard(4000, gen) for _ in range(3))
    out = evaluate_vectors(samples, reference=ref, reference_2=ref2,
                           paired_target=samples + 0.1, projections=64, seed=0, energy_n=1000)
    assert out["n"] == 4000 and out["n_reference"] == 4000
    assert 0 < out["sliced_wasserstein"] < 0.1
    assert abs(out["energy_distance"]) < 0.02
    assert 0 < out["sliced_wasserstein_floor"] < 0.1
    assert out["paired_mse"] == pytest.approx(0.01, rel=1e-5)
    assert out["paired_sq_error_per_sample"] == pytest.approx(0.02, rel=1e-5)
    shifted = evaluate_vectors(samples + 1.0, reference=ref, projections=64, seed=0,
                               energy_n=1000)
    assert shifted["sliced_wasserstein"] > 0.5
    assert shifted["energy_distance"] > 0.1
    assert "paired_mse" not in shifted and "sliced_wasserstein_floor" not in shifted
    assert not any("inside" in k for k in out)  # the board's metrics are the board's


def test_evaluate_vectors_in_five_dimensions_closed_form():
    # a set against itself scores 0; shifted by m, each 1-D W1 is exactly |m . u|
    x, m = np.random.default_rng(20).standard_normal((3000, 5)), np.full(5, 0.5)
    same = evaluate_vectors(x, reference=x, paired_target=x, projections=64, seed=3,
                            energy_n=500)
    assert same["sliced_wasserstein"] == 0.0 and same["paired_mse"] == 0.0
    assert abs(same["energy_distance"]) < 0.02  # two subsamples of one set
    moved = evaluate_vectors(x + m, reference=x, paired_target=x, projections=64, seed=3,
                             energy_n=500)
    u = random_directions(64, 5, seed=3)
    assert moved["sliced_wasserstein"] == pytest.approx(np.mean(np.abs(u @ m)), rel=1e-9)
    assert moved["paired_sq_error_per_sample"] == pytest.approx(5 * 0.25, rel=1e-12)
    assert moved["paired_mse"] == pytest.approx(0.25, rel=1e-12)


def test_evaluate_vectors_nan_rows_reported_with_count_and_rows():
    x = _normal(100, 15)
    x[[3, 17, 40]] = np.nan
    x[41, 1] = np.inf
    with pytest.raises(KDMError) as exc:
        evaluate_vectors(x, reference=_normal(100, 16), projections=8, seed=0, energy_n=50)
    msg = str(exc.value)
    assert "\n" not in msg
    assert "4 of 100 rows" in msg and "rows 3, 17, 40, 41" in msg


@pytest.mark.parametrize(("bad", "pattern"), [
    (np.zeros((10, 3)), r"reference must have shape \(N, 3\)"),
    (np.zeros(10), r"shape \(N, D\)"),
    (np.zeros((0, 2)), "empty"),
    ([["a", "b"]], "numeric"),
])
def test_evaluate_vectors_bad_input(bad, pattern):
    with pytest.raises(KDMError, match=pattern):
        evaluate_vectors(bad, reference=_normal(10, 0), projections=4, seed=0, energy_n=10)


def test_evaluate_vectors_paired_target_must_match():
    with pytest.raises(KDMError, match="paired_target"):
        evaluate_vectors(_normal(10, 0), reference=_normal(10, 1), paired_target=_normal(9, 2),
                         projections=4, seed=0, energy_n=10)
