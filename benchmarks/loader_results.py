"""Settings, cases, results and the printed report of ``benchmarks/loaders.py`` (split out to keep it short)."""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench_common import SHARED_DATA, BenchmarkError, check_counts
from bench_common import machine_info as common_machine_info
from torch.utils.data import DataLoader

from meteovision.datasets.torch_datasets import Sample

OPERA_SUBDIR = Path("radar") / "opera_20180824"
OPERA_CASE = "opera_sequence"
SYNTHETIC_APPS: tuple[str, ...] = ("nowcast_precip", "bow_echo")
CASES: tuple[str, ...] = (OPERA_CASE, *SYNTHETIC_APPS)
REGIMES: tuple[str, ...] = ("cold", "first_epoch", "warm")
#: Regimes that get a PASS/FAIL line (the first epoch lies between them).
VERDICT_REGIMES: tuple[str, ...] = ("cold", "warm")
#: The OPERA sequence: 3 past 15-min frames -> 3 future ones (24 frames give 19 windows).
OPERA_INPUT_FRAMES = 3
OPERA_OUTPUT_FRAMES = 3
OPERA_PATCHES_PER_WINDOW = 4
OPERA_STATS_FRAMES = 6
#: Frame cache of the first-epoch and warm regimes (the DataModules' default; holds every frame here).
LARGE_CACHE_FRAMES = 256



@dataclass(frozen=True)
class BenchSettings:
    """What to measure; ``quick`` values come from :func:`settings_from_args`."""

    batch_size: int = 8
    patch_size: int = 256
    batches: int = 6
    workers: tuple[int, ...] = (0, 2)
    step_warmup: int = 2
    step_repeats: int = 5
    threads: int = 2
    cases: tuple[str, ...] = CASES
    shared_data: Path = SHARED_DATA
    opera_frames: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_counts(self, ("batch_size", "patch_size", "batches", "step_repeats", "threads"), ("step_warmup",))
        if not self.workers or min(self.workers) < 0:
            raise BenchmarkError(f"worker counts must be >= 0, got {self.workers}")
        unknown = [c for c in self.cases if c not in CASES]
        if unknown or not self.cases:
            raise BenchmarkError(f"unknown case(s) {unknown or self.cases}; choose among {', '.join(CASES)}")
        if self.opera_frames is not None and self.opera_frames < OPERA_INPUT_FRAMES + OPERA_OUTPUT_FRAMES:
            raise BenchmarkError(
                f"opera_frames must be >= {OPERA_INPUT_FRAMES + OPERA_OUTPUT_FRAMES}, got {self.opera_frames}"
            )


#: (num_workers, cache_frames) -> a training DataLoader whose frame caches are empty.
LoaderFactory = Callable[[int, int], DataLoader[Sample]]


@dataclass(frozen=True)
class LoaderCase:
    """One data source: how to make its training loader and the loss of the step it feeds."""

    name: str
    description: str
    data_dir: Path
    patch_size: int
    make_loader: LoaderFactory
    cold_cache_frames: int
    loss: str


@dataclass(frozen=True)
class Throughput:
    """Samples and batches delivered in ``seconds`` (from ``iter(loader)`` to the last batch)."""

    samples: int
    batches: int
    seconds: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else math.inf

    def seconds_per_batch(self, batch_size: int) -> float:
        """Time the loader needs for one full batch of ``batch_size`` samples."""
        return batch_size / self.samples_per_s


@dataclass
class CaseResult:
    """Everything measured for one case (JSON-ready through :meth:`to_dict`)."""

    name: str
    description: str
    status: str = "ok"
    reason: str | None = None
    data_dir: str | None = None
    patch_size: int | None = None
    input_shape: list[int] | None = None
    target_shape: list[int] | None = None
    samples_per_epoch: int | None = None
    step: dict[str, Any] = field(default_factory=dict)
    loaders: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def machine_info(
    settings: BenchSettings, load_start: Sequence[float], load_end: Sequence[float]
) -> dict[str, Any]:
    return {**common_machine_info(settings.threads, load_start, load_end),
            "start_method": multiprocessing.get_start_method(allow_none=False)}


def format_table(results: Sequence[CaseResult], batch_size: int) -> str:
    """Fixed-width table: throughput per regime, loader time per batch, step time and ratios."""
    head = (
        f"{'case':<16}{'workers':>8}{'patch':>7}{'C->K':>7}{'cold':>9}{'1st ep':>9}{'warm':>9}"
        f"{'cold':>9}{'warm':>9}{'step':>9}{'ratio':>8}{'ratio':>8}"
    )
    units = (
        f"{'':<16}{'':>8}{'':>7}{'':>7}{'samp/s':>9}{'samp/s':>9}{'samp/s':>9}"
        f"{'s/batch':>9}{'s/batch':>9}{'s':>9}{'cold':>8}{'warm':>8}"
    )
    lines = [f"batch size {batch_size}", head, units, "-" * len(head)]
    for res in results:
        if res.status != "ok":
            lines.append(f"{res.name:<16}  skipped: {res.reason}")
            continue
        assert res.input_shape is not None and res.target_shape is not None
        ck = f"{res.input_shape[1]}->{res.target_shape[1]}"
        for entry in res.loaders:
            c, f, w = entry["cold"], entry["first_epoch"], entry["warm"]
            lines.append(
                f"{res.name:<16}{entry['num_workers']:>8}{res.patch_size:>7}{ck:>7}"
                f"{c['samples_per_s']:>9.1f}{f['samples_per_s']:>9.1f}{w['samples_per_s']:>9.1f}"
                f"{c['seconds_per_batch']:>9.3f}{w['seconds_per_batch']:>9.3f}{res.step['median_s']:>9.3f}"
                f"{c['ratio_to_step']:>8.3f}{w['ratio_to_step']:>8.3f}"
            )
    return "\n".join(lines)


def verdict_lines(results: Sequence[CaseResult]) -> list[str]:
    """One PASS/FAIL line per case, worker setting and regime: loader time per batch < step time."""
    lines = []
    for res in results:
        for entry in res.loaders:
            for regime in VERDICT_REGIMES:
                r = entry[regime]
                word = "PASS" if r["pass"] else "FAIL"
                lines.append(
                    f"{word} {res.name} num_workers={entry['num_workers']} {regime}: loader "
                    f"{r['seconds_per_batch']:.3f} s/batch vs step {res.step['median_s']:.3f} s "
                    f"(ratio {r['ratio_to_step']:.3f} {'<' if r['pass'] else '>='} 1)"
                )
    return lines
