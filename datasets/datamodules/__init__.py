"""LightningDataModules built from YAML (``configs/<app>.yaml``, LightningCLI ``data:`` section).

One module per family (``gridded``: segmentation, regression, sequence; ``classification``:
webcam images), their shared machinery in ``base``, their grouped settings in ``settings``, and
construction by application name in ``factory``. Configs name the classes by this package
(``meteovision.datasets.datamodules.SegmentationDataModule``).
"""

from meteovision.datasets.datamodules.base import _BaseDataModule
from meteovision.datasets.datamodules.classification import ClassificationDataModule
from meteovision.datasets.datamodules.factory import APP_DATAMODULES, datamodule_for_app, datamodule_from_config
from meteovision.datasets.datamodules.gridded import RegressionDataModule, SegmentationDataModule, SequenceDataModule
from meteovision.datasets.datamodules.settings import AugmentSettings, LoaderSettings, PatchSettings, SplitSettings

__all__ = [
    "APP_DATAMODULES",
    "AugmentSettings",
    "ClassificationDataModule",
    "LoaderSettings",
    "PatchSettings",
    "RegressionDataModule",
    "SegmentationDataModule",
    "SequenceDataModule",
    "SplitSettings",
    "_BaseDataModule",
    "datamodule_for_app",
    "datamodule_from_config",
]
