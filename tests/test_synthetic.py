"""Synthetic sample data: file formats, determinism, the CLI, and the physics the apps rely on.

Physical checks run on the in-memory simulations at the default sizes (fast, no I/O);
format checks write every application at a tiny size and read it back.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
from datetime import datetime
from pathlib import Path

import h5py
import netCDF4
import numpy as np
import pyproj
import pytest
from scipy import ndimage

from meteovision.datasets.errors import MeteovisionError
from meteovision.datasets.synthetic import APPS, SampleDataError, SampleSettings, generate_sample_data
from meteovision.datasets.synthetic.bow_echo import MASK_MIN_RATE, WEAK_ARC_MAX, simulate_bow_event
from meteovision.datasets.synthetic.common import default_settings, event_calendar, make_rng
from meteovision.datasets.synthetic.fields import RigidMotion, grid_coords, trace
from meteovision.datasets.synthetic.grids import radar_grid, satellite_grid
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
    SNOW_CLASSES,
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
from meteovision.datasets.synthetic.writers import (
    CfVariable,
    odim_decode,
    odim_encode,
    write_cf_netcdf,
    write_odim_composite,
)
from meteovision.pipeline.cli import main as cli_main

TINY = SampleSettings(size=32, events=2, frames_per_event=3)


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every app written three times at a tiny size: seed 1 twice, seed 2 once."""
    roots = {}
    for label, seed in (("a", 1), ("b", 1), ("c", 2)):
        root = tmp_path_factory.mktemp(f"sample_{label}")
        for app in APPS:
            generate_sample_data(app, root / app, seed, TINY)
        roots[label] = root
    return roots


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


# ----------------------------------------------------------------------------- settings, encodings, grids


def test_bad_settings_and_seed_raise_package_errors() -> None:
    with pytest.raises(SampleDataError, match="size"):
        SampleSettings(size=8)
    with pytest.raises(SampleDataError, match="frames_per_event"):
        SampleSettings(frames_per_event=1)
    with pytest.raises(SampleDataError, match="seed"):
        make_rng(-1, "bow_echo")
    with pytest.raises(SampleDataError, match="unknown application"):
        generate_sample_data("tornado", Path("/nonexistent"), 0)


def test_odim_encoding_hand_values() -> None:
    rate = np.array([0.0, 12.34, np.nan, 0.001, 700.0])
    raw = odim_encode("RATE", rate)
    assert raw.dtype == np.uint16
    # 0 -> undetect 0; 12.34 / 0.01 = 1234; NaN -> nodata 65535; tiny rain stays rain (1); clipped below nodata
    assert raw.tolist() == [0, 1234, 65535, 1, 65534]
    dbz = np.array([-32.0, 7.0, 55.5, np.nan])
    raw = odim_encode("DBZH", dbz)
    assert raw.tolist() == [0, 78, 175, 255]  # (7 + 32) / 0.5 = 78, (55.5 + 32) / 0.5 = 175
    back = odim_decode("DBZH", raw)
    assert back[:3].tolist() == [-32.0, 7.0, 55.5] and np.isnan(back[3])


def test_grids_are_centred_where_intended() -> None:
    grid = radar_grid(96)
    assert grid.x()[0] == -47500.0 and grid.x()[-1] == 47500.0
    assert grid.y()[0] == 47500.0 and grid.y()[-1] == -47500.0  # north-up, y decreasing
    corners = grid.corners_lonlat()
    to_xy = pyproj.Transformer.from_crs(grid.crs.geodetic_crs, grid.crs, always_xy=True)
    ulx, uly = to_xy.transform(corners["UL_lon"], corners["UL_lat"])
    assert abs(ulx - grid.x0) < 1e-3 and abs(uly - grid.y0) < 1e-3
    sat = satellite_grid(96)
    assert sat.dx == 3000.0 and sat.crs.to_cf()["grid_mapping_name"] == "geostationary"
    lon, lat = pyproj.Transformer.from_crs(sat.crs, sat.crs.geodetic_crs, always_xy=True).transform(
        sat.x().mean(), sat.y().mean()
    )
    assert abs(lon - 5.0) < 0.1 and abs(lat - 46.0) < 0.1


def test_event_calendar_separate_days_contiguous_frames() -> None:
    events = event_calendar(make_rng(3, "x"), 6, 12, 5, datetime(2022, 6, 1), hours=(12, 24))
    days = [ev[0].date() for ev in events]
    assert len(set(days)) == 6
    for ev in events:
        steps = {(b - a).total_seconds() for a, b in itertools.pairwise(ev)}
        assert steps == {300.0}
        assert ev[0].hour >= 12 and ev[-1].date() == ev[0].date()


# ----------------------------------------------------------------------------- files: determinism, layout, readers


