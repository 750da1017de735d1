"""Training DataLoader throughput against the U-Net step it feeds (CPU; one run prints every ratio).

Run from the repository root: ``.venv/bin/python benchmarks/loaders.py [--json PATH]`` (README.md).

Each data source is loaded for training with ``num_workers`` 0 and 2, in three regimes:

* ``cold``: every file a sample reads is decoded for that sample (the frame cache holds one time
  step's files). This is what a long training sees when its data exceed the per-worker cache.
* ``first_epoch``: a fresh loader whose per-worker caches start empty and fill during the epoch.
* ``warm``: the epoch after, every frame already decoded: cropping, normalisation, augmentation,
  collation and the transfer from the workers only.

Beside that it times one U-Net training step (forward, backward, AdamW step; resnet18 encoder,
median after a warm-up) on a batch of the same shape, and prints the ratio of the loader's time per
batch to the step time. A loader setting passes when that ratio is below 1: the step never waits.
The figures are measurements, not tests (``tests/test_benchmarks_smoke.py`` only checks it runs).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_common import SHARED_DATA, BenchmarkError
from loader_results import (  # noqa: F401  (re-exported: the smoke test reads them from this module)
    CASES,
    LARGE_CACHE_FRAMES,
    OPERA_CASE,
    OPERA_INPUT_FRAMES,
    OPERA_OUTPUT_FRAMES,
    OPERA_PATCHES_PER_WINDOW,
    OPERA_STATS_FRAMES,
    OPERA_SUBDIR,
    REGIMES,
    SYNTHETIC_APPS,
    VERDICT_REGIMES,
    BenchSettings,
    CaseResult,
    LoaderCase,
    LoaderFactory,
    Throughput,
    format_table,
    machine_info,
    verdict_lines,
)
from torch.utils.data import DataLoader

from meteovision.datasets.catalog import FrameIndex, index_folder
from meteovision.datasets.datamodules import SegmentationDataModule, SequenceDataModule, datamodule_for_app
from meteovision.datasets.normalization import NormalizationStats, StatsAccumulator
from meteovision.datasets.torch_datasets import (
    AugmentSettings,
    EpochSampler,
    FrameStore,
    GriddedDataset,
    PatchSettings,
    Sample,
    SequenceDataset,
)

LOG = logging.getLogger("meteovision.benchmarks.loaders")

# -- loaders ----------------------------------------------------------------------------------------------


def empty_frame_cache(dataset: object) -> None:
    """Give a gridded dataset a fresh :class:`FrameStore` on the same files.

    Building a dataset (grid shape, positive-patch search) decodes frames into the main process's
    cache, and forked workers inherit it; an empty store makes the first reads real decodes.
    """
    if not isinstance(dataset, GriddedDataset):
        raise BenchmarkError(f"expected a gridded dataset, got {type(dataset).__name__}")
    old = dataset.store
    dataset.store = FrameStore(old.index, cache_frames=old.cache_frames, reader=old.reader)


def folder_frame_index(folder: Path, max_frames: int | None = None) -> FrameIndex:
    """A :class:`FrameIndex` of a plain folder of one-time files (no manifest), sorted by time."""
    catalog = index_folder(folder)
    count = len(catalog) if max_frames is None else min(max_frames, len(catalog))
    if count < 2 or catalog.time_step is None:
        raise BenchmarkError(f"{folder}: need at least two timed files, found {len(catalog)}")
    return FrameIndex(
        data_dir=folder,
        times=catalog.times[:count],
        input_files=tuple((p,) for p in catalog.paths[:count]),
        target_files=None,
        time_step=catalog.time_step,
    )


def fit_stats(index: FrameIndex, variable: str, transform: str, max_frames: int) -> NormalizationStats:
    """Statistics of ``variable`` from up to ``max_frames`` frames spread over the series.

    The benchmark trains nothing, so there is no split to keep the statistics honest about.
    """
    store = FrameStore(index, cache_frames=1)
    frames = np.unique(np.linspace(0, len(index) - 1, min(max_frames, len(index))).round().astype(np.int64))
    acc = StatsAccumulator([variable], [transform])
    for frame in frames:
        acc.update(store.read(int(frame), [variable]))
    return acc.finish(store.units([variable]))


def opera_case(settings: BenchSettings) -> LoaderCase:
    """Real OPERA RATE composites: 3 past -> 3 future frames, random patches, flips and rotations."""
    folder = settings.shared_data / OPERA_SUBDIR
    index = folder_frame_index(folder, settings.opera_frames)
    stats = fit_stats(index, "RATE", "log10_rain", OPERA_STATS_FRAMES)
    height, width = FrameStore(index, cache_frames=1).grid_shape()
    patch = min(settings.patch_size, height, width)

    def make(num_workers: int, cache_frames: int) -> DataLoader[Sample]:
        dataset = SequenceDataset(
            FrameStore(index, cache_frames=cache_frames),
            np.arange(len(index)),
            ["RATE"],
            OPERA_INPUT_FRAMES,
            OPERA_OUTPUT_FRAMES,
            normalization=stats,
            train=True,
            patch=PatchSettings(patch_size=patch, patches_per_frame=OPERA_PATCHES_PER_WINDOW),
            augment=AugmentSettings(flips=True, rot90=True),
            seed=settings.seed,
        )
        empty_frame_cache(dataset)
        sampler = EpochSampler(len(dataset), shuffle=True, seed=settings.seed)
        return DataLoader(
            dataset,  # type: ignore[arg-type]
            batch_size=settings.batch_size,
            sampler=sampler,  # type: ignore[arg-type]
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
        )

    return LoaderCase(
        name=OPERA_CASE,
        description=(
            f"real OPERA RATE {height}x{width} (ODIM_H5), {len(index)} frames at 15 min, "
            f"{OPERA_INPUT_FRAMES} -> {OPERA_OUTPUT_FRAMES} frames, log10_rain, flips + rot90"
        ),
        data_dir=folder,
        patch_size=patch,
        make_loader=make,
        cold_cache_frames=1,
        loss="l1",
    )


def synthetic_case(app: str, root: Path, settings: BenchSettings) -> LoaderCase:
    """Synthetic ``app`` files through the application's DataModule and its ``train_dataloader()``."""
    data_dir = root / app
    if not data_dir.is_dir():
        from meteovision.datasets.synthetic import generate_sample_data

        start = time.perf_counter()
        generate_sample_data(app, data_dir, seed=settings.seed)
        LOG.info("%s: synthetic data written in %.1f s", app, time.perf_counter() - start)
    probe = datamodule_for_app(app, str(data_dir), seed=settings.seed)
    if not isinstance(probe, (SequenceDataModule, SegmentationDataModule)):
        raise BenchmarkError(f"{app}: {type(probe).__name__} is not a sequence or segmentation module")
    height, width = probe.store.grid_shape()
    patch = min(settings.patch_size, height, width)
    norm_path = probe.save_normalization(root / f"{app}_normalization.json")
    index = probe.frame_index
    files_per_frame = len(index.input_files[0]) + (index.target_files is not None)

    def make(num_workers: int, cache_frames: int) -> DataLoader[Sample]:
        dm = datamodule_for_app(
            app,
            str(data_dir),
            loader={"batch_size": settings.batch_size, "num_workers": num_workers},
            patches={"patch_size": patch},
            cache_frames=cache_frames,
            normalization_path=str(norm_path),
            seed=settings.seed,
        )
        dm.setup("fit")
        loader = dm.train_dataloader()
        empty_frame_cache(loader.dataset)
        return loader

    return LoaderCase(
        name=app,
        description=f"synthetic {app} {height}x{width} via {type(probe).__name__}.train_dataloader()",
        data_dir=data_dir,
        patch_size=patch,
        make_loader=make,
        cold_cache_frames=files_per_frame,
        loss="bce" if app == "bow_echo" else "l1",
    )


