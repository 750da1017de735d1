"""Leads past an advection head's trained ones are smoothed by sigma = j x long_lead_smoothing pixels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from meteovision.pipeline.inference.lead_smoothing import smooth_extrapolated_leads


def test_trained_leads_stay_and_later_ones_are_smoothed_more_with_each_step() -> None:
    rng = np.random.default_rng(0)
    out = rng.gamma(0.5, 2.0, (5, 64, 64)).astype(np.float32)
    before = out.copy()
    smooth_extrapolated_leads(out, trained_leads=2, variables=1, sigma_per_step=0.8)
    np.testing.assert_array_equal(out[:2], before[:2])
    for lead, sigma in ((2, 0.8), (3, 1.6), (4, 2.4)):
        # away from the edges every pixel is valid: exactly scipy's Gaussian of sigma = j x 0.8 px
        want = gaussian_filter(before[lead].astype(np.float64), sigma, mode="constant")
        np.testing.assert_allclose(out[lead, 16:-16, 16:-16], want[16:-16, 16:-16], rtol=1e-6)
    assert out[2].std() > out[3].std() > out[4].std()


def test_no_data_stays_no_data_and_weighs_nothing() -> None:
    """A uniform rain rate with holes and edges stays uniform: a normalised convolution, not a dilution."""
    out = np.full((3, 40, 50), 2.5, dtype=np.float32)
    out[:, 10:20, 5:15] = np.nan
    smooth_extrapolated_leads(out, trained_leads=1, variables=1, sigma_per_step=1.5)
    assert np.isnan(out[:, 10:20, 5:15]).all()
    np.testing.assert_allclose(out[np.isfinite(out)], 2.5, rtol=1e-6)


def test_interior_rain_keeps_its_total() -> None:
    out = np.zeros((2, 60, 60))
    out[:, 28:32, 25:30] = 8.0
    smooth_extrapolated_leads(out, trained_leads=1, variables=1, sigma_per_step=2.0)
    assert out[1].sum() == pytest.approx(8.0 * 20, rel=1e-6)
    assert out[1].max() < 0.6 * 8.0  # spread, not removed


def test_several_variables_per_lead_and_refusals() -> None:
    out = np.ones((6, 8, 8))
    out[4:, 3, 3] = 9.0  # lead 3 (channels 4-5) is past the 2 trained leads of 2 variables
    smooth_extrapolated_leads(out, trained_leads=2, variables=2, sigma_per_step=1.0)
    assert (out[:4] == 1.0).all() and (out[4:, 3, 3] < 9.0).all()
    with pytest.raises(ValueError, match="sigma_per_step"):
        smooth_extrapolated_leads(out, 2, 2, 0.0)
    with pytest.raises(ValueError, match=r"n_leads \* 4"):
        smooth_extrapolated_leads(out, 1, 4, 1.0)


def test_the_task_records_the_setting_and_refuses_a_negative_one() -> None:
    from meteovision.pipeline.training.tasks import NowcastTask

    task = NowcastTask("nowcast_precip", nowcast_head="advection", long_lead_smoothing=0.25)
    assert task.network_description(3, 3).long_lead_smoothing == 0.25
    assert NowcastTask("nowcast_precip", nowcast_head="advection").network_description(3, 3).long_lead_smoothing is None
    with pytest.raises(ValueError, match="long_lead_smoothing"):
        NowcastTask("nowcast_precip", long_lead_smoothing=-0.1)
