"""LightningDataModules built from YAML (``configs/<app>.yaml``, LightningCLI ``data:`` section).

Every ``__init__`` takes plain typed arguments only, so jsonargparse can build it from a config
file. A DataModule reads a sample-data folder (manifest.json, docs/CONTRACTS.md), splits its frames
by blocks of time (:mod:`meteovision.datasets.splits`), fits the normalisation on the training split
only and hands out the datasets of :mod:`meteovision.datasets.torch_datasets`.

The statistics live in memory and in :meth:`state_dict` (Lightning stores it in checkpoints), or
come from ``normalization_path`` (a JSON of :class:`NormalizationStats`) for test/predict without
refitting. Everything is computed lazily: ``channel_names`` or ``normalization`` can be read before
``setup`` (a task may need them to build its model).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from meteovision.datasets.catalog import (
    CatalogError,
    FrameIndex,
    ImageRecords,
    Manifest,
    events_from_manifest,
    frame_index,
    has_manifest,
    image_records,
)
from meteovision.datasets.normalization import (
    TRANSFORMS,
    NormalizationError,
    NormalizationStats,
    StatsAccumulator,
)
from meteovision.datasets.splits import BLOCK_KINDS, SPLIT_MODES, SPLIT_NAMES, TimeSplit, split_by_time
from meteovision.datasets.torch_datasets import (
    SNOW_CLASS_NAMES,
    VISIBILITY_BINS_M,
    VISIBILITY_CLASS_NAMES,
    AugmentSettings,
    ClassificationDataset,
    EpochSampler,
    FrameStore,
    ImageStore,
    PatchSettings,
    PixelRegressionDataset,
    Sample,
    SamplingError,
    SegmentationDataset,
    SequenceDataset,
    class_indices,
    lead_names,
    visibility_classes,
)

LOG = logging.getLogger(__name__)

CLASSIFICATION_LABELS: tuple[str, ...] = ("snow_class", "visibility")


def _iso(t: np.datetime64 | None) -> str | None:
    return None if t is None else str(np.asarray(t).astype("datetime64[s]")) + "Z"


class _BaseDataModule(LightningDataModule):
    """Shared machinery: data folder, manifest, time split, statistics, loaders, state."""

    def _init_common(
        self,
        *,
        data_dir: str,
        batch_size: int,
        num_workers: int,
        val_fraction: float,
        test_fraction: float,
        max_gap_minutes: float,
        boundary_gap_minutes: float,
        split_mode: str,
        split_block: str,
        seed: int,
        generate_if_missing: str | None,
        normalization_path: str | None,
        stats_max_frames: int | None,
    ) -> None:
        if batch_size < 1:
            raise SamplingError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise SamplingError(f"num_workers must be >= 0, got {num_workers}")
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise SamplingError(f"val_fraction {val_fraction} + test_fraction {test_fraction} must be < 1")
        if split_mode not in SPLIT_MODES:
            raise SamplingError(f"split_mode {split_mode!r} unknown; choose one of {SPLIT_MODES}")
        if split_block not in BLOCK_KINDS:
            raise SamplingError(f"split_block {split_block!r} unknown; choose one of {BLOCK_KINDS}")
        self.data_dir = Path(data_dir).expanduser()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.max_gap_minutes = max_gap_minutes
        self.boundary_gap_minutes = boundary_gap_minutes
        self.split_mode = split_mode
        self.split_block = split_block
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
                fractions=(
                    1.0 - self.val_fraction - self.test_fraction,
                    self.val_fraction,
                    self.test_fraction,
                ),
                gap=timedelta(minutes=self.boundary_gap_minutes),
                max_gap=timedelta(minutes=self.max_gap_minutes),
                mode=self.split_mode,
                block=self.split_block,
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
        ds = self.dataset(split)
        workers = {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0}
        if split == "train":
            sampler = EpochSampler(len(ds), shuffle=True, seed=self.seed)  # type: ignore[arg-type]
            return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, **workers)  # type: ignore[arg-type]
        return DataLoader(ds, batch_size=self.batch_size, shuffle=False, **workers)  # type: ignore[arg-type]

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
            "split": {
                "mode": self.split_mode,
                "block": self.split_block,
                "val_fraction": self.val_fraction,
                "test_fraction": self.test_fraction,
                "max_gap_minutes": self.max_gap_minutes,
                "boundary_gap_minutes": self.boundary_gap_minutes,
                "dropped_frames": counts["dropped"],
            },
            "splits": splits,
        }


class _GriddedDataModule(_BaseDataModule):
    """Radar / satellite frames on a grid: one FrameStore shared by the three splits."""

    def _init_gridded(
        self,
        input_variables: list[str] | None,
        transforms: dict[str, str] | None,
        patch: PatchSettings,
        augment: AugmentSettings,
        cache_frames: int,
    ) -> None:
        self._input_variables = list(input_variables) if input_variables else None
        self.transforms = dict(transforms or {})
        for var, name in self.transforms.items():
            if name not in TRANSFORMS:
                raise NormalizationError(f"transform {name!r} of {var!r} unknown; choose one of {TRANSFORMS}")
        self.patch = patch
        self.augment = augment
        self.cache_frames = cache_frames
        self._index: FrameIndex | None = None
        self._store: FrameStore | None = None

    @property
    def input_variables(self) -> list[str]:
        names = self._input_variables or list(self.manifest.input_variables)
        if not names:
            raise CatalogError(self.data_dir, "no input_variables given nor in the manifest")
        return names

    @property
    def frame_index(self) -> FrameIndex:
        if self._index is None:
            self._index = frame_index(self.manifest)
        return self._index

    @property
    def store(self) -> FrameStore:
        if self._store is None:
            self._store = FrameStore(self.frame_index, cache_frames=self.cache_frames)
        return self._store

    @property
    def grid_spacing_m(self) -> float | None:
        """Grid spacing of the inputs in metres, recorded in checkpoints for the predict stage's check."""
        return self.store.grid_spacing()

    def _times_and_events(self) -> tuple[np.ndarray, np.ndarray | None]:
        times = self.frame_index.times
        return times, events_from_manifest(times, self.manifest)

    def _transform_of(self, variable: str) -> str:
        return self.transforms.get(variable, "none")

    def _input_channels(self) -> list[str]:
        return self.input_variables

    def _target_read(self) -> tuple[list[str], str]:
        """Variables read as normalised targets with their source, for the joint statistics."""
        return [], "targets"

    def _stat_channels(self) -> list[str]:
        extra = [v for v in self._target_read()[0] if v not in self.input_variables]
        return self.input_variables + extra

    def _fit_stats(self) -> NormalizationStats:
        inputs = self.input_variables
        extra, source = self._target_read()
        extra = [v for v in extra if v not in inputs]
        channels = inputs + extra
        acc = StatsAccumulator(channels, [self._transform_of(v) for v in channels])
        for frame in self._train_indices():
            arr = self.store.read(int(frame), inputs, "inputs")
            if extra:
                arr = np.concatenate([arr, self.store.read(int(frame), extra, source)])
            acc.update(arr)
        units = self.store.units(inputs, "inputs") + self.store.units(extra, source)
        return acc.finish(units)

    @property
    def channel_names(self) -> list[str]:
        return list(self.input_variables)

    @property
    def channel_units(self) -> list[str]:
        return self.store.units(self.input_variables, "inputs")


