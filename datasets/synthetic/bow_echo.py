"""Bow-echo sample data: radar rain rate with bowing convective lines, and their masks.

A bow echo here is an arc of intense convective cells (30-100 mm h-1) bulging in the
direction of motion, with trailing stratiform rain (1-5 mm h-1) behind it and a rear-inflow
notch behind the apex. Each event has one line that starts straight and bows out part-way
through (so the same system is a negative before it bows), plus hard negatives: straight
squall lines of the same intensity and stratiform, curved but weak lines (< 5 mm h-1) and
isolated intense cells, over advected light stratiform rain. The mask covers the intense
arc of the bow only (rare: ~1-2 % of pixels).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

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
    RigidMotion,
    bowed_line,
    curve_frame,
    gaussian_cell,
    grid_coords,
    powerlaw_noise,
    smoothstep,
)
from meteovision.datasets.synthetic.grids import radar_grid
from meteovision.datasets.synthetic.nowcast import (
    MIN_RATE,
    RADAR_STEP_MINUTES,
    random_motion,
    rate_from_field,
    simulate_scalar,
)
from meteovision.datasets.synthetic.writers import CfVariable, write_cf_netcdf, write_odim_composite

LOG = logging.getLogger(__name__)

MASK_MIN_RATE = 15.0  # mm h-1: the bow's convective core
MASK_MIN_BOWNESS = 0.15  # apex bulge / half-length: below this a line is not (yet) a bow
NEGATIVE_KINDS = ("squall_line", "weak_arc", "cells")
WEAK_ARC_MAX = 4.9  # mm h-1: curved like a bow, but never convective


@dataclass(frozen=True)
class LineSystem:
    """A convective line moving with ``velocity``; bows out between ``bow_onset`` and +``bow_ramp``."""

    kind: str  # "bow" | "squall_line" | "weak_arc"
    centre0: tuple[float, float]
    velocity: tuple[float, float]
    forward: tuple[float, float]
    half_length: float
    bowness_start: float
    bowness_max: float
    bow_onset: float
    bow_ramp: float
    peak: float
    stratiform: float
    stratiform_depth: float
    width: float
    bead_spacing: float
    bead_phase: float

    def progress(self, t: float) -> float:
        return float(smoothstep((t - self.bow_onset) / self.bow_ramp))

    def bowness(self, t: float) -> float:
        return self.bowness_start + (self.bowness_max - self.bowness_start) * self.progress(t)

    def centre(self, t: float) -> tuple[float, float]:
        return (self.centre0[0] + self.velocity[0] * t, self.centre0[1] + self.velocity[1] * t)

    def render(
        self, rows: np.ndarray, cols: np.ndarray, t: float, texture: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(convective rate, stratiform rate) in mm h-1 at step ``t`` and each cell's position
        along the line (s in [-1, 1]); ``texture`` is a standard-normal field moving with the system."""
        centre = self.centre(t)
        bow = self.bowness(t)
        points, s_values = bowed_line(centre, self.forward, self.half_length, bow)
        frame = curve_frame(rows, cols, points, s_values, self.forward)
        s = frame.s
        taper = smoothstep((1.0 - np.abs(s)) / 0.25)
        beads = 0.55 + 0.45 * np.cos(np.pi * s * self.half_length / self.bead_spacing + self.bead_phase) ** 2
        if self.kind == "bow":
            # the apex intensifies as the line bows out
            along = (0.7 + 0.3 * (1.0 - s**2)) * (0.8 + 0.2 * self.progress(t))
        else:
            along = np.full_like(s, 0.9)
        # sharp leading edge, softer rear edge
        width = np.where(frame.ahead > 0, 0.7 * self.width, 1.3 * self.width)
        conv = self.peak * along * beads * taper * np.exp(-0.5 * (frame.dist / width) ** 2 + 0.15 * texture)
        # stratiform region: the line swept backward, in chord coordinates (u across, behind)
        fr, fc = self.forward
        dr, dc = rows - centre[0], cols - centre[1]
        u = (dr * (-fc) + dc * fr) / self.half_length
        behind = bow * self.half_length * (1.0 - np.clip(u, -1.0, 1.0) ** 2) - (dr * fr + dc * fc)
        strat = np.zeros_like(conv)
        if self.stratiform > 0:
            strat = (
                self.stratiform
                * np.exp(0.45 * texture - 0.1)
                * smoothstep(behind / 4.0)
                * np.exp(-np.maximum(behind, 0.0) / self.stratiform_depth)
                * smoothstep((1.0 - np.abs(u)) / 0.6 + 0.25 * texture)
            )
            if self.kind == "bow":
                # rear-inflow notch: a dry channel behind the apex
                notch_width = 0.08 * self.half_length + 1.0
                notch = np.exp(-0.5 * (u * self.half_length / notch_width) ** 2) * smoothstep((behind - 2.0) / 4.0)
                strat = strat * (1.0 - 0.9 * self.progress(t) * notch)
        return conv, strat, s


