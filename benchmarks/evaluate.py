"""What ``meteovision evaluate`` costs beyond the nowcast methods themselves, and what a second worker buys.

    .venv/bin/python benchmarks/evaluate.py                         # OPERA 2018-08-24, persistence, LK, S-PROG
    .venv/bin/python benchmarks/evaluate.py --config evaluate_fmi --max-lead-minutes 30 --json bench.json

Measured in one run, on the real series of a packaged evaluate config (read once, not timed):

* the harness's share: wall time of one worker minus the methods' own time (their
  ``forecast`` calls plus the Lucas-Kanade motion, computed once per analysis time and shared
  by LK, S-PROG and the mask), as a fraction of the methods' time; what is left is the mask,
  the scoring (the kernel's box sums) and the bookkeeping. Target <= 0.20. Measured twice: with
  torch pinned to one thread (core for core, as each worker of a pool runs) and with torch's
  default threads (as ``meteovision evaluate`` runs with one worker).
  pysteps and OpenCV are imported before the timing (once per process, not per analysis time).
* the wall time of 2 workers over that of 1 on the same analysis times (target <= 0.6), beside the
  best a pool can do when the busiest worker scores ceil(times / workers) of them (3 of 5 times:
  0.6), and a check that both give the same scores: once starting the pool (the fork server imports the
  evaluation, torch and pysteps once, then forks the workers; counted) and once more with the pool
  kept, as a second ``--config`` of one command finds it.

The figures depend on the machine's load: the script prints the CPU count and load average
beside them. Without the data (``../shared/data`` beside the checkout, or ``--data-root``)
it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_common import SHARED_DATA

from meteovision.pipeline.verification.evaluate import EvaluationResult, build_methods, run_evaluation
from meteovision.pipeline.verification.evaluate_config import load_config
from meteovision.pipeline.verification.radar_series import load_series

log = logging.getLogger("meteovision.benchmarks.evaluate")

SUMS = ("hits", "forecast_events", "observed_events", "n_pixels", "sum_abs_error", "fss_num", "fss_den")


def _same_scores(a: EvaluationResult, b: EvaluationResult) -> bool:
    return all(np.array_equal(getattr(a.accumulators[m], s), getattr(b.accumulators[m], s))
               for m in a.methods for s in SUMS)


def measure(config: str, data_root: Path, max_lead_minutes: float | None, workers: int,
            default_threads: int) -> dict[str, Any]:
    """Time one evaluation with 1 worker (torch on one thread, then on ``default_threads``) and one with
    ``workers``; the figures as a dict."""
    import torch

    cfg = load_config(config, data_root=data_root, max_lead_minutes=max_lead_minutes, maps="none")
    start = time.perf_counter()
    series = load_series(cfg)
    read_s = time.perf_counter() - start
    build_methods(cfg, [m for m in cfg.methods if m != "network"], None)  # imports pysteps/OpenCV once, untimed
    start = time.perf_counter()
    one = run_evaluation(cfg, series=series, workers=1)
    one_s = time.perf_counter() - start
    torch.set_num_threads(default_threads)
    start = time.perf_counter()
    threaded = run_evaluation(cfg, series=series, workers=1)
    threaded_s = time.perf_counter() - start
    torch.set_num_threads(1)
    threaded_methods_s = sum(threaded.seconds.values()) + threaded.motion_seconds
    start = time.perf_counter()
    many = run_evaluation(cfg, series=series, workers=workers)
    many_s = time.perf_counter() - start
    start = time.perf_counter()  # the pool (fork server, workers, their imports) is kept: what a further config pays
    again = run_evaluation(cfg, series=series, workers=workers)
    again_s = time.perf_counter() - start
    methods_s = sum(one.seconds.values()) + one.motion_seconds
    harness_s = one_s - methods_s
    return {
        "config": cfg.name, "analysis_times": len(one.analysis_times), "leads": one.n_leads,
        "grid": list(series.rates.shape[1:]), "methods": one.methods, "read_s": read_s,
        "method_seconds": one.seconds, "motion_s": one.motion_seconds, "wall_1_worker_s": one_s,
        "harness_s": harness_s, "harness_share": harness_s / methods_s, "default_threads": default_threads,
        "harness_share_default_threads": (threaded_s - threaded_methods_s) / threaded_methods_s,
        f"wall_{workers}_workers_s": many_s,
        "parallel_ratio": many_s / one_s, f"wall_{workers}_workers_pool_started_s": again_s,
        "parallel_ratio_pool_started": again_s / one_s, "workers": workers,
        "parallel_ratio_bound": math.ceil(len(one.analysis_times) / workers) / max(1, len(one.analysis_times)),
        "same_scores": _same_scores(one, many) and _same_scores(one, again) and _same_scores(one, threaded),
        "cpus": os.cpu_count(), "load_average": list(os.getloadavg()),
    }


def report(m: dict[str, Any]) -> str:
    w = m["workers"]
    return "\n".join([
        f"{m['config']}: {m['analysis_times']} analysis time(s), {m['leads']} leads, grid {m['grid']}, "
        f"methods {m['methods']} (read {m['read_s']:.1f} s, not counted)",
        "methods' own time: " + ", ".join(f"{k} {v:.1f} s" for k, v in m["method_seconds"].items())
        + f", shared LK motion {m['motion_s']:.1f} s",
        f"1 worker: {m['wall_1_worker_s']:.1f} s wall; harness (mask, scoring, bookkeeping) {m['harness_s']:.1f} s "
        f"= {100 * m['harness_share']:.0f} % of the methods' time (target <= 20 %), torch on 1 thread; "
        f"{100 * m['harness_share_default_threads']:.0f} % with torch's default {m['default_threads']} threads "
        "(as meteovision evaluate runs)",
        f"{w} workers: {m[f'wall_{w}_workers_s']:.1f} s wall = {m['parallel_ratio']:.2f} x one worker, starting the "
        f"pool (target <= 0.6); again, pool started: {m[f'wall_{w}_workers_pool_started_s']:.1f} s = "
        f"{m['parallel_ratio_pool_started']:.2f} x; same scores: {m['same_scores']}; "
        f"the best {w} workers can do on {m['analysis_times']} analysis times: {m['parallel_ratio_bound']:.2f} x "
        "(the busiest worker scores ceil(times / workers) of them)",
        f"machine: {m['cpus']} CPUs, load average {', '.join(f'{x:.1f}' for x in m['load_average'])} "
        "(other work on the machine slows both runs)",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", default="evaluate_opera", help="packaged evaluate config or a path")
    parser.add_argument("--data-root", type=Path, default=SHARED_DATA, help="folder of the real data")
    parser.add_argument("--max-lead-minutes", type=float, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if not (args.data_root / "radar").is_dir():
        log.warning("no real radar data under %s: nothing to measure", args.data_root)
        return 0
    import torch

    default_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    figures = measure(args.config, args.data_root, args.max_lead_minutes, args.workers, default_threads)
    sys.stdout.write(report(figures) + "\n")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
