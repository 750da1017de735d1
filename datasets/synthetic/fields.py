"""Building blocks of synthetic weather fields: power-law noise, its slow evolution,
semi-Lagrangian advection by a rotating motion field, and cell / line / arc shapes.

Array convention: index space ``(row, col)``; row grows southward, col eastward.
Velocities are in cells per time step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


def _radial_wavenumber(shape: tuple[int, int]) -> np.ndarray:
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None, :]
    return np.sqrt(kx**2 + ky**2)


def powerlaw_filter(shape: tuple[int, int], beta: float, scale_break: float | None = None) -> np.ndarray:
    """Amplitude filter ``k**(beta/2)`` (power spectrum ``k**beta``) on the rfft2 grid; DC removed.

    Above ``scale_break`` cells the spectrum is flat, so a domain's statistics do not hinge on
    the few largest waves of a bigger canvas (inflowing rain looks like the rain already there).
    """
    k = _radial_wavenumber(shape)
    k[0, 0] = 1.0
    if scale_break is not None:
        k = np.maximum(k, 1.0 / scale_break)
    amp = k ** (beta / 2.0)
    amp[0, 0] = 0.0
    return amp


def _standardise(field: np.ndarray) -> np.ndarray:
    std = float(field.std())
    return (field - field.mean()) / (std if std > 0 else 1.0)


def powerlaw_noise(
    rng: np.random.Generator, shape: tuple[int, int], beta: float = -3.0, scale_break: float | None = None
) -> np.ndarray:
    """Zero-mean unit-variance Gaussian field with power spectrum ~ k**beta (pysteps-like).

    beta near -3 gives rain-like multiscale structure; more negative is smoother.
    """
    white = np.fft.rfft2(rng.standard_normal(shape))
    return _standardise(np.fft.irfft2(white * powerlaw_filter(shape, beta, scale_break), s=shape))


class EvolvingNoise:
    """Power-law field that decorrelates in time, small scales faster than large ones.

    ``F(t) = F0 cos(w(k) t) + F1 sin(w(k) t)`` in Fourier space keeps the spectrum (and
    variance) fixed while the field's structure evolves: growth and decay of features
    in the Lagrangian frame, as in pysteps' scale-dependent AR models.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        shape: tuple[int, int],
        beta: float = -3.0,
        rate: float = 0.05,
        scale_break: float | None = None,
    ) -> None:
        self.shape = shape
        amp = powerlaw_filter(shape, beta, scale_break)
        self._f0 = np.fft.rfft2(rng.standard_normal(shape)) * amp
        self._f1 = np.fft.rfft2(rng.standard_normal(shape)) * amp
        k = _radial_wavenumber(shape)
        # w grows with wavenumber: a 4-cell feature changes ~3x faster than a 64-cell one
        self._omega = rate * np.sqrt(k / 0.0625)
        base = np.fft.irfft2(self._f0, s=shape)
        self._mean = float(base.mean())
        self._std = float(base.std()) or 1.0

    def at(self, t: float) -> np.ndarray:
        spec = self._f0 * np.cos(self._omega * t) + self._f1 * np.sin(self._omega * t)
        return (np.fft.irfft2(spec, s=self.shape) - self._mean) / self._std


