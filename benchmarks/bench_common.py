"""What the benchmark scripts share: where the real data are, their error, a timed measurement.

The scripts run as ``python benchmarks/<name>.py``, which puts this folder first on ``sys.path``;
the smoke tests import them the same way (``tests.conftest.load_benchmark_script``).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
