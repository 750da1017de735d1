"""Inference speed and memory of the predict stage on national radar domains (CPU; one run, every ratio).

Run from the repository root: ``.venv/bin/python benchmarks/inference.py [--json PATH]`` (README.md).

On a synthetic 1536 x 1536 ODIM RATE composite (the French mosaic at 1 km), with the bow_echo
configuration's U-Net (resnet18 encoder, depth 4, decoder 128-64-32-16, 1 -> 1 channel), it measures:

* the candidate modes of the bare forward pass on the pre-normalised domain, in rounds interleaved
  with the naive baseline: whole domain or tile batches, channels-last or NCHW, float32 or bf16
  autocast, all in eval mode under ``torch.inference_mode``. The modes the predict stage runs are
  channels-last, in float32 (``--precision 32``, the CPU's default) or bf16 autocast (``--precision
  bf16``). The fastest median among them is the best mode (a); the fastest of each precision is that
  precision's best mode. bf16 is timed on any CPU, but is fast only where the CPU computes bf16
  natively (AVX512-BF16 or AMX; recorded in the machine's figures);
* then, in interleaved rounds (so that a change of the machine's load falls on all of them alike),
  for each precision: (a) the bare forward in its best mode, (b) ``predict_file`` from the ODIM file
  to the NetCDF product in that mode and precision (fresh output folder each time, no quicklook);
  and once, (c) the naive baseline: contiguous NCHW, autograd on (no ``inference_mode``/``no_grad``),
  one whole-frame float32 forward. The headline (a), (b) and ratios are those of the best mode's
  precision; the other precision's are printed beside them;
* a one-pass breakdown of (b) by stage, for each precision;
* how far the bf16 product is from the float32 one on the benchmark frame (probability, mask);

and, first and in subprocesses, the peak resident memory of ``predict_file`` (default 512-pixel tiles)
in each precision on a full 4963 x 7316 FMI frame (real data from ``../shared/data``; skipped when
absent). Targets: (b) <= 1.25 x (a); (c) >= 1.8 x (a); peak RSS <= 4 GiB. Each time is the median of
the timed rounds after ``--warmup`` untimed ones. It prints Markdown tables: the headline figures with
their targets and PASS/MISS, both precisions side by side, then the candidate modes.

The checkpoints are written here by ``checkpoint_metadata`` around an untrained network (random weights,
seeded) with normalisation statistics set by hand: speed and memory do not depend on the weights' values.
The figures are measurements, not tests (``tests/test_benchmark_inference_smoke.py`` only checks it runs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from bench_common import SHARED_DATA, BenchmarkError, Timing
from torch import Tensor

from meteovision.datasets.normalization import NormalizationStats
from meteovision.datasets.synthetic.fields import powerlaw_noise
from meteovision.datasets.synthetic.grids import radar_grid
from meteovision.datasets.synthetic.nowcast import rate_from_field
from meteovision.datasets.synthetic.writers import write_odim_composite
from meteovision.pipeline.checkpoints.loading import (
    CHECKPOINT_KEY,
    InferenceModel,
    checkpoint_metadata,
    load_inference_model,
)
from meteovision.pipeline.inference.inputs import InputSpec, read_frames
from meteovision.pipeline.inference.outputs import (
    build_product,
    output_path,
    physical_outputs,
    product_variables,
    write_product,
)
from meteovision.pipeline.inference.predict import (
    PredictSettings,
    cpu_has_native_bf16,
    predict_file,
    prepare_model,
    run_config,
)
from meteovision.pipeline.inference.tiling import TilingSettings, predict_domain
from meteovision.pipeline.training.tasks import SegmentationTask

LOG = logging.getLogger("meteovision.benchmarks.inference")

FMI_SUBDIR = Path("radar") / "fmi_geotiff_20160928"
#: The bow_echo configuration's network (configs/bow_echo.yaml).
MODEL_NAME = "unet"
MODEL_SETTINGS: dict[str, Any] = {"encoder_name": "resnet18", "encoder_depth": 4,
                                  "decoder_channels": [128, 64, 32, 16]}
#: Targets: end-to-end within this factor of the bare forward; best mode this much faster than naive.
MAX_END_TO_END_RATIO = 1.25
MIN_SPEEDUP_OVER_NAIVE = 1.8
MAX_FMI_RSS_GIB = 4.0
#: Tile batches tried as a candidate mode (the predict stage's default tiling).
TILE_SIZE = 512
TILE_OVERLAP = 64
TILE_BATCH = 4
#: Marks the subprocess's result line on its stdout.
CHILD_PREFIX = "FMI_RESULT "
GIB = 1024**3



@dataclass(frozen=True)
class BenchSettings:
    """What to measure; ``quick`` values come from :func:`settings_from_args`."""

    size: int = 1536
    repeats: int = 5
    candidate_repeats: int = 3
    warmup: int = 1
    threads: int = 2
    shared_data: Path = SHARED_DATA
    fmi: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("size", "repeats", "candidate_repeats", "threads"):
            if getattr(self, name) < 1:
                raise BenchmarkError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.size < 32:
            raise BenchmarkError(f"size must be >= 32 pixels (the U-Net halves it 4 times), got {self.size}")
        if self.warmup < 0:
            raise BenchmarkError(f"warmup must be >= 0, got {self.warmup}")


# -- checkpoints ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputKind:
    """The one input variable of a benchmark checkpoint and its hand-set normalisation."""

    variable: str
    units: str
    transform: str
    mean: float
    std: float


#: Rain rate as the bow_echo configuration reads it (log1p); rough statistics of a rainy composite.
RATE_INPUT = InputKind("RATE", "mm h-1", "log1p", 0.3, 0.6)
#: Reflectivity (FMI composites are DBZH); clip_dbz as the reflectivity configurations use.
DBZH_INPUT = InputKind("DBZH", "dBZ", "clip_dbz", 5.0, 15.0)


@dataclass(frozen=True)
class BenchData:
    """What ``checkpoint_metadata`` reads from a datamodule, for a checkpoint that was never trained."""

    input: InputKind
    grid_spacing_m: float = 1000.0
    time_step_minutes: float = 5.0
    target_names: tuple[str, ...] = ("bow_echo_mask",)
    target_units: tuple[str, ...] = ("1",)
    class_names: tuple[str, ...] | None = None
    num_input_frames: int = 1
    channel_names: list[str] = field(init=False)
    channel_units: list[str] = field(init=False)
    input_variables: list[str] = field(init=False)
    normalization: NormalizationStats = field(init=False)

    def __post_init__(self) -> None:
        kind = self.input
        object.__setattr__(self, "channel_names", [kind.variable])
        object.__setattr__(self, "channel_units", [kind.units])
        object.__setattr__(self, "input_variables", [kind.variable])
        stats = NormalizationStats((kind.variable,), (kind.units,), (kind.transform,), (kind.mean,),
                                   (kind.std,))
        object.__setattr__(self, "normalization", stats)

    def data_description(self) -> dict[str, Any]:
        return {"benchmark": "benchmarks/inference.py", "trained": False,
                "note": "random weights (seeded) and hand-set normalisation: for timing and memory only"}


def make_checkpoint(path: Path, kind: InputKind, seed: int) -> Path:
    """A meteovision checkpoint of the bow_echo U-Net with random weights, taking ``kind`` as its input.

    The metadata come from ``checkpoint_metadata`` (what ``meteovision fit`` records), so
    ``load_inference_model`` and ``predict`` treat it as any trained checkpoint.
    """
    torch.manual_seed(seed)
    task = SegmentationTask(application="bow_echo", model=MODEL_NAME, model_settings=dict(MODEL_SETTINGS),
                            in_channels=1, out_channels=1, baseline=None)
    meta = checkpoint_metadata(task, BenchData(kind))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": task.state_dict(), CHECKPOINT_KEY: meta.to_dict()}, path)
    return path


def write_rate_composite(path: Path, size: int, seed: int) -> Path:
    """An ODIM_H5 RATE composite on the synthetic ``size`` x ``size`` 1 km LAEA grid over France.

    Multiscale intermittent rain (about 30 % wet) inside a disc of radar coverage, nodata outside it.
    """
    rng = np.random.default_rng(seed)
    rate = rate_from_field(powerlaw_noise(rng, (size, size)), threshold=0.5, median_rate=1.5, sigma=1.0)
    rows, cols = np.mgrid[0:size, 0:size]
    centre = (size - 1) / 2.0
    rate = np.where(np.hypot(rows - centre, cols - centre) <= 0.48 * size, rate, np.nan)
    write_odim_composite(path, datetime(2024, 6, 1, 12, 0), radar_grid(size), {"RATE": rate})
    return path


# -- timing -----------------------------------------------------------------------------------------------


def time_interleaved(
    runs: dict[str, Callable[[], object]], warmup: int, repeats: int
) -> dict[str, tuple[float, ...]]:
    """Wall times of every run, ``repeats`` rounds of one call each, after ``warmup`` untimed rounds.

    The runs alternate inside each round (the order rotates from round to round), so a change of
    the machine's load during the measurement falls on all of them alike, and their ratios hold.
    """
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
        LOG.info("  round %d/%d: %s", r + 1, repeats, ", ".join(f"{n} {t[-1]:.3f} s" for n, t in times.items()))
    return {name: tuple(t) for name, t in times.items()}


#: The precisions the predict stage offers (``PredictSettings.precision``, resolved), and how they read.
UsedPrecision = Literal["32", "bf16"]
PRECISIONS: tuple[UsedPrecision, ...] = ("32", "bf16")
PRECISION_LABELS: dict[str, str] = {"32": "float32", "bf16": "bf16 autocast"}


@dataclass(frozen=True)
class Mode:
    """One way of running the network over the domain: whole frame or tile batches, layout, precision.

    ``in_predict``: the predict stage can run this mode (it always runs channels-last, in float32 or,
    with ``precision="bf16"``, under bf16 autocast); only such a mode can be a best mode, which (b)
    then runs with the same precision.
    """

    name: str
    description: str
    channels_last: bool
    tile_size: int | None  # None: the whole domain in one forward pass
    batch_size: int = 1
    bf16: bool = False  # under torch.autocast(bfloat16)
    in_predict: bool = True

    @property
    def precision(self) -> UsedPrecision:
        """``PredictSettings.precision`` for this mode: ``32`` or ``bf16``."""
        return "bf16" if self.bf16 else "32"

    def tiling(self, model: InferenceModel, size: int) -> TilingSettings:
        """The tiler settings ``predict`` runs this mode with (one exact tile for the whole frame)."""
        div = model.meta.network.divisibility
        autocast = torch.bfloat16 if self.bf16 else None
        if self.tile_size is None:
            return TilingSettings.for_model(div, tile_size=-(-size // div) * div, overlap=0, batch_size=1,
                                            channels_last=self.channels_last, autocast_dtype=autocast)
        return TilingSettings.for_model(div, tile_size=self.tile_size, overlap=TILE_OVERLAP,
                                        batch_size=self.batch_size, channels_last=self.channels_last,
                                        autocast_dtype=autocast)

    def predict_settings(self, model: InferenceModel, size: int, output_dir: Path) -> PredictSettings:
        if not self.in_predict:
            raise BenchmarkError(f"mode {self.name} is not one the predict stage runs")
        tiling = self.tiling(model, size)
        return PredictSettings(output_dir=output_dir, tile_size=tiling.tile_size, overlap=tiling.overlap,
                               batch_size=tiling.batch_size, precision=self.precision)


_TILES = f"{TILE_SIZE} px tiles, overlap {TILE_OVERLAP}, batches of {TILE_BATCH}"
MODES: tuple[Mode, ...] = (
    Mode("full_frame_channels_last", "whole domain, one forward, channels-last, float32, inference_mode",
         True, None),
    Mode("tiles_channels_last", f"predict_domain: {_TILES}, channels-last, float32, inference_mode",
         True, TILE_SIZE, TILE_BATCH),
    Mode("full_frame_channels_last_bf16", "as full_frame_channels_last under bf16 autocast (predict "
         "--precision bf16)", True, None, bf16=True),
    Mode("tiles_channels_last_bf16", "as tiles_channels_last under bf16 autocast (predict --precision bf16)",
         True, TILE_SIZE, TILE_BATCH, bf16=True),
    Mode("full_frame_nchw", "whole domain, one forward, contiguous NCHW, float32, inference_mode "
         "(not in predict: it runs channels-last)", False, None, in_predict=False),
)
NAIVE = "naive"
NAIVE_DESCRIPTION = ("whole domain, one forward, contiguous NCHW, float32, autograd on (no inference_mode), "
                     "eval")


def full_frame_forward(model: InferenceModel, x: Tensor, channels_last: bool, bf16: bool = False) -> Tensor:
    """The network on the whole ``[1, C, H, W]`` domain under ``inference_mode`` (float32 output)."""
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        inp = x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
        return model.net(inp).float()


def naive_forward(model: InferenceModel, x: Tensor) -> Tensor:
    """What a first attempt often looks like: NCHW, autograd recording the graph (no inference_mode)."""
    return model.net(x.contiguous())


@dataclass
class Models:
    """The same checkpoint loaded twice: as ``predict`` prepares it (channels-last) and as loaded (NCHW)."""

    prepared: InferenceModel
    plain: InferenceModel


def load_models(checkpoint: Path, size: int, work_dir: Path) -> Models:
    prepared = load_inference_model(checkpoint)
    prepare_model(prepared, MODES[0].predict_settings(prepared, size, work_dir))  # eval, channels-last
    plain = load_inference_model(checkpoint)  # eval, contiguous NCHW: the naive baseline's network
    return Models(prepared, plain)


def mode_runner(models: Models, x: Tensor, normalised: np.ndarray, mode: Mode) -> Callable[[], object]:
    """One bare forward pass of ``mode`` over the domain (``x`` is ``normalised`` as ``[1, C, H, W]``)."""
    model = models.prepared if mode.channels_last else models.plain
    if mode.tile_size is None:
        return lambda: full_frame_forward(model, x, mode.channels_last, mode.bf16)
    tiling = mode.tiling(model, max(normalised.shape[1:]))
    return lambda: predict_domain(model.net, normalised, tiling)


def time_candidates(
    models: Models, normalised: np.ndarray, modes: Sequence[Mode], settings: BenchSettings
) -> tuple[list[Timing], Timing]:
    """Every candidate mode and the naive baseline on the pre-normalised ``[C, H, W]`` domain, interleaved."""
    x = torch.from_numpy(np.ascontiguousarray(normalised))[None]
    runs: dict[str, Callable[[], object]] = {m.name: mode_runner(models, x, normalised, m) for m in modes}
    runs[NAIVE] = lambda: naive_forward(models.plain, x)
    LOG.info("candidate modes and the naive baseline: %d round(s) of %s", settings.candidate_repeats,
             ", ".join(runs))
    times = time_interleaved(runs, settings.warmup, settings.candidate_repeats)
    timings = [Timing(m.name, m.description, times[m.name]) for m in modes]
    return timings, Timing(NAIVE, NAIVE_DESCRIPTION, times[NAIVE])


def best_modes(candidates: Sequence[Timing]) -> dict[str, Mode]:
    """The fastest candidate (median) the predict stage runs, in each precision."""
    best: dict[str, Mode] = {}
    for precision in PRECISIONS:
        timings = [t for t in candidates if mode_named(t.name).in_predict and mode_named(t.name).precision == precision]
        if not timings:
            raise BenchmarkError(f"no candidate mode in precision {precision}")
        best[precision] = mode_named(min(timings, key=lambda t: t.median_s).name)
    return best


#: The product's variables compared between the precisions (the bow_echo checkpoint's one target).
PROBABILITY_VARIABLE = "bow_echo_probability"
MASK_VARIABLE = "bow_echo_mask"


def product_difference(float32_product: Path, bf16_product: Path) -> dict[str, float]:
    """How far the bf16 product is from the float32 one, over the pixels with data.

    With random weights: a measure of the arithmetic, not of a trained model's skill.
    """
    import netCDF4

    fields: list[tuple[np.ndarray, np.ndarray]] = []
    for path in (float32_product, bf16_product):
        with netCDF4.Dataset(path) as nc:
            dtypes = (str(nc[PROBABILITY_VARIABLE].dtype), str(nc[MASK_VARIABLE].dtype))
            prob = np.ma.filled(nc[PROBABILITY_VARIABLE][:].astype(np.float64), np.nan)  # _FillValue -> NaN
            mask = np.ma.filled(nc[MASK_VARIABLE][:].astype(np.int16), -1)
        if dtypes != ("float32", "int8"):
            raise BenchmarkError(f"{path}: probability and mask are {dtypes}, expected float32 and int8")
        fields.append((prob, mask))
    (p32, m32), (p16, m16) = fields
    valid = np.isfinite(p32)
    if not np.array_equal(valid, np.isfinite(p16)) or not valid.any():
        raise BenchmarkError(f"{bf16_product.name}: the two precisions disagree on where there is data")
    diff = np.abs(p32[valid] - p16[valid])
    return {"max_abs_probability_difference": float(diff.max()),
            "mean_abs_probability_difference": float(diff.mean()),
            "mask_pixels_changed_fraction": float((m32[valid] != m16[valid]).mean()),
            "pixels_with_data": int(valid.sum())}


@dataclass(frozen=True)
class Headline:
    """(a) the bare forward of one precision's best mode, and (b) ``predict_file`` in that mode and precision."""

    precision: str
    mode: str
    bare: Timing
    end_to_end: Timing
    product: Path  # the last (b) product, for the comparison between the precisions