@dataclass(frozen=True)
class CellCluster:
    """Isolated intense cells moving with the flow, each living part of the event."""

    centres0: np.ndarray  # [N, 2]
    velocity: tuple[float, float]
    sigmas: np.ndarray
    peaks: np.ndarray
    births: np.ndarray
    lifetimes: np.ndarray

    def render(self, rows: np.ndarray, cols: np.ndarray, t: float) -> np.ndarray:
        out = np.zeros(rows.shape)
        for (r0, c0), sigma, peak, birth, life in zip(
            self.centres0, self.sigmas, self.peaks, self.births, self.lifetimes, strict=True
        ):
            age = (t - birth) / life
            if not 0.0 <= age <= 1.0:
                continue
            amp = np.sin(np.pi * age) ** 0.5
            centre = (r0 + self.velocity[0] * t, c0 + self.velocity[1] * t)
            out = np.maximum(out, peak * amp * gaussian_cell(rows, cols, centre, sigma))
        # convective cells have sharp edges: drop the long Gaussian tail below 0.5 mm h-1
        return np.where(out >= 0.5, out, 0.0)


@dataclass(frozen=True)
class BowEvent:
    rate: np.ndarray  # [T, H, W] mm h-1
    mask: np.ndarray  # [T, H, W] int8
    motion: RigidMotion
    footprints: dict[str, np.ndarray] = field(default_factory=dict)  # kind -> bool [T, H, W] convective core


def _line(
    rng: np.random.Generator,
    kind: str,
    centre_mid: tuple[float, float],
    t_mid: float,
    velocity: tuple[float, float],
    forward: tuple[float, float],
    size: int,
    n_frames: int,
) -> LineSystem:
    """A line of ``kind`` that is at ``centre_mid`` at step ``t_mid``.

    Bows and squall lines share the intensity and stratiform ranges (so only the shape and its
    evolution tell them apart); weak arcs share the bows' curvature but stay below 5 mm h-1.
    """
    centre0 = (centre_mid[0] - velocity[0] * t_mid, centre_mid[1] - velocity[1] * t_mid)
    spacing = rng.uniform(4.0, 7.0)
    phase = rng.uniform(0, np.pi)
    never = float(n_frames)
    if kind == "bow":
        half, b0, b1 = size * rng.uniform(0.17, 0.23), rng.uniform(0.0, 0.05), rng.uniform(0.35, 0.6)
        onset, ramp = rng.uniform(0.2, 0.45) * (n_frames - 1), rng.uniform(2.5, 4.5)
        peak, strat, depth = rng.uniform(45.0, 100.0), rng.uniform(2.0, 5.0), size * rng.uniform(0.12, 0.2)
        width = rng.uniform(1.4, 2.0)
    elif kind == "squall_line":
        half, b0 = size * rng.uniform(0.12, 0.2), rng.uniform(-0.04, 0.04)
        b1, onset, ramp = b0, never, 1.0
        peak, strat, depth = rng.uniform(45.0, 100.0), rng.uniform(2.0, 5.0), size * rng.uniform(0.12, 0.2)
        width = rng.uniform(1.4, 2.0)
    elif kind == "weak_arc":
        half, b0 = size * rng.uniform(0.12, 0.2), rng.uniform(0.3, 0.6)
        b1, onset, ramp = b0, never, 1.0
        peak, strat, depth = rng.uniform(2.5, 4.5), rng.uniform(0.0, 1.0), size * rng.uniform(0.06, 0.12)
        width = rng.uniform(1.4, 2.2)
    else:
        raise ValueError(f"unknown line kind {kind!r}")
    return LineSystem(
        kind=kind,
        centre0=centre0,
        velocity=velocity,
        forward=forward,
        half_length=half,
        bowness_start=b0,
        bowness_max=b1,
        bow_onset=onset,
        bow_ramp=ramp,
        peak=peak,
        stratiform=strat,
        stratiform_depth=depth,
        width=width,
        bead_spacing=spacing,
        bead_phase=phase,
    )


