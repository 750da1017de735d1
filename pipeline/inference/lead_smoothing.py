"""Smoothing of the leads an advection head extrapolates past its trained ones.

Beyond its last trained lead an advection head carries the field along its motion unchanged, so the
small scales it cannot predict stay as sharp at +60 min as at +15 min, and double penalties follow. S-PROG
removes such scales progressively with lead time; this does the same by hand with one number recorded in
the checkpoint (``long_lead_smoothing``): lead M + j is smoothed by a Gaussian of sigma = j x that number
(pixels), in physical units. The trained leads are never touched.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter, gaussian_filter1d

__all__ = ["smooth_extrapolated_leads"]


def smooth_extrapolated_leads(out: np.ndarray, trained_leads: int, variables: int, sigma_per_step: float) -> None:
    """Smooth, in place, the leads past ``trained_leads`` of ``out`` ``[n_leads * variables, H, W]``.

    A normalised convolution over the finite pixels: a NaN (no data) pixel stays NaN and weighs nothing,
    and the grid's outside weighs nothing either, so rain near an edge is spread, not diluted with zeros.
    Computed in float32 (the products' type); a field without gaps takes its weights from two 1-D edge
    profiles instead of a second 2-D filter.
    """
    if not sigma_per_step > 0:
        raise ValueError(f"sigma_per_step must be > 0 pixels, got {sigma_per_step}")
    if out.ndim != 3 or out.shape[0] % variables:
        raise ValueError(f"expected [n_leads * {variables}, H, W] outputs, got {out.shape}")
    for channel in range(trained_leads * variables, out.shape[0]):
        sigma = sigma_per_step * (channel // variables + 1 - trained_leads)
        field = out[channel]
        valid = np.isfinite(field)
        sums = gaussian_filter(np.where(valid, field, 0.0).astype(np.float32), sigma, mode="constant")
        if valid.all():
            weights = np.multiply.outer(*(_edge_profile(n, sigma) for n in field.shape))
        else:
            weights = gaussian_filter(valid.astype(np.float32), sigma, mode="constant")
        field[valid] = (sums[valid] / weights[valid]).astype(out.dtype)


def _edge_profile(n: int, sigma: float) -> np.ndarray:
    """The Gaussian-filtered ones of a line of ``n`` pixels, zero outside: the weight each pixel keeps."""
    return np.asarray(gaussian_filter1d(np.ones(n, dtype=np.float32), sigma, mode="constant"))