def time_headline(
    models: Models, path: Path, normalised: np.ndarray, best: dict[str, Mode], size: int, work_dir: Path,
    settings: BenchSettings,
) -> tuple[dict[str, Headline], Timing]:
    """(a) and (b) of each precision's best mode, and (c) the naive forward, all interleaved.

    (b) writes each run into a fresh folder (no existing product to skip), without quicklook.
    """
    x = torch.from_numpy(np.ascontiguousarray(normalised))[None]
    last: dict[str, Path] = {}

    def end_to_end(mode: Mode) -> Callable[[], object]:
        count = 0

        def run_once() -> object:
            nonlocal count
            count += 1
            predict_settings = mode.predict_settings(models.prepared, size, work_dir / f"e2e_{mode.precision}_{count}")
            report = predict_file(models.prepared, path, predict_settings)
            report.raise_for_failures()
            if len(report.written) != 1:
                raise BenchmarkError(f"{path}: predict wrote {len(report.written)} products, expected 1")
            (last[mode.precision],) = report.written[0].outputs
            return report

        return run_once

    runs: dict[str, Callable[[], object]] = {}
    for precision, mode in best.items():
        runs[f"bare_{precision}"] = mode_runner(models, x, normalised, mode)
        runs[f"end_to_end_{precision}"] = end_to_end(mode)
    runs[NAIVE] = lambda: naive_forward(models.plain, x)
    LOG.info("headline: %d round(s) of (a) and (b) in %s, and (c) naive", settings.repeats,
             ", ".join(f"{PRECISION_LABELS[p]} ({m.name})" for p, m in best.items()))
    times = time_interleaved(runs, settings.warmup, settings.repeats)
    headlines = {
        precision: Headline(
            precision, mode.name, Timing(mode.name, mode.description, times[f"bare_{precision}"]),
            Timing(f"end_to_end_{precision}", f"predict_file --precision {precision}, file -> NetCDF, in mode "
                   f"{mode.name}", times[f"end_to_end_{precision}"]),
            last[precision])
        for precision, mode in best.items()
    }
    return headlines, Timing(NAIVE, NAIVE_DESCRIPTION, times[NAIVE])


