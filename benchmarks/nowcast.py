"""A 12-lead nowcast by the network against pysteps' LK extrapolation and S-PROG (CPU; one run, every ratio).

Run from the repository root: ``.venv/bin/python benchmarks/nowcast.py [--json PATH]`` (README.md).

On one synthetic rain event (``datasets.synthetic.nowcast.simulate_rain_event``: multiscale
intermittent rain advected with rotation, growing and decaying) on a 640 x 710 domain (an OPERA
sub-domain's size), it times the ``forecast`` of each method of
:mod:`meteovision.pipeline.verification.nowcast_methods` for 12 leads, one after the other in the same process:

* ``network``: the nowcast_precip configuration's network (DeepLabV3+, resnet18 encoder, 4 -> 6
  frames, lagrangian head) with untrained weights, run as ``meteovision predict`` runs it
  (normalisation, 512-pixel tiles, de-normalisation); leads 7-12 continue its own motion;
* ``lk``: pysteps' Lucas-Kanade motion of the last 3 frames plus semi-Lagrangian extrapolation
  (also timed apart: ``lk_motion`` and ``lk_extrapolation``);
* ``sprog``: pysteps' S-PROG (6 cascade levels, AR(2), CDF matching), its LK motion included;

and prints the ratios LK/network and S-PROG/network of the medians. Untrained weights compute
exactly what trained ones do, so the timing holds for any checkpoint of that architecture.
The figures are measurements, not tests (``tests/test_benchmark_nowcast_smoke.py`` only checks it runs).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from bench_common import BenchmarkError, Timing, check_counts
from bench_common import machine_info as common_machine_info

from meteovision.datasets.normalization import NormalizationStats
from meteovision.datasets.synthetic.nowcast import RADAR_STEP_MINUTES, simulate_rain_event
from meteovision.pipeline.checkpoints.loading import CHECKPOINT_KEY, checkpoint_metadata
from meteovision.pipeline.training.tasks import NowcastTask
from meteovision.pipeline.verification.nowcast_methods import (
    LucasKanadeNowcast,
    NetworkNowcast,
    NowcastInput,
    NowcastMethod,
    build_method,
    lucas_kanade_motion,
)

LOG = logging.getLogger("meteovision.benchmarks.nowcast")

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "nowcast_precip.yaml"
GRID_SPACING_M = 1000.0
#: Rough dBR statistics of a rainy radar series (log10_rain): the weights are random anyway.
RATE_MEAN_DBR = -12.0
RATE_STD_DBR = 5.0
#: Timed entries, in table order; the ratios are taken against ``network``.
METHODS: tuple[str, ...] = ("network", "lk", "sprog")
PARTS: tuple[str, ...] = ("lk_motion", "lk_extrapolation")



@dataclass(frozen=True)
class BenchSettings:
    """What to measure."""

    height: int = 640
    width: int = 710
    leads: int = 12
    repeats: int = 3
    warmup: int = 1
    threads: int = 2
    seed: int = 0
    tile_size: int | None = None
    config: str = str(CONFIG)
    precision: str = "32"

    def __post_init__(self) -> None:
        check_counts(self, ("leads", "repeats", "threads"), ("warmup",))
        if min(self.height, self.width) < 32:
            raise BenchmarkError(f"the domain must be at least 32 x 32 pixels, got {self.height} x {self.width}")


# -- network checkpoint -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Architecture:
    """The network part of the nowcast_precip configuration."""

    model: str
    model_settings: dict[str, Any]
    nowcast_head: str
    num_input_frames: int
    num_output_frames: int
    transform: str
    time_step_minutes: float
    long_lead_smoothing: float = 0.0  # sigma px per step past the trained leads, applied as predict applies it
    step_input: bool = False  # trained at native steps: the frames' step is one more input channel

    @classmethod
    def from_config(cls, path: Path = CONFIG) -> Architecture:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        model, data = config["model"]["init_args"], config["data"]["init_args"]
        return cls(
            model=str(model["model"]),
            model_settings=dict(model.get("model_settings") or {}),
            nowcast_head=str(model.get("nowcast_head") or "lagrangian"),
            num_input_frames=int(data["num_input_frames"]),
            num_output_frames=int(data["num_output_frames"]),
            transform=str((data.get("transforms") or {}).get("RATE", "log10_rain")),
            time_step_minutes=float(model.get("time_step_minutes") or RADAR_STEP_MINUTES),
            long_lead_smoothing=float(model.get("long_lead_smoothing") or 0.0),
            step_input=bool(model.get("step_input", False)),
        )


@dataclass(frozen=True)
class BenchData:
    """What ``checkpoint_metadata`` reads from a SequenceDataModule, for a network that was never trained."""

    arch: Architecture
    grid_spacing_m: float = GRID_SPACING_M
    input_variables: list[str] = field(default_factory=lambda: ["RATE"])
    target_names: list[str] = field(default_factory=lambda: ["RATE"])
    target_units: list[str] = field(default_factory=lambda: ["mm h-1"])
    class_names: None = None
    normalization: NormalizationStats = field(init=False)

    def __post_init__(self) -> None:
        stats = NormalizationStats(("RATE",), ("mm h-1",), (self.arch.transform,), (RATE_MEAN_DBR,),
                                   (RATE_STD_DBR,))
        object.__setattr__(self, "normalization", stats)

    @property
    def target_transform(self) -> NormalizationStats:
        return self.normalization

    @property
    def num_input_frames(self) -> int:
        return self.arch.num_input_frames

    @property
    def num_output_frames(self) -> int:
        return self.arch.num_output_frames

    @property
    def time_step_minutes(self) -> float:
        return self.arch.time_step_minutes

    @property
    def channel_names(self) -> list[str]:
        n = self.arch.num_input_frames
        return [f"RATE_t-{round((n - 1 - i) * self.arch.time_step_minutes)}min" for i in range(n)]

    @property
    def channel_units(self) -> list[str]:
        return ["mm h-1"] * self.arch.num_input_frames

    def data_description(self) -> dict[str, Any]:
        return {"benchmark": "benchmarks/nowcast.py", "trained": False,
                "note": "random weights (seeded) and hand-set normalisation: for timing only"}


def make_checkpoint(path: Path, arch: Architecture, seed: int) -> Path:
    """A meteovision checkpoint of the configuration's network with random weights (what ``fit`` records)."""
    torch.manual_seed(seed)
    task = NowcastTask(application="nowcast_precip", model=arch.model, model_settings=dict(arch.model_settings),
                       in_channels=arch.num_input_frames, out_channels=arch.num_output_frames, baseline=None,
                       time_step_minutes=arch.time_step_minutes, nowcast_head=arch.nowcast_head,
                       long_lead_smoothing=arch.long_lead_smoothing, step_input=arch.step_input)
    meta = checkpoint_metadata(task, BenchData(arch))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": task.state_dict(), CHECKPOINT_KEY: meta.to_dict()}, path)
    return path


