"""The evaluation's scoring: several methods on one shared observation side, hand counts, and float32 events.

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
    """One method scored alone: its own observation side (``update`` is ``score_methods`` of that method)."""
    acc.update(forecast, observation, mask)


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
    """Counted by hand: a 33-pixel window over a 12 x 14 grid sees the whole grid; a lead with no scored pixel
    adds nothing and scores NaN, never 0."""
    rng = np.random.default_rng(3)
    obs, fc, _, mask = _fields(rng, (2, 12, 14), np.float32)
    mask[1] = False
    acc = LeadTimeScores(2, [0.5], 0.5, _windows(1, 3, 33))
    acc.update(fc, obs, mask)
    m = mask[0]
    fe, oe = (np.asarray(fc[0], dtype=np.float64) >= 0.5) & m, (np.asarray(obs[0], dtype=np.float64) >= 0.5) & m
    assert acc.n_pixels.tolist() == [int(m.sum()), 0]
    assert acc.hits.tolist() == [[int((fe & oe).sum())], [0]]
    assert acc.forecast_events.tolist() == [[int(fe.sum())], [0]]
    pf, po = fe.sum() / m.sum(), oe.sum() / m.sum()  # every scored pixel's 33-pixel window: the whole grid
    n = int(m.sum())
    assert n > 50 and 0 < fe.sum() < n and 0 < oe.sum() < n
    np.testing.assert_allclose(acc.fss_num[0, 2], n * (pf - po) ** 2, rtol=1e-12)
    np.testing.assert_allclose(acc.fss_den[0, 2], n * (pf**2 + po**2), rtol=1e-12)
    assert acc.fss_num[1].tolist() == [0.0, 0.0, 0.0] and acc.sum_abs_error[1] == 0.0
    second = {s.metric: s.value for s in acc.scores() if s.lead_index == 1}
    assert np.isnan(second["csi@0.5"]) and np.isnan(second["mae"])


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
        fss32 = scores.fss_sums(fc, obs, mask, 0.7, [1, 5, 33])
        fss64 = scores.fss_sums(fc.astype(np.float64), obs.astype(np.float64), mask, 0.7, [1, 5, 33])
        np.testing.assert_array_equal(fss32.diff_sq.numpy(), fss64.diff_sq.numpy())
        np.testing.assert_array_equal(fss32.fct_sq.numpy(), fss64.fct_sq.numpy())