#: The stages of (b), as :func:`stage_breakdown` names them.
STAGES: dict[str, str] = {
    "read": "read the ODIM file (reader, checks)",
    "normalise": "normalise (log1p, standardise, NaN -> 0)",
    "network": "network over the domain (predict_domain)",
    "outputs": "probabilities, nodata, mask, product",
    "write_netcdf": "write the NetCDF (lat/lon, zlib, atomic)",
}


def stage_breakdown(model: InferenceModel, path: Path, mode: Mode, size: int, work_dir: Path) -> dict[str, float]:
    """One pass of the predict pipeline stage by stage (the public pieces ``predict_file`` is made of)."""
    predict_settings = mode.predict_settings(model, size, work_dir / f"stages_{mode.precision}")
    tiling = prepare_model(model, predict_settings)
    predict_settings.output_dir.mkdir(parents=True, exist_ok=True)
    spec = InputSpec.from_meta(model.meta)
    stats = model.input_stats()
    if stats is None:
        raise BenchmarkError(f"{model.path}: the checkpoint has no input normalisation")
    t0 = time.perf_counter()
    ((frame, data),) = read_frames(path, spec)
    t1 = time.perf_counter()
    normalised = stats.normalize(data, channel_axis=0)
    t2 = time.perf_counter()
    raw = predict_domain(model.net, normalised, tiling)
    t3 = time.perf_counter()
    out = physical_outputs(model, raw)
    out[:, np.isnan(data).any(axis=0)] = np.nan
    variables = product_variables(model.meta, out, predict_settings.threshold)
    product = build_product(model, variables, frame.grid, frame.time, None, [path],
                            run_config(model, predict_settings, tiling), predict_settings.institution)
    t4 = time.perf_counter()
    target = output_path(model, frame.time, "netcdf", predict_settings.output_dir)
    write_product(product, target, "netcdf", overwrite=True, quicklook=False)
    t5 = time.perf_counter()
    seconds = {"read": t1 - t0, "normalise": t2 - t1, "network": t3 - t2, "outputs": t4 - t3,
               "write_netcdf": t5 - t4}
    seconds["total"] = t5 - t0
    return seconds


