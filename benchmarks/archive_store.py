"""The Zarr training store against raw files, on the real OPERA series: loader cost and build memory.

Prints two ratios measured in one run:
  * cold loader time per batch from the store / from the raw ODIM files (target <= 0.2): a fresh
    DataModule each time (nothing cached), set up for fit, then the training batches drawn. From raw files
    setup decodes every frame; from the store it reads times and stored per-frame statistics, and the
    batches decode only the chunks their patches touch;
  * warm loader time per batch / one CPU training step of the nowcast network (target <= 0.2);
and the peak traced memory (tracemalloc) while building the store from the first half and from the
whole series: bounded by a few frames, it does not grow with the archive's length.

    python benchmarks/archive_store.py [--data ../shared/data] [--batches 8]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

import dask
import torch
from bench_common import SHARED_DATA, BenchmarkError

from meteovision.datasets.archive.datamodule import ArchiveDataModule
from meteovision.datasets.archive.events import DrySampling
from meteovision.datasets.archive.sources import SourceSettings
from meteovision.datasets.archive.store import build_source

LOG = logging.getLogger("archive_store")
OPERA = SourceSettings(name="opera_2018", glob="opera_20180824/*.hdf", variable="RATE",
                       crop_bounds_m=(400000.0, -3400000.0, 2400000.0, -1400000.0),
                       test_from="2018-08-24T21:00:00Z")


def _datamodule(root: Path, store: Path | None) -> ArchiveDataModule:
    return ArchiveDataModule([OPERA], str(root), store=None if store is None else str(store), time_step_minutes=15,
                             num_input_frames=3, num_output_frames=1, patch_size=96, patches_per_window=8,
                             batch_size=8, val_fraction=0.4, guard_minutes=15,
                             sampling=DrySampling(dry_share=1.0))


def cold_per_batch(root: Path, store: Path | None, batches: int) -> tuple[float, float]:
    """(cold seconds per batch, warm seconds per batch) over ``batches`` training batches."""
    start = time.perf_counter()
    dm = _datamodule(root, store)
    dm.setup("fit")
    loader = dm.train_dataloader()
    n = 0
    warm_start = 0.0
    for _ in range(1 + batches // max(len(loader), 1)):
        for _batch in loader:
            n += 1
            if n == 1:
                warm_start = time.perf_counter()
            if n >= batches:
                break
        if n >= batches:
            break
    end = time.perf_counter()
    return (end - start) / n, (end - warm_start) / max(n - 1, 1)


def train_step_seconds(root: Path, repeats: int = 3) -> float:
    """One CPU training step (forward, loss, backward, AdamW) of the nowcast network on a 96 x 96 batch of 8."""
    from meteovision.pipeline.training.tasks import NowcastTask

    task = NowcastTask("nowcast_precip", model="deeplabv3plus", in_channels=3, out_channels=1,
                       model_settings={"encoder_name": "resnet18", "decoder_channels": 64}, time_step_minutes=15,
                       variables_per_frame=1)
    opt = torch.optim.AdamW(task.parameters(), lr=1e-3)
    x, y = torch.randn(8, 3, 96, 96), torch.randn(8, 1, 96, 96)
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        loss = (task(x) - y).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return min(times)


def build_peak_mb(root: Path, out: Path, n_files: int) -> float:
    """Peak traced memory (MB) building the store from the first ``n_files`` files, synchronously."""
    files = OPERA.files(root)[:n_files]
    tracemalloc.start()
    with dask.config.set(scheduler="synchronous"):
        build_source(out, OPERA, files)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    root = args.data / "radar"
    if not (root / "opera_20180824").is_dir():
        raise BenchmarkError(f"{root / 'opera_20180824'} not found (pass --data)")
    with tempfile.TemporaryDirectory() as tmp:
        half, whole = Path(tmp) / "half", Path(tmp) / "whole"
        n = len(OPERA.files(root))
        peak_half = build_peak_mb(root, half, n // 2)
        peak_whole = build_peak_mb(root, whole, n)
        store_cold, store_warm = cold_per_batch(root, whole, args.batches)
        raw_cold, _ = cold_per_batch(root, None, args.batches)
    step = train_step_seconds(root)
    frame_mb = 1000 * 1000 * 4 / 1e6
    print(f"OPERA 2018-08-24, {n} frames of 1000 x 1000 (2 km), batches of 8 x 96 x 96, {args.batches} batches")
    print(f"cold loader s/batch: store {store_cold:.3f}, raw files {raw_cold:.3f}; "
          f"ratio store/raw {store_cold / raw_cold:.3f} (target <= 0.2)")
    print(f"warm loader s/batch {store_warm:.4f} / CPU train step {step:.3f} s = {store_warm / step:.3f} "
          "(target <= 0.2)")
    print(f"build peak traced memory: {peak_half:.0f} MB for {n // 2} files, {peak_whole:.0f} MB for {n} files "
          f"(one converted frame is {frame_mb:.0f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