# -- timing -----------------------------------------------------------------------------------------------


def time_batches(loader: DataLoader[Sample], n_batches: int | None = None) -> tuple[Throughput, Sample]:
    """Draw ``n_batches`` (None: one epoch; more than an epoch continues into the next) and time it.

    The clock starts before ``iter(loader)``, so worker start-up counts where workers start.
    """
    per_epoch = len(loader)
    if per_epoch == 0:
        raise BenchmarkError("the training loader is empty (fewer samples than needed for a batch)")
    wanted = per_epoch if n_batches is None else n_batches
    samples = batches = 0
    first: Sample | None = None
    start = time.perf_counter()
    while batches < wanted:
        for batch in loader:
            samples += int(batch["inputs"].shape[0])
            batches += 1
            if first is None:
                first = batch
            if batches >= wanted:
                break
    seconds = time.perf_counter() - start
    assert first is not None
    return Throughput(samples, batches, seconds), first


def measure_loader(
    case: LoaderCase, num_workers: int, settings: BenchSettings
) -> tuple[dict[str, Throughput], Sample]:
    """Cold (one time step's files cached), then first epoch and warm on a loader with a large cache."""
    out: dict[str, Throughput] = {}
    loader = case.make_loader(num_workers, case.cold_cache_frames)
    out["cold"], _ = time_batches(loader, settings.batches)
    del loader
    gc.collect()
    loader = case.make_loader(num_workers, LARGE_CACHE_FRAMES)
    out["first_epoch"], _ = time_batches(loader)
    out["warm"], batch = time_batches(loader, settings.batches)
    del loader
    gc.collect()
    return out, batch


