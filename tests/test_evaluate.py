"""``meteovision evaluate``: every method on the same analysis times and mask, tables, plots, maps, real OPERA.

The fast tests run on small hand-made CF NetCDF frames (a static rain field with a no-data
corner), so persistence is exactly right and every score can be checked; the network is a tiny
lagrangian Half-UNet fitted for two batches (its skill is not the point). The real-data test
runs persistence and LK on the OPERA test window of ``configs/evaluate_opera.yaml``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from meteovision.datasets.conventions import dbz_to_rate
from meteovision.datasets.errors import MeteovisionError
from meteovision.datasets.readers.coarsen import reduce_blocks
from meteovision.pipeline.cli import main
from meteovision.pipeline.verification import evaluate as evaluate_module
from meteovision.pipeline.verification.evaluate import run_evaluation
from meteovision.pipeline.verification.evaluate_config import EvaluationError, load_config
from meteovision.pipeline.verification.radar_series import analysis_indices, load_series
from tests.conftest import NcFile, write_netcdf
from tests.predict_helpers import nowcast_checkpoint

pytestmark = [
    pytest.mark.filterwarnings("ignore:Singular matrix during outlier detection:UserWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]

STEP_MIN = 5
N_FRAMES = 8
SHAPE = (40, 48)


def _static_field() -> np.ndarray:
    """Rain blobs from 0 to ~12 mm h-1 with a no-data corner (outside radar coverage)."""
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]].astype(np.float64)
    rain = 12.0 * np.exp(-((yy - 15) ** 2 + (xx - 20) ** 2) / 40.0)
    rain += 3.0 * np.exp(-((yy - 28) ** 2 + (xx - 34) ** 2) / 30.0)
    rain[rain < 0.1] = 0.0
    rain[:8, -10:] = np.nan
    return rain.astype(np.float32)


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("frames")
    field = _static_field()
    x = 4_000_000.0 + 1000.0 * np.arange(SHAPE[1]) + 500.0
    y = 3_000_000.0 - 1000.0 * np.arange(SHAPE[0]) - 500.0
    for i in range(N_FRAMES):
        stamp = f"2024-01-02T12:{i * STEP_MIN:02d}:00"
        write_netcdf(folder / f"rate_{i:02d}.nc", NcFile(values=field[None], times=(stamp,), x=x, y=y, packed=False))
    return folder


def _config(tmp_path: Path, frames_dir: Path, **changes: object) -> Path:
    cfg: dict[str, object] = {
        "name": "static test", "data_root": str(frames_dir), "inputs": "rate_*.nc", "variable": "RATE",
        "time_step_minutes": STEP_MIN, "last_frames": 6, "past_frames": 3, "max_lead_minutes": 10,
        "fss_scales_km": [1, 4], "table_fss_scale_km": 4, "methods": ["persistence", "lk"],
        "map_leads_minutes": [5, 10], "maps": "last", "output_dir": str(tmp_path / "out"),
    }
    cfg.update(changes)
    path = tmp_path / "evaluate.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return nowcast_checkpoint(tmp_path_factory.mktemp("net")).checkpoint


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_evaluate_writes_tables_plots_and_maps_for_every_method(
    tmp_path: Path, frames_dir: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, frames_dir)
    assert main(["evaluate", "--config", str(config), "--checkpoint", str(checkpoint)]) == 0
    out = tmp_path / "out"
    printed = capsys.readouterr().out
    assert "| lead | method | CSI 1 | POD 1 | FAR 1 | CSI 5 | FSS 1 mm h-1, 4km | MAE (mm h-1) | pixels |" in printed
    for method in ("network", "persistence", "lk"):
        assert f"| +5 min | {method} |" in printed and f"| +10 min | {method} |" in printed
    names = {p.name for p in out.iterdir()}
    assert {"scores.json", "scores.csv", "scores.md", "skill_vs_lead_csi_1.png", "skill_vs_lead_csi_5.png",
            "skill_vs_lead_fss_1mm_4km.png", "skill_vs_lead_mae.png",
            "maps_20240102T1225Z_+5min.png", "maps_20240102T1225Z_+10min.png"} <= names
    assert not [n for n in names if n.startswith(".")]  # no temporary file left behind

    doc = json.loads((out / "scores.json").read_text())
    # 6 frames in the test window (12:10-12:35), 3 past + 2 future: analysis at 12:20 and 12:25
    assert doc["analysis_times"] == ["2024-01-02T12:20Z", "2024-01-02T12:25Z"]
    assert doc["methods"] == ["network", "persistence", "lk"]
    assert doc["lead_minutes"] == [5.0, 10.0]
    assert len(doc["checkpoint"]["sha256"]) == 64
    assert [w["pixels"] for w in doc["fss_windows"]] == [1, 5]
    valid = int(np.isfinite(_static_field()).sum())
    n = doc["n_samples"]
    # two analysis times; the no-data corner is never scored (with no motion, nothing else is lost)
    assert n["5"] == n["10"] == 2 * valid
    # persistence of a static field is exact
    persistence = doc["scores"]["persistence"]
    for lead in ("5", "10"):
        assert persistence[lead]["csi@1"] == 1.0 and persistence[lead]["csi@5"] == 1.0
        assert persistence[lead]["far@1"] == 0.0 and persistence[lead]["mae"] == 0.0
        assert persistence[lead]["fss@1_4km"] == pytest.approx(1.0)
        assert persistence[lead]["analysis_times"] == 2

    rows = _csv_rows(out / "scores.csv")
    assert list(rows[0]) == ["method", "lead_minutes", "metric", "value", "n_samples"]
    samples: dict[tuple[str, str], set[str]] = {}
    for row in rows:
        samples.setdefault((row["lead_minutes"], row["metric"]), set()).add(row["n_samples"])
    assert all(len(v) == 1 for v in samples.values())  # the same pixels for every method
    assert {r["method"] for r in rows} == {"network", "persistence", "lk"}
    assert samples[("5", "csi@1")] == {str(n["5"])}


def test_baselines_only_without_checkpoint_and_lk_right_on_a_static_field(tmp_path: Path, frames_dir: Path) -> None:
    cfg = load_config(_config(tmp_path, frames_dir, maps="none", methods=["persistence", "lk"]))
    result = run_evaluation(cfg)
    assert result.methods == ["persistence", "lk"]
    assert result.maps == []
    for k in range(result.n_leads):
        assert result.value("lk", k, "csi@1") > 0.95  # no motion found, so LK keeps the field
        assert result.value("persistence", k, "csi@1") == 1.0
        np.testing.assert_array_equal(result.accumulators["lk"].n_pixels, result.accumulators["persistence"].n_pixels)


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--config", "--checkpoint", "--data-root", "--output", "--max-lead-minutes", "--maps"):
        assert option in text


def test_bad_configs_are_refused_with_the_file_named(
    tmp_path: Path, frames_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(tmp_path, frames_dir, colour="red")
    with pytest.raises(EvaluationError, match=r"evaluate\.yaml: colour: Extra inputs are not permitted"):
        load_config(path)
    path = _config(tmp_path, frames_dir, methods=["persistence", "magic"])
    with pytest.raises(EvaluationError, match=r"unknown method\(s\) \['magic'\]"):
        load_config(path)
    path = _config(tmp_path, frames_dir, max_lead_minutes=7)
    with pytest.raises(EvaluationError, match="not a whole number of 5-min steps"):
        run_evaluation(load_config(path))
    path = _config(tmp_path, frames_dir, inputs="nothing_*.h5")
    assert main(["evaluate", "--config", str(path)]) == 2
    assert "no file matches 'nothing_*.h5'" in capsys.readouterr().err
    path = _config(tmp_path, frames_dir, variable="DBZH")
    with pytest.raises(MeteovisionError, match=r"rate_00\.nc: variables \['DBZH'\] are not 2-D fields"):
        run_evaluation(load_config(path))
    path = _config(tmp_path, frames_dir, methods=["persistence", "network"])
    with pytest.raises(EvaluationError, match="method 'network' needs a checkpoint"):
        run_evaluation(load_config(path))
    path = _config(tmp_path, frames_dir, last_frames=4)
    with pytest.raises(EvaluationError, match="no analysis time has 3 past and 2 future frames"):
        run_evaluation(load_config(path))


def test_analysis_times_stay_inside_the_window_and_skip_gaps() -> None:
    times = np.array([f"2024-01-02T12:{m:02d}" for m in (0, 5, 10, 15, 20, 30, 35, 40, 45)], dtype="datetime64[ns]")
    inside = np.ones(times.size, dtype=bool)
    # 2 past + 1 future, exact 5-min steps: t0 at 12:05, 12:10 (12:15 needs 12:20 -> ok), 12:35, 12:40
    assert [str(times[i])[11:16] for i in analysis_indices(times, inside, 5.0, 2, 1)] == [
        "12:05", "12:10", "12:15", "12:35", "12:40"]
    inside[:3] = False
    assert [str(times[i])[11:16] for i in analysis_indices(times, inside, 5.0, 2, 1)] == ["12:35", "12:40"]


def coarsen_blocks(values: np.ndarray, factor: int, linear_db: bool) -> np.ndarray:
    """The readers' block mean, as evaluation gets it (trailing partial blocks dropped)."""
    h, w = values.shape[-2] // factor * factor, values.shape[-1] // factor * factor
    return reduce_blocks(values[..., :h, :w].copy(), factor, "mean", linear_db)


