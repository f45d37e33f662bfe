"""The checkerboard sampler and its square numbering."""

import numpy as np
import pytest
import torch

from koopman_distill.data.checkerboard import (
    SCALE,
    far_misses,
    inside_fraction,
    sample_checkerboard,
    square_corners,
    square_index,
)
from koopman_distill.errors import KDMError


def _sample(n: int = 20_000, seed: int = 0) -> torch.Tensor:
    return sample_checkerboard(n, torch.Generator().manual_seed(seed))


def test_samples_shape_dtype_and_all_inside():
    x = _sample()
    assert x.shape == (20_000, 2) and x.dtype == torch.float32
    assert inside_fraction(x) == 1.0
    assert float(x.abs().max()) <= 2 * SCALE


def test_each_square_gets_one_eighth():
    counts = np.bincount(square_index(_sample()), minlength=8) / 20_000
    assert counts.shape == (8,)
    np.testing.assert_allclose(counts, 1 / 8, atol=0.01)  # binomial std ~0.0023


def test_seeded_sampling_is_reproducible():
    assert torch.equal(_sample(100, seed=3), _sample(100, seed=3))
    assert not torch.equal(_sample(100, seed=3), _sample(100, seed=4))


def test_hand_picked_points():
    # (u, v) in unscaled cell units; the numbering is row-major, bottom row first.
    uv = np.array([
        [-1.5, -1.5],  # cell (-2, -2) -> 0
        [0.5, -1.5],   # cell (0, -2) -> 1
        [-0.5, -0.5],  # cell (-1, -1) -> 2
        [1.5, -0.5],   # cell (1, -1) -> 3
        [-1.5, 0.5],   # cell (-2, 0) -> 4
        [0.5, 0.5],    # cell (0, 0) -> 5
        [-0.5, 1.5],   # cell (-1, 1) -> 6
        [1.5, 1.5],    # cell (1, 1) -> 7
        [-0.5, -1.5],  # cell (-1, -2): empty
        [0.5, -0.5],   # cell (0, -1): empty
        [2.5, 0.5],    # off the board
        [0.5, -2.01],  # off the board
        [np.nan, 0.5],
        [np.inf, 0.5],
    ])
    expected = [0, 1, 2, 3, 4, 5, 6, 7, -1, -1, -1, -1, -1, -1]
    idx = square_index(uv * SCALE)
    assert idx.dtype.kind == "i"
    assert idx.tolist() == expected
    assert square_index(torch.tensor(uv * SCALE)).tolist() == expected
    assert inside_fraction(uv * SCALE) == pytest.approx(8 / 14)


def test_square_corners_match_numbering():
    centres = square_corners() + SCALE / 2
    assert square_index(centres).tolist() == list(range(8))


@pytest.mark.parametrize("bad", [np.zeros((3, 3)), np.zeros(2), np.zeros((2, 2, 2))])
def test_bad_shape_is_kdm_error(bad):
    with pytest.raises(KDMError, match=r"shape \(N, 2\)"):
        square_index(bad)


def test_bad_count_and_empty():
    with pytest.raises(KDMError, match="non-negative integer"):
        sample_checkerboard(-1)
    assert sample_checkerboard(0).shape == (0, 2)
    with pytest.raises(KDMError, match="empty"):
        inside_fraction(np.zeros((0, 2)))


def test_far_misses_are_samples_half_a_square_off_and_carry_their_error_share():
    centre = square_corners()[:2] + SCALE / 2  # centres of squares 0 and 1
    target = np.repeat(centre[:1], 10, axis=0)  # 10 targets in square 0
    samples = target.copy()
    samples[:7] += 0.01  # imprecise but in place: squared error 2e-4 each
    samples[7, 0] += 0.49 * SCALE  # just under half a square side off: not far
    samples[8] = centre[1]  # in square 1, two sides away: squared error 4 SCALE^2
    samples[9, 1] += 0.51 * SCALE  # just over half a side, into the gap above
    far, res = far_misses(samples, target)
    assert far.tolist() == [False] * 8 + [True, True]
    assert res["far_miss_fraction"] == pytest.approx(0.2)
    sq = np.sum((samples - target) ** 2, axis=1)
    assert sq[8] == pytest.approx(4 * SCALE**2)
    assert res["paired_sq_error_share_from_far_misses"] == pytest.approx(sq[8:].sum() / sq.sum())
    assert far_misses(target, target)[1] == {
        "far_miss_fraction": 0.0, "paired_sq_error_share_from_far_misses": 0.0}
    with pytest.raises(KDMError, match="paired"):
        far_misses(samples[:3], target)


def test_extras_apply_to_the_checkerboard_only():
    from koopman_distill.evaluation.extras import dataset_extras

    assert dataset_extras("/data/moons.npy") is None and dataset_extras(None) is None
    extras = dataset_extras("checkerboard")
    centre = square_corners()[:1] + SCALE / 2
    target = np.repeat(centre, 4, axis=0)
    samples = target.copy()
    samples[0] = np.array([1.5, 0.5]) * SCALE  # in the gap of cell (1, 0), squares away
    got = extras.metrics(samples, target)
    assert got["inside_fraction"] == pytest.approx(0.75)
    assert got["far_miss_fraction"] == pytest.approx(0.25)
    assert got["paired_sq_error_share_from_far_misses"] == pytest.approx(1.0)
    assert extras.metrics(samples, None) == {"inside_fraction": pytest.approx(0.75)}
    assert extras.training_metrics(target) == {"inside": 1.0}
    check = extras.quality_check({"inside_fraction": 0.9}, {"inside_fraction": 0.95})
    assert check["kdm_inside_minus_kd_inside"] == pytest.approx(-0.05)
    assert check["quality_target_met"] is False
    assert check["quality_check"] == "KDM inside - KD inside = -0.0500 (target >= 0)"