# -- FMI peak memory (subprocess) -------------------------------------------------------------------------


def max_rss_bytes(who: int) -> int:
    """``ru_maxrss`` of ``RUSAGE_SELF`` or ``RUSAGE_CHILDREN`` in bytes (Linux reports KiB)."""
    return int(resource.getrusage(who).ru_maxrss) * 1024


def fmi_child(
    checkpoint: Path, path: Path, output_dir: Path, threads: int, precision: UsedPrecision = "32"
) -> dict[str, Any]:
    """In the subprocess: ``predict_file`` on one FMI frame with the default tiling; time and peak RSS."""
    torch.set_num_threads(threads)
    model = load_inference_model(checkpoint)
    before = max_rss_bytes(resource.RUSAGE_SELF)
    settings = PredictSettings(output_dir=output_dir, ignore_grid_spacing=True, precision=precision)
    start = time.perf_counter()
    report = predict_file(model, path, settings)
    seconds = time.perf_counter() - start
    report.raise_for_failures()
    outputs = [str(p) for o in report.written for p in o.outputs]
    return {"precision": settings.precision_used, "seconds": seconds,
            "peak_rss_bytes": max_rss_bytes(resource.RUSAGE_SELF), "peak_rss_before_predict_bytes": before,
            "outputs": outputs, "output_bytes": sum(Path(p).stat().st_size for p in outputs)}


