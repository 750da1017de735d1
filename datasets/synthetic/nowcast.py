"""Nowcasting sample data: multiscale rain or cloud fields advected by a rotating motion field,
growing and decaying in the Lagrangian frame, intermittent (dry areas are exactly 0).

Rain falls where the standardised multiscale field f exceeds a threshold (10-40 % wet area);
its rate is log-normal (median 0.5-1.5 mm h-1, tails to ~50 mm h-1) from 0.1 mm h-1 (7 dBZ,
the detection limit) up, so wet area, intensity distribution and motion all differ per event.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from scipy.special import ndtr, ndtri

from meteovision.datasets.synthetic.common import (
    Manifest,
    OutputFolder,
    SampleSettings,
    event_bounds,
    event_calendar,
    make_rng,
    stamp,
)
from meteovision.datasets.synthetic.fields import Advector, EvolvingNoise, RigidMotion, powerlaw_noise
from meteovision.datasets.synthetic.grids import radar_grid, satellite_grid
from meteovision.datasets.synthetic.writers import CfVariable, write_cf_netcdf, write_odim_composite

LOG = logging.getLogger(__name__)

RADAR_STEP_MINUTES = 5
SATELLITE_STEP_MINUTES = 15
MIN_RATE = 0.1  # mm h-1, = 7 dBZ with Marshall-Palmer
MIN_DBZ = 7.0
NO_ECHO_DBZ = -32.0
MAX_RATE = 150.0


def random_motion(
    rng: np.random.Generator,
    shape: tuple[int, int],
    speed_range: tuple[float, float],
    edge_rotation: float = 0.4,
) -> RigidMotion:
    """Translation of random direction plus a rotation about the domain centre.

    The rotation adds at most ``edge_rotation`` cells per step at the domain's edge, so the
    domain-mean displacement is the translation itself.
    """
    speed = rng.uniform(*speed_range)
    direction = rng.uniform(0.0, 2.0 * np.pi)
    omega = rng.uniform(-1.0, 1.0) * edge_rotation / (min(shape) / 2.0)
    centre = ((shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0)
    return RigidMotion(v_row=speed * np.sin(direction), v_col=speed * np.cos(direction), omega=omega, centre=centre)


@dataclass(frozen=True)
class EvolvingScalar:
    """A standardised multiscale field per frame plus the motion that carries it."""

    field: np.ndarray  # [T, H, W], roughly N(0, 1) at t=0, with growth/decay trend
    threshold: float  # f > threshold is "inside" (wet / cloudy) at the t=0 target fraction
    motion: RigidMotion


def simulate_scalar(
    rng: np.random.Generator,
    shape: tuple[int, int],
    n_frames: int,
    motion: RigidMotion,
    inside_fraction: float,
    beta: float = -3.0,
    evolution_rate: float = 0.04,
    growth_amplitude: float = 0.25,
    trend: float = 0.0,
) -> EvolvingScalar:
    """Advected, evolving, growing/decaying standardised field (Lagrangian growth field + trend)."""
    adv = Advector(motion, shape, n_frames - 1)
    scale_break = max(shape) / 2.0
    noise = EvolvingNoise(rng, adv.canvas_shape, beta=beta, rate=evolution_rate, scale_break=scale_break)
    growth = powerlaw_noise(rng, adv.canvas_shape, beta=-4.5, scale_break=scale_break)
    window = growth[adv.pad : adv.pad + shape[0], adv.pad : adv.pad + shape[1]]
    growth = (growth - window.mean()) / (float(window.std()) or 1.0)
    # standardise on the domain at t=0: the canvas holds scales larger than the domain
    first = adv.sample(noise.at(0.0), 0.0)
    mean, std = float(first.mean()), float(first.std()) or 1.0
    threshold = float(np.quantile((first - mean) / std, 1.0 - inside_fraction))
    frames = np.empty((n_frames, *shape), dtype=np.float64)
    last = max(1, n_frames - 1)
    for t in range(n_frames):
        lagrangian = noise.at(float(t)) + (growth_amplitude * growth + trend) * std * (t / last)
        frames[t] = (adv.sample(lagrangian, float(t)) - mean) / std
    return EvolvingScalar(field=frames, threshold=threshold, motion=motion)


def rate_from_field(field: np.ndarray, threshold: float, median_rate: float, sigma: float) -> np.ndarray:
    """Intermittent rain rate (mm h-1): 0 below ``threshold``, log-normal above.

    The conditional rank of f above the threshold (f taken as N(0, 1)) is mapped to a
    log-normal of the given median and log-sigma; a fixed monotone map, so growth and
    decay of f become growth and decay of the rain. Rates start at 0.1 mm h-1 (7 dBZ).
    """
    p_thr = float(ndtr(threshold))
    p = np.clip((ndtr(field) - p_thr) / (1.0 - p_thr), 1e-9, 1.0 - 1e-12)
    rate = np.clip(median_rate * np.exp(sigma * ndtri(p)), MIN_RATE, MAX_RATE)
    return np.where(field >= threshold, rate, 0.0)


def rate_to_dbz(rate: np.ndarray) -> np.ndarray:
    """Marshall-Palmer Z = 200 R^1.6 in dBZ; below 7 dBZ (or dry) -> the no-echo value -32 dBZ."""
    with np.errstate(divide="ignore"):
        dbz = 10.0 * np.log10(200.0 * np.power(np.maximum(rate, 0.0), 1.6))
    return np.where(dbz >= MIN_DBZ, dbz, NO_ECHO_DBZ)


@dataclass(frozen=True)
class RainEvent:
    rate: np.ndarray  # [T, H, W] mm h-1
    motion: RigidMotion
    wet_fraction: float
    median_rate: float


# Rain systems move at 3-30 m s-1: 1-9 cells per 5 min step on the 1 km radar grid. The speed is drawn
# uniformly, so a network trained on these events sees fast frontal bands as often as slow showers.
RAIN_SPEED_RANGE = (1.0, 9.0)


def simulate_rain_event(
    rng: np.random.Generator,
    shape: tuple[int, int],
    n_frames: int,
    speed_range: tuple[float, float] = RAIN_SPEED_RANGE,
    wet_range: tuple[float, float] = (0.12, 0.32),
    median_range: tuple[float, float] = (0.5, 1.5),
) -> RainEvent:
    """One radar event: advected, rotating, growing/decaying intermittent rain."""
    motion = random_motion(rng, shape, speed_range)
    wet = rng.uniform(*wet_range)
    median = rng.uniform(*median_range)
    sigma = rng.uniform(0.9, 1.3)
    scalar = simulate_scalar(
        rng, shape, n_frames, motion, wet, beta=-3.0, evolution_rate=0.04, trend=rng.uniform(-0.15, 0.15)
    )
    rate = rate_from_field(scalar.field, scalar.threshold, median, sigma)
    return RainEvent(rate=rate.astype(np.float32), motion=motion, wet_fraction=wet, median_rate=median)


def simulate_cloud_event(
    rng: np.random.Generator, shape: tuple[int, int], n_frames: int
) -> tuple[np.ndarray, RigidMotion]:
    """Satellite cloud area fraction [T, H, W] in [0, 1]: overcast cores, broken edges, clear gaps."""
    motion = random_motion(rng, shape, (0.7, 2.0), edge_rotation=0.3)
    cloudy = rng.uniform(0.3, 0.7)
    scalar = simulate_scalar(
        rng, shape, n_frames, motion, cloudy, beta=-2.8, evolution_rate=0.05, trend=rng.uniform(-0.2, 0.2)
    )
    fraction = np.clip(0.5 + 1.25 * (scalar.field - scalar.threshold), 0.0, 1.0)
    return fraction.astype(np.float32), motion


def generate(app: str, folder: OutputFolder, seed: int, settings: SampleSettings) -> Manifest:
    """Write one of nowcast_precip / nowcast_reflectivity / nowcast_cloudiness."""
    if app not in ("nowcast_precip", "nowcast_reflectivity", "nowcast_cloudiness"):
        raise ValueError(f"nowcast generator cannot write app {app!r}")
    satellite = app == "nowcast_cloudiness"
    step = SATELLITE_STEP_MINUTES if satellite else RADAR_STEP_MINUTES
    grid = satellite_grid(settings.size) if satellite else radar_grid(settings.size)
    calendar = event_calendar(
        make_rng(seed, app, "calendar"),
        settings.events,
        settings.frames_per_event,
        step,
        first_day=datetime(2023, 5, 2),
        hours=(6, 18) if satellite else (0, 24),
    )
    for e, times in enumerate(calendar):
        rng = make_rng(seed, app, e)
        if satellite:
            fraction, _ = simulate_cloud_event(rng, grid.shape, len(times))
            for t, time in enumerate(times):
                write_cf_netcdf(
                    folder.file("satellite", f"{stamp(time)}.nc"),
                    time,
                    grid,
                    [
                        CfVariable(
                            "cloud_area_fraction",
                            fraction[t],
                            units="1",
                            long_name="cloud area fraction",
                            standard_name="cloud_area_fraction",
                            valid_range=(0.0, 1.0),
                        )
                    ],
                    title="Synthetic geostationary cloud area fraction",
                    source="meteovision synthetic generator (nowcast_cloudiness)",
                )
            continue
        event = simulate_rain_event(rng, grid.shape, len(times))
        for t, time in enumerate(times):
            if app == "nowcast_precip":
                fields = {"RATE": event.rate[t]}
            else:
                fields = {"DBZH": rate_to_dbz(event.rate[t])}
            write_odim_composite(folder.file("radar", f"{stamp(time)}.h5"), time, grid, fields, step_minutes=step)
        m = event.motion
        LOG.info(
            "%s event %d: %d frames, motion (%.2f, %.2f) cells/step (row, col), rotation %.4f rad/step",
            app,
            e,
            len(times),
            m.v_row,
            m.v_col,
            m.omega,
        )
    variable = {"nowcast_precip": "RATE", "nowcast_reflectivity": "DBZH", "nowcast_cloudiness": "cloud_area_fraction"}
    return Manifest(
        app=app,
        seed=seed,
        time_step_minutes=step,
        events=event_bounds(calendar),
        inputs=["satellite/*.nc"] if satellite else ["radar/*.h5"],
        targets=None,
        labels_csv=None,
        input_variables=[variable[app]],
        target_variable=variable[app],
        class_names=None,
        settings=settings,
    )