def test_coarsening_averages_valid_cells_in_linear_units() -> None:
    values = np.array([[[1.0, 3.0, 5.0], [np.nan, 2.0, 7.0], [9.0, 9.0, 9.0]]], dtype=np.float32)
    np.testing.assert_allclose(coarsen_blocks(values, 2, linear_db=False), [[[2.0]]])  # mean of 1, 3, 2
    dbz = np.array([[[10.0, 20.0], [np.nan, np.nan]]], dtype=np.float32)
    expected = 10 * np.log10((10.0 + 100.0) / 2)  # mean of Z = 10 and 100 mm6 m-3
    np.testing.assert_allclose(coarsen_blocks(dbz, 2, linear_db=True), [[[expected]]], rtol=1e-6)
    assert np.isnan(coarsen_blocks(np.full((1, 2, 2), np.nan, dtype=np.float32), 2, linear_db=False)).all()


def test_dbz_to_rate_is_marshall_palmer_type() -> None:
    rate = dbz_to_rate(np.array([10 * np.log10(223.0), 10 * np.log10(223.0 * 10**1.53), np.nan]))
    np.testing.assert_allclose(rate[:2], [1.0, 10.0], rtol=1e-5)
    assert np.isnan(rate[2])


# ----------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_opera_lk_beats_persistence_at_30_min(shared_data: Path, tmp_path: Path) -> None:
    cfg = load_config("evaluate_opera", data_root=shared_data, output_dir=tmp_path, max_lead_minutes=30,
                      methods=("persistence", "lk"), maps="none")
    result = run_evaluation(cfg)
    assert len(result.analysis_times) == 7  # 21:45-23:15: 4 past and 2 future frames inside 21:00-23:45
    assert str(result.analysis_times[0]).startswith("2018-08-24T21:45")
    k30 = 1
    assert result.lead_minutes(k30) == 30.0
    n = result.accumulators["lk"].n_pixels
    assert (n > 100_000).all()
    np.testing.assert_array_equal(n, result.accumulators["persistence"].n_pixels)
    # the rain band over northern France moves east at about 7 px (15 km) per 15 min: extrapolation wins
    assert result.value("lk", k30, "csi@1") > result.value("persistence", k30, "csi@1") + 0.1
    assert result.value("lk", k30, "mae") < result.value("persistence", k30, "mae")