def measure_fmi(settings: BenchSettings, work_dir: Path) -> dict[str, dict[str, Any]]:
    """Peak RSS of ``predict_file`` on the first FMI frame in each precision, each in a fresh subprocess."""
    folder = settings.shared_data / FMI_SUBDIR
    files = sorted(folder.glob("*.tif")) if folder.is_dir() else []
    if not files:
        reason = f"real data folder {folder} not found or holds no .tif (give --shared-data PATH)"
        return {precision: {"status": "skipped", "reason": reason} for precision in PRECISIONS}
    frame = files[0]
    checkpoint = make_checkpoint(work_dir / "bow_echo_dbzh_random.ckpt", DBZH_INPUT, settings.seed)
    height, width = raster_shape(frame)
    results: dict[str, dict[str, Any]] = {}
    for precision in PRECISIONS:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--fmi-child", str(checkpoint), str(frame),
               str(work_dir / f"fmi_out_{precision}"), "--threads", str(settings.threads),
               "--fmi-precision", precision]
        LOG.info("FMI: predict_file --precision %s on %s in a subprocess", precision, frame.name)
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(CHILD_PREFIX)]
        if proc.returncode != 0 or not lines:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise BenchmarkError(f"{frame}: the FMI subprocess ({PRECISION_LABELS[precision]}) failed "
                                 f"(exit code {proc.returncode}):\n{tail}")
        result = json.loads(lines[-1][len(CHILD_PREFIX):])
        if result["precision"] != precision:
            raise BenchmarkError(f"the FMI subprocess ran in precision {result['precision']}, not {precision}")
        peak = int(result["peak_rss_bytes"])
        results[precision] = {
            "status": "ok", "file": str(frame), "height": height, "width": width,
            "predict_s": result["seconds"], "subprocess_wall_s": wall,
            "peak_rss_bytes": peak, "peak_rss_gib": peak / GIB,
            "peak_rss_before_predict_gib": int(result["peak_rss_before_predict_bytes"]) / GIB,
            "output_bytes": result["output_bytes"], "pass": bool(peak <= MAX_FMI_RSS_GIB * GIB)}
    return results


def raster_shape(path: Path) -> tuple[int, int]:
    """``(height, width)`` of a raster, from its header only."""
    import rasterio

    with rasterio.open(path) as src:
        return int(src.height), int(src.width)


# -- the run ----------------------------------------------------------------------------------------------


