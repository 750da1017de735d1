"""The DataModules of gridded radar and satellite frames: segmentation, regression and sequence (nowcast).

Each takes its settings in groups (:mod:`meteovision.datasets.datamodules.settings`); the
defaults below are each family's, and a config's group replaces only the fields it names.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Unpack

import numpy as np
from torch.utils.data import Dataset

from meteovision.datasets.catalog import CatalogError, FrameIndex, events_from_manifest, frame_index
from meteovision.datasets.datamodules.base import _BaseDataModule
from meteovision.datasets.datamodules.settings import (
    FLAT_KEYS,
    AugmentSettings,
    GriddedFlatKeys,
    LoaderSettings,
    PatchSettings,
    SplitSettings,
    grouped_settings,
)
from meteovision.datasets.normalization import TRANSFORMS, NormalizationError, NormalizationStats, StatsAccumulator
from meteovision.datasets.torch_datasets import (
    FrameStore,
    PixelRegressionDataset,
    Sample,
    SamplingError,
    SegmentationDataset,
    SequenceDataset,
    lead_names,
)

DEFAULT_SPLIT = SplitSettings()
DEFAULT_LOADER = LoaderSettings()
AUGMENT_ALL = AugmentSettings(flips=True, rot90=True)
NO_AUGMENT = AugmentSettings()
SEGMENTATION_PATCHES = PatchSettings(patches_per_frame=4, positive_patch_probability=0.5, positive_threshold=0.5)
REGRESSION_PATCHES = PatchSettings(patches_per_frame=4, positive_threshold=0.1)
SEQUENCE_PATCHES = PatchSettings(patches_per_frame=2, positive_threshold=0.1)


class _GriddedDataModule(_BaseDataModule):
    """Radar / satellite frames on a grid: one FrameStore shared by the three splits."""

    def _init_gridded(
        self,
        *,
        data_dir: str,
        input_variables: list[str] | None,
        transforms: dict[str, str] | None,
        groups: tuple[SplitSettings, LoaderSettings, PatchSettings, AugmentSettings],
        flat: dict[str, Any],
        cache_frames: int,
        stats_max_frames: int | None,
        seed: int,
        generate_if_missing: str | None,
        normalization_path: str | None,
    ) -> None:
        """The settings every gridded module shares; ``flat`` holds the deprecated flat keys (None: absent)."""
        owner = type(self).__name__
        split, loader, patches, augment = groups
        split = grouped_settings("split", split, flat, owner)
        loader = grouped_settings("loader", loader, flat, owner)
        patch = grouped_settings("patches", patches, flat, owner)
        augment = grouped_settings("augment", augment, flat, owner)
        self._init_common(
            data_dir=data_dir,
            split=split,
            loader=loader,
            seed=seed,
            generate_if_missing=generate_if_missing,
            normalization_path=normalization_path,
            stats_max_frames=stats_max_frames,
        )
        # plain mappings, not dataclasses: checkpoints must load with torch.load(weights_only=True)
        self.hparams.update(
            {"split": asdict(split), "loader": asdict(loader), "patches": asdict(patch), "augment": asdict(augment)}
        )
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
        split: SplitSettings = DEFAULT_SPLIT,
        loader: LoaderSettings = DEFAULT_LOADER,
        patches: PatchSettings = SEGMENTATION_PATCHES,
        augment: AugmentSettings = AUGMENT_ALL,
        transforms: dict[str, str] | None = None,
        cache_frames: int = 256,
        stats_max_frames: int | None = None,
        seed: int = 0,
        generate_if_missing: str | None = None,
        normalization_path: str | None = None,
        # deprecated flat keys, read for one more release (DeprecationWarning): write them in their group
        **flat: Unpack[GriddedFlatKeys],
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=list(FLAT_KEYS))
        self._init_gridded(
            data_dir=data_dir,
            input_variables=input_variables,
            transforms=transforms,
            groups=(split, loader, patches, augment),
            flat=dict(flat),
            cache_frames=cache_frames,
            stats_max_frames=stats_max_frames,
            seed=seed,
            generate_if_missing=generate_if_missing,
            normalization_path=normalization_path,
        )
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
        split: SplitSettings = DEFAULT_SPLIT,
        loader: LoaderSettings = DEFAULT_LOADER,
        patches: PatchSettings = REGRESSION_PATCHES,
        augment: AugmentSettings = NO_AUGMENT,
        transforms: dict[str, str] | None = None,
        cache_frames: int = 256,
        stats_max_frames: int | None = None,
        seed: int = 0,
        generate_if_missing: str | None = None,
        normalization_path: str | None = None,
        # deprecated flat keys, read for one more release (DeprecationWarning): write them in their group
        **flat: Unpack[GriddedFlatKeys],
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=list(FLAT_KEYS))
        self._init_gridded(
            data_dir=data_dir,
            input_variables=input_variables,
            transforms=transforms,
            groups=(split, loader, patches, augment),
            flat=dict(flat),
            cache_frames=cache_frames,
            stats_max_frames=stats_max_frames,
            seed=seed,
            generate_if_missing=generate_if_missing,
            normalization_path=normalization_path,
        )
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
        split: SplitSettings = DEFAULT_SPLIT,
        loader: LoaderSettings = DEFAULT_LOADER,
        patches: PatchSettings = SEQUENCE_PATCHES,
        augment: AugmentSettings = AUGMENT_ALL,
        transforms: dict[str, str] | None = None,
        cache_frames: int = 256,
        stats_max_frames: int | None = None,
        seed: int = 0,
        generate_if_missing: str | None = None,
        normalization_path: str | None = None,
        # deprecated flat keys, read for one more release (DeprecationWarning): write them in their group
        **flat: Unpack[GriddedFlatKeys],
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=list(FLAT_KEYS))
        if num_input_frames < 1 or num_output_frames < 1:
            raise SamplingError(f"need >= 1 input and output frame, not {num_input_frames}, {num_output_frames}")
        self._init_gridded(
            data_dir=data_dir,
            input_variables=variables,
            transforms=transforms,
            groups=(split, loader, patches, augment),
            flat=dict(flat),
            cache_frames=cache_frames,
            stats_max_frames=stats_max_frames,
            seed=seed,
            generate_if_missing=generate_if_missing,
            normalization_path=normalization_path,
        )
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
