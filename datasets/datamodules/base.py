"""The machinery every DataModule shares: data folder, manifest, time split, statistics, loaders, state.

A DataModule reads a sample-data folder (manifest.json, docs/CONTRACTS.md), splits its frames
by blocks of time (:mod:`meteovision.datasets.splits`), fits the normalisation on the training split
only and hands out the datasets of :mod:`meteovision.datasets.torch_datasets`.

The statistics live in memory and in :meth:`state_dict` (Lightning stores it in checkpoints), or
come from ``normalization_path`` (a JSON of :class:`NormalizationStats`) for test/predict without
refitting. Everything is computed lazily: ``channel_names`` or ``normalization`` can be read before
``setup`` (a task may need them to build its model).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from meteovision.datasets.catalog import CatalogError, Manifest, has_manifest
from meteovision.datasets.datamodules.settings import LoaderSettings, SplitSettings
from meteovision.datasets.normalization import NormalizationError, NormalizationStats
from meteovision.datasets.sampling import split_loader
from meteovision.datasets.splits import SPLIT_NAMES, TimeSplit, split_by_time
from meteovision.datasets.torch_datasets import Sample, SamplingError

LOG = logging.getLogger(__name__)


def _iso(t: np.datetime64 | None) -> str | None:
    return None if t is None else str(np.asarray(t).astype("datetime64[s]")) + "Z"


class _BaseDataModule(LightningDataModule):
    """Shared machinery: data folder, manifest, time split, statistics, loaders, state."""

    def _init_common(
        self,
        *,
        data_dir: str,
        split: SplitSettings,
        loader: LoaderSettings,
        seed: int,
        generate_if_missing: str | None,
        normalization_path: str | None,
        stats_max_frames: int | None,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser()
        self.split_settings = split
        self.loader = loader
        self.seed = seed
        self.generate_if_missing = generate_if_missing
        self.normalization_path = normalization_path
        self.stats_max_frames = stats_max_frames
        self._manifest: Manifest | None = None
        self._split: TimeSplit | None = None
        self._stats: NormalizationStats | None = None
        self._datasets: dict[str, Dataset[Sample]] = {}

    # -- data folder ---------------------------------------------------------------------------------------
    def _ensure_data(self) -> None:
        if has_manifest(self.data_dir):
            return
        if not self.generate_if_missing:
            raise CatalogError(
                self.data_dir,
                "no manifest.json: not a sample-data folder (run `meteovision sample-data --app APP --out "
                f"{self.data_dir}` or set generate_if_missing: APP)",
            )
        from meteovision.datasets.synthetic import generate_sample_data

        LOG.info(
            "%s has no data: generating %s sample data (seed %d)",
            self.data_dir,
            self.generate_if_missing,
            self.seed,
        )
        generate_sample_data(self.generate_if_missing, self.data_dir, seed=self.seed)
        if not has_manifest(self.data_dir):
            raise CatalogError(self.data_dir, f"generator {self.generate_if_missing!r} wrote no manifest.json")

    def prepare_data(self) -> None:
        """Generate sample data when asked and absent (Lightning runs this once, on one process)."""
        self._ensure_data()

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._ensure_data()
            self._manifest = Manifest.load(self.data_dir)
        return self._manifest

    def _target_named(self, given: str | None) -> str:
        """The target variable the config names, else the manifest's (a target module needs one)."""
        name = given or self.manifest.target_variable
        if not name:
            raise CatalogError(self.data_dir, "no target_variable given nor in the manifest")
        return name

    # -- split ---------------------------------------------------------------------------------------------
    def _times_and_events(self) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    @property
    def split(self) -> TimeSplit:
        if self._split is None:
            times, events = self._times_and_events()
            self._split = split_by_time(
                times,
                events,
                fractions=self.split_settings.fractions,
                gap=timedelta(minutes=self.split_settings.boundary_gap_minutes),
                max_gap=timedelta(minutes=self.split_settings.max_gap_minutes),
                mode=self.split_settings.mode,
                block=self.split_settings.block,
                seed=self.seed,
            )
            LOG.info("%s: split %s", self.data_dir, self._split.counts())
        return self._split

    def _train_indices(self) -> np.ndarray:
        idx = self.split.indices("train")
        if idx.size == 0:
            raise SamplingError(f"{self.data_dir}: the training split is empty ({self.split.counts()})")
        if self.stats_max_frames and idx.size > self.stats_max_frames:
            idx = idx[np.linspace(0, idx.size - 1, self.stats_max_frames).round().astype(np.int64)]
        return idx

    # -- statistics ----------------------------------------------------------------------------------------
    def _stat_channels(self) -> list[str]:
        """Channels of the joint statistics (inputs, then regression targets)."""
        raise NotImplementedError

    def _fit_stats(self) -> NormalizationStats:
        raise NotImplementedError

    @property
    def stats(self) -> NormalizationStats:
        """Joint statistics of every normalised channel (inputs and, for regression, targets)."""
        if self._stats is None:
            if self.normalization_path:
                self._set_stats(NormalizationStats.load_json(self.normalization_path))
            else:
                LOG.info("%s: fitting normalisation on the training split", self.data_dir)
                self._set_stats(self._fit_stats())
        assert self._stats is not None
        return self._stats

    def _set_stats(self, stats: NormalizationStats) -> None:
        wanted = self._stat_channels()
        missing = [c for c in wanted if c not in stats.channel_names]
        if missing:
            raise NormalizationError(
                f"statistics hold channels {list(stats.channel_names)}, this data module needs {wanted}"
            )
        self._stats = stats.select(wanted)
        self._datasets = {}

    def save_normalization(self, path: str | Path) -> Path:
        """Write the fitted statistics as JSON (for ``normalization_path``)."""
        return self.stats.save_json(path)

    # -- Lightning -------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Index and split the data; for fitting, also fit the statistics (train split only) unless loaded.

        For test/predict the statistics are left alone: Lightning restores them from the checkpoint
        (:meth:`load_state_dict`) after ``setup``; without a checkpoint or ``normalization_path`` they
        are fitted on the training split when a loader first needs them.
        """
        _ = self.split
        if stage in (None, "fit"):
            _ = self.stats
            if len(self.dataset("train")) == 0:  # type: ignore[arg-type]
                raise SamplingError(f"{self.data_dir}: no training sample ({self.split.counts()})")

    def state_dict(self) -> dict[str, Any]:
        """What travels with a checkpoint: the statistics (never refitted on other data)."""
        return {"normalization": None if self._stats is None else self._stats.to_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        stats = state_dict.get("normalization")
        if stats is not None:
            self._set_stats(NormalizationStats.from_dict(stats))

    def dataset(self, split: str) -> Dataset[Sample]:
        """The dataset of ``split`` ("train", "val", "test"), built with the current statistics."""
        if split not in SPLIT_NAMES:
            raise SamplingError(f"unknown split {split!r}; choose one of {SPLIT_NAMES}")
        if split not in self._datasets:
            self._datasets[split] = self._build_dataset(split)
        return self._datasets[split]

    def _build_dataset(self, split: str) -> Dataset[Sample]:
        raise NotImplementedError

    def _loader(self, split: str) -> DataLoader[Sample]:
        return split_loader(self.dataset(split), split, batch_size=self.loader.batch_size,
                            num_workers=self.loader.num_workers, seed=self.seed)

    def train_dataloader(self) -> DataLoader[Sample]:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader[Sample]:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader[Sample]:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader[Sample]:
        return self._loader("test")

    # -- description -----------------------------------------------------------------------------------------
    @property
    def normalization(self) -> NormalizationStats:
        """Statistics of the input variables (one entry per variable; stacked time steps repeat them)."""
        return self.stats.select(self._input_channels())

    @property
    def target_transform(self) -> NormalizationStats | None:
        """Statistics defining the target space (None: targets are 0/1 or class indices)."""
        return None

    def _input_channels(self) -> list[str]:
        raise NotImplementedError

    @property
    def channel_names(self) -> list[str]:
        """Names of the model's input channels (stacked time steps named ``VAR_t-5min``)."""
        raise NotImplementedError

    @property
    def channel_units(self) -> list[str]:
        raise NotImplementedError

    @property
    def target_names(self) -> list[str]:
        raise NotImplementedError

    @property
    def target_units(self) -> list[str]:
        raise NotImplementedError

    @property
    def class_names(self) -> list[str] | None:
        return None

    def data_description(self) -> dict[str, Any]:
        """App, folder, manifest seed and, per split, its time range, frames and samples."""
        m = self.manifest
        split = self.split
        counts = split.counts()
        splits: dict[str, Any] = {}
        for name in SPLIT_NAMES:
            rng = split.time_range(name)
            splits[name] = {
                "start": _iso(rng[0]) if rng else None,
                "end": _iso(rng[1]) if rng else None,
                "frames": counts[name],
                "samples": len(self.dataset(name)),  # type: ignore[arg-type]
            }
        return {
            "app": m.app,
            "data_dir": str(self.data_dir),
            "seed": m.seed,
            "created_by": m.created_by,
            "time_step_minutes": m.time_step_minutes,
            "split": {**asdict(self.split_settings), "dropped_frames": counts["dropped"]},
            "splits": splits,
        }