@dataclass
class Results:
    """Everything measured (JSON-ready through :meth:`to_dict`).

    ``best`` is the fastest candidate the predict stage runs, in either precision: the headline (a),
    (b) and verdicts are those of its precision; ``headlines`` holds both precisions' (a) and (b).
    """

    size: int
    native_bf16: bool
    candidates: list[Timing]
    candidates_naive: Timing
    best: str
    headlines: dict[str, Headline]
    naive: Timing
    stages: dict[str, dict[str, float]]
    fmi: dict[str, dict[str, Any]]
    bf16_difference: dict[str, float]

    @property
    def best_precision(self) -> str:
        return mode_named(self.best).precision

    def end_to_end_ratio(self, precision: str) -> float:
        h = self.headlines[precision]
        return h.end_to_end.median_s / h.bare.median_s

    def naive_ratio(self, precision: str) -> float:
        return self.naive.median_s / self.headlines[precision].bare.median_s

    def verdicts(self, precision: str) -> dict[str, bool | None]:
        fmi = self.fmi[precision]
        return {"end_to_end": self.end_to_end_ratio(precision) <= MAX_END_TO_END_RATIO,
                "speedup_over_naive": self.naive_ratio(precision) >= MIN_SPEEDUP_OVER_NAIVE,
                "fmi_peak_rss": bool(fmi["pass"]) if fmi.get("status") == "ok" else None}

    def _ratios(self, precision: str) -> dict[str, float]:
        return {"end_to_end_over_bare": self.end_to_end_ratio(precision),
                "naive_over_bare": self.naive_ratio(precision)}

    def to_dict(self) -> dict[str, Any]:
        naive_median = self.candidates_naive.median_s
        best = self.best_precision
        headline = self.headlines[best]
        by_precision = {
            p: {"label": PRECISION_LABELS[p], "best_mode": h.mode, "bare": h.bare.to_dict(),
                "end_to_end": h.end_to_end.to_dict(), "ratios": self._ratios(p), "verdicts": self.verdicts(p),
                "stages_s": self.stages[p], "fmi": self.fmi[p]}
            for p, h in self.headlines.items()
        }
        return {
            "size": self.size,
            "native_bf16": self.native_bf16,
            "candidates": [{**t.to_dict(), "precision": mode_named(t.name).precision,
                            "in_predict": mode_named(t.name).in_predict,
                            "naive_over_mode": naive_median / t.median_s} for t in self.candidates],
            "candidates_naive": self.candidates_naive.to_dict(),
            "best_mode": self.best,
            "best_precision": best,
            "bare": headline.bare.to_dict(),
            "end_to_end": headline.end_to_end.to_dict(),
            "naive": self.naive.to_dict(),
            "ratios": self._ratios(best),
            "stages_s": self.stages[best],
            "fmi": self.fmi[best],
            "verdicts": self.verdicts(best),
            "by_precision": by_precision,
            "bf16_vs_float32": self.bf16_difference,
            "targets": {"max_end_to_end_ratio": MAX_END_TO_END_RATIO,
                        "min_speedup_over_naive": MIN_SPEEDUP_OVER_NAIVE, "max_fmi_rss_gib": MAX_FMI_RSS_GIB},
        }


def mode_named(name: str) -> Mode:
    return next(m for m in MODES if m.name == name)


def run(settings: BenchSettings, work_dir: Path) -> Results:
    """Measure everything; the synthetic file, checkpoints and products go under ``work_dir``.

    The FMI subprocesses run first, while this process holds no model yet, so they never compete
    for memory. Then the candidate modes and the naive baseline (interleaved); the fastest mode the
    predict stage can run in each precision; then (a) and (b) of both precisions and (c), interleaved,
    which give the ratios.
    """
    fmi: dict[str, dict[str, Any]] = (
        measure_fmi(settings, work_dir) if settings.fmi
        else {p: {"status": "skipped", "reason": "--skip-fmi"} for p in PRECISIONS})
    size = settings.size
    path = write_rate_composite(work_dir / "rate_composite.h5", size, settings.seed)
    checkpoint = make_checkpoint(work_dir / "bow_echo_rate_random.ckpt", RATE_INPUT, settings.seed)
    models = load_models(checkpoint, size, work_dir)
    stats = models.prepared.input_stats()
    if stats is None:
        raise BenchmarkError(f"{checkpoint}: the checkpoint has no input normalisation")
    ((_, physical),) = read_frames(path, InputSpec.from_meta(models.prepared.meta))
    normalised = np.ascontiguousarray(stats.normalize(physical, channel_axis=0))
    candidates, candidates_naive = time_candidates(models, normalised, MODES, settings)
    best = best_modes(candidates)
    median = {t.name: t.median_s for t in candidates}
    overall = min(best.values(), key=lambda m: median[m.name])
    headlines, naive = time_headline(models, path, normalised, best, size, work_dir, settings)
    stages = {p: stage_breakdown(models.prepared, path, mode, size, work_dir) for p, mode in best.items()}
    difference = product_difference(headlines["32"].product, headlines["bf16"].product)
    return Results(size, cpu_has_native_bf16(), candidates, candidates_naive, overall.name, headlines, naive,
                   stages, fmi, difference)


def machine_info(
    settings: BenchSettings, load_start: Sequence[float], load_end: Sequence[float]
) -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": settings.threads,
        "load_average_start": list(load_start),
        "load_average_end": list(load_end),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "native_bf16": cpu_has_native_bf16(),
    }


def _verdict(ok: bool | None) -> str:
    return {True: "PASS", False: "MISS", None: "SKIPPED"}[ok]


