"""Radar-cleaning sample data: a reflectivity composite TH = precipitation + artefacts, with
a quality index, the artefact mask and the clean DBZH as targets.

Artefacts: static ground clutter (same cells in every frame and event, strong small blobs),
radial interference spokes from the radar sites (moderate, range-increasing dBZ, in some
frames), sea clutter (patchy, changing every frame, over the sea only) and speckle. Hard
negatives: small intense convective cells that look like clutter in one frame but move,
and quality-index dips (beam blockage) where there is no artefact. Reflectivities add in
linear Z, so rain over clutter is only marked where the clutter changes TH by >= 1 dB.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from scipy import ndimage

from meteovision.core.applications import get_application
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
    ray_mask,
)
from meteovision.datasets.synthetic.grids import radar_grid
from meteovision.datasets.synthetic.nowcast import (
    MIN_DBZ,
    NO_ECHO_DBZ,
    RADAR_STEP_MINUTES,
    rate_to_dbz,
    simulate_rain_event,
)
from meteovision.datasets.synthetic.writers import CfVariable, write_cf_netcdf, write_odim_composite

LOG = logging.getLogger(__name__)

MASK_MIN_CHANGE_DB = 1.0  # an artefact matters where it raises TH by at least this much


@dataclass(frozen=True)
class StaticSite:
    """What does not change between events: radar sites, clutter, sea, blockage, base quality."""

    radars: np.ndarray  # [R, 2] (row, col)
    clutter_shape: np.ndarray  # [H, W] footprint in [0, 1] (0 = no clutter)
    clutter_peak: np.ndarray  # [H, W] peak dBZ of the blob covering each cell
    sea: np.ndarray  # [H, W] bool
    range_px: np.ndarray  # [H, W] distance to the nearest radar (cells = km)
    base_quality: np.ndarray  # [H, W] quality index without per-frame noise


def make_static_site(rng: np.random.Generator, size: int) -> StaticSite:
    shape = (size, size)
    rows, cols = grid_coords(shape)
    radars = rng.uniform(0.2, 0.8, (2, 2)) * size
    for _ in range(100):  # two distinct sites, as in a composite
        if np.hypot(*(radars[0] - radars[1])) >= 0.3 * size:
            break
        radars[1] = rng.uniform(0.2, 0.8, 2) * size
    range_px = np.min(np.stack([np.hypot(rows - r, cols - c) for r, c in radars]), axis=0)

    # coastline: a wiggly line across the domain; the sea is on one side (~20-35 %)
    theta = rng.uniform(0, 2 * np.pi)
    proj = (rows - size / 2) * np.sin(theta) + (cols - size / 2) * np.cos(theta)
    proj = proj + 0.08 * size * powerlaw_noise(rng, shape, beta=-3.5)
    sea = proj > np.quantile(proj, 1.0 - rng.uniform(0.2, 0.35))

    n_blobs = max(6, round(size * size / 800))
    clutter_shape = np.zeros(shape)
    clutter_peak = np.zeros(shape)
    placed = 0
    for _ in range(50 * n_blobs):
        if placed == n_blobs:
            break
        r, c = rng.uniform(2, size - 2, 2)
        if sea[int(r), int(c)] or range_px[int(r), int(c)] > 0.45 * size:
            continue
        g = gaussian_cell(rows, cols, (r, c), rng.uniform(0.5, 1.4), rng.uniform(0.5, 1.0), rng.uniform(0, np.pi))
        g = np.where(g >= 0.25, g, 0.0)
        peak = rng.uniform(35.0, 58.0)
        take = g > clutter_shape
        clutter_shape = np.where(take, g, clutter_shape)
        clutter_peak = np.where(take, peak, clutter_peak)
        placed += 1

    quality = np.clip(1.0 - range_px / (1.6 * size), 0.45, 1.0)
    # clutter-map knowledge lowers quality around (not exactly at) clutter
    near_clutter = ndimage.gaussian_filter((clutter_shape > 0).astype(float), 2.0)
    quality = quality * (1.0 - 0.6 * np.clip(near_clutter / max(near_clutter.max(), 1e-9), 0, 1))
    quality = np.where(sea, quality * 0.88, quality)
    # beam blockage: low quality sectors with no artefact at all (a hard negative for QIND)
    for r, c in radars:
        az = rng.uniform(0, 2 * np.pi)
        width = rng.uniform(0.08, 0.2)
        ang = np.arctan2(cols - c, -(rows - r))
        diff = np.angle(np.exp(1j * (ang - az)))
        blocked = (np.abs(diff) < width) & (np.hypot(rows - r, cols - c) > rng.uniform(5, 15))
        quality = np.where(blocked, quality * rng.uniform(0.5, 0.7), quality)
    return StaticSite(
        radars=radars,
        clutter_shape=clutter_shape,
        clutter_peak=clutter_peak,
        sea=sea,
        range_px=range_px,
        base_quality=quality,
    )


@dataclass(frozen=True)
class CleaningEvent:
    th: np.ndarray  # [T, H, W] dBZ (-32 = no echo)
    dbzh: np.ndarray  # [T, H, W] clean dBZ (-32 = no echo)
    qind: np.ndarray  # [T, H, W] in [0, 1]
    mask: np.ndarray  # [T, H, W] int8
    kinds: dict[str, np.ndarray]  # artefact kind -> bool [T, H, W] (where that kind is >= 7 dBZ)
    cells: np.ndarray  # bool [T, H, W]: the small intense convective cells (hard negatives)


def _to_z(dbz: np.ndarray) -> np.ndarray:
    return np.where(dbz > NO_ECHO_DBZ, 10.0 ** (dbz / 10.0), 0.0)


def _to_dbz(z: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        dbz = 10.0 * np.log10(z)
    return np.where(dbz >= MIN_DBZ, dbz, NO_ECHO_DBZ)


def simulate_cleaning_event(rng: np.random.Generator, site: StaticSite, n_frames: int) -> CleaningEvent:
    size = site.sea.shape[0]
    shape = (size, size)
    rows, cols = grid_coords(shape)
    rain = simulate_rain_event(rng, shape, n_frames, speed_range=(0.8, 3.0), wet_range=(0.06, 0.22))
    rate = rain.rate.astype(np.float64)

    # small intense cells moving with the flow: clutter-like in a single frame
    adv = Advector(rain.motion, shape, n_frames - 1)
    n_cells = int(rng.integers(3, 7))
    cell_rows = rng.uniform(0.1, 0.9, n_cells) * size
    cell_cols = rng.uniform(0.1, 0.9, n_cells) * size
    cell_sigma = rng.uniform(0.7, 1.3, n_cells)
    cell_peak = rng.uniform(20.0, 80.0, n_cells)
    cells = np.zeros((n_frames, *shape), dtype=bool)
    for t in range(n_frames):
        for r0, c0, sigma, peak in zip(cell_rows, cell_cols, cell_sigma, cell_peak, strict=True):
            r, c = adv.position(float(r0), float(c0), float(t))
            g = peak * gaussian_cell(rows, cols, (r, c), sigma)
            g = np.where(g >= 0.3, g, 0.0)
            rate[t] = np.maximum(rate[t], g)
            cells[t] |= g >= 5.0
    dbzh = rate_to_dbz(rate)

    spokes = [
        (i, rng.uniform(0, 2 * np.pi), rng.uniform(8.0, 16.0))
        for i in range(len(site.radars))
        for _ in range(int(rng.integers(0, 3)))
    ]
    sea_state = rng.uniform(0.0, 1.0)
    speckle_density = rng.uniform(0.0005, 0.002)

    th = np.empty((n_frames, *shape), dtype=np.float32)
    qind = np.empty((n_frames, *shape), dtype=np.float32)
    mask = np.zeros((n_frames, *shape), dtype=np.int8)
    kinds = {k: np.zeros((n_frames, *shape), dtype=bool) for k in ("clutter", "spoke", "sea", "speckle")}
    for t in range(n_frames):
        art = {k: np.full(shape, NO_ECHO_DBZ) for k in kinds}
        on = site.clutter_shape > 0
        with np.errstate(divide="ignore"):
            clutter = site.clutter_peak + 10.0 * np.log10(np.where(on, site.clutter_shape, 1.0))
        clutter = clutter + rng.normal(0.0, 1.5) + rng.normal(0.0, 1.0, shape)
        art["clutter"] = np.where(on, clutter, NO_ECHO_DBZ)
        for radar, azimuth, base in spokes:
            if rng.random() > 0.4:
                continue
            ray, rng_px = ray_mask(shape, tuple(site.radars[radar]), azimuth, r_start=4.0)
            dbz = base + 20.0 * np.log10(np.maximum(rng_px, 1.0) / 10.0) + rng.normal(0.0, 1.5, shape)
            art["spoke"] = np.where(ray, np.maximum(art["spoke"], dbz), art["spoke"])
        if sea_state > 0.15:
            waves = powerlaw_noise(rng, shape, beta=-2.2)
            patches = waves > 2.2 - 1.6 * sea_state
            dbz = 24.0 - 0.25 * site.range_px + 6.0 * sea_state + 3.0 * waves
            art["sea"] = np.where(patches & site.sea, dbz, NO_ECHO_DBZ)
        n_speckle = int(rng.poisson(speckle_density * size * size)) + 1
        idx = rng.integers(0, size, (n_speckle, 2))
        art["speckle"][idx[:, 0], idx[:, 1]] = rng.uniform(8.0, 35.0, n_speckle)

        z_art = sum(_to_z(np.where(a >= MIN_DBZ, a, NO_ECHO_DBZ)) for a in art.values())
        z_rain = _to_z(dbzh[t])
        total = _to_dbz(z_rain + z_art)
        with np.errstate(divide="ignore"):
            rain_db = np.where(z_rain > 0, 10.0 * np.log10(np.maximum(z_rain, 1e-30)), -np.inf)
        mask[t] = ((total >= MIN_DBZ) & (total - rain_db >= MASK_MIN_CHANGE_DB)).astype(np.int8)
        for k, a in art.items():
            kinds[k][t] = a >= MIN_DBZ
        th[t] = total
        q = site.base_quality + rng.normal(0.0, 0.04, shape)
        qind[t] = np.clip(q, 0.0, 1.0)
    return CleaningEvent(th=th, dbzh=dbzh.astype(np.float32), qind=qind, mask=mask, kinds=kinds, cells=cells)


def generate(app: str, folder: OutputFolder, seed: int, settings: SampleSettings) -> Manifest:
    if app != "radar_cleaning":
        raise ValueError(f"radar_cleaning generator cannot write app {app!r}")
    grid = radar_grid(settings.size)
    site = make_static_site(make_rng(seed, app, "site"), settings.size)
    calendar = event_calendar(
        make_rng(seed, app, "calendar"),
        settings.events,
        settings.frames_per_event,
        RADAR_STEP_MINUTES,
        first_day=datetime(2022, 9, 5),
    )
    for e, times in enumerate(calendar):
        event = simulate_cleaning_event(make_rng(seed, app, e), site, len(times))
        for t, time in enumerate(times):
            write_odim_composite(
                folder.file("radar", f"{stamp(time)}.h5"),
                time,
                grid,
                {"TH": event.th[t]},
                quality={"QIND": event.qind[t]},
                step_minutes=RADAR_STEP_MINUTES,
            )
            write_cf_netcdf(
                folder.file("targets", f"{stamp(time)}.nc"),
                time,
                grid,
                [
                    CfVariable(
                        "artefact_mask",
                        event.mask[t],
                        units="1",
                        long_name="non-meteorological echo mask",
                        flags=get_application("radar_cleaning").flags,
                    ),
                    CfVariable(
                        "DBZH",
                        event.dbzh[t],
                        units="dBZ",
                        long_name="reflectivity of precipitation only (-32 dBZ = no echo)",
                        standard_name="equivalent_reflectivity_factor",
                    ),
                ],
                title="Synthetic radar artefact mask and clean reflectivity",
                source="meteovision synthetic generator (radar_cleaning)",
            )
        LOG.info("radar_cleaning event %d: %d frames, artefact pixels %.2f %%", e, len(times), 100 * event.mask.mean())
    return Manifest(
        app=app,
        seed=seed,
        time_step_minutes=RADAR_STEP_MINUTES,
        events=event_bounds(calendar),
        inputs=["radar/*.h5"],
        targets="targets/*.nc",
        labels_csv=None,
        input_variables=["TH", "QIND"],
        target_variable="artefact_mask",
        class_names=None,
        settings=settings,
        extra={"target_variables": ["artefact_mask", "DBZH"]},
    )