def _place(
    rng: np.random.Generator, size: int, taken: list[tuple[float, float, float]], radius: float
) -> tuple[float, float] | None:
    """A centre inside the domain at least ``radius + r`` from every taken (row, col, r)."""
    for _ in range(200):
        r = rng.uniform(0.12, 0.88) * size
        c = rng.uniform(0.12, 0.88) * size
        if all(np.hypot(r - tr, c - tc) >= radius + tradius for tr, tc, tradius in taken):
            return (r, c)
    return None


def simulate_bow_event(rng: np.random.Generator, size: int, n_frames: int) -> BowEvent:
    """One event of rain-rate frames with one bowing line, hard negatives and light stratiform."""
    shape = (size, size)
    rows, cols = grid_coords(shape)
    motion = random_motion(rng, shape, (1.0, 2.2), edge_rotation=0.2)
    speed = float(np.hypot(motion.v_row, motion.v_col))
    forward = (motion.v_row / speed, motion.v_col / speed)

    # light stratiform background, advected with rotation
    scalar = simulate_scalar(rng, shape, n_frames, motion, rng.uniform(0.1, 0.25), evolution_rate=0.04)
    background = rate_from_field(scalar.field, scalar.threshold, rng.uniform(0.3, 0.6), 0.6)
    background = np.minimum(background, 3.0)

    def system_velocity(extra: float) -> tuple[float, float]:
        return (motion.v_row + forward[0] * extra, motion.v_col + forward[1] * extra)

    bow_v = system_velocity(rng.uniform(0.2, 0.6))
    # the bow sits near the centre when it is fully bowed
    t_ref = min(n_frames - 1.0, 0.6 * (n_frames - 1) + 2.0)
    bow_centre = (size / 2 + rng.uniform(-0.1, 0.1) * size, size / 2 + rng.uniform(-0.1, 0.1) * size)
    # shift back along the motion so the bulge, not the line's centre, is mid-domain
    bow = _line(rng, "bow", bow_centre, t_ref, bow_v, forward, size, n_frames)
    lines: list[LineSystem] = [bow]
    taken = [(bow_centre[0], bow_centre[1], bow.half_length)]
    n_neg = int(rng.integers(2, 4))
    kinds = list(rng.choice(NEGATIVE_KINDS, size=n_neg, replace=False))
    clusters: list[CellCluster] = []
    for kind in kinds:
        if kind == "cells":
            n = int(rng.integers(3, 7))
            v = system_velocity(0.0)
            centres = []
            for _ in range(n):
                spot = _place(rng, size, taken, 4.0)
                if spot is None:
                    continue
                centres.append((spot[0] - v[0] * t_ref, spot[1] - v[1] * t_ref))
                taken.append((spot[0], spot[1], 3.0))
            if centres:
                k = len(centres)
                clusters.append(
                    CellCluster(
                        centres0=np.array(centres),
                        velocity=v,
                        sigmas=rng.uniform(1.2, 2.2, k),
                        peaks=rng.uniform(30.0, 90.0, k),
                        births=rng.uniform(-0.5, 0.7, k) * n_frames,
                        lifetimes=rng.uniform(0.5, 1.2, k) * n_frames,
                    )
                )
            continue
        half = size * 0.17
        spot = _place(rng, size, taken, half + 4.0)
        if spot is None:
            LOG.debug("no room for a %s in a %d-cell domain", kind, size)
            continue
        line = _line(rng, kind, spot, t_ref, system_velocity(rng.uniform(0.0, 0.4)), forward, size, n_frames)
        lines.append(line)
        taken.append((spot[0], spot[1], line.half_length))

    texture_motion = RigidMotion(bow_v[0], bow_v[1], 0.0, (0.0, 0.0))
    texture_adv = Advector(texture_motion, shape, n_frames - 1)
    texture_canvas = powerlaw_noise(rng, texture_adv.canvas_shape, beta=-2.5)

    rate = np.empty((n_frames, *shape), dtype=np.float32)
    mask = np.zeros((n_frames, *shape), dtype=np.int8)
    footprints = {k: np.zeros((n_frames, *shape), dtype=bool) for k in ("bow", *NEGATIVE_KINDS)}
    for t in range(n_frames):
        texture = texture_adv.sample(texture_canvas, float(t))
        total = background[t].copy()
        for line in lines:
            conv, strat, s = line.render(rows, cols, float(t), texture)
            echo = conv + strat
            if line.kind == "weak_arc":
                echo = np.minimum(echo, WEAK_ARC_MAX)
            total = np.maximum(total, echo)
            core = conv >= (MASK_MIN_RATE if line.kind != "weak_arc" else 0.4 * line.peak)
            footprints[line.kind][t] |= core
            if line.kind == "bow" and line.bowness(float(t)) >= MASK_MIN_BOWNESS:
                mask[t] |= (core & (np.abs(s) <= 0.9)).astype(np.int8)
        for cluster in clusters:
            cells = cluster.render(rows, cols, float(t))
            total = np.maximum(total, cells)
            footprints["cells"][t] |= cells >= MASK_MIN_RATE
        rate[t] = np.where(total >= MIN_RATE, total, 0.0)  # below the radar's detection limit
    return BowEvent(rate=rate, mask=mask, motion=motion, footprints=footprints)