@pytest.mark.realdata
def test_bom_accumulations_are_read_as_rates_and_lk_beats_persistence(shared_data: Path, tmp_path: Path) -> None:
    import netCDF4

    cfg = load_config("evaluate_bom", data_root=shared_data, output_dir=tmp_path, max_lead_minutes=30,
                      methods=("persistence", "lk"), maps="none",
                      inputs="radar/bom_prcp_c10_20201031/66_20201031_0[89]*.nc")
    series = load_series(cfg)
    assert series.time_step_minutes == 10.0 and series.rates.shape == (12, 256, 256)
    with netCDF4.Dataset(series.files[3]) as nc:  # 08:30 UTC, kg m-2 over the file's 10 min
        amount = np.ma.filled(nc["precipitation"][:].astype(np.float64), np.nan).reshape(512, 512)
    expected = amount.reshape(256, 2, 256, 2).mean(axis=(1, 3)) * 6.0  # 1 km block means, mm per 10 min -> mm h-1
    np.testing.assert_allclose(series.rates[3], expected, rtol=1e-5, atol=1e-5)
    result = run_evaluation(cfg)
    assert len(result.analysis_times) == 6  # 08:30-09:20: 4 past and 3 future frames inside 08:00-09:50
    assert result.value("lk", 2, "csi@1") > result.value("persistence", 2, "csi@1") + 0.1