@dataclass(frozen=True)
class RigidMotion:
    """Translation plus solid rotation about ``centre``: v(p) = (v_row, v_col) + omega x (p - centre).

    ``omega`` is in radians per step, positive = counter-clockwise on a north-up map.
    """

    v_row: float
    v_col: float
    omega: float
    centre: tuple[float, float]

    def velocity(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # north-up map: east = +col, north = -row. CCW rotation of (east, north) by omega
        east = cols - self.centre[1]
        north = -(rows - self.centre[0])
        v_east = -self.omega * north
        v_north = self.omega * east
        return self.v_row - v_north, self.v_col + v_east

    def max_speed(self, shape: tuple[int, int]) -> float:
        r = float(np.hypot(*shape))
        return float(np.hypot(self.v_row, self.v_col)) + abs(self.omega) * r


def trace(
    motion: RigidMotion,
    rows: np.ndarray,
    cols: np.ndarray,
    steps: float,
    substeps: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """Positions after ``steps`` time steps along the flow (negative ``steps`` traces backward).

    Midpoint (RK2) integration with ``substeps`` per step, as a semi-Lagrangian scheme does.
    """
    n = max(1, round(abs(steps) * substeps))
    h = steps / n
    r = np.asarray(rows, dtype=np.float64).copy()
    c = np.asarray(cols, dtype=np.float64).copy()
    for _ in range(n):
        vr, vc = motion.velocity(r, c)
        vr2, vc2 = motion.velocity(r + 0.5 * h * vr, c + 0.5 * h * vc)
        r += h * vr2
        c += h * vc2
    return r, c


class Advector:
    """Semi-Lagrangian advection of source fields drawn on a padded canvas.

    The frame at step t samples the t=0 canvas at the back-trajectory of each cell, so
    features keep their sharpness (one interpolation per frame, no numerical diffusion),
    and rain flowing in from outside the domain is already drawn on the padding.
    """

    def __init__(self, motion: RigidMotion, shape: tuple[int, int], n_steps: int) -> None:
        self.motion = motion
        self.shape = shape
        self.pad = int(np.ceil(motion.max_speed(shape) * n_steps)) + 4
        self.canvas_shape = (shape[0] + 2 * self.pad, shape[1] + 2 * self.pad)
        self._rows, self._cols = np.meshgrid(
            np.arange(shape[0], dtype=np.float64), np.arange(shape[1], dtype=np.float64), indexing="ij"
        )
        self._cache: dict[float, tuple[np.ndarray, np.ndarray]] = {}

    def origin(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Canvas coordinates (row, col) at t=0 of the fluid now at each domain cell."""
        if t not in self._cache:
            r, c = trace(self.motion, self._rows, self._cols, -t)
            self._cache[t] = (r + self.pad, c + self.pad)
        return self._cache[t]

    def sample(self, canvas: np.ndarray, t: float, order: int = 1) -> np.ndarray:
        if canvas.shape != self.canvas_shape:
            raise ValueError(f"canvas shape {canvas.shape} != advector canvas {self.canvas_shape}")
        r, c = self.origin(t)
        return ndimage.map_coordinates(canvas, [r, c], order=order, mode="nearest")

    def position(self, row: float, col: float, t: float) -> tuple[float, float]:
        """Domain position at step t of a parcel at (row, col) at t=0."""
        r, c = trace(self.motion, np.array([row]), np.array([col]), t)
        return float(r[0]), float(c[0])


def smoothstep(x: np.ndarray | float) -> np.ndarray:
    """0 below 0, 1 above 1, C1-smooth in between."""
    y = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    return y * y * (3.0 - 2.0 * y)


def grid_coords(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(shape[0], dtype=np.float64), np.arange(shape[1], dtype=np.float64), indexing="ij")


def gaussian_cell(
    rows: np.ndarray,
    cols: np.ndarray,
    centre: tuple[float, float],
    sigma_along: float,
    sigma_across: float | None = None,
    angle: float = 0.0,
) -> np.ndarray:
    """Elliptical Gaussian bump (peak 1); ``angle`` is the long axis' direction from east, CCW."""
    sa = sigma_along
    sc = sigma_along if sigma_across is None else sigma_across
    east = cols - centre[1]
    north = -(rows - centre[0])
    u = east * np.cos(angle) + north * np.sin(angle)
    v = -east * np.sin(angle) + north * np.cos(angle)
    return np.exp(-0.5 * ((u / sa) ** 2 + (v / sc) ** 2))


@dataclass(frozen=True)
class CurveFrame:
    """Per-cell coordinates relative to a sampled curve.

    ``dist``: distance to the nearest curve point; ``s``: that point's parameter in [-1, 1];
    ``ahead``: signed offset along the curve's forward direction (positive ahead of the line).
    """

    dist: np.ndarray
    s: np.ndarray
    ahead: np.ndarray


def curve_frame(
    rows: np.ndarray, cols: np.ndarray, points: np.ndarray, s_values: np.ndarray, forward: tuple[float, float]
) -> CurveFrame:
    """Nearest-point coordinates of every cell relative to the polyline ``points`` [N, 2] (row, col)."""
    pr = rows.reshape(-1, 1)
    pc = cols.reshape(-1, 1)
    d2 = (pr - points[None, :, 0]) ** 2 + (pc - points[None, :, 1]) ** 2
    idx = np.argmin(d2, axis=1)
    dist = np.sqrt(d2[np.arange(d2.shape[0]), idx]).reshape(rows.shape)
    near = points[idx]
    ahead = ((rows.reshape(-1) - near[:, 0]) * forward[0] + (cols.reshape(-1) - near[:, 1]) * forward[1]).reshape(
        rows.shape
    )
    return CurveFrame(dist=dist, s=s_values[idx].reshape(rows.shape), ahead=ahead)


def bowed_line(
    centre: tuple[float, float],
    forward: tuple[float, float],
    half_length: float,
    bowness: float,
    n_points: int = 161,
) -> tuple[np.ndarray, np.ndarray]:
    """A line segment across ``forward`` whose middle bulges ahead by ``bowness * half_length``.

    bowness 0 is a straight (squall) line; 0.3-0.6 an arc/bow with the apex in the direction
    of motion. Returns (points [N, 2] in (row, col), s in [-1, 1]).
    """
    s = np.linspace(-1.0, 1.0, n_points)
    fr, fc = forward
    nr, nc = -fc, fr  # perpendicular
    bulge = bowness * half_length * (1.0 - s**2)
    rows = centre[0] + s * half_length * nr + bulge * fr
    cols = centre[1] + s * half_length * nc + bulge * fc
    return np.stack([rows, cols], axis=1), s


def ray_mask(
    shape: tuple[int, int], origin: tuple[float, float], azimuth: float, r_start: float, width: float = 0.7
) -> tuple[np.ndarray, np.ndarray]:
    """Cells within ``width`` of a ray from ``origin`` (azimuth clockwise from north), and their range."""
    rows, cols = grid_coords(shape)
    d_north = -(rows - origin[0])
    d_east = cols - origin[1]
    along = d_north * np.cos(azimuth) + d_east * np.sin(azimuth)
    across = -d_north * np.sin(azimuth) + d_east * np.cos(azimuth)
    return (np.abs(across) <= width) & (along >= r_start), np.hypot(d_north, d_east)
