"""A nowcast DataModule over real radar archives: raw files as they are, or the Zarr store built from them.

No manifest: the frames come from each source's glob (or the store), times from the files' contents,
the split from :mod:`meteovision.datasets.archive.events`. From a store, setup reads only the times and
the per-frame statistics (dry sampling, normalisation), and samples decode only the chunks they cut.
Every source is brought to one grid spacing by its own ``coarsen`` (checked: the spacings must agree
within 1 %), and sequences are drawn at one common ``time_step_minutes`` (a source's step must divide
it; 5-min series give windows of every third frame at a 15-min step). A source that cannot (10-min BoM
at 15 min) is refused by name.
With ``native_steps`` every source is drawn at its own step instead, a whole multiple k of
``time_step_minutes``: N past frames k steps apart, and the targets at leads k, 2k, ... of the network's
M leads (the others masked), with the step as one more input channel; see :mod:`.dataset`.
The batch structure is that of the synthetic :class:`SequenceDataModule` (inputs, target, mask, time),
so ``NowcastTask`` trains on it unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import numpy as np
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from meteovision.datasets.archive.dataset import ArchiveSequenceDataset
from meteovision.datasets.archive.events import (
    MISSING,
    SPLITS,
    DrySampling,
    events_from_gaps,
    keep_windows,
    lead_windows,
    sequence_windows,
    split_labels,
)
from meteovision.datasets.archive.series import SourceSeries, load_raw
from meteovision.datasets.archive.sources import ArchiveError, SourceSettings, resolve_root
from meteovision.datasets.archive.store import load_store
from meteovision.datasets.normalization import NormalizationStats, StatsAccumulator
from meteovision.datasets.sampling import split_loader
from meteovision.datasets.torch_datasets import Sample, lead_names

LOG = logging.getLogger(__name__)


class ArchiveDataModule(LightningDataModule):
    """N past frames -> M future frames from the radar series named in ``sources``."""

    def __init__(self, sources: list[SourceSettings], root: str = ".", *, store: str | None = None,
                 quantity: str = "RATE", transform: str = "log10_rain", time_step_minutes: float = 15.0,
                 num_input_frames: int = 4, num_output_frames: int = 4, patch_size: int = 64,
                 patches_per_window: int = 2, batch_size: int = 8, num_workers: int = 0,
                 val_fraction: float = 0.2, test_fraction: float = 0.2, guard_minutes: float = 30.0,
                 max_gap_minutes: float = 60.0, sampling: DrySampling | None = None, flips: bool = True,
                 rot90: bool = True, seed: int = 0, motion_input: bool = False, native_steps: bool = False,
                 min_lead_minutes: float | None = None) -> None:
        """``motion_input``: append the Lucas-Kanade motion of the input frames to every sample's inputs
        (two channels; the ``lk_advection`` nowcast head takes them, and needs pysteps).
        ``native_steps``: draw each source at its own step (a whole multiple of ``time_step_minutes``, which
        ``num_output_frames`` must be a multiple of too) and give the step as an input channel; a window is
        kept when its split holds the future frames up to ``min_lead_minutes`` (default: every lead)."""
        super().__init__()
        if not sources:
            raise ArchiveError("data.init_args.sources: name at least one source")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ArchiveError(f"data.init_args.sources: names must be unique, got {names}")
        if num_input_frames < 1 or num_output_frames < 1:
            raise ArchiveError(f"num_input_frames/num_output_frames must be >= 1, got {num_input_frames}, "
                               f"{num_output_frames}")
        if time_step_minutes <= 0:
            raise ArchiveError(f"time_step_minutes must be > 0, got {time_step_minutes}")
        if min_lead_minutes is not None and not 0 < min_lead_minutes <= num_output_frames * time_step_minutes:
            raise ArchiveError(f"min_lead_minutes must be in (0, {num_output_frames * time_step_minutes:g}] (the "
                               f"last lead), got {min_lead_minutes}")
        self.sources = list(sources)
        self.root_given, self.store_path = root, store
        self.quantity, self.transform = quantity, transform
        self.time_step_minutes = float(time_step_minutes)
        self.num_input_frames, self.num_output_frames = num_input_frames, num_output_frames
        self.patch_size, self.patches_per_window = patch_size, patches_per_window
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.guard_minutes, self.max_gap_minutes = guard_minutes, max_gap_minutes
        self.sampling = sampling or DrySampling()
        self.flips, self.rot90, self.seed = flips, rot90, seed
        self.motion_input = motion_input
        self.native_steps = native_steps
        self.min_lead_minutes = float(min_lead_minutes) if min_lead_minutes else None
        self.input_variables = [quantity]
        self._series: list[SourceSeries] | None = None
        self._windows: dict[str, list[tuple[int, np.ndarray]]] | None = None
        self._stats: NormalizationStats | None = None
        self._datasets: dict[str, ArchiveSequenceDataset] = {}
        self.summary: dict[str, Any] = {}

    # -- frames ---------------------------------------------------------------------------------------------
    @property
    def series(self) -> list[SourceSeries]:
        if self._series is None:
            if self.store_path:
                store = resolve_root(self.store_path)
                self._series = [load_store(store, s) for s in self.sources]
            else:
                root = resolve_root(self.root_given)
                self._series = [load_raw(s, root) for s in self.sources]
            self._check(self._series)
        return self._series

    def _check(self, series: list[SourceSeries]) -> None:
        units = {s.units for s in series}
        if len(units) != 1:
            raise ArchiveError(f"sources give different units {sorted(units)}: convert them to one quantity")
        ref = series[0].spacing_m
        for s in series:
            if abs(s.spacing_m - ref) > 0.01 * ref:
                raise ArchiveError(f"source {s.name!r}: {s.spacing_m:g} m cells, source {series[0].name!r} "
                                   f"{ref:g} m; set coarsen so that every source has the same spacing")
            if self.native_steps:
                self._native_ratio(s)
                continue
            step = s.step_minutes
            if step is not None and abs(self.time_step_minutes / step - round(self.time_step_minutes / step)) > 1e-6:
                raise ArchiveError(f"source {s.name!r}: its {step:g}-min step does not divide time_step_minutes "
                                   f"{self.time_step_minutes:g}; leave it out or change the common step")

    def _native_ratio(self, s: SourceSeries) -> int:
        """k = the source's step / ``time_step_minutes`` (native steps): a whole number dividing the M leads."""
        step = s.step_minutes
        if step is None:
            raise ArchiveError(f"source {s.name!r}: fewer than 2 frames, so no time step to draw it at")
        k = round(step / self.time_step_minutes)
        if k < 1 or abs(step / self.time_step_minutes - k) > 1e-6 or self.num_output_frames % k:
            raise ArchiveError(f"source {s.name!r}: its {step:g}-min step is not a whole multiple of "
                               f"time_step_minutes {self.time_step_minutes:g} dividing the {self.num_output_frames} "
                               f"leads; leave it out or change time_step_minutes/num_output_frames")
        return k

    def step_ratio(self, index: int) -> int:
        """Leads (of ``time_step_minutes``) per native step of source ``index``; 1 at the common step."""
        return self._native_ratio(self.series[index]) if self.native_steps else 1

    @property
    def grid_spacing_m(self) -> float:
        return self.series[0].spacing_m

    # -- split and windows ----------------------------------------------------------------------------------
    @property
    def windows(self) -> dict[str, list[tuple[int, np.ndarray]]]:
        if self._windows is None:
            self._windows = self._make_windows()
        return self._windows

    def labels_of(self, index: int) -> np.ndarray:
        """Split name per frame of source ``index`` ("" = guard gap or excluded)."""
        return split_labels(self.series[index].times, self.sources[index], val_fraction=self.val_fraction,
                            test_fraction=self.test_fraction, guard_minutes=self.guard_minutes)

    def _make_windows(self) -> dict[str, list[tuple[int, np.ndarray]]]:
        out: dict[str, list[tuple[int, np.ndarray]]] = {k: [] for k in SPLITS}
        length = self.num_input_frames + self.num_output_frames
        per_source: dict[str, Any] = {}
        for i, s in enumerate(self.series):
            labels = self.labels_of(i)
            info: dict[str, Any] = {"frames": int(s.times.size),
                                    "events": int(events_from_gaps(s.times, self.max_gap_minutes).max(initial=-1) + 1)}
            k = self.step_ratio(i)
            if self.native_steps:
                info["step_minutes"] = k * self.time_step_minutes
            for split in SPLITS:
                w = self._source_windows(s, labels, split, k) if self.native_steps else \
                    sequence_windows(s.times, labels, split, length, self.time_step_minutes)
                info[f"{split}_frames"] = int((labels == split).sum())
                if split == "train" and w.shape[0]:
                    wet = self._wet_fraction(s, w[:, self.num_input_frames :])
                    keep = keep_windows(wet, self.sampling, self.seed + i)
                    info["train_wet_windows"] = int((wet >= self.sampling.min_wet_fraction).sum())
                    info["train_dry_dropped"] = int((~keep).sum())
                    w = w[keep]
                info[f"{split}_windows"] = int(w.shape[0])
                out[split] += [(i, row) for row in w]
            per_source[s.name] = info
            LOG.info("archive source %s: %s", s.name, info)
        self.summary = {"time_step_minutes": self.time_step_minutes, "spacing_m": self.grid_spacing_m,
                        "native_steps": self.native_steps, "sampling": asdict(self.sampling),
                        "sources": per_source, "windows": {k: len(v) for k, v in out.items()}}
        LOG.info("archive windows: %s", self.summary["windows"])
        return out

    def _source_windows(self, s: SourceSeries, labels: np.ndarray, split: str, k: int) -> np.ndarray:
        """Native-step windows of one source: N past frames, then the M / k future ones (missing: -1)."""
        step = k * self.time_step_minutes
        future = self.num_output_frames // k
        min_lead = self.min_lead_minutes or self.num_output_frames * self.time_step_minutes
        min_future = min(future, max(1, int(np.ceil(min_lead / step - 1e-9))))
        return lead_windows(s.times, labels, split, self.num_input_frames, future, step, min_future)

    def _wet_fraction(self, s: SourceSeries, frames: np.ndarray) -> np.ndarray:
        """Wet share of each window's target frames (those present, for native-step windows)."""
        thr = self.sampling.wet_threshold
        if (frames == MISSING).any():
            return np.concatenate([self._wet_fraction(s, row[row != MISSING][None]) for row in frames])
        stored = None if s.summaries is None else s.summaries.wet_fraction(frames, thr)
        if stored is not None:  # a store's per-frame counts: the same numbers without reading the frames
            return stored
        wet = np.zeros(frames.shape[0])
        for j, row in enumerate(frames):
            v = s.values[row]
            valid = np.isfinite(v)
            with np.errstate(invalid="ignore"):
                wet[j] = float((valid & (v > thr)).sum()) / max(int(valid.sum()), 1)
        return wet

    # -- statistics -----------------------------------------------------------------------------------------
    @property
    def stats(self) -> NormalizationStats:
        if self._stats is None:
            acc = StatsAccumulator([self.quantity], [self.transform])
            for i, s in enumerate(self.series):
                train = np.flatnonzero(self.labels_of(i) == "train")
                if s.summaries is not None and s.summaries.accumulate(acc, train):
                    continue  # a store's per-frame statistics, merged as update() would merge the frames
                for f in train:
                    acc.update(s.values[f][None])
            self._stats = acc.finish([self.series[0].units])
        return self._stats

    @property
    def normalization(self) -> NormalizationStats:
        return self.stats

    @property
    def target_transform(self) -> NormalizationStats:
        return self.stats

    def state_dict(self) -> dict[str, Any]:
        return {"normalization": None if self._stats is None else self._stats.to_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        stats = state_dict.get("normalization")
        if stats is not None:
            self._stats = NormalizationStats.from_dict(stats)
            self._datasets = {}

    # -- Lightning ------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        _ = self.windows
        if stage in (None, "fit"):
            _ = self.stats
            if not self.windows["train"]:
                raise ArchiveError(f"no training window in any source ({self.summary.get('sources')})")

    def dataset(self, split: str) -> ArchiveSequenceDataset:
        if split not in SPLITS:
            raise ArchiveError(f"unknown split {split!r}; choose one of {SPLITS}")
        if split not in self._datasets:
            self._datasets[split] = ArchiveSequenceDataset(
                self.series, self.windows[split], self.num_input_frames, normalization=self.stats,
                patch_size=self.patch_size, train=split == "train", patches_per_window=self.patches_per_window,
                flips=self.flips, rot90=self.rot90, seed=self.seed, motion=self.motion_input,
                step_ratios=[self.step_ratio(i) for i in range(len(self.series))] if self.native_steps else None,
                num_leads=self.num_output_frames, time_step_minutes=self.time_step_minutes)
        return self._datasets[split]

    def _loader(self, split: str) -> DataLoader[Sample]:
        return split_loader(self.dataset(split), split, batch_size=self.batch_size, num_workers=self.num_workers,
                            seed=self.seed)

    def train_dataloader(self) -> DataLoader[Sample]:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader[Sample]:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader[Sample]:
        return self._loader("test")

    # -- description (checkpoint metadata) ------------------------------------------------------------------
    @property
    def patch(self) -> Any:
        return self

    @property
    def channel_names(self) -> list[str]:
        return lead_names(self.input_variables, range(-(self.num_input_frames - 1), 1), self.time_step_minutes)

    @property
    def channel_units(self) -> list[str]:
        return [self.stats.channel_units[0]] * self.num_input_frames

    @property
    def target_names(self) -> list[str]:
        return lead_names(self.input_variables, range(1, self.num_output_frames + 1), self.time_step_minutes)

    @property
    def target_units(self) -> list[str]:
        return [self.stats.channel_units[0]] * self.num_output_frames

    @property
    def class_names(self) -> list[str] | None:
        return None

    def data_description(self) -> dict[str, Any]:
        _ = self.windows
        return {"app": "archive", "root": self.root_given, "store": self.store_path,
                "sources": [s.name for s in self.sources], **self.summary}

