"""What the benchmark scripts share: where the real data are, their error, a timed measurement.

The scripts run as ``python benchmarks/<name>.py``, which puts this folder first on ``sys.path``;
the smoke tests import them the same way (``tests.conftest.load_benchmark_script``).
"""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from meteovision.datasets.errors import MeteovisionError

#: ``../shared/data`` beside the checkout (real operational files, never copied into the repository).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


class BenchmarkError(MeteovisionError):
    """Settings or data the benchmark cannot run with."""


@dataclass(frozen=True)
class Timing:
    """Timed repeats (seconds) of one measurement, after untimed warm-up runs."""

    name: str
    description: str
    times_s: tuple[float, ...]

    @property
    def median_s(self) -> float:
        return float(statistics.median(self.times_s))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "median_s": self.median_s,
                "min_s": min(self.times_s), "times_s": list(self.times_s)}


def check_counts(settings: object, at_least_one: Sequence[str], at_least_zero: Sequence[str] = ()) -> None:
    """Refuse a settings record whose named counts are below 1 (or below 0): one message for every script."""
    for name in at_least_one:
        if getattr(settings, name) < 1:
            raise BenchmarkError(f"{name} must be >= 1, got {getattr(settings, name)}")
    for name in at_least_zero:
        if getattr(settings, name) < 0:
            raise BenchmarkError(f"{name} must be >= 0, got {getattr(settings, name)}")


def machine_info(threads: int, load_start: Sequence[float], load_end: Sequence[float]) -> dict[str, Any]:
    """The machine's figures every script records beside its timings (a script adds its own keys)."""
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "load_average_start": list(load_start),
        "load_average_end": list(load_end),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