class SegmentationDataModule(_GriddedDataModule):
    """Image(s) -> binary mask at the same time: bow_echo (RATE -> bow_echo_mask), radar_cleaning
    (TH, QIND -> artefact_mask). Rare classes: ``positive_patch_probability`` of the training patches
    hold at least ``min_positive_fraction`` positive pixels."""

    def __init__(
        self,
        data_dir: str,
        *,
        input_variables: list[str] | None = None,
        target_variable: str | None = None,
        patch_size: int | None = 64,
        patches_per_frame: int = 4,
        batch_size: int = 8,
        num_workers: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        max_gap_minutes: float = 60.0,
        boundary_gap_minutes: float = 60.0,
        split_mode: str = "chronological",
        split_block: str = "event",
        transforms: dict[str, str] | None = None,
        min_positive_fraction: float = 0.0,
        positive_patch_probability: float = 0.5,
        positive_threshold: float = 0.5,
        flips: bool = True,
        rot90: bool = True,
        eval_whole_frames: bool = False,
        cache_frames: int = 256,
        stats_max_frames: int | None = None,
        seed: int = 0,
        generate_if_missing: str | None = None,
        normalization_path: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._init_common(
            data_dir=data_dir,
            batch_size=batch_size,
            num_workers=num_workers,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            max_gap_minutes=max_gap_minutes,
            boundary_gap_minutes=boundary_gap_minutes,
            split_mode=split_mode,
            split_block=split_block,
            seed=seed,
            generate_if_missing=generate_if_missing,
            normalization_path=normalization_path,
            stats_max_frames=stats_max_frames,
        )
        patch = PatchSettings(
            patch_size=patch_size,
            patches_per_frame=patches_per_frame,
            min_positive_fraction=min_positive_fraction,
            positive_patch_probability=positive_patch_probability,
            positive_threshold=positive_threshold,
            eval_whole_frames=eval_whole_frames,
        )
        self._init_gridded(input_variables, transforms, patch, AugmentSettings(flips, rot90), cache_frames)
        self._target_variable = target_variable

    @property
    def target_variable(self) -> str:
        return self._target_named(self._target_variable)

    @property
    def target_names(self) -> list[str]:
        return [self.target_variable]

    @property
    def target_units(self) -> list[str]:
        return ["1"]

    def _build_dataset(self, split: str) -> Dataset[Sample]:
        return SegmentationDataset(
            self.store,
            self.split.indices(split),
            self.input_variables,
            [self.target_variable],
            self.normalization,
            train=split == "train",
            patch=self.patch,
            augment=self.augment,
            seed=self.seed,
        )


class RegressionDataModule(_GriddedDataModule):
    """Channels -> a physical field with a validity mask (sat2precip: IR/WV/VIS -> RATE, NaN outside
    radar coverage). The target is normalised too (``target_transform``; e.g. ``transforms:
    {RATE: log1p}``)."""

    def __init__(
        self,
        data_dir: str,
        *,
        input_variables: list[str] | None = None,
        target_variable: str | None = None,
        patch_size: int | None = 64,
        patches_per_frame: int = 4,
        batch_size: int = 8,
        num_workers: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        max_gap_minutes: float = 60.0,
        boundary_gap_minutes: float = 60.0,
        split_mode: str = "chronological",
        split_block: str = "event",
        transforms: dict[str, str] | None = None,
        min_positive_fraction: float = 0.0,
        positive_patch_probability: float = 0.0,
        positive_threshold: float = 0.1,
        flips: bool = False,
        rot90: bool = False,
        eval_whole_frames: bool = False,
        cache_frames: int = 256,
        stats_max_frames: int | None = None,
        seed: int = 0,
        generate_if_missing: str | None = None,
        normalization_path: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._init_common(
            data_dir=data_dir,
            batch_size=batch_size,
            num_workers=num_workers,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            max_gap_minutes=max_gap_minutes,
            boundary_gap_minutes=boundary_gap_minutes,
            split_mode=split_mode,
            split_block=split_block,
            seed=seed,
            generate_if_missing=generate_if_missing,
            normalization_path=normalization_path,
            stats_max_frames=stats_max_frames,
        )
        patch = PatchSettings(
            patch_size=patch_size,
            patches_per_frame=patches_per_frame,
            min_positive_fraction=min_positive_fraction,
            positive_patch_probability=positive_patch_probability,
            positive_threshold=positive_threshold,
            eval_whole_frames=eval_whole_frames,
        )
        self._init_gridded(input_variables, transforms, patch, AugmentSettings(flips, rot90), cache_frames)
        self._target_variable = target_variable

    @property
    def target_variable(self) -> str:
        return self._target_named(self._target_variable)

    def _target_read(self) -> tuple[list[str], str]:
        return [self.target_variable], "targets"

    @property
    def target_transform(self) -> NormalizationStats:
        return self.stats.select([self.target_variable])

    @property
    def target_names(self) -> list[str]:
        return [self.target_variable]

    @property
    def target_units(self) -> list[str]:
        return self.store.units([self.target_variable], "targets")

    def _build_dataset(self, split: str) -> Dataset[Sample]:
        return PixelRegressionDataset(
            self.store,
            self.split.indices(split),
            self.input_variables,
            [self.target_variable],
            self.normalization,
            target_normalization=self.target_transform,
            train=split == "train",
            patch=self.patch,
            augment=self.augment,
            seed=self.seed,
        )


class SequenceDataModule(_GriddedDataModule):
    """N past frames -> M future frames of the same variable(s) (nowcast_precip, _reflectivity,
    _cloudiness). Windows never span a missing frame or a split boundary."""

    def __init__(
        self,
        data_dir: str,
        *,
        variables: list[str] | None = None,
        num_input_frames: int = 4,
        num_output_frames: int = 6,
        patch_size: int | None = 64,
        patches_per_frame: int = 2,
        batch_size: int = 8,
        num_workers: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        max_gap_minutes: float = 60.0,
        boundary_gap_minutes: float = 60.0,
        split_mode: str = "chronological",
        split_block: str = "event",
        transforms: dict[str, str] | None = None,
        min_positive_fraction: float = 0.0,
        positive_patch_probability: float = 0.0,
        positive_threshold: float = 0.1,
        flips: bool = True,
        rot90: bool = True,
        eval_whole_frames: bool = False,
        cache_frames: int = 256,
        stats_max_frames: int | None = None,
        seed: int = 0,
        generate_if_missing: str | None = None,
        normalization_path: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if num_input_frames < 1 or num_output_frames < 1:
            raise SamplingError(f"need >= 1 input and output frame, not {num_input_frames}, {num_output_frames}")
        self._init_common(
            data_dir=data_dir,
            batch_size=batch_size,
            num_workers=num_workers,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            max_gap_minutes=max_gap_minutes,
            boundary_gap_minutes=boundary_gap_minutes,
            split_mode=split_mode,
            split_block=split_block,
            seed=seed,
            generate_if_missing=generate_if_missing,
            normalization_path=normalization_path,
            stats_max_frames=stats_max_frames,
        )
        patch = PatchSettings(
            patch_size=patch_size,
            patches_per_frame=patches_per_frame,
            min_positive_fraction=min_positive_fraction,
            positive_patch_probability=positive_patch_probability,
            positive_threshold=positive_threshold,
            eval_whole_frames=eval_whole_frames,
        )
        self._init_gridded(variables, transforms, patch, AugmentSettings(flips, rot90), cache_frames)
        self.num_input_frames = num_input_frames
        self.num_output_frames = num_output_frames

    @property
    def time_step_minutes(self) -> float:
        step = self.frame_index.time_step
        if step is None:
            raise SamplingError(f"{self.data_dir}: no time step (fewer than two frames)")
        return float(step / np.timedelta64(1, "m"))

    @property
    def channel_names(self) -> list[str]:
        offsets = range(-(self.num_input_frames - 1), 1)
        return lead_names(self.input_variables, offsets, self.time_step_minutes)

    @property
    def channel_units(self) -> list[str]:
        return self.store.units(self.input_variables, "inputs") * self.num_input_frames

    @property
    def target_transform(self) -> NormalizationStats:
        return self.normalization

    @property
    def target_names(self) -> list[str]:
        return lead_names(self.input_variables, range(1, self.num_output_frames + 1), self.time_step_minutes)

    @property
    def target_units(self) -> list[str]:
        return self.store.units(self.input_variables, "inputs") * self.num_output_frames

    def _build_dataset(self, split: str) -> Dataset[Sample]:
        return SequenceDataset(
            self.store,
            self.split.indices(split),
            self.input_variables,
            self.num_input_frames,
            self.num_output_frames,
            normalization=self.normalization,
            time_step=self.frame_index.time_step,
            train=split == "train",
            patch=self.patch,
            augment=self.augment,
            seed=self.seed,
        )


class ClassificationDataModule(_BaseDataModule):
    """Webcam image -> class: ``label="snow_class"`` (none/partial/full) or ``"visibility"``
    (visibility_m binned at 200, 1000 and 5000 m). Only horizontal flips augment: a webcam scene
    has a sky above."""

    def __init__(
        self,
        data_dir: str,
        *,
        label: str = "snow_class",
        image_size: int = 128,
        batch_size: int = 16,
        num_workers: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        max_gap_minutes: float = 60.0,
        boundary_gap_minutes: float = 60.0,
        split_mode: str = "chronological",
        split_block: str = "event",
        flips: bool = True,
        cache_images: int = 1024,
        stats_max_frames: int | None = None,
        seed: int = 0,
        generate_if_missing: str | None = None,
        normalization_path: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if label not in CLASSIFICATION_LABELS:
            raise SamplingError(f"unknown label {label!r}; choose one of {CLASSIFICATION_LABELS}")
        self._init_common(
            data_dir=data_dir,
            batch_size=batch_size,
            num_workers=num_workers,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            max_gap_minutes=max_gap_minutes,
            boundary_gap_minutes=boundary_gap_minutes,
            split_mode=split_mode,
            split_block=split_block,
            seed=seed,
            generate_if_missing=generate_if_missing,
            normalization_path=normalization_path,
            stats_max_frames=stats_max_frames,
        )
        self.label = label
        self.image_size = image_size
        self.flips = flips
        self.cache_images = cache_images
        self._records: ImageRecords | None = None
        self._images: ImageStore | None = None

    @property
    def records(self) -> ImageRecords:
        if self._records is None:
            csv = self.manifest.labels_csv or "labels.csv"
            self._records = image_records(self.data_dir / csv)
        return self._records

    @property
    def images(self) -> ImageStore:
        """Resized images shared by the statistics and the three splits (read once per process)."""
        if self._images is None:
            self._images = ImageStore(self.records, self.image_size, self.cache_images)
        return self._images

    @property
    def class_names(self) -> list[str]:
        given = self.manifest.class_names
        if self.label == "snow_class":
            return list(given) if given else list(SNOW_CLASS_NAMES)
        if given and len(given) == len(VISIBILITY_CLASS_NAMES):
            return list(given)
        return list(VISIBILITY_CLASS_NAMES)

    @property
    def labels(self) -> np.ndarray:
        """Class index of every record (-1: no usable label)."""
        if self.label == "snow_class":
            return class_indices(self.records.snow_class, self.class_names)
        return visibility_classes(self.records.visibility_m, VISIBILITY_BINS_M)

    def _times_and_events(self) -> tuple[np.ndarray, np.ndarray | None]:
        times = self.records.times
        return times, events_from_manifest(times, self.manifest)

    def _input_channels(self) -> list[str]:
        return ["red", "green", "blue"]

    def _stat_channels(self) -> list[str]:
        return self._input_channels()

    def _fit_stats(self) -> NormalizationStats:
        acc = StatsAccumulator(self._input_channels(), ["none"] * 3)
        labels = self.labels
        for rec in self._train_indices():
            if labels[rec] >= 0:
                acc.update(self.images.image(int(rec)).astype(np.float32))
        return acc.finish(["1", "1", "1"])

    @property
    def channel_names(self) -> list[str]:
        return self._input_channels()

    @property
    def channel_units(self) -> list[str]:
        return ["1", "1", "1"]

    @property
    def target_names(self) -> list[str]:
        return [self.label]

    @property
    def target_units(self) -> list[str]:
        return ["1"]

    def _build_dataset(self, split: str) -> Dataset[Sample]:
        return ClassificationDataset(
            self.images,
            self.split.indices(split),
            self.labels,
            self.normalization,
            train=split == "train",
            flips=self.flips,
            seed=self.seed,
        )


#: Data module class and default arguments of each application (variables come from the manifest).
APP_DATAMODULES: dict[str, tuple[type[_BaseDataModule], dict[str, Any]]] = {
    "bow_echo": (
        SegmentationDataModule,
        {"transforms": {"RATE": "log1p"}, "min_positive_fraction": 0.005, "positive_patch_probability": 0.5},
    ),
    "radar_cleaning": (
        SegmentationDataModule,
        {
            "transforms": {"TH": "clip_dbz"},
            "target_variable": "artefact_mask",
            "positive_patch_probability": 0.5,
        },
    ),
    "nowcast_precip": (SequenceDataModule, {"transforms": {"RATE": "log10_rain"}}),
    "nowcast_reflectivity": (SequenceDataModule, {"transforms": {"DBZH": "clip_dbz"}}),
    "nowcast_cloudiness": (SequenceDataModule, {"flips": False, "rot90": False}),
    "sat2precip": (
        RegressionDataModule,
        {"transforms": {"RATE": "log1p"}, "positive_patch_probability": 0.5, "positive_threshold": 0.1},
    ),
    "webcam_snow": (ClassificationDataModule, {"label": "snow_class"}),
    "webcam_visibility": (ClassificationDataModule, {"label": "visibility"}),
}


def datamodule_for_app(app: str, data_dir: str, **overrides: Any) -> _BaseDataModule:
    """The data module of ``app`` on ``data_dir`` with the app's defaults, updated by ``overrides``."""
    if app not in APP_DATAMODULES:
        raise CatalogError(data_dir, f"unknown application {app!r}; known: {sorted(APP_DATAMODULES)}")
    cls, defaults = APP_DATAMODULES[app]
    return cls(data_dir=data_dir, **{**defaults, **overrides})


def datamodule_from_config(config: dict[str, Any], data_dir: str | None = None) -> _BaseDataModule:
    """Build from a LightningCLI-style ``{"class_path": ..., "init_args": {...}}`` mapping."""
    class_path = str(config.get("class_path", ""))
    name = class_path.rsplit(".", 1)[-1]
    classes: dict[str, type[_BaseDataModule]] = {
        c.__name__: c
        for c in (SegmentationDataModule, RegressionDataModule, SequenceDataModule, ClassificationDataModule)
    }
    if name not in classes:
        raise CatalogError(data_dir or ".", f"unknown data module {class_path!r}; known: {sorted(classes)}")
    args = dict(config.get("init_args") or {})
    if data_dir is not None:
        args["data_dir"] = data_dir
    return classes[name](**args)


__all__: Sequence[str] = [
    "APP_DATAMODULES",
    "ClassificationDataModule",
    "RegressionDataModule",
    "SegmentationDataModule",
    "SequenceDataModule",
    "datamodule_for_app",
    "datamodule_from_config",
]