def test_evaluation_maps_show_geography_and_name_run_valid_time_and_lead(
    tmp_path: Path, frames_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.collections import LineCollection

    from meteovision.pipeline.verification import plots

    saved: dict[str, object] = {}
    real_save = plots._save

    def keep(fig: object, path: Path, title: str) -> Path:
        saved[path.name] = fig
        return real_save(fig, path, title)  # type: ignore[arg-type]

    monkeypatch.setattr(plots, "_save", keep)
    config = _config(tmp_path, frames_dir, methods=["persistence"], map_leads_minutes=[5])
    plots.write_maps(run_evaluation(load_config(config)), tmp_path)
    fig = saved["maps_20240102T1225Z_+5min.png"]
    title = fig.get_suptitle()  # type: ignore[attr-defined]
    assert title == "static test | valid 2024-01-02T12:30Z | +5 min (analysis 2024-01-02T12:25Z)"
    for ax in fig.axes[:2]:  # type: ignore[attr-defined]
        gids = {c.get_gid(): c for c in ax.collections if isinstance(c, LineCollection)}
        assert {"coastlines", "borders", "graticule"} <= set(gids)
        assert gids["graticule"].get_segments()
        assert all("°" in t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels())


_SUMS = ("hits", "forecast_events", "observed_events", "n_pixels", "n_times", "sum_abs_error", "sum_error",
         "fss_num", "fss_den")


def test_two_workers_give_the_scores_of_one(tmp_path: Path, frames_dir: Path, checkpoint: Path) -> None:
    cfg = load_config(_config(tmp_path, frames_dir, maps="all"))
    one = run_evaluation(cfg, {"net": checkpoint}, workers=1)
    two = run_evaluation(cfg, {"net": checkpoint}, workers=2)
    assert one.methods == two.methods == ["net", "persistence", "lk"]
    for name in one.methods:
        for state in _SUMS:  # bitwise: the sums of each time are added in the same order
            np.testing.assert_array_equal(getattr(one.accumulators[name], state),
                                          getattr(two.accumulators[name], state), err_msg=f"{name} {state}")
    assert [m.analysis_time for m in one.maps] == [m.analysis_time for m in two.maps]
    assert len(one.maps) == 4  # two analysis times x two map leads, in time order
    assert one.accumulators["lk"].n_times.tolist() == [2, 2]
    pool = evaluate_module._pool[0][1]
    again = run_evaluation(cfg, {"net": checkpoint}, workers=2)  # a further config reuses the started pool
    assert evaluate_module._pool[0][1] is pool
    for name in one.methods:
        for state in _SUMS:
            np.testing.assert_array_equal(getattr(one.accumulators[name], state),
                                          getattr(again.accumulators[name], state), err_msg=f"{name} {state}")


def test_several_checkpoints_and_configs_give_per_window_and_pooled_tables(
    tmp_path: Path, frames_dir: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _config(tmp_path / "a", frames_dir, name="window A", maps="none")
    second = _config(tmp_path / "b", frames_dir, name="window B", maps="none")
    args = ["evaluate", "--config", str(first), "--config", str(second), "--checkpoint", f"small={checkpoint}",
            "--checkpoint", str(checkpoint), "--output", str(tmp_path / "all")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    stem = checkpoint.stem
    assert "Pooled over 2 window(s) (window A, window B)" in printed
    valid = int(np.isfinite(_static_field()).sum())
    pooled = (tmp_path / "all" / "pooled.md").read_text()
    for method in ("small", stem, "persistence", "lk"):
        # each window scores two analysis times of `valid` pixels; the pooled row adds both windows
        assert f"| +5 min | {method} |" in pooled
    persistence = next(line for line in pooled.splitlines() if line.startswith("| +10 min | persistence |"))
    cells = [c.strip() for c in persistence.strip("|").split("|")]
    assert cells[-2:] == [str(4 * valid), "4"]
    assert cells[2:6] == ["1.000", "1.000", "0.000", "1.000"]  # CSI, POD, FAR, FBI at 1 mm/h: exact persistence
    header = pooled.splitlines()[2]
    assert "FSS 1km" in header and "FSS 4km" in header and "FBI 5" in header
    doc = json.loads((tmp_path / "all" / "evaluate_2" / "scores.json").read_text())  # both files are evaluate.yaml
    assert set(doc["checkpoints"]) == {"small", stem} and doc["name"] == "window B"
    assert (tmp_path / "all" / "evaluate_1" / "scores.json").is_file()


def test_pooled_counts_are_summed_before_the_ratios(tmp_path: Path, frames_dir: Path) -> None:
    from meteovision.pipeline.verification.pooled import pooled_sums

    long = run_evaluation(load_config(_config(tmp_path, frames_dir, maps="none", methods=["lk"])))
    short = run_evaluation(load_config(_config(tmp_path, frames_dir, maps="none", methods=["lk"], last_frames=5)))
    pooled = pooled_sums([long, short])["lk"][5.0]
    a, b = long.accumulators["lk"].lead_sums(0), short.accumulators["lk"].lead_sums(0)
    assert pooled.n == a.n + b.n and pooled.times == 3
    h = a.hits["1"] + b.hits["1"]
    m = a.observed_events["1"] + b.observed_events["1"] - h
    f = a.forecast_events["1"] + b.forecast_events["1"] - h
    assert pooled.scores()["csi@1"] == pytest.approx(h / (h + m + f), rel=1e-12)
    assert pooled.scores()["mae"] == pytest.approx((a.sum_abs_error + b.sum_abs_error) / (a.n + b.n), rel=1e-12)


def test_checkpoint_names() -> None:
    from meteovision.pipeline.verification.evaluate import checkpoint_names

    assert checkpoint_names(["runs/x/last.ckpt"]) == {"network": Path("runs/x/last.ckpt")}
    assert checkpoint_names(["a=x.ckpt", "runs/best.ckpt"]) == {"a": Path("x.ckpt"), "best": Path("runs/best.ckpt")}
    with pytest.raises(EvaluationError, match="taken"):
        checkpoint_names(["a/last.ckpt", "b/last.ckpt"])
    with pytest.raises(EvaluationError, match="baseline"):
        checkpoint_names(["lk=x.ckpt"])


def test_evaluate_benchmark_skips_without_data_and_reports_figures(tmp_path: Path, frames_dir: Path) -> None:
    from tests.conftest import load_benchmark_script

    bench = load_benchmark_script("evaluate")
    assert bench.main(["--data-root", str(tmp_path)]) == 0  # no radar folder: nothing measured, no error
    figures = bench.measure(str(_config(tmp_path, frames_dir)), frames_dir, None, 1, 2)  # 2 workers: test above
    assert figures["same_scores"] is True and figures["analysis_times"] == 2
    assert figures["harness_s"] == pytest.approx(figures["wall_1_worker_s"] - sum(figures["method_seconds"].values())
                                                 - figures["motion_s"])
    assert figures["default_threads"] == 2 and np.isfinite(figures["harness_share_default_threads"])
    assert "of the methods' time" in bench.report(figures)


def _amount_frames(folder: Path, epsg: int = 3035) -> Path:
    """The static series as 5-min accumulations (kg m-2), the layout of BoM's Rainfields files."""
    folder.mkdir()
    field = _static_field() * (STEP_MIN / 60.0)
    x = 4_000_000.0 + 1000.0 * np.arange(SHAPE[1]) + 500.0
    y = 3_000_000.0 - 1000.0 * np.arange(SHAPE[0]) - 500.0
    for i in range(N_FRAMES):
        stamp = f"2024-01-02T12:{i * STEP_MIN:02d}:00"
        write_netcdf(folder / f"amount_{i:02d}.nc", NcFile(values=field[None], name="precipitation", units="kg m-2",
                                                           standard_name=None, times=(stamp,), x=x, y=y,
                                                           packed=False, epsg=epsg))
    return folder


def test_accumulations_become_rates_over_their_period(tmp_path: Path, frames_dir: Path) -> None:
    amounts = _amount_frames(tmp_path / "amounts")
    rates = load_series(load_config(_config(tmp_path, frames_dir)))
    common = {"data_root": str(amounts), "inputs": "amount_*.nc", "variable": "precipitation"}
    from_amounts = load_series(load_config(_config(tmp_path, amounts, conversion="accumulation", **common)))
    np.testing.assert_allclose(from_amounts.rates, rates.rates, rtol=1e-6)  # period = the 5-min step
    doubled = load_series(load_config(_config(tmp_path, amounts, conversion="accumulation", period_minutes=2.5,
                                              **common)))
    np.testing.assert_allclose(doubled.rates, 2.0 * rates.rates, rtol=1e-6)
    with pytest.raises(EvaluationError, match=r"amount_00\.nc: precipitation is in 'kg m-2', but conversion "
                                              r"'rate' needs one of \['mm h-1'\]"):
        load_series(load_config(_config(tmp_path, amounts, **common)))
    with pytest.raises(EvaluationError, match="conversion"):
        load_config(_config(tmp_path, amounts, conversion="dbz", **common))


def test_a_latitude_longitude_grid_is_refused(tmp_path: Path) -> None:
    folder = _amount_frames(tmp_path / "geographic", epsg=4326)
    path = _config(tmp_path, folder, inputs="amount_*.nc", variable="precipitation", conversion="accumulation")
    with pytest.raises(EvaluationError, match=r"amount_00\.nc: the grid is in degrees of latitude and longitude"):
        load_series(load_config(path))