def _times(t: Timing) -> str:
    return ", ".join(f"{s:.3f}" for s in t.times_s)


def _fmi_cell(fmi: dict[str, Any], ok: bool | None) -> str:
    return f"{fmi['peak_rss_gib']:.2f} GiB {_verdict(ok)}" if fmi["status"] == "ok" else "not measured"


def report_lines(res: Results) -> list[str]:
    """The headline table (best mode: figures, stages, ratios, targets, verdicts), both precisions, candidates."""
    best = res.best_precision
    head = res.headlines[best]
    verdicts = res.verdicts(best)
    n = len(head.bare.times_s)
    native = ("yes" if res.native_bf16 else
              "no: its bf16 is emulated, so the bf16 figures say nothing of a CPU that has it")
    lines = [f"Domain {res.size} x {res.size} (synthetic ODIM RATE composite, 1 km LAEA), bow_echo U-Net "
             "(resnet18, depth 4), 1 -> 1 channel, random weights. This CPU computes bf16 natively "
             f"(AVX512-BF16 or AMX): {native}.", "",
             f"Headline: the fastest mode the predict stage runs is `{res.best}` ({PRECISION_LABELS[best]}); "
             f"(b) runs `predict_file` with `precision=\"{best}\"`.", "",
             "| figure | value | target | verdict |", "|---|---:|---:|---|",
             f"| (a) bare forward, best mode `{res.best}` (median of {n}) | {head.bare.median_s:.3f} s | | |",
             f"| (b) end to end, `predict_file --precision {best}` ODIM -> NetCDF (median of {n}) | "
             f"{head.end_to_end.median_s:.3f} s | | |"]
    for key, label in STAGES.items():
        lines.append(f"| &nbsp;&nbsp;(b) stage, one pass: {label} | {res.stages[best][key]:.3f} s | | |")
    lines += [f"| &nbsp;&nbsp;(b) stages, one pass: total | {res.stages[best]['total']:.3f} s | | |",
              f"| (c) naive forward: contiguous NCHW, float32, autograd on, whole frame (median of {n}) | "
              f"{res.naive.median_s:.3f} s | | |",
              f"| ratio (b)/(a) | {res.end_to_end_ratio(best):.3f} | <= {MAX_END_TO_END_RATIO} | "
              f"{_verdict(verdicts['end_to_end'])} |",
              f"| ratio (c)/(a) | {res.naive_ratio(best):.3f} | >= {MIN_SPEEDUP_OVER_NAIVE} | "
              f"{_verdict(verdicts['speedup_over_naive'])} |"]
    fmi = res.fmi[best]
    if fmi["status"] == "ok":
        lines.append(f"| FMI peak RSS, `predict_file --precision {best}` on {Path(fmi['file']).name} "
                     f"({fmi['height']} rows x {fmi['width']} columns, {fmi['predict_s']:.1f} s) | "
                     f"{fmi['peak_rss_gib']:.2f} GiB | <= {MAX_FMI_RSS_GIB:g} GiB | "
                     f"{_verdict(verdicts['fmi_peak_rss'])} |")
    else:
        lines.append(f"| FMI peak RSS: not measured ({fmi['reason']}) | - | <= {MAX_FMI_RSS_GIB:g} GiB | SKIPPED |")
    lines += ["", f"Times (s): (a) {_times(head.bare)}; (b) {_times(head.end_to_end)}; (c) {_times(res.naive)}."]

    # both precisions side by side
    precisions = list(res.headlines)
    cols = " | ".join(f"{PRECISION_LABELS[p]} (`--precision {p}`{', the CPU default' if p == '32' else ''})"
                      for p in precisions)
    row = "| {} | " + " | ".join("{}" for _ in precisions) + " | {} |"
    v = {p: res.verdicts(p) for p in precisions}
    lines += ["", "Both precisions the predict stage offers, from the same interleaved rounds ((c) is one naive "
              "baseline for both):", "", f"| figure | {cols} | target |",
              "|---|" + "---:|" * len(precisions) + "---:|",
              row.format("best mode (a)", *(f"`{res.headlines[p].mode}`" for p in precisions), ""),
              row.format(f"(a) bare forward (median of {n})",
                         *(f"{res.headlines[p].bare.median_s:.3f} s" for p in precisions), ""),
              row.format(f"(b) end to end, `predict_file` ODIM -> NetCDF (median of {n})",
                         *(f"{res.headlines[p].end_to_end.median_s:.3f} s" for p in precisions), ""),
              row.format("&nbsp;&nbsp;(b) stage, one pass: network",
                         *(f"{res.stages[p]['network']:.3f} s" for p in precisions), ""),
              row.format("&nbsp;&nbsp;(b) stage, one pass: everything else",
                         *(f"{res.stages[p]['total'] - res.stages[p]['network']:.3f} s" for p in precisions), ""),
              row.format(f"(c) naive forward (median of {n})", *(f"{res.naive.median_s:.3f} s" for _ in precisions),
                         ""),
              row.format("ratio (b)/(a)", *(f"{res.end_to_end_ratio(p):.3f} {_verdict(v[p]['end_to_end'])}"
                                            for p in precisions), f"<= {MAX_END_TO_END_RATIO}"),
              row.format("ratio (c)/(a)", *(f"{res.naive_ratio(p):.3f} {_verdict(v[p]['speedup_over_naive'])}"
                                            for p in precisions), f">= {MIN_SPEEDUP_OVER_NAIVE}"),
              row.format("FMI peak RSS", *(_fmi_cell(res.fmi[p], v[p]["fmi_peak_rss"]) for p in precisions),
                         f"<= {MAX_FMI_RSS_GIB:g} GiB"), ""]
    for p in precisions:
        h, f = res.headlines[p], res.fmi[p]
        fmi_note = (f"; FMI: {f['predict_s']:.1f} s, RSS {f['peak_rss_before_predict_gib']:.2f} GiB before "
                    f"`predict_file` (torch and the model loaded), product {f['output_bytes'] / 1e6:.0f} MB"
                    if f["status"] == "ok" else "")
        lines.append(f"{PRECISION_LABELS[p]}: times (s) (a) {_times(h.bare)}; (b) {_times(h.end_to_end)}{fmi_note}.")
    d = res.bf16_difference
    lines += ["", f"bf16 against float32 on the benchmark frame ((b)'s two products, random weights): the "
              f"probabilities differ by at most {d['max_abs_probability_difference']:.4f} (mean "
              f"{d['mean_abs_probability_difference']:.5f}) over {d['pixels_with_data']} pixels with data; "
              f"{100 * d['mask_pixels_changed_fraction']:.3f} % of their mask pixels change."]

    naive = res.candidates_naive
    lines += ["", f"Candidate modes, interleaved with the naive baseline (median of {len(naive.times_s)}; "
              f"naive {naive.median_s:.3f} s there):", "",
              "| mode | precision | predict runs it | median s | min s | naive / mode | times s |",
              "|---|---|---|---:|---:|---:|---|"]
    best_of = {h.mode for h in res.headlines.values()}
    for t in res.candidates:
        mode = mode_named(t.name)
        mark = " (best: (a))" if t.name == res.best else (" (best of its precision)" if t.name in best_of else "")
        lines.append(f"| `{t.name}`{mark} | {PRECISION_LABELS[mode.precision]} | {'yes' if mode.in_predict else 'no'} "
                     f"| {t.median_s:.3f} | {min(t.times_s):.3f} | {naive.median_s / t.median_s:.2f} | {_times(t)} |")
    return lines