def rain_event(settings: BenchSettings, frames: int) -> tuple[NowcastInput, dict[str, Any]]:
    """The past ``frames`` of a synthetic event (1 km, 5 min) and what describes it."""
    event = simulate_rain_event(np.random.default_rng(settings.seed), (settings.height, settings.width), frames)
    past = NowcastInput(event.rate, time_step_minutes=float(RADAR_STEP_MINUTES), pixel_size_m=GRID_SPACING_M)
    motion = event.motion
    description = {
        "shape": [frames, settings.height, settings.width],
        "wet_fraction_last": float((event.rate[-1] >= 0.1).mean()),
        "max_rate_mm_h": float(event.rate.max()),
        "translation_px_per_step": [float(motion.v_col), float(motion.v_row)],
        "rotation_rad_per_step": float(motion.omega),
    }
    return past, description


# -- timing -----------------------------------------------------------------------------------------------


def time_repeats(fn: Callable[[], object], warmup: int, repeats: int) -> tuple[float, ...]:
    """Wall times of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return tuple(times)


def set_threads(threads: int) -> None:
    """The same thread budget for torch and OpenCV (pysteps' LK); numpy's FFT and interpolation use one."""
    torch.set_num_threads(threads)
    try:
        import cv2
    except ImportError:  # pysteps' LK then fails with its own message
        return
    cv2.setNumThreads(threads)


@dataclass(frozen=True)
class Results:
    settings: BenchSettings
    data: dict[str, Any]
    network: dict[str, Any]
    timings: tuple[Timing, ...]

    def timing(self, name: str) -> Timing:
        return next(t for t in self.timings if t.name == name)

    def ratios(self) -> dict[str, float]:
        base = self.timing("network").median_s
        return {f"{name}_over_network": self.timing(name).median_s / base for name in ("lk", "sprog")}

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data, "network": self.network, "timings": [t.to_dict() for t in self.timings],
                "ratios": self.ratios()}


def run(settings: BenchSettings, work_dir: Path) -> Results:
    """Build the inputs and the three methods, then time each in turn (same process, same thread budget)."""
    arch = Architecture.from_config(Path(settings.config))
    past, data = rain_event(settings, max(arch.num_input_frames, 3))
    checkpoint = make_checkpoint(work_dir / "nowcast_precip_random.ckpt", arch, settings.seed)
    network = build_method("network", checkpoint=checkpoint, tile_size=settings.tile_size,
                           precision=settings.precision)
    assert isinstance(network, NetworkNowcast)
    methods: dict[str, NowcastMethod] = {"network": network, "lk": build_method("lk"),
                                         "sprog": build_method("sprog")}
    described = {
        "network": (f"{arch.model} {arch.model_settings.get('encoder_name', '')}, {arch.nowcast_head} head, "
                    f"{arch.num_input_frames} -> {arch.num_output_frames} frames, tiles "
                    f"{network.tiling.tile_size} (overlap {network.tiling.overlap}), precision {settings.precision}, "
                    f"long-lead smoothing {arch.long_lead_smoothing:g} px/step, random weights"),
        "lk": "pysteps dense Lucas-Kanade (last 3 frames, dBR) + semi-Lagrangian extrapolation",
        "sprog": "pysteps S-PROG (6 levels, AR(2), fft, gaussian, cdf) with its LK motion",
    }
    timings = []
    for name in METHODS:
        method = methods[name]
        LOG.info("timing %s (%d leads, %d x %d)", name, settings.leads, settings.height, settings.width)
        times = time_repeats(lambda m=method: m.forecast(past, settings.leads), settings.warmup, settings.repeats)
        LOG.info("%s: %s s", name, ", ".join(f"{t:.3f}" for t in times))
        timings.append(Timing(name, described[name], times))
    motion = lucas_kanade_motion(past)
    timings.append(Timing("lk_motion", "lucas_kanade_motion alone",
                          time_repeats(lambda: lucas_kanade_motion(past), settings.warmup, settings.repeats)))
    timings.append(Timing("lk_extrapolation", "LucasKanadeNowcast.extrapolate alone (given motion)",
                          time_repeats(lambda: LucasKanadeNowcast.extrapolate(past, motion, settings.leads),
                                       settings.warmup, settings.repeats)))
    info = {"model": arch.model, "model_settings": arch.model_settings, "nowcast_head": arch.nowcast_head,
            "num_input_frames": arch.num_input_frames, "trained_leads": network.trained_leads,
            "tile_size": network.tiling.tile_size, "overlap": network.tiling.overlap,
            "parameters": sum(p.numel() for p in network.model.net.parameters())}
    return Results(settings, data, info, tuple(timings))


# -- report -----------------------------------------------------------------------------------------------


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine_info(settings: BenchSettings, load_start: Sequence[float], load_end: Sequence[float]) -> dict[str, Any]:
    return {**common_machine_info(settings.threads, load_start, load_end), "pysteps": package_version("pysteps"),
            "opencv": package_version("opencv-python-headless") or package_version("opencv-python")}


def report_lines(res: Results) -> list[str]:
    """A Markdown table of the medians (ratio to the network) and the two headline ratios."""
    s = res.settings
    base = res.timing("network").median_s
    lines = [f"{s.leads}-lead nowcast on {s.height} x {s.width} (synthetic rain event), "
             f"median of {s.repeats} after {s.warmup} warm-up", "",
             "| method | median s | min s | / network | what |", "|---|---:|---:|---:|---|"]
    for t in res.timings:
        lines.append(f"| {t.name} | {t.median_s:.3f} | {min(t.times_s):.3f} | {t.median_s / base:.2f} | "
                     f"{t.description} |")
    ratios = res.ratios()
    lines += ["", f"LK/network = {ratios['lk_over_network']:.3f}",
              f"S-PROG/network = {ratios['sprog_over_network']:.3f}"]
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--height", type=int, default=640, help="domain rows (default 640)")
    parser.add_argument("--width", type=int, default=710, help="domain columns (default 710)")
    parser.add_argument("--leads", type=int, default=12, help="lead times per nowcast (default 12)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch and OpenCV threads (2: the cores)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the rain event and the weights")
    parser.add_argument("--tile-size", type=int, default=None, help="network tile side (default: predict's, 512)")
    parser.add_argument("--config", type=Path, default=CONFIG,
                        help="training config whose network is timed (default configs/nowcast_precip.yaml; "
                             "configs/nowcast_precip_real.yaml times the lk_advection head, its LK motion included)")
    parser.add_argument("--precision", choices=("32", "bf16"), default="32",
                        help="network precision: float32, or bf16 autocast (pays on a CPU with AMX or AVX512-BF16)")
    parser.add_argument("--json", type=Path, default=None, help="also save the figures as JSON here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print the table and the ratios, save the JSON; 0 when it ran."""
    args = parse_args(argv)
    settings = BenchSettings(height=args.height, width=args.width, leads=args.leads, repeats=args.repeats,
                             warmup=args.warmup, threads=args.threads, seed=args.seed, tile_size=args.tile_size,
                             config=str(args.config), precision=args.precision)
    previous_threads = torch.get_num_threads()
    set_threads(settings.threads)
    load_start = os.getloadavg()
    try:
        with tempfile.TemporaryDirectory(prefix="meteovision-bench-") as tmp:
            results = run(settings, Path(tmp))
    finally:
        set_threads(previous_threads)
    load_end = os.getloadavg()
    machine = machine_info(settings, load_start, load_end)
    print(f"machine: {machine['cpu_count']} CPU cores, torch {machine['torch']}, pysteps {machine['pysteps']}, "
          f"threads {settings.threads}, load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end")
    if max(load_start[0], load_end[0]) > 1.5:
        print("note: other processes kept the CPUs busy (load average > 1.5): the timings are contended")
    for line in report_lines(results):
        print(line)
    if args.json is not None:
        payload = {"settings": asdict(settings), "machine": machine, **results.to_dict()}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"figures saved to {args.json}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    sys.exit(main())
