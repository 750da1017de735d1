"""The evaluation's scoring: several methods on one shared observation side, and the kernel's float32 events.

``score_methods`` computes the observation's FSS fractions once per analysis time and scores every
method against them; these tests require its counts and sums to equal, not approach, each method
scored alone by the kernel (scores.csv prints the full float). The kernel compares float32 fields
with float32-rounded thresholds instead of widening them; that must count exactly the events a
float64 comparison counts.
"""

from __future__ import annotations

import numpy as np
import pytest

from meteovision.pipeline.verification import scores
from meteovision.pipeline.verification.lead_scores import FssWindow, LeadTimeScores, score_methods

SUMS = ("hits", "forecast_events", "observed_events", "n_pixels", "n_times", "sum_abs_error", "sum_error",
        "fss_num", "fss_den")


def _windows(*pixels: int) -> list[FssWindow]:
    return [FssWindow(requested_km=float(p), scale_km=float(p), pixels=p, effective_km=float(p)) for p in pixels]


def _reference_add(acc: LeadTimeScores, forecast: np.ndarray, observation: np.ndarray, mask: np.ndarray) -> None:
    """The kernel's sums of one method scored alone."""
    observed = scores.observed_fractions(observation, mask, acc.fss_threshold, [w.pixels for w in acc.windows])
    table = scores.contingency_sums(forecast, observation, mask, acc.thresholds)
    errors = scores.error_sums(forecast, observation, mask)
    fss = scores.fss_sums(forecast, observed)
    acc.n_times += 1
    acc.n_pixels += table.n.numpy()
    acc.hits += table.hits.numpy()
    acc.forecast_events += table.forecast_events.numpy()
    acc.observed_events += table.observed_events.numpy()
    acc.sum_abs_error += errors.sum_abs_error.numpy()
    acc.sum_error += errors.sum_error.numpy()
    acc.fss_num += fss.diff_sq.numpy()
    acc.fss_den += (fss.fct_sq + fss.obs_sq).numpy()


def _fields(rng: np.random.Generator, shape: tuple[int, int, int], dtype: type) -> tuple[np.ndarray, ...]:
    """Rain-like observation and two forecasts with values right on and beside the thresholds, and a mask
    with a no-data block, scattered holes and NaN outside it."""
    obs = rng.gamma(0.6, 2.0, shape) * (rng.random(shape) < 0.6)
    specials = np.array([0.1, 0.3, 0.7, 1.0, 2.5], dtype=np.float32)  # float32(0.7) < 0.7, float32(0.3) > 0.3
    obs.flat[rng.integers(0, obs.size, 200)] = rng.choice(np.concatenate([
        specials, np.nextafter(specials, np.float32(0)), np.nextafter(specials, np.float32(9))]), 200)
    near = obs + rng.normal(0.0, 0.5, shape).clip(-obs, None)
    far = np.roll(obs, (3, -4), axis=(1, 2))
    mask = rng.random(shape) > 0.05
    mask[:, :7, -9:] = False
    obs = obs.astype(dtype)
    obs[~mask & (rng.random(shape) < 0.5)] = np.nan
    return obs, near.astype(dtype), far.astype(dtype), mask


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("thresholds", "fss_threshold"), [([0.5, 1.0, 5.0, 10.0], 1.0), ([0.1, 0.7, 2.5], 0.3)])
def test_shared_observation_equals_each_method_alone(
    dtype: type, thresholds: list[float], fss_threshold: float,
) -> None:
    rng = np.random.default_rng(14)
    windows = _windows(1, 3, 5, 9, 17, 33)
    fast = {name: LeadTimeScores(4, thresholds, fss_threshold, windows) for name in ("near", "far")}
    slow = {name: acc.empty_like() for name, acc in fast.items()}
    for _ in range(3):  # several analysis times accumulate in the same order both ways
        obs, near, far, mask = _fields(rng, (4, 41, 57), dtype)
        score_methods(fast, {"near": near, "far": far}, obs, mask)
        _reference_add(slow["near"], near, obs, mask)
        _reference_add(slow["far"], far, obs, mask)
    for name, acc in fast.items():
        for state in SUMS:
            np.testing.assert_array_equal(getattr(acc, state), getattr(slow[name], state), err_msg=f"{name} {state}")
        fast_scores, slow_scores = list(acc.scores()), list(slow[name].scores())
        assert [s.metric for s in fast_scores] == [s.metric for s in slow_scores]
        np.testing.assert_array_equal([s.value for s in fast_scores], [s.value for s in slow_scores])


def test_windows_larger_than_the_grid_and_a_masked_lead() -> None:
    rng = np.random.default_rng(3)
    obs, fc, _, mask = _fields(rng, (2, 6, 5), np.float32)
    mask[1] = False  # nothing scored at the second lead: NaN scores, zero counts
    fast = LeadTimeScores(2, [0.5], 0.5, _windows(1, 3, 33))
    slow = fast.empty_like()
    fast.update(fc, obs, mask)
    _reference_add(slow, fc, obs, mask)
    for state in SUMS:
        np.testing.assert_array_equal(getattr(fast, state), getattr(slow, state), err_msg=state)


def test_methods_with_other_thresholds_share_one_observation() -> None:
    rng = np.random.default_rng(5)
    obs, near, far, mask = _fields(rng, (2, 20, 30), np.float32)
    windows = _windows(1, 5)
    fast = {"a": LeadTimeScores(2, [0.5, 1.0], 1.0, windows), "b": LeadTimeScores(2, [5.0], 1.0, windows)}
    score_methods(fast, {"a": near, "b": far}, obs, mask)
    for name, fc in (("a", near), ("b", far)):
        slow = fast[name].empty_like()
        _reference_add(slow, fc, obs, mask)
        for state in SUMS:
            np.testing.assert_array_equal(getattr(fast[name], state), getattr(slow, state), err_msg=state)


@pytest.mark.parametrize("thresholds", [[0.1, 0.3, 0.7, 1.0, 2.5], [0.5, 1.0, 5.0, 10.0]])
def test_float32_events_count_as_a_float64_comparison(thresholds: list[float]) -> None:
    """Values on and one float32 step beside each threshold (float32(0.7) < 0.7 < its successor)."""
    rng = np.random.default_rng(21)
    obs, near, far, mask = _fields(rng, (3, 30, 40), np.float32)
    for fc in (near, far):
        single = scores.contingency_sums(fc, obs, mask, thresholds)
        double = scores.contingency_sums(fc.astype(np.float64), obs.astype(np.float64), mask, thresholds)
        for name in ("hits", "forecast_events", "observed_events", "n"):
            np.testing.assert_array_equal(getattr(single, name).numpy(), getattr(double, name).numpy(), err_msg=name)
        for t in thresholds:
            want = np.count_nonzero((fc.astype(np.float64) >= t) & mask)
            assert int(single.forecast_events[:, thresholds.index(t)].sum()) == want
        fss32 = scores.fss_sums(fc, scores.observed_fractions(obs, mask, 0.7, [1, 5, 33]))
        fss64 = scores.fss_sums(fc.astype(np.float64),
                                scores.observed_fractions(obs.astype(np.float64), mask, 0.7, [1, 5, 33]))
        np.testing.assert_array_equal(fss32.diff_sq.numpy(), fss64.diff_sq.numpy())
        np.testing.assert_array_equal(fss32.fct_sq.numpy(), fss64.fct_sq.numpy())
