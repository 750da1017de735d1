"""Satellite-to-precipitation sample data: SEVIRI-like channels and radar rain on the same grid.

Cloud layers (low cloud, warm raining cloud, deep convection with anvils, cirrus) are stacked
over a fixed surface with a simple radiative model: brightness temperature blends cloud top
and what lies below by the layer's emissivity (ice absorbs more at 12.0 than 10.8 um, so thin
cirrus shows a large split-window difference), reflectance adds layers by two-stream albedo.
Rain falls under convective cores (cold, bright, opaque) and under thick warm cloud (bright,
265-275 K), not under cirrus or anvil edges: a 235 K threshold (GPI) both misses the warm rain
and flags the cold non-raining cloud, while the channels together hold the signal.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from meteovision.datasets.synthetic.common import (
    Manifest,
    OutputFolder,
    SampleSettings,
    event_bounds,
    event_calendar,
    make_rng,
    stamp,
)
from meteovision.datasets.synthetic.fields import (
    Advector,
    gaussian_cell,
    grid_coords,
    powerlaw_noise,
    smoothstep,
)
from meteovision.datasets.synthetic.grids import satellite_grid
from meteovision.datasets.synthetic.nowcast import (
    MIN_RATE,
    SATELLITE_STEP_MINUTES,
    random_motion,
    rate_from_field,
    simulate_scalar,
)
from meteovision.datasets.synthetic.writers import CfVariable, write_cf_netcdf

LOG = logging.getLogger(__name__)

CHANNELS = ("IR_108", "WV_062", "IR_120", "VIS_006")
CHANNEL_META: dict[str, tuple[str, str, str]] = {
    "IR_108": ("K", "toa_brightness_temperature", "brightness temperature at 10.8 um"),
    "WV_062": ("K", "toa_brightness_temperature", "brightness temperature at 6.2 um (water vapour)"),
    "IR_120": ("K", "toa_brightness_temperature", "brightness temperature at 12.0 um"),
    "VIS_006": ("1", "toa_bidirectional_reflectance", "reflectance at 0.6 um"),
}
GPI_THRESHOLD_K = 235.0
GPI_RATE = 3.0


@dataclass(frozen=True)
class Layer:
    """One cloud layer per frame: optical depth (0 = absent), top temperature, ice or water."""

    tau: np.ndarray
    top: np.ndarray
    ice: bool


@dataclass(frozen=True)
class SatEvent:
    channels: dict[str, np.ndarray]  # name -> [T, H, W] float32
    rate: np.ndarray  # [T, H, W] mm h-1, NaN outside radar coverage
    coverage: np.ndarray  # [H, W] bool
    kinds: dict[str, np.ndarray]  # layer name -> [T, H, W] bool footprint


def _albedo(tau: np.ndarray) -> np.ndarray:
    """Two-stream reflectance of a non-absorbing cloud, asymmetry g = 0.85."""
    x = 0.075 * tau
    return x / (1.0 + x)


def radiative_stack(
    surface_t: np.ndarray, surface_albedo: np.ndarray, clear_wv: np.ndarray, moisture: np.ndarray, layers: list[Layer]
) -> dict[str, np.ndarray]:
    """Channels seen from space through ``layers`` (bottom to top) over the surface."""
    ir108 = surface_t - 1.0 - 2.0 * moisture
    ir120 = surface_t - 2.5 - 3.5 * moisture  # water-vapour continuum: clear-sky split window 1.5-3 K
    wv = clear_wv.copy()
    vis = surface_albedo.copy()
    for layer in layers:
        k120 = 1.35 if layer.ice else 1.12
        e108 = 1.0 - np.exp(-0.5 * layer.tau)
        e120 = 1.0 - np.exp(-0.5 * k120 * layer.tau)
        ir108 = e108 * layer.top + (1.0 - e108) * ir108
        ir120 = e120 * layer.top + (1.0 - e120) * ir120
        # the 6.2 um channel sees only cloud above the mid troposphere; overshooting tops look warmer
        high = smoothstep((clear_wv + 5.0 - layer.top) / 10.0)
        wv_top = layer.top + np.where(layer.top < 215.0, 2.0, 0.0)
        wv = high * (e108 * wv_top + (1.0 - e108) * wv) + (1.0 - high) * wv
        r = _albedo(layer.tau)
        vis = r + (1.0 - r) ** 2 * vis / (1.0 - r * vis)
    return {"IR_108": ir108, "WV_062": wv, "IR_120": ir120, "VIS_006": vis}


@dataclass(frozen=True)
class ConvectiveCell:
    row0: float
    col0: float
    sigma: float
    birth: float
    lifetime: float
    coldest: float
    rain_max: float


def simulate_sat_event(rng: np.random.Generator, size: int, n_frames: int) -> SatEvent:
    """One event of satellite channels and radar rain, all advected by one motion field."""
    shape = (size, size)
    rows, cols = grid_coords(shape)
    motion = random_motion(rng, shape, (0.6, 1.6), edge_rotation=0.2)
    adv = Advector(motion, shape, n_frames - 1)

    # fixed surface (does not move with the clouds)
    surface_t = rng.uniform(288.0, 300.0) + 3.0 * powerlaw_noise(rng, shape, beta=-4.0)
    surface_albedo = np.clip(rng.uniform(0.08, 0.16) + 0.03 * powerlaw_noise(rng, shape, beta=-3.0), 0.03, 0.3)
    moisture_canvas = 0.5 + 0.25 * powerlaw_noise(rng, adv.canvas_shape, beta=-4.0)
    anvil_texture = powerlaw_noise(rng, adv.canvas_shape, beta=-2.5)
    wv_level = rng.uniform(238.0, 247.0)

    low = simulate_scalar(rng, shape, n_frames, motion, rng.uniform(0.1, 0.25), beta=-2.8, growth_amplitude=0.2)
    warm = simulate_scalar(rng, shape, n_frames, motion, rng.uniform(0.1, 0.2), beta=-3.2, growth_amplitude=0.3)
    cirrus = simulate_scalar(rng, shape, n_frames, motion, rng.uniform(0.06, 0.15), beta=-3.0, growth_amplitude=0.2)
    low_top = rng.uniform(272.0, 282.0)
    warm_top = rng.uniform(268.0, 276.0)
    cirrus_top = rng.uniform(208.0, 222.0)
    warm_rain_median = rng.uniform(1.5, 3.0)

    n_cells = max(2, round(size * size / 1400.0 * rng.uniform(0.8, 1.3)))
    cells = [
        ConvectiveCell(
            row0=rng.uniform(0.1, 0.9) * size,
            col0=rng.uniform(0.1, 0.9) * size,
            sigma=rng.uniform(2.0, 3.5),
            birth=rng.uniform(-0.6, 0.6) * n_frames,
            lifetime=rng.uniform(0.7, 1.5) * n_frames,
            coldest=rng.uniform(198.0, 214.0),
            rain_max=rng.uniform(20.0, 70.0),
        )
        for _ in range(n_cells)
    ]
    shear = rng.uniform(0, 2 * np.pi)
    anvil_dir = (np.sin(shear), np.cos(shear))

    coverage = np.zeros(shape, dtype=bool)
    for _ in range(2):
        centre = (rng.uniform(0.25, 0.75) * size, rng.uniform(0.25, 0.75) * size)
        coverage |= np.hypot(rows - centre[0], cols - centre[1]) <= rng.uniform(0.3, 0.45) * size

    channels = {name: np.empty((n_frames, *shape), dtype=np.float32) for name in CHANNELS}
    rate = np.empty((n_frames, *shape), dtype=np.float32)
    kinds = {k: np.zeros((n_frames, *shape), dtype=bool) for k in ("low", "warm_rain", "core", "anvil", "cirrus")}
    for t in range(n_frames):
        tf = float(t)
        moisture = np.clip(adv.sample(moisture_canvas, tf), 0.0, 1.0)
        clear_wv = wv_level + 6.0 * (moisture - 0.5)

        f_low = low.field[t] - low.threshold
        tau_low = (2.0 + 10.0 * smoothstep(f_low / 0.8)) * (f_low > 0)
        f_warm = warm.field[t] - warm.threshold
        depth = smoothstep(f_warm / 1.0)
        tau_warm = (12.0 + 38.0 * depth) * (f_warm > 0)
        top_warm = warm_top - 8.0 * depth
        f_ci = cirrus.field[t] - cirrus.threshold
        tau_ci = (1.5 + 4.5 * smoothstep(f_ci / 1.2)) * (f_ci > 0)

        core = np.zeros(shape)
        anvil = np.zeros(shape)
        top_conv = np.full(shape, 230.0)
        conv_rain = np.zeros(shape)
        for cell in cells:
            age = (tf - cell.birth) / cell.lifetime
            if not 0.0 <= age <= 1.0:
                continue
            strength = np.sin(np.pi * age) ** 0.7
            r, c = adv.position(cell.row0, cell.col0, tf)
            g_core = strength * gaussian_cell(rows, cols, (r, c), cell.sigma)
            spread = cell.sigma * (1.6 + 1.6 * age)
            offset = cell.sigma * (0.5 + 2.0 * age)
            g_anvil = strength**0.5 * gaussian_cell(
                rows, cols, (r + offset * anvil_dir[0], c + offset * anvil_dir[1]), spread
            )
            top_conv = np.minimum(top_conv, np.where(g_core > 0.05, cell.coldest + 22.0 * (1.0 - g_core), 230.0))
            core = np.maximum(core, g_core)
            anvil = np.maximum(anvil, g_anvil)
            # the heaviest rain sits slightly upwind of the coldest top
            g_rain = strength * gaussian_cell(rows, cols, (r - 0.8 * anvil_dir[0], c - 0.8 * anvil_dir[1]), cell.sigma)
            conv_rain = np.maximum(conv_rain, cell.rain_max * np.clip((g_rain - 0.1) / 0.9, 0.0, None) ** 1.3)
        # ragged anvil edges thinning out to nothing (thin edges show the cirrus split-window signal)
        anvil = anvil * np.exp(0.35 * adv.sample(anvil_texture, tf))
        anvil_top = 218.0 + 10.0 * (1.0 - np.clip(anvil, 0.0, 1.0))
        tau_conv = np.maximum(110.0 * core, 16.0 * smoothstep((anvil - 0.15) / 0.6))
        top_c = np.where(core > 0.05, np.minimum(top_conv, anvil_top), anvil_top)

        layers = [
            Layer(tau_low, np.full(shape, low_top), ice=False),
            Layer(tau_warm, top_warm, ice=False),
            Layer(tau_conv, top_c, ice=True),
            Layer(tau_ci, np.full(shape, cirrus_top) + 4.0 * (1.0 - smoothstep(f_ci / 1.2)), ice=True),
        ]
        obs = radiative_stack(surface_t, surface_albedo, clear_wv, moisture, layers)
        noise = {"IR_108": 0.25, "WV_062": 0.3, "IR_120": 0.25, "VIS_006": 0.01}
        for name in CHANNELS:
            values = obs[name] + noise[name] * rng.standard_normal(shape)
            if name == "VIS_006":
                values = np.clip(values, 0.0, 1.0)
            channels[name][t] = values

        warm_rain = np.minimum(rate_from_field(f_warm, 0.35, warm_rain_median, 0.6), 15.0)
        total = np.maximum(warm_rain, conv_rain)
        total = np.where(total >= MIN_RATE, total, 0.0)
        rate[t] = np.where(coverage, total, np.nan)

        kinds["low"][t] = tau_low > 0
        kinds["warm_rain"][t] = warm_rain > 0
        kinds["core"][t] = core > 0.3
        kinds["anvil"][t] = (anvil > 0.3) & (core <= 0.3)
        kinds["cirrus"][t] = tau_ci > 0
    return SatEvent(channels=channels, rate=rate, coverage=coverage, kinds=kinds)


if TYPE_CHECKING:
    import torch

#: numpy arrays or torch tensors (torch is imported only for type checking: the generators do not need it).
ArrayT = TypeVar("ArrayT", np.ndarray, "torch.Tensor")


def gpi_rate(ir108: ArrayT) -> ArrayT:
    """GOES Precipitation Index (Arkin and Meisner 1987): 3 mm h-1 where the 10.8 um Tb is below 235 K.

    The one definition, for numpy arrays (the generator) and torch tensors (the training baseline).
    """
    return (ir108 < GPI_THRESHOLD_K) * GPI_RATE


def generate(app: str, folder: OutputFolder, seed: int, settings: SampleSettings) -> Manifest:
    if app != "sat2precip":
        raise ValueError(f"sat2precip generator cannot write app {app!r}")
    grid = satellite_grid(settings.size)
    calendar = event_calendar(
        make_rng(seed, app, "calendar"),
        settings.events,
        settings.frames_per_event,
        SATELLITE_STEP_MINUTES,
        first_day=datetime(2022, 7, 4),
        hours=(9, 16),
    )
    for e, times in enumerate(calendar):
        event = simulate_sat_event(make_rng(seed, app, e), settings.size, len(times))
        for t, time in enumerate(times):
            write_cf_netcdf(
                folder.file("satellite", f"{stamp(time)}.nc"),
                time,
                grid,
                [
                    CfVariable(name, event.channels[name][t], units=meta[0], long_name=meta[2], standard_name=meta[1])
                    for name, meta in CHANNEL_META.items()
                ],
                title="Synthetic geostationary imager channels (SEVIRI-like)",
                source="meteovision synthetic generator (sat2precip)",
            )
            write_cf_netcdf(
                folder.file("targets", f"{stamp(time)}.nc"),
                time,
                grid,
                [
                    CfVariable(
                        "RATE",
                        event.rate[t],
                        units="mm h-1",
                        long_name="radar rain rate (NaN outside radar coverage)",
                        standard_name="rainfall_rate",
                    )
                ],
                title="Synthetic radar rain rate on the satellite grid",
                source="meteovision synthetic generator (sat2precip)",
            )
        LOG.info("sat2precip event %d: %d frames", e, len(times))
    return Manifest(
        app=app,
        seed=seed,
        time_step_minutes=SATELLITE_STEP_MINUTES,
        events=event_bounds(calendar),
        inputs=["satellite/*.nc"],
        targets="targets/*.nc",
        labels_csv=None,
        input_variables=list(CHANNELS),
        target_variable="RATE",
        class_names=None,
        settings=settings,
    )
