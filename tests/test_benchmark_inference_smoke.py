"""Smoke test of ``benchmarks/inference.py``: it runs end to end on tiny inputs and reports every figure.

No timing is asserted (the numbers depend on the machine and its load). What is asserted: the
benchmark's checkpoint is a real meteovision checkpoint of the bow_echo U-Net; the whole-frame mode
that ``predict`` is given computes exactly the bare whole-frame forward (in float32 and in bf16), and
the naive baseline the same values with autograd on; the best mode is the fastest the predict stage
runs, in either precision, and (b) runs in its precision; the printed tables hold (a), (b), (c), the
stages, both ratios and their verdicts for the best mode and for each precision, which follow from the
recorded times, and the bf16 product's distance from the float32 one. The main run skips the FMI
frame; what the FMI subprocess runs is checked in-process on a small FMI-like GeoTIFF (a subprocess
would cost seconds).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from types import ModuleType

import netCDF4
import numpy as np
import pytest
import torch

from meteovision.datasets.readers import open_dataset
from meteovision.pipeline.inference.tiling import predict_domain
from tests.conftest import FMI_XML, dbzh_raw, load_benchmark_script, write_geotiff

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 48
FMI_SHAPE = (40, 56)
REPEATS = 1


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """The benchmark script (``benchmarks/inference.py``)."""
    return load_benchmark_script("inference")


def fake_shared_data(root: Path) -> Path:
    """``root/radar/fmi_geotiff_20160928`` with one small FMI-like DBZH GeoTIFF (EPSG:3067, 250 m)."""
    folder = root / "radar" / "fmi_geotiff_20160928"
    folder.mkdir(parents=True)
    tags = {"GDAL_METADATA": FMI_XML.format(time="201609281445")}
    write_geotiff(folder / "201609281445_FINUTM.tif", dbzh_raw(0, FMI_SHAPE), tags=tags)
    return root


def test_checkpoint_modes_and_naive_baseline(bench: ModuleType, tmp_path: Path) -> None:
    """The checkpoint loads as the bow_echo U-Net; ``predict``'s whole-frame tiling = the bare forward = naive."""
    path = bench.write_rate_composite(tmp_path / "rate.h5", SIZE, seed=0)
    with open_dataset(path) as ds:
        rate = ds["RATE"].to_numpy()[0]
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    outside = np.hypot(rows - (SIZE - 1) / 2, cols - (SIZE - 1) / 2) > 0.48 * SIZE
    assert np.isnan(rate[outside]).all() and np.isfinite(rate[~outside]).all()
    assert rate[~outside].min() >= 0 and (rate[~outside] > 0).any() and (rate[~outside] == 0).any()

    checkpoint = bench.make_checkpoint(tmp_path / "rate.ckpt", bench.RATE_INPUT, seed=0)
    models = bench.load_models(checkpoint, SIZE, tmp_path)
    meta = models.prepared.meta
    assert (meta.model_name, meta.in_channels, meta.out_channels) == ("unet", 1, 1)
    assert meta.network.model_settings == bench.MODEL_SETTINGS
    assert meta.input_variables == ("RATE",) and meta.channel_units == ("mm h-1",)
    assert meta.normalization is not None and meta.normalization.transforms == ("log1p",)
    assert meta.network.divisibility == 16
    assert meta.grid_spacing_m == 1000.0 and meta.data_description["trained"] is False
    # predict's network is channels-last; the naive baseline's is the checkpoint as loaded (NCHW)
    conv, plain_conv = (next(m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
                        for model in (models.prepared, models.plain))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and plain_conv.weight.is_contiguous()
    assert not plain_conv.weight.is_contiguous(memory_format=torch.channels_last)

    stats = models.prepared.input_stats()
    normalised = np.ascontiguousarray(stats.normalize(rate[None], channel_axis=0))
    # log1p then standardise with the hand-set mean 0.3 and std 0.6; NaN -> 0
    inside = ~outside
    np.testing.assert_allclose(normalised[0][inside], (np.log1p(rate[inside]) - 0.3) / 0.6, rtol=1e-5)
    assert (normalised[0][outside] == 0).all()
    x = torch.from_numpy(normalised)[None]
    full = bench.mode_named("full_frame_channels_last")
    tiling = full.tiling(models.prepared, SIZE)
    assert (tiling.tile_size, tiling.overlap, tiling.batch_size) == (SIZE, 0, 1)
    bare = bench.full_frame_forward(models.prepared, x, channels_last=True)[0].numpy()
    np.testing.assert_allclose(predict_domain(models.prepared.net, normalised, tiling), bare, rtol=1e-5, atol=1e-6)
    naive = bench.naive_forward(models.plain, x)
    assert naive.requires_grad  # autograd really records the graph in the naive baseline
    np.testing.assert_allclose(naive.detach()[0].numpy(), bare, rtol=1e-4, atol=1e-5)
    # the bf16 modes: predict's whole-frame tiling under bf16 autocast = the bare bf16 forward, near float32
    full16 = bench.mode_named("full_frame_channels_last_bf16")
    tiling16 = full16.tiling(models.prepared, SIZE)
    assert tiling16.autocast_dtype == torch.bfloat16 and (tiling16.tile_size, tiling16.overlap) == (SIZE, 0)
    bare16 = bench.full_frame_forward(models.prepared, x, channels_last=True, bf16=True)[0].numpy()
    assert bare16.dtype == np.float32
    np.testing.assert_allclose(predict_domain(models.prepared.net, normalised, tiling16), bare16, rtol=1e-5, atol=1e-6)
    assert 0 < np.abs(bare16 - bare).max() < 0.5  # logits: bf16 really ran, and stays close
    # the predict stage runs every channels-last mode, float32 or bf16; (b) gets the mode's precision
    assert {m.name: (m.precision, m.in_predict) for m in bench.MODES} == {
        "full_frame_channels_last": ("32", True), "tiles_channels_last": ("32", True),
        "full_frame_channels_last_bf16": ("bf16", True), "tiles_channels_last_bf16": ("bf16", True),
        "full_frame_nchw": ("32", False)}
    for mode, precision in ((full, "32"), (full16, "bf16")):
        settings = mode.predict_settings(models.prepared, SIZE, tmp_path)
        assert (settings.precision, settings.tile_size, settings.overlap) == (precision, SIZE, 0)
    with pytest.raises(bench.BenchmarkError, match="not one the predict stage runs"):
        bench.mode_named("full_frame_nchw").predict_settings(models.plain, SIZE, tmp_path)


def test_best_modes_are_the_fastest_the_predict_stage_runs(bench: ModuleType) -> None:
    medians = {"full_frame_channels_last": 3.0, "tiles_channels_last": 2.0, "full_frame_channels_last_bf16": 1.5,
               "tiles_channels_last_bf16": 4.0, "full_frame_nchw": 0.5}
    timings = [bench.Timing(name, "", (t,)) for name, t in medians.items()]
    best = bench.best_modes(timings)
    assert {p: m.name for p, m in best.items()} == {"32": "tiles_channels_last",
                                                    "bf16": "full_frame_channels_last_bf16"}


def test_benchmark_runs_and_reports(bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "figures" / "inference.json"
    argv = ["--size", str(SIZE), "--repeats", str(REPEATS), "--candidate-repeats", "1", "--warmup", "0",
            "--threads", "1", "--skip-fmi", "--json", str(out)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    figures = json.loads(out.read_text(encoding="utf-8"))

    assert figures["size"] == SIZE and figures["settings"]["repeats"] == REPEATS
    assert figures["machine"]["torch_threads"] == 1
    assert figures["native_bf16"] == figures["machine"]["native_bf16"] == bench.cpu_has_native_bf16()
    names = [m["name"] for m in figures["candidates"]]
    assert names == ["full_frame_channels_last", "tiles_channels_last", "full_frame_channels_last_bf16",
                     "tiles_channels_last_bf16", "full_frame_nchw"]  # bf16 is timed even where it is emulated
    by_precision = figures["by_precision"]
    for timing in [*figures["candidates"], figures["candidates_naive"], figures["naive"],
                   *(by_precision[p][k] for p in ("32", "bf16") for k in ("bare", "end_to_end"))]:
        assert min(timing["times_s"]) > 0
        assert timing["median_s"] == pytest.approx(statistics.median(timing["times_s"]))
        assert len(timing["times_s"]) == (1 if timing in figures["candidates"] else REPEATS)
    for m in figures["candidates"]:
        assert m["naive_over_mode"] == pytest.approx(figures["candidates_naive"]["median_s"] / m["median_s"])

    # each precision's best mode is its fastest channels-last candidate; (a) is the faster of the two
    eligible = [m for m in figures["candidates"] if m["in_predict"]]
    assert [m["name"] for m in figures["candidates"] if not m["in_predict"]] == ["full_frame_nchw"]
    best_of = {p: min((m for m in eligible if m["precision"] == p), key=lambda m: m["median_s"])
               for p in ("32", "bf16")}
    best = min(best_of.values(), key=lambda m: m["median_s"])
    assert figures["best_mode"] == best["name"] == figures["bare"]["name"]
    assert figures["best_precision"] == best["precision"]
    headline = by_precision[best["precision"]]
    assert figures["bare"] == headline["bare"] and figures["end_to_end"] == headline["end_to_end"]
    assert figures["ratios"] == headline["ratios"] and figures["verdicts"] == headline["verdicts"]
    assert figures["end_to_end"]["name"] == f"end_to_end_{best['precision']}"
    naive = figures["naive"]["median_s"]
    word = {True: "PASS", False: "MISS"}
    for p, fig in by_precision.items():
        assert fig["best_mode"] == best_of[p]["name"] == fig["bare"]["name"]
        assert f"--precision {p}" in fig["end_to_end"]["description"]
        e2e, bare = fig["end_to_end"]["median_s"], fig["bare"]["median_s"]
        assert fig["ratios"] == {"end_to_end_over_bare": pytest.approx(e2e / bare),
                                 "naive_over_bare": pytest.approx(naive / bare)}
        assert fig["verdicts"] == {"end_to_end": e2e / bare <= 1.25, "speedup_over_naive": naive / bare >= 1.8,
                                   "fmi_peak_rss": None}
        assert fig["fmi"] == {"status": "skipped", "reason": "--skip-fmi"}
        stages = fig["stages_s"]
        parts = ["read", "normalise", "network", "outputs", "write_netcdf"]
        assert list(stages) == [*parts, "total"]
        assert stages["total"] == pytest.approx(sum(stages[k] for k in parts))
    assert figures["stages_s"] == headline["stages_s"] and figures["fmi"] == headline["fmi"]
    diff = figures["bf16_vs_float32"]
    assert 0 < diff["max_abs_probability_difference"] < 0.1 and diff["mean_abs_probability_difference"] > 0
    assert 0 <= diff["mask_pixels_changed_fraction"] < 0.2 and 0 < diff["pixels_with_data"] < SIZE * SIZE

    # the headline table: every figure of the best mode, the two ratios with their targets and verdicts
    p = best["precision"]
    e2e, bare = figures["end_to_end"]["median_s"], figures["bare"]["median_s"]
    ratios, verdicts = figures["ratios"], figures["verdicts"]
    assert "| figure | value | target | verdict |" in printed
    assert f"| (a) bare forward, best mode `{best['name']}` (median of {REPEATS}) | {bare:.3f} s |" in printed
    assert (f"| (b) end to end, `predict_file --precision {p}` ODIM -> NetCDF (median of {REPEATS}) | "
            f"{e2e:.3f} s |") in printed
    assert f"NCHW, float32, autograd on, whole frame (median of {REPEATS}) | {naive:.3f} s |" in printed
    for key, label in bench.STAGES.items():
        assert f"(b) stage, one pass: {label} | {figures['stages_s'][key]:.3f} s |" in printed
    assert (f"| ratio (b)/(a) | {ratios['end_to_end_over_bare']:.3f} | <= 1.25 | "
            f"{word[verdicts['end_to_end']]} |") in printed
    assert (f"| ratio (c)/(a) | {ratios['naive_over_bare']:.3f} | >= 1.8 | "
            f"{word[verdicts['speedup_over_naive']]} |") in printed
    assert "| FMI peak RSS: not measured (--skip-fmi) | - | <= 4 GiB | SKIPPED |" in printed
    # both precisions side by side
    f32, f16 = by_precision["32"], by_precision["bf16"]
    assert ("| figure | float32 (`--precision 32`, the CPU default) | bf16 autocast (`--precision bf16`) | "
            "target |") in printed
    assert f"| best mode (a) | `{f32['best_mode']}` | `{f16['best_mode']}` |" in printed
    assert (f"| ratio (b)/(a) | {f32['ratios']['end_to_end_over_bare']:.3f} {word[f32['verdicts']['end_to_end']]} | "
            f"{f16['ratios']['end_to_end_over_bare']:.3f} {word[f16['verdicts']['end_to_end']]} | <= 1.25 |") in printed
    assert (f"| ratio (c)/(a) | {f32['ratios']['naive_over_bare']:.3f} {word[f32['verdicts']['speedup_over_naive']]} "
            f"| {f16['ratios']['naive_over_bare']:.3f} {word[f16['verdicts']['speedup_over_naive']]} | >= 1.8 |"
            ) in printed
    assert f"probabilities differ by at most {diff['max_abs_probability_difference']:.4f}" in printed
    for name in names:
        assert f"| `{name}`" in printed


def test_fmi_child_reports_peak_memory(bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What the FMI subprocess runs and prints (here in-process, on a small FMI-like GeoTIFF, to stay quick)."""
    frame = fake_shared_data(tmp_path / "shared") / bench.FMI_SUBDIR / "201609281445_FINUTM.tif"
    checkpoint = bench.make_checkpoint(tmp_path / "dbzh.ckpt", bench.DBZH_INPUT, seed=0)
    argv = ["--fmi-child", str(checkpoint), str(frame), str(tmp_path / "out"), "--threads", "1",
            "--fmi-precision", "bf16"]
    assert bench.main(argv) == 0
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(bench.CHILD_PREFIX)]
    result = json.loads(line[len(bench.CHILD_PREFIX):])
    (output,) = result["outputs"]
    assert Path(output).parent == tmp_path / "out" and result["output_bytes"] == Path(output).stat().st_size > 0
    assert result["precision"] == "bf16"
    with netCDF4.Dataset(output) as nc:
        assert json.loads(nc.meteovision_config)["precision"] == "bf16"
    assert bench.raster_shape(frame) == FMI_SHAPE
    # this process imported torch and ran the U-Net: well over 100 MiB, and the peak only grows
    assert 100 * 2**20 < result["peak_rss_before_predict_bytes"] <= result["peak_rss_bytes"]
    assert result["seconds"] > 0


def test_missing_fmi_data_is_skipped(bench: ModuleType, tmp_path: Path) -> None:
    missing = tmp_path / "no_shared_data"
    result = bench.measure_fmi(bench.BenchSettings(shared_data=missing), tmp_path)
    folder = missing / "radar" / "fmi_geotiff_20160928"
    skipped = {"status": "skipped",
               "reason": f"real data folder {folder} not found or holds no .tif (give --shared-data PATH)"}
    assert result == {"32": skipped, "bf16": skipped}


def test_bad_settings_are_refused(bench: ModuleType) -> None:
    with pytest.raises(bench.BenchmarkError, match="size must be >= 32"):
        bench.BenchSettings(size=16)
    with pytest.raises(bench.BenchmarkError, match="repeats must be >= 1"):
        bench.main(["--repeats", "0", "--skip-fmi"])
