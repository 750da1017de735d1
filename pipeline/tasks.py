"""Deprecated location of the Lightning tasks, kept one release so old configs' ``class_path`` still load.

Use ``meteovision.pipeline.training.tasks`` instead.
"""

from __future__ import annotations

import warnings

from meteovision.pipeline.training.tasks import (
    ClassificationTask,
    MeteoTask,
    NowcastTask,
    RegressionTask,
    SegmentationTask,
)

__all__ = ["ClassificationTask", "MeteoTask", "NowcastTask", "RegressionTask", "SegmentationTask"]

warnings.warn(
    "meteovision.pipeline.tasks is deprecated and goes in the next release; "
    "write class_path: meteovision.pipeline.training.tasks.<Task> in configs",
    DeprecationWarning,
    stacklevel=2,
)
