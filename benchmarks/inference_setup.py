"""Settings, synthetic checkpoints and inputs, and the timed inference modes of ``benchmarks/inference.py``."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from bench_common import SHARED_DATA, BenchmarkError, Timing, check_counts
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
from meteovision.pipeline.inference.predict import (
    PredictSettings,
    prepare_model,
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
        check_counts(self, ("size", "repeats", "candidate_repeats", "threads"), ("warmup",))
        if self.size < 32:
            raise BenchmarkError(f"size must be >= 32 pixels (the U-Net halves it 4 times), got {self.size}")


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


def mode_named(name: str) -> Mode:
    return next(m for m in MODES if m.name == name)


#: The stages of (b), as :func:`stage_breakdown` names them.
STAGES: dict[str, str] = {
    "read": "read the ODIM file (reader, checks)",
    "normalise": "normalise (log1p, standardise, NaN -> 0)",
    "network": "network over the domain (predict_domain)",
    "outputs": "probabilities, nodata, mask, product",
    "write_netcdf": "write the NetCDF (lat/lon, zlib, atomic)",
}
