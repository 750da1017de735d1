"""Synthetic sample data: file formats, determinism, the CLI, and the physics the apps rely on.

Physical checks run on the in-memory simulations at the default sizes (fast, no I/O);
format checks write every application at a tiny size and read it back.
"""

from __future__ import annotations

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

from meteovision.datasets.errors import MeteovisionError
from meteovision.datasets.synthetic import APPS, SampleDataError, SampleSettings, generate_sample_data
from meteovision.datasets.synthetic.common import event_calendar, make_rng
from meteovision.datasets.synthetic.grids import radar_grid, satellite_grid
from meteovision.datasets.synthetic.nowcast import (
    simulate_rain_event,
)
from meteovision.datasets.synthetic.webcam import (
    SNOW_CLASSES,
    VISIBILITY_CLASSES,
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
