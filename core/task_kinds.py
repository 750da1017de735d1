"""The four kinds of learning problem, one enum that every stage compares against instead of strings.

A ``StrEnum``, so a kind round-trips through YAML, JSON and checkpoint metadata as its plain value.
"""

from __future__ import annotations

from enum import StrEnum


class TaskKind(StrEnum):
    """What a network's output means, which decides its loss, metrics, products and predict engine."""

    SEGMENTATION = "segmentation"  # per-pixel classes (bow-echo mask, artefact mask)
    NOWCAST = "nowcast"  # future frames of the input quantity, one per lead time
    REGRESSION = "regression"  # a per-pixel physical field (rain rate from satellite channels)
    CLASSIFICATION = "classification"  # one class per image (webcam snow cover, visibility)

    @property
    def is_gridded(self) -> bool:
        """True when the output is a map on the input's grid (written as CF NetCDF)."""
        return self is not TaskKind.CLASSIFICATION
