"""Backward trajectories of pysteps' semi-Lagrangian extrapolation, integrated once and sampled many times.

pysteps' ``extrapolation.semilagrangian.extrapolate`` integrates, lead by lead, where each pixel's air
came from (one midpoint iteration per step, the motion interpolated bilinearly with nearest-edge
values) and samples the field there. The evaluation advects two fields along the same motion at
every analysis time: the LK forecast and the radar-coverage validity of the shared source mask.
Integrating the departure points twice cost as much again as the mask's sampling, so
:class:`Trajectory` integrates them once, with pysteps' operations in pysteps' order, and
:meth:`Trajectory.sample` samples any field with pysteps' own ``map_coordinates`` call: the numbers
are pysteps' to the bit (``tests/test_trajectory.py`` compares them with ``extrapolate``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import map_coordinates, maximum_filter, minimum_filter

__all__ = ["Trajectory"]

#: The largest ``minimum`` for which :meth:`Trajectory.covered` may take a source with four valid
#: corners as covered without sampling: their weights sum to 1 up to a few rounding errors.
COVERED_SHORTCUT_MAX = 0.999


@dataclass(frozen=True)
class Trajectory:
    """Departure points ``(n_leads, 2, H, W)`` float64: row then column where lead k's pixel comes from."""

    points: np.ndarray

    @property
    def n_leads(self) -> int:
        return int(self.points.shape[0])

    @classmethod
    def along(cls, velocity: np.ndarray, n_leads: int) -> Trajectory:
        """The departure points of leads 1..n_leads along ``velocity`` (2, H, W), pixels per step (x, then y)."""
        velocity = np.asarray(velocity, dtype=np.float64)  # as pysteps' callers pass it
        if velocity.ndim != 3 or velocity.shape[0] != 2:
            raise ValueError(f"velocity must be (2, H, W), got {velocity.shape}")
        if n_leads < 1:
            raise ValueError(f"n_leads must be >= 1, got {n_leads}")
        h, w = velocity.shape[1:]
        x_values, y_values = np.meshgrid(np.arange(w), np.arange(h), copy=False)
        xy_coords = np.stack([x_values, y_values])

        def motion_at(displacement: np.ndarray, out: np.ndarray) -> None:
            warped = xy_coords + displacement
            at = [warped[1, :, :], warped[0, :, :]]
            out[0, :, :] = map_coordinates(velocity[0, :, :], at, mode="nearest", order=1, prefilter=False)
            out[1, :, :] = map_coordinates(velocity[1, :, :], at, mode="nearest", order=1, prefilter=False)
            # pysteps then multiplies by td / vel_timestep, exactly 1 for unit steps: an exact no-op, left out

        displacement = np.zeros((2, h, w))
        velocity_inc = velocity.copy()
        points = np.empty((n_leads, 2, h, w))
        for k in range(n_leads):
            motion_at(displacement - velocity_inc / 2.0, velocity_inc)
            displacement -= velocity_inc
            motion_at(displacement, velocity_inc)
            warped = xy_coords + displacement
            points[k, 0], points[k, 1] = warped[1, :, :], warped[0, :, :]
        return cls(points)

    def _check(self, field: np.ndarray, n: int) -> None:
        if not 1 <= n <= self.n_leads:
            raise ValueError(f"this trajectory has {self.n_leads} leads; {n} asked")
        if field.shape != self.points.shape[-2:]:
            raise ValueError(f"field is {field.shape}, the trajectory {self.points.shape[-2:]}")

    def sample(self, field: np.ndarray, outval: float, n_leads: int | None = None) -> np.ndarray:
        """``field`` (H, W) at the departure points of leads 1..n_leads (all by default), ``outval`` outside."""
        n = self.n_leads if n_leads is None else n_leads
        self._check(field, n)
        return np.stack([
            map_coordinates(field, [self.points[k, 0], self.points[k, 1]], mode="constant", cval=outval, order=1,
                            prefilter=False)
            for k in range(n)
        ])

    def covered(self, valid: np.ndarray, minimum: float, n_leads: int | None = None) -> np.ndarray:
        """Bool (n_leads, H, W): where ``sample(valid as 0/1 float64, 0.0) >= minimum``, ``valid`` a bool (H, W).

        The same answer, with the interpolation done only where it can matter. A bilinear sample takes
        the four grid points around its departure point, all within the 3 x 3 pixels around the nearest
        one. Where those nine are all valid, the value is 1 up to rounding, so covered for any
        ``minimum`` up to :data:`COVERED_SHORTCUT_MAX`; where none is (or all lie outside the grid), it
        is 0, not covered. Only the departure points near a coverage edge or the grid's border are
        sampled, with :meth:`sample`'s own call, so the decisions at the threshold are its decisions.
        """
        n = self.n_leads if n_leads is None else n_leads
        mask = np.asarray(valid)
        if mask.dtype != np.bool_:
            raise ValueError(f"valid must be boolean, got {mask.dtype}")
        if not 0.0 < minimum <= COVERED_SHORTCUT_MAX:
            return np.asarray(self.sample(mask.astype(np.float64), 0.0, n) >= minimum)
        field = mask.astype(np.float64)
        self._check(field, n)
        h, w = mask.shape
        pad = 3  # a nearest pixel clipped to -2 .. H + 1 keeps its 3 x 3 pixels inside the padded grid
        padded = np.pad(mask.astype(np.uint8), pad)
        # 2: the 3 x 3 pixels all valid, 0: none valid, 1: mixed
        kind = (minimum_filter(padded, size=3, mode="constant", cval=0)
                + maximum_filter(padded, size=3, mode="constant", cval=0)).ravel()
        out = np.empty((n, h, w), dtype=bool)
        for k in range(n):
            rows, cols = self.points[k, 0].ravel(), self.points[k, 1].ravel()
            nearest = (np.clip(np.rint(rows), -2, h + 1).astype(np.intp) + pad) * (w + 2 * pad)
            nearest += np.clip(np.rint(cols), -2, w + 1).astype(np.intp) + pad
            kinds = kind[nearest]
            lead = out[k].reshape(-1)
            np.equal(kinds, 2, out=lead)
            mixed = np.flatnonzero(kinds == 1)
            if mixed.size:
                lead[mixed] = map_coordinates(field, [rows[mixed], cols[mixed]], mode="constant", cval=0.0, order=1,
                                              prefilter=False) >= minimum
        return out
