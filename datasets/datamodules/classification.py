"""The DataModule of webcam images and their labels (snow cover class or binned visibility).

Class names and visibility bins come from the application table
(:mod:`meteovision.core.applications`); the labels from the one labels reader.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Unpack

import numpy as np
from torch.utils.data import Dataset

from meteovision.core.applications import Application, get_application
from meteovision.datasets.catalog import ImageRecords, events_from_manifest, image_records
from meteovision.datasets.datamodules.base import _BaseDataModule
from meteovision.datasets.datamodules.settings import (
    FLAT_KEYS,
    AugmentSettings,
    ClassificationFlatKeys,
    LoaderSettings,
    SplitSettings,
    grouped_settings,
)
from meteovision.datasets.normalization import NormalizationStats, StatsAccumulator
from meteovision.datasets.torch_datasets import (
    ClassificationDataset,
    ImageStore,
    Sample,
    SamplingError,
    class_indices,
    visibility_classes,
)

#: ``label`` of the config -> the application whose classes it names.
LABEL_APPLICATIONS: dict[str, Application] = {
    "snow_class": get_application("webcam_snow"),
    "visibility": get_application("webcam_visibility"),
}
DEFAULT_SPLIT = SplitSettings()
CLASSIFICATION_LOADER = LoaderSettings(batch_size=16)
HORIZONTAL_FLIPS = AugmentSettings(flips=True, rot90=False)


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
        split: SplitSettings = DEFAULT_SPLIT,
        loader: LoaderSettings = CLASSIFICATION_LOADER,
        augment: AugmentSettings = HORIZONTAL_FLIPS,
        cache_images: int = 1024,
        stats_max_frames: int | None = None,
        seed: int = 0,
        generate_if_missing: str | None = None,
        normalization_path: str | None = None,
        # deprecated flat keys, read for one more release (DeprecationWarning): write them in their group
        **flat: Unpack[ClassificationFlatKeys],
    ) -> None:
        """``augment.rot90`` is refused: a webcam scene has a sky above."""
        super().__init__()
        self.save_hyperparameters(ignore=list(FLAT_KEYS))
        if label not in LABEL_APPLICATIONS:
            raise SamplingError(f"unknown label {label!r}; choose one of {tuple(LABEL_APPLICATIONS)}")
        owner = type(self).__name__
        split = grouped_settings("split", split, flat, owner)
        loader = grouped_settings("loader", loader, flat, owner)
        augment = grouped_settings("augment", augment, flat, owner)
        if augment.rot90:
            raise SamplingError(f"{owner}: augment.rot90 would turn the sky sideways; only flips are allowed")
        self._init_common(
            data_dir=data_dir,
            split=split,
            loader=loader,
            seed=seed,
            generate_if_missing=generate_if_missing,
            normalization_path=normalization_path,
            stats_max_frames=stats_max_frames,
        )
        self.hparams.update({"split": asdict(split), "loader": asdict(loader), "augment": asdict(augment)})
        self.application = LABEL_APPLICATIONS[label]
        self.label = label
        self.image_size = image_size
        self.augment = augment
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
        """The manifest's class names when it gives as many as the application table, else the table's."""
        given = self.manifest.class_names
        classes = self.application.classes
        return list(given) if given and len(given) == len(classes) else list(classes)

    @property
    def labels(self) -> np.ndarray:
        """Class index of every record (-1: no usable label)."""
        if self.application.bins_m:
            return visibility_classes(self.records.visibility_m, self.application.bins_m)
        return class_indices(self.records.snow_class, self.class_names)

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
            flips=self.augment.flips,
            seed=self.seed,
        )