def time_training_step(batch: Sample, loss: str, settings: BenchSettings) -> list[float]:
    """Seconds of ``step_repeats`` U-Net training steps on ``batch``, after ``step_warmup`` steps."""
    from meteovision.models import build_model

    inputs, target = batch["inputs"], batch["target"].float()
    torch.manual_seed(settings.seed)
    model = build_model(
        "unet", in_channels=int(inputs.shape[1]), out_channels=int(target.shape[1]), encoder_name="resnet18"
    )
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn: torch.nn.Module = torch.nn.BCEWithLogitsLoss() if loss == "bce" else torch.nn.L1Loss()
    times: list[float] = []
    for i in range(settings.step_warmup + settings.step_repeats):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        value = loss_fn(model(inputs), target)
        value.backward()
        optimizer.step()
        if i >= settings.step_warmup:
            times.append(time.perf_counter() - start)
    return times


def regime_dict(th: Throughput, batch_size: int, step_s: float) -> dict[str, Any]:
    per_batch = th.seconds_per_batch(batch_size)
    ratio = per_batch / step_s
    return {
        "samples": th.samples,
        "batches": th.batches,
        "seconds": th.seconds,
        "samples_per_s": th.samples_per_s,
        "seconds_per_batch": per_batch,
        "ratio_to_step": ratio,
        "pass": bool(ratio < 1.0),
    }


@dataclass
class LoaderRuns:
    """The loader figures of one case, waiting for its step time."""

    case: LoaderCase
    by_workers: list[tuple[int, dict[str, Throughput]]]
    batch: Sample


def measure_case_loaders(case: LoaderCase, settings: BenchSettings) -> LoaderRuns:
    """Every worker setting of ``case``; the last warm batch is kept to time the step on."""
    by_workers: list[tuple[int, dict[str, Throughput]]] = []
    batch: Sample | None = None
    for workers in settings.workers:
        LOG.info("%s: loader with num_workers=%d", case.name, workers)
        regimes, batch = measure_loader(case, workers, settings)
        by_workers.append((workers, regimes))
    assert batch is not None
    return LoaderRuns(case, by_workers, batch)


def finish_case(runs: LoaderRuns, settings: BenchSettings) -> CaseResult:
    """Time the U-Net step on the case's batch and relate every loader figure to it."""
    case, batch = runs.case, runs.batch
    result = CaseResult(case.name, case.description, data_dir=str(case.data_dir), patch_size=case.patch_size)
    result.input_shape = list(batch["inputs"].shape)
    result.target_shape = list(batch["target"].shape)
    LOG.info("%s: U-Net step on inputs %s, target %s", case.name, result.input_shape, result.target_shape)
    times = time_training_step(batch, case.loss, settings)
    step_s = statistics.median(times)
    LOG.info("%s: step times %s s", case.name, ", ".join(f"{t:.3f}" for t in times))
    result.step = {
        "model": "unet/resnet18",
        "loss": case.loss,
        "median_s": step_s,
        "min_s": min(times),
        "times_s": times,
    }
    result.samples_per_epoch = runs.by_workers[0][1]["first_epoch"].samples
    for workers, regimes in runs.by_workers:
        entry: dict[str, Any] = {"num_workers": workers}
        for name in REGIMES:
            entry[name] = regime_dict(regimes[name], settings.batch_size, step_s)
        result.loaders.append(entry)
    return result