def test_same_seed_same_bytes_other_seed_other_data(tiny_runs: dict[str, Path]) -> None:
    a, b, c = (_digests(tiny_runs[k]) for k in "abc")
    assert a == b, "two runs with seed 1 differ"
    assert len(a) > 8 * 5
    for app in APPS:
        data_a = {k: v for k, v in a.items() if k.startswith(app) and not k.endswith(".json")}
        data_c = {k: v for k, v in c.items() if k.startswith(app) and not k.endswith(".json")}
        common = set(data_a) & set(data_c)
        assert any(data_a[k] != data_c[k] for k in common) or set(data_a) != set(data_c), app


def test_no_temporary_files_left(tiny_runs: dict[str, Path]) -> None:
    leftovers = [p for p in tiny_runs["a"].rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []


@pytest.mark.parametrize("app", APPS)
def test_layout_matches_manifest(tiny_runs: dict[str, Path], app: str) -> None:
    folder = tiny_runs["a"] / app
    m = _manifest(folder)
    assert m["app"] == app and m["seed"] == 1 and "meteovision" in m["created_by"]
    assert len(m["events"]) == TINY.events
    n_frames = TINY.events * TINY.frames_per_event
    for pattern in m["inputs"]:
        files = sorted(folder.glob(pattern))
        per_frame = TINY.cameras if app.startswith("webcam") else 1
        assert len(files) == n_frames * per_frame, pattern
    if m["targets"]:
        assert len(sorted(folder.glob(m["targets"]))) == n_frames
    starts = [datetime.fromisoformat(s) for s, _ in m["events"]]
    assert len({s.date() for s in starts}) == TINY.events
    step = {"nowcast_cloudiness": 15, "sat2precip": 15, "webcam_snow": 30, "webcam_visibility": 30}.get(app, 5)
    assert m["time_step_minutes"] == step
    for start, end in m["events"]:
        span = datetime.fromisoformat(end) - datetime.fromisoformat(start)
        assert span.total_seconds() == (TINY.frames_per_event - 1) * step * 60


def test_odim_file_structure(tiny_runs: dict[str, Path]) -> None:
    path = sorted((tiny_runs["a"] / "radar_cleaning" / "radar").glob("*.h5"))[0]
    with h5py.File(path, "r") as f:
        assert f.attrs["Conventions"] == b"ODIM_H5/V2_2"
        assert f["what"].attrs["object"] == b"COMP" and f["what"].attrs["version"] == b"H5rad 2.2"
        assert f["what"].attrs["date"] + f["what"].attrs["time"] == path.stem.encode() + b"00"
        assert b"+proj=laea" in f["where"].attrs["projdef"]
        assert f["where"].attrs["xscale"] == 1000.0 and f["where"].attrs["xsize"] == TINY.size
        data = f["dataset1/data1/data"]
        assert data.dtype == np.uint8 and data.compression == "gzip"
        assert f["dataset1/data1/what"].attrs["quantity"] == b"TH"
        assert f["dataset1/quality1/what"].attrs["quantity"] == b"QIND"


def test_netcdf_file_structure(tiny_runs: dict[str, Path]) -> None:
    path = sorted((tiny_runs["a"] / "sat2precip" / "satellite").glob("*.nc"))[0]
    with netCDF4.Dataset(path) as nc:
        assert nc.Conventions == "CF-1.10"
        assert nc["crs"].grid_mapping_name == "geostationary" and "crs_wkt" in nc["crs"].ncattrs()
        assert nc["x"].units == "m" and nc["x"].standard_name == "projection_x_coordinate"
        assert nc["time"].units == "seconds since 1970-01-01 00:00:00" and nc.dimensions["time"].size == 1
        stamp = netCDF4.num2date(nc["time"][0], nc["time"].units).strftime("%Y%m%d%H%M")
        assert stamp == path.stem
        for name in ("IR_108", "WV_062", "IR_120", "VIS_006"):
            var = nc[name]
            assert var.dtype == np.float32 and var.grid_mapping == "crs" and var.dimensions == ("time", "y", "x")
    target = sorted((tiny_runs["a"] / "bow_echo" / "targets").glob("*.nc"))[0]
    with netCDF4.Dataset(target) as nc:
        mask = nc["bow_echo_mask"]
        assert mask.dtype == np.int8 and list(mask.flag_values) == [0, 1]
        assert mask.flag_meanings == "no_bow_echo bow_echo"


@pytest.mark.parametrize("app", APPS)
def test_every_app_reads_back_with_open_dataset(tiny_runs: dict[str, Path], app: str) -> None:
    readers = pytest.importorskip("meteovision.datasets.readers")
    folder = tiny_runs["a"] / app
    m = _manifest(folder)
    first = sorted(folder.glob(m["inputs"][0]))[0]
    ds = readers.open_dataset(first)
    if app.startswith("webcam"):
        assert ds["image"].shape == (1, 3, 96, 128) and ds["image"].dtype == np.uint8
        labels = readers.read_webcam_labels(folder / m["labels_csv"])
        assert len(labels) == TINY.events * TINY.frames_per_event * TINY.cameras
        assert set(labels["snow_class"].dropna()) <= set(SNOW_CLASSES)
        return
    for name in m["input_variables"]:
        assert name in ds and ds[name].dims == ("time", "y", "x") and ds[name].dtype == np.float32
    assert ds.sizes["x"] == TINY.size and ds.sizes["y"] == TINY.size
    assert (
        np.datetime_as_string(ds.time.values[0], unit="m").replace("-", "").replace("T", "").replace(":", "")
        == first.stem
    )
    if m["targets"]:
        target = readers.open_dataset(folder / "targets" / f"{first.stem}.nc")
        assert m["target_variable"] in target
        np.testing.assert_allclose(target.x.values, ds.x.values, atol=1e-3)
        np.testing.assert_allclose(target.y.values, ds.y.values, atol=1e-3)


def test_reader_values_equal_the_simulation(tmp_path: Path) -> None:
    readers = pytest.importorskip("meteovision.datasets.readers")
    settings = SampleSettings(size=48, events=1, frames_per_event=4)
    generate_sample_data("nowcast_precip", tmp_path, 5, settings)
    event = simulate_rain_event(make_rng(5, "nowcast_precip", 0), (48, 48), 4)
    files = sorted((tmp_path / "radar").glob("*.h5"))
    for t, path in enumerate(files):
        rate = readers.open_dataset(path)["RATE"].values[0]
        np.testing.assert_allclose(rate, event.rate[t], atol=0.0051)
        assert np.array_equal(rate == 0, event.rate[t] == 0)


# ----------------------------------------------------------------------------- folder handling and the CLI


def test_rerun_removes_stale_files_and_refuses_foreign_folders(tmp_path: Path) -> None:
    generate_sample_data(
        "nowcast_reflectivity", tmp_path / "s", 1, SampleSettings(size=32, events=2, frames_per_event=3)
    )
    generate_sample_data(
        "nowcast_reflectivity", tmp_path / "s", 1, SampleSettings(size=32, events=1, frames_per_event=3)
    )
    assert len(list((tmp_path / "s" / "radar").glob("*.h5"))) == 3
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("do not touch")
    with pytest.raises(SampleDataError, match="refusing"):
        generate_sample_data("bow_echo", foreign, 1, TINY)
    assert (foreign / "thesis.tex").read_text() == "do not touch"


def test_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    grid = radar_grid(32)
    with pytest.raises(SampleDataError, match="shape"):
        write_odim_composite(tmp_path / "x.h5", datetime(2022, 1, 1), grid, {"RATE": np.zeros((4, 4))})
    with pytest.raises(SampleDataError, match="shape"):
        write_cf_netcdf(
            tmp_path / "x.nc", datetime(2022, 1, 1), grid, [CfVariable("a", np.zeros((3, 3)), "1", "a")], "t", "s"
        )
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nc"
    argv = ["sample-data", "--app", "nowcast_precip", "--out", str(out), "--seed", "1"]
    assert cli_main([*argv, "--size", "40", "--events", "3", "--frames-per-event", "4"]) == 0
    m = _manifest(out)
    assert m["app"] == "nowcast_precip" and m["seed"] == 1
    assert m["inputs"] == ["radar/*.h5"] and m["input_variables"] == ["RATE"] and m["target_variable"] == "RATE"
    assert m["targets"] is None and m["labels_csv"] is None and m["class_names"] is None
    assert m["settings"]["size"] == 40 and len(m["events"]) == 3
    assert len(list(out.glob("radar/*.h5"))) == 12
    assert str(out / "manifest.json") in capsys.readouterr().out

    bad = tmp_path / "occupied"
    bad.mkdir()
    (bad / "file.txt").write_text("x")
    assert cli_main(["sample-data", "--app", "bow_echo", "--out", str(bad), "--seed", "1"]) == 2
    assert "refusing" in capsys.readouterr().err


def test_cli_all_apps(tmp_path: Path) -> None:
    argv = ["sample-data", "--app", "all", "--out", str(tmp_path), "--seed", "3", "--size", "32"]
    assert cli_main([*argv, "--events", "1", "--frames-per-event", "2"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(APPS)
    for app in APPS:
        assert _manifest(tmp_path / app)["app"] == app


# ----------------------------------------------------------------------------- physics: bow echoes


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


def test_webcam_files_match_labels(tiny_runs: dict[str, Path]) -> None:
    folder = tiny_runs["a"] / "webcam_visibility"
    m = _manifest(folder)
    assert m["class_names"] == list(VISIBILITY_CLASSES) and m["class_edges_m"] == [200.0, 1000.0, 5000.0]
    lines = (folder / "labels.csv").read_text().splitlines()
    assert lines[0] == "path,camera,time,snow_class,visibility_m"
    for line in lines[1:]:
        path, camera, time, snow, vis = line.split(",")
        assert (folder / path).is_file() and Path(path).name.startswith(camera + "_")
        assert Path(path).stem.endswith(datetime.fromisoformat(time).strftime("%Y%m%d%H%M"))
        assert snow in SNOW_CLASSES and 50.0 <= float(vis) <= 20000.0


def test_generate_wraps_errors_as_package_errors(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(MeteovisionError, match="not a folder"):
        generate_sample_data("bow_echo", target, 0, TINY)


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
