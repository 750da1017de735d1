"""The shared semi-Lagrangian trajectory samples fields exactly as pysteps' ``extrapolate`` advects them."""

from __future__ import annotations

import numpy as np
import pytest

from meteovision.pipeline.verification.trajectory import Trajectory

extrapolate = pytest.importorskip("pysteps.extrapolation.semilagrangian").extrapolate


def _velocity(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth rotating flow of 1-3 px per step with noise: departure points leave the grid on two sides."""
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    u = 2.0 + 0.8 * np.sin(rows / 9.0) + 0.1 * rng.standard_normal((h, w))
    v = -1.0 + 0.6 * np.cos(cols / 7.0) + 0.1 * rng.standard_normal((h, w))
    return np.stack([u, v])


@pytest.mark.parametrize("outval", [np.nan, 0.0, -15.0])
def test_samples_equal_pysteps_extrapolate_bit_for_bit(outval: float) -> None:
    rng = np.random.default_rng(7)
    h, w, n = 37, 51, 9
    velocity = _velocity(rng, h, w)
    field = rng.gamma(0.7, 3.0, (h, w))
    trajectory = Trajectory.along(velocity, n)
    got = trajectory.sample(field, outval)
    want = np.asarray(extrapolate(field, velocity, n, outval=outval))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(trajectory.sample(field, outval, n_leads=4), want[:4])
    assert np.isnan(got).any() if np.isnan(outval) else (got == outval).any(), "some sources left the grid"


def test_a_trajectory_refuses_what_it_does_not_cover() -> None:
    trajectory = Trajectory.along(np.ones((2, 6, 8)), 3)
    with pytest.raises(ValueError, match="3 leads; 4 asked"):
        trajectory.sample(np.zeros((6, 8)), 0.0, n_leads=4)
    with pytest.raises(ValueError, match=r"field is \(6, 7\)"):
        trajectory.sample(np.zeros((6, 7)), 0.0)
    with pytest.raises(ValueError, match=r"velocity must be \(2, H, W\)"):
        Trajectory.along(np.ones((3, 6, 8)), 3)


@pytest.mark.parametrize("minimum", [0.999, 0.5, 1.0])
def test_covered_equals_thresholding_the_sampled_validity(minimum: float) -> None:
    """``covered`` samples only near coverage edges and the grid's border; its answer is the full sampling's,
    the threshold decisions included (1.0 takes the full path: four valid corners may sum to 1 - 1 ulp)."""
    rng = np.random.default_rng(3)
    h, w, n = 41, 53, 12
    trajectory = Trajectory.along(3.0 * _velocity(rng, h, w), n)  # up to ~8 px per step: many sources leave
    valid = np.ones((h, w), dtype=bool)
    valid[10:20, 5:30] = False  # a hole in the coverage
    valid[rng.random((h, w)) < 0.05] = False  # and scattered gaps
    valid[:, -4:] = False  # a strip outside the coverage along one border
    want = trajectory.sample(valid.astype(np.float64), 0.0) >= minimum
    got = trajectory.covered(valid, minimum)
    np.testing.assert_array_equal(got, want)
    assert want.any() and not want.all()
    np.testing.assert_array_equal(trajectory.covered(valid, minimum, n_leads=5), want[:5])
    with pytest.raises(ValueError, match="boolean"):
        trajectory.covered(valid.astype(np.float64), minimum)