# -- report -----------------------------------------------------------------------------------------------


# -- command line -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--batch-size", type=int, default=None, help="samples per batch (default 8)")
    parser.add_argument("--patch-size", type=int, default=None, help="patch side (default 256; quick 64)")
    parser.add_argument("--batches", type=int, default=None, help="batches timed, cold and warm (default 6)")
    parser.add_argument("--quick", action="store_true", help="few batches and steps, 8 OPERA frames, 64 px")
    parser.add_argument("--shared-data", type=Path, default=SHARED_DATA, help="the real-data folder")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated among {', '.join(CASES)}")
    parser.add_argument("--step-warmup", type=int, default=None, help="untimed U-Net steps first (default 2)")
    parser.add_argument("--step-repeats", type=int, default=None, help="timed U-Net steps (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the step (2: the cores)")
    parser.add_argument("--json", type=Path, default=None, help="also save the figures as JSON here")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    quick = bool(args.quick)
    return BenchSettings(
        batch_size=args.batch_size or 8,
        patch_size=args.patch_size or (64 if quick else 256),
        batches=args.batches or (2 if quick else 6),
        step_warmup=(1 if quick else 2) if args.step_warmup is None else args.step_warmup,
        step_repeats=args.step_repeats or (2 if quick else 5),
        threads=args.threads,
        cases=tuple(c.strip() for c in str(args.cases).split(",") if c.strip()),
        shared_data=Path(args.shared_data),
        opera_frames=8 if quick else None,
    )


def run(settings: BenchSettings, work_dir: Path) -> list[CaseResult]:
    """Measure every case; synthetic data are written under ``work_dir``.

    All loaders run before any step, so no worker is forked from a process whose torch thread pool
    is already running, and the steps are timed one after the other, under the same load.
    """
    slots: list[CaseResult | LoaderRuns] = []
    for name in settings.cases:
        if name == OPERA_CASE:
            folder = settings.shared_data / OPERA_SUBDIR
            if not folder.is_dir():
                reason = f"real data folder {folder} not found (give --shared-data PATH)"
                print(f"SKIPPED {OPERA_CASE}: {reason}")
                skipped = CaseResult(OPERA_CASE, "real OPERA RATE series", status="skipped", reason=reason)
                slots.append(skipped)
                continue
            case = opera_case(settings)
        else:
            case = synthetic_case(name, work_dir, settings)
        slots.append(measure_case_loaders(case, settings))
    return [slot if isinstance(slot, CaseResult) else finish_case(slot, settings) for slot in slots]


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print the table and the PASS/FAIL lines, save the JSON; 0 when it ran."""
    args = parse_args(argv)
    settings = settings_from_args(args)
    args_json: Path | None = args.json
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    load_start = os.getloadavg()
    try:
        with tempfile.TemporaryDirectory(prefix="meteovision-bench-") as tmp:
            results = run(settings, Path(tmp))
    finally:
        torch.set_num_threads(previous_threads)
    load_end = os.getloadavg()
    machine = machine_info(settings, load_start, load_end)
    print(
        f"machine: {machine['cpu_count']} CPU cores, torch {machine['torch']}, "
        f"step threads {settings.threads}, "
        f"worker start method {machine['start_method']}, load average {load_start[0]:.2f} at start, "
        f"{load_end[0]:.2f} at end"
    )
    if max(load_start[0], load_end[0]) > 1.0:
        print("note: other processes kept the CPUs busy (load average > 1): the timings are contended")
    print(
        "cold = every file of a sample decoded for it (data larger than the cache); 1st ep = fresh loader, "
        "caches filling; warm = every frame cached"
    )
    print(format_table(results, settings.batch_size))
    for line in verdict_lines(results):
        print(line)
    if args_json is not None:
        payload = {
            "settings": {**asdict(settings), "shared_data": str(settings.shared_data)},
            "machine": machine,
            "regimes": list(REGIMES),
            "cases": {r.name: r.to_dict() for r in results},
        }
        args_json.parent.mkdir(parents=True, exist_ok=True)
        args_json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"figures saved to {args_json}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    sys.exit(main())
