"""Synthetic data holds real signal and hard negatives: bows are arcs, rain moves as imposed, GPI fails."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from meteovision.datasets.synthetic import SampleDataError, SampleSettings, generate_sample_data
from meteovision.datasets.synthetic.bow_echo import MASK_MIN_RATE, WEAK_ARC_MAX, simulate_bow_event
from meteovision.datasets.synthetic.common import default_settings, make_rng
from meteovision.datasets.synthetic.fields import RigidMotion, grid_coords, trace
from meteovision.datasets.synthetic.nowcast import (
    RAIN_SPEED_RANGE,
    simulate_cloud_event,
    simulate_rain_event,
    simulate_scalar,
)
from meteovision.datasets.synthetic.radar_cleaning import make_static_site, simulate_cleaning_event
from meteovision.datasets.synthetic.sat2precip import gpi_rate, simulate_sat_event
from meteovision.datasets.synthetic.webcam import (
    GROUND,
    VISIBILITY_CLASSES,
    Shot,
    ground_contrast,
    luminance,
    make_camera,
    plan_shots,
    render,
    rms_contrast,
    visibility_class,
)


@pytest.fixture(scope="module")
def bow_events() -> list:
    return [simulate_bow_event(make_rng(11, "bow_echo", e), 96, 16) for e in range(4)]


def test_bow_echoes_are_rare_intense_arcs(bow_events: list) -> None:
    masks = np.stack([ev.mask for ev in bow_events]).astype(bool)
    rates = np.stack([ev.rate for ev in bow_events])
    fraction = masks.mean()
    assert 0.002 < fraction < 0.03, fraction
    assert rates[masks].min() >= MASK_MIN_RATE  # the mask sits on the intense convective arc
    assert rates[masks].mean() > 25.0
    for ev in bow_events:
        bowed = ev.mask.any(axis=(1, 2))
        assert bowed.any() and not bowed.all()  # the line is straight (a negative) before it bows
        weak = ev.footprints["weak_arc"]
        if weak.any():
            assert ev.rate[weak].max() <= WEAK_ARC_MAX + 1e-3  # curved weak lines stay below 5 mm/h
            assert not (weak & ev.mask.astype(bool)).any()
    squall = np.stack([ev.footprints["squall_line"] for ev in bow_events])
    assert squall.any()
    assert rates[squall].mean() > 0.6 * rates[masks].mean()  # straight lines are as intense: a hard negative
    assert not (squall & masks).any()
    # trailing stratiform 1-5 mm/h is present
    assert ((rates >= 1.0) & (rates <= 5.0)).mean() > 0.05


def test_bow_echo_mask_moves_with_the_system(bow_events: list) -> None:
    ev = bow_events[0]
    frames = np.flatnonzero(ev.mask.any(axis=(1, 2)))
    first, last = frames[0], frames[-1]
    c0 = np.argwhere(ev.mask[first]).mean(axis=0)
    c1 = np.argwhere(ev.mask[last]).mean(axis=0)
    travelled = np.hypot(*(c1 - c0))
    speed = np.hypot(ev.motion.v_row, ev.motion.v_col)
    assert travelled > 0.5 * speed * (last - first)


# ----------------------------------------------------------------------------- physics: nowcasting


def _best_shift(a: np.ndarray, b: np.ndarray, max_shift: int = 10) -> tuple[int, int]:
    """Integer (row, col) shift of ``a`` that best correlates with ``b`` (interior window)."""
    m = max_shift
    inner = (slice(m, -m), slice(m, -m))
    best, arg = -2.0, (0, 0)
    for dr in range(-m, m + 1):
        for dc in range(-m, m + 1):
            shifted = np.roll(a, (dr, dc), axis=(0, 1))
            r = np.corrcoef(shifted[inner].ravel(), b[inner].ravel())[0, 1]
            if r > best:
                best, arg = r, (dr, dc)
    return arg


def test_semi_lagrangian_advection_follows_translation_and_rotation() -> None:
    shape = (64, 64)
    motion = RigidMotion(v_row=1.0, v_col=-0.5, omega=0.02, centre=(31.5, 31.5))
    scalar = simulate_scalar(make_rng(1, "advection"), shape, 9, motion, 0.3, evolution_rate=0.0, growth_amplitude=0.0)
    rows, cols = grid_coords(shape)

    def warp(field: np.ndarray, m: RigidMotion, steps: float) -> tuple[np.ndarray, np.ndarray]:
        r, c = trace(m, rows, cols, -steps)
        inside = (r >= 1) & (r <= 62) & (c >= 1) & (c <= 62)
        return ndimage.map_coordinates(field, [r, c], order=1), inside

    exact, inside = warp(scalar.field[0], motion, 8)
    translated, inside_t = warp(scalar.field[0], RigidMotion(1.0, -0.5, 0.0, (31.5, 31.5)), 8)
    err_exact = np.abs(exact - scalar.field[8])[inside].mean()
    err_translation = np.abs(translated - scalar.field[8])[inside & inside_t].mean()
    assert err_exact < 0.05 * scalar.field[8].std()  # frames are the t=0 field carried by the flow
    assert err_translation > 5 * err_exact  # and the flow rotates (0.16 rad over 8 steps)
    # a parcel at the rotation centre only translates
    r, c = trace(motion, np.array([31.5]), np.array([31.5]), 1.0)
    assert abs(r[0] - 32.5) < 0.02 and abs(c[0] - 31.0) < 0.02


@pytest.mark.parametrize("event_index", [0, 1, 2])
def test_rain_moves_with_the_imposed_motion(event_index: int) -> None:
    event = simulate_rain_event(make_rng(21, "nowcast_precip", event_index), (96, 96), 8)
    wet = (event.rate > 0).mean(axis=(1, 2))
    assert (wet > 0.05).all() and (wet < 0.5).all(), wet
    positive = event.rate[event.rate > 0]
    assert positive.min() >= 0.1 and np.percentile(positive, 99.9) > 5.0  # log-normal tail
    for t in (0, 3, 6):
        dr, dc = _best_shift(np.log1p(event.rate[t]), np.log1p(event.rate[t + 1]))
        assert abs(dr - event.motion.v_row) <= 1.0 and abs(dc - event.motion.v_col) <= 1.0
    # growth and decay: the field is not just translated
    first, last = event.rate[0], event.rate[-1]
    assert not np.allclose(np.sort(first.ravel()), np.sort(last.ravel()), rtol=0.05)


def test_nowcast_files_move_as_imposed(tmp_path: Path) -> None:
    readers = pytest.importorskip("meteovision.datasets.readers")
    generate_sample_data("nowcast_reflectivity", tmp_path, 4, SampleSettings(size=64, events=1, frames_per_event=3))
    event = simulate_rain_event(make_rng(4, "nowcast_reflectivity", 0), (64, 64), 3)
    frames = [readers.open_dataset(p)["DBZH"].values[0] for p in sorted((tmp_path / "radar").glob("*.h5"))]
    detected = frames[0][frames[0] > -32.0]
    assert detected.min() >= 7.0  # undetect below 7 dBZ
    dr, dc = _best_shift(np.maximum(frames[0], 0.0), np.maximum(frames[1], 0.0))
    assert abs(dr - event.motion.v_row) <= 1.0 and abs(dc - event.motion.v_col) <= 1.0


def test_cloudiness_is_a_moving_fraction() -> None:
    fraction, motion = simulate_cloud_event(make_rng(2, "nowcast_cloudiness", 0), (96, 96), 6)
    assert fraction.min() == 0.0 and fraction.max() == 1.0
    cloudy = (fraction > 0.5).mean(axis=(1, 2))
    assert ((cloudy > 0.15) & (cloudy < 0.85)).all()
    assert ((fraction > 0) & (fraction < 1)).mean() > 0.05  # broken cloud edges
    dr, dc = _best_shift(fraction[0], fraction[1])
    assert abs(dr - motion.v_row) <= 1.0 and abs(dc - motion.v_col) <= 1.0


# ----------------------------------------------------------------------------- physics: sat2precip


def _csi(pred: np.ndarray, obs: np.ndarray) -> float:
    hits = (pred & obs).sum()
    return float(hits / (hits + (~pred & obs).sum() + (pred & ~obs).sum()))


def test_sat2precip_gpi_fails_on_hard_negatives_but_channels_hold_signal() -> None:
    events = [simulate_sat_event(make_rng(8, "sat2precip", e), 96, 8) for e in range(3)]
    rate = np.concatenate([ev.rate for ev in events])
    ch = {k: np.concatenate([ev.channels[k] for ev in events]) for k in events[0].channels}
    valid = ~np.isnan(rate)
    assert 0.3 < valid.mean() < 0.95  # NaN outside the radar coverage
    obs = valid & (rate >= 1.0)
    ir, vis, btd = ch["IR_108"], ch["VIS_006"], ch["IR_108"] - ch["IR_120"]
    assert ir.min() > 190 and ir.max() < 310 and vis.min() >= 0 and vis.max() <= 1
    cold_dry = valid & (ir < 235.0) & (rate < 0.1)
    warm_rain = valid & (ir >= 235.0) & (rate >= 1.0)
    assert cold_dry.sum() > 0.02 * valid.sum() and warm_rain.sum() > 0.01 * valid.sum()
    # thin cirrus: cold and dry with a large split-window difference and a dim visible image
    thin = cold_dry & (btd > 2.5)
    assert thin.sum() > 0 and np.median(vis[thin]) < 0.5
    # deep convection: cold opaque tops over heavy rain
    heavy = valid & (rate >= 10.0)
    assert np.median(ir[heavy]) < 225.0 and np.median(vis[heavy]) > 0.7
    gpi = _csi(valid & (gpi_rate(ir) >= 1.0), obs)
    assert gpi < 0.5
    rule = valid & (((ir < 225.0) & (vis > 0.7) & (btd < 1.5)) | ((vis > 0.6) & (ir > 255.0) & (ir < 280.0)))
    assert _csi(rule, obs) > gpi + 0.15


# ----------------------------------------------------------------------------- physics: radar cleaning


def test_radar_cleaning_artefacts_everywhere_clutter_static_cells_kept() -> None:
    site = make_static_site(make_rng(6, "radar_cleaning", "site"), 96)
    events = [simulate_cleaning_event(make_rng(6, "radar_cleaning", e), site, 8) for e in range(3)]
    mask = np.concatenate([ev.mask for ev in events]).astype(bool)
    th = np.concatenate([ev.th for ev in events])
    dbzh = np.concatenate([ev.dbzh for ev in events])
    clutter = np.concatenate([ev.kinds["clutter"] for ev in events])
    assert mask.any(axis=(1, 2)).all()  # artefacts in every frame
    assert (clutter == clutter[0]).all()  # ground clutter: same cells in every frame and event
    core = site.clutter_shape > 0.8
    assert core.sum() >= 6 and (th[:, core] >= 30.0).all()
    assert mask[:, core].mean() > 0.9
    assert (th >= dbzh - 1e-4).all()  # artefacts only add reflectivity
    clean = ~mask & (dbzh > -32.0)
    assert np.abs(th[clean] - dbzh[clean]).max() < 1.0
    assert any(ev.kinds["spoke"].any() for ev in events) and any(ev.kinds["speckle"].any() for ev in events)
    assert site.sea.any() and any(ev.kinds["sea"][:, ~site.sea].sum() == 0 for ev in events)
    # hard negatives: small intense moving cells are rain, not artefacts
    cells = np.concatenate([ev.cells for ev in events])
    assert cells.sum() > 0 and (cells & mask).sum() < 0.05 * cells.sum()
    assert (th[cells] >= 35.0).mean() > 0.3
    ev = events[0]
    c0, c1 = np.argwhere(ev.cells[0]).mean(axis=0), np.argwhere(ev.cells[-1]).mean(axis=0)
    assert np.hypot(*(c1 - c0)) > 1.0
    # QIND is lower at artefacts but also low elsewhere (beam blockage): not a giveaway
    qind = np.concatenate([ev.qind for ev in events])
    assert qind[:, core].mean() < qind[~mask].mean()
    assert ((qind < 0.5) & ~mask).sum() > 0


# ----------------------------------------------------------------------------- physics: webcams


@pytest.mark.parametrize("camera", range(3))
def test_webcam_contrast_rises_with_visibility(camera: int) -> None:
    cam = make_camera(make_rng(9, "webcam_visibility", "camera", camera), "cam", 96, 128)
    visibilities = [60.0, 150.0, 400.0, 1000.0, 2500.0, 6000.0, 15000.0]
    for condition, light in (("normal", 1.0), ("overcast", 0.7), ("dusk", 0.25)):
        for snow in range(3):
            c = [
                ground_contrast(render(cam, Shot(snow, v, condition, light, (0.3, 0.5), 1)), cam) for v in visibilities
            ]
            assert np.all(np.diff(c) > 0), (condition, snow, c)


def test_webcam_snow_signal_and_hard_negatives() -> None:
    cam = make_camera(make_rng(9, "webcam_snow", "camera", 0), "cam", 96, 128)
    ground = cam.geometry[0] == GROUND

    def ground_lum(shot: Shot) -> float:
        return float(luminance(render(cam, shot))[ground].mean())

    clear = [ground_lum(Shot(s, 20000.0, "normal", 1.0, (0.3, 0.5), 1)) for s in range(3)]
    assert clear[0] < clear[1] < clear[2]
    sunny_no_snow = render(cam, Shot(0, 20000.0, "bright_sun", 1.4, (0.3, 0.5), 1))
    partial_snow = render(cam, Shot(1, 20000.0, "normal", 1.0, (0.3, 0.5), 1))
    assert luminance(sunny_no_snow).mean() > luminance(partial_snow).mean()  # brightness alone misleads
    assert (sunny_no_snow[: int(cam.horizon) // 2] > 0.95).mean() > 0.3  # saturated whitish sky
    overcast_clear = rms_contrast(render(cam, Shot(0, 20000.0, "overcast", 0.7, (0.3, 0.5), 1)))
    normal_foggy = rms_contrast(render(cam, Shot(0, 450.0, "normal", 1.0, (0.3, 0.5), 1)))
    assert overcast_clear < normal_foggy  # low contrast without fog


def test_webcam_labels_cover_all_classes() -> None:
    plans = plan_shots(make_rng(1, "webcam_snow", "labels"), 5, 4, 16)
    shots = [s for seq in plans.values() for s in seq]
    assert {s.snow for s in shots} == {0, 1, 2}
    assert {visibility_class(s.visibility_m) for s in shots} == set(range(len(VISIBILITY_CLASSES)))
    assert {s.condition for s in shots} == {"normal", "bright_sun", "overcast", "dusk"}
    assert all(s.snow == 0 for s in shots if s.condition == "bright_sun")
    log_v = np.log10([s.visibility_m for s in shots])
    assert log_v.min() >= np.log10(50.0) and log_v.max() <= np.log10(20000.0)
    # roughly log-uniform: each visibility class holds 10-45 % of the images
    counts = np.bincount([visibility_class(s.visibility_m) for s in shots], minlength=4) / len(shots)
    assert (counts > 0.1).all() and (counts < 0.45).all()


def test_radar_nowcasts_default_to_many_short_events_and_flags_override_them() -> None:
    from meteovision.datasets.synthetic.cli import settings_for

    none_given = argparse.Namespace(size=None, events=None, frames_per_event=None)
    assert settings_for("nowcast_precip", none_given) == SampleSettings(events=40, frames_per_event=12)
    assert settings_for("nowcast_reflectivity", none_given) == default_settings("nowcast_reflectivity")
    assert settings_for("bow_echo", none_given) == SampleSettings()
    some = argparse.Namespace(size=160, events=100, frames_per_event=None)
    assert settings_for("nowcast_precip", some) == SampleSettings(size=160, events=100, frames_per_event=12)
    with pytest.raises(SampleDataError, match="events"):
        settings_for("nowcast_precip", argparse.Namespace(size=None, events=0, frames_per_event=None))


def test_rain_events_move_at_the_realistic_speeds() -> None:
    speeds = [np.hypot(e.motion.v_row, e.motion.v_col)
              for e in (simulate_rain_event(make_rng(1, "speeds", k), (32, 32), 2) for k in range(40))]
    low, high = RAIN_SPEED_RANGE
    assert all(low <= s <= high for s in speeds)
    assert min(speeds) < 3.0 and max(speeds) > 7.0  # slow showers and fast bands alike
