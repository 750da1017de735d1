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
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_common import SHARED_DATA, BenchmarkError, Timing
from inference_report import (  # noqa: F401
    Results,
    _fmi_cell,
    _times,
    _verdict,
    machine_info,
    report_lines,
)
from inference_setup import (  # noqa: F401
    _TILES,
    CHILD_PREFIX,
    DBZH_INPUT,
    FMI_SUBDIR,
    GIB,
    MASK_VARIABLE,
    MAX_END_TO_END_RATIO,
    MAX_FMI_RSS_GIB,
    MIN_SPEEDUP_OVER_NAIVE,
    MODEL_NAME,
    MODEL_SETTINGS,
    MODES,
    NAIVE,
    NAIVE_DESCRIPTION,
    PRECISION_LABELS,
    PRECISIONS,
    PROBABILITY_VARIABLE,
    RATE_INPUT,
    STAGES,
    TILE_BATCH,
    TILE_OVERLAP,
    TILE_SIZE,
    BenchData,
    BenchSettings,
    Headline,
    InputKind,
    Mode,
    Models,
    UsedPrecision,
    best_modes,
    full_frame_forward,
    load_models,
    make_checkpoint,
    mode_named,
    mode_runner,
    naive_forward,
    product_difference,
    time_candidates,
    time_interleaved,
    write_rate_composite,
)

from meteovision.pipeline.checkpoints.loading import (
    InferenceModel,
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
from meteovision.pipeline.inference.tiling import predict_domain

LOG = logging.getLogger("meteovision.benchmarks.inference")

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