def generate(app: str, folder: OutputFolder, seed: int, settings: SampleSettings) -> Manifest:
    if app != "bow_echo":
        raise ValueError(f"bow_echo generator cannot write app {app!r}")
    grid = radar_grid(settings.size)
    calendar = event_calendar(
        make_rng(seed, app, "calendar"),
        settings.events,
        settings.frames_per_event,
        RADAR_STEP_MINUTES,
        first_day=datetime(2022, 6, 3),
        hours=(12, 24),
    )
    for e, times in enumerate(calendar):
        event = simulate_bow_event(make_rng(seed, app, e), settings.size, len(times))
        for t, time in enumerate(times):
            write_odim_composite(
                folder.file("radar", f"{stamp(time)}.h5"),
                time,
                grid,
                {"RATE": event.rate[t]},
                step_minutes=RADAR_STEP_MINUTES,
            )
            write_cf_netcdf(
                folder.file("targets", f"{stamp(time)}.nc"),
                time,
                grid,
                [
                    CfVariable(
                        "bow_echo_mask",
                        event.mask[t],
                        units="1",
                        long_name="bow echo mask (intense arc of a bowing convective line)",
                        flags=get_application("bow_echo").flags,
                    )
                ],
                title="Synthetic bow-echo mask",
                source="meteovision synthetic generator (bow_echo)",
            )
        LOG.info("bow_echo event %d: %d frames, bow pixels %.2f %%", e, len(times), 100 * event.mask.mean())
    return Manifest(
        app=app,
        seed=seed,
        time_step_minutes=RADAR_STEP_MINUTES,
        events=event_bounds(calendar),
        inputs=["radar/*.h5"],
        targets="targets/*.nc",
        labels_csv=None,
        input_variables=["RATE"],
        target_variable="bow_echo_mask",
        class_names=None,
        settings=settings,
    )