# -- command line -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=None, help="domain side (default 1536; quick 256)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds of (a), (b) and (c) (default 5; quick 1)")
    parser.add_argument("--candidate-repeats", type=int, default=None,
                        help="timed rounds of the candidate modes and the naive baseline (default 3; quick 1)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--quick", action="store_true", help="a 256 x 256 domain and one timed round")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2: the cores)")
    parser.add_argument("--shared-data", type=Path, default=SHARED_DATA, help="the real-data folder")
    parser.add_argument("--skip-fmi", action="store_true", help="do not run the FMI peak-memory case")
    parser.add_argument("--json", type=Path, default=None, help="also save the figures as JSON here")
    parser.add_argument("--fmi-child", nargs=3, type=Path, default=None, help=argparse.SUPPRESS,
                        metavar=("CKPT", "FILE", "OUT"))
    parser.add_argument("--fmi-precision", choices=PRECISIONS, default="32", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    quick = bool(args.quick)
    return BenchSettings(
        size=args.size if args.size is not None else (256 if quick else 1536),
        repeats=args.repeats if args.repeats is not None else (1 if quick else 5),
        candidate_repeats=(args.candidate_repeats if args.candidate_repeats is not None
                           else (1 if quick else 3)),
        warmup=args.warmup,
        threads=args.threads,
        shared_data=Path(args.shared_data),
        fmi=not args.skip_fmi,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print the Markdown tables with the ratios and the PASS/MISS verdicts, save the JSON; 0 when it ran."""
    args = parse_args(argv)
    if args.fmi_child is not None:
        checkpoint, path, out_dir = args.fmi_child
        result = fmi_child(checkpoint, path, out_dir, args.threads, args.fmi_precision)
        print(CHILD_PREFIX + json.dumps(result))
        return 0
    settings = settings_from_args(args)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    load_start = os.getloadavg()
    started = datetime.now(UTC)
    try:
        with tempfile.TemporaryDirectory(prefix="meteovision-bench-") as tmp:
            results = run(settings, Path(tmp))
    finally:
        torch.set_num_threads(previous_threads)
    load_end = os.getloadavg()
    machine = machine_info(settings, load_start, load_end)
    print(f"Run {started:%Y-%m-%d %H:%M} UTC: {machine['cpu_count']} CPU cores, torch {machine['torch']}, "
          f"{settings.threads} torch thread(s), load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end.")
    if max(load_start[0], load_end[0]) > 1.5:
        print("Other processes kept the CPUs busy (load average > 1.5): the times are contended; the ratios, "
              "measured in interleaved rounds, are what to read.")
    print()
    for line in report_lines(results):
        print(line)
    if args.json is not None:
        payload = {"settings": {**asdict(settings), "shared_data": str(settings.shared_data)},
                   "started_utc": started.isoformat(timespec="seconds"), "machine": machine,
                   **results.to_dict()}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"\nfigures saved to {args.json}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    sys.exit(main())
