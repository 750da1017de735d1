"""Train each application from its packaged config and print the test scores beside the baseline.

    .venv/bin/python benchmarks/skill.py --out skill_runs            # all eight applications
    .venv/bin/python benchmarks/skill.py --apps bow_echo,sat2precip   # a subset

Each application is fitted with ``meteovision fit --config <app>`` (the config's own epochs
unless ``--epochs`` is given) and scored with ``meteovision test`` on its held-out test split
(the latest events of the synthetic data, never seen in training). The Markdown table it
prints is the one in the README.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

from meteovision.core.applications import iter_applications

log = logging.getLogger("meteovision.benchmarks.skill")

#: Headline scores per application: (metric key, label, higher is better), from the application table.
HEADLINES: dict[str, list[tuple[str, str, bool]]] = {
    app.name: [(m.key, m.label, m.higher_is_better) for m in app.metrics] for app in iter_applications()
}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "meteovision.pipeline.cli", *args]


def run_app(app: str, out: Path, epochs: int | None) -> dict[str, object]:
    """Fit and test one application in ``out`` (its working folder); return the test report."""
    extra = ["--trainer.enable_progress_bar", "false"]
    if epochs:
        extra += ["--trainer.max_epochs", str(epochs)]
    started = time.perf_counter()
    subprocess.run(_cli("fit", "--config", app, *extra), cwd=out, check=True, capture_output=True)
    fit_seconds = time.perf_counter() - started
    ckpt = out / "runs" / app / "checkpoints" / "last.ckpt"
    subprocess.run(_cli("test", "--config", app, "--ckpt_path", str(ckpt), "--trainer.enable_progress_bar", "false"),
                   cwd=out, check=True, capture_output=True)
    reports = sorted((out / "runs" / app / "logs").glob("version_*/test_metrics.json"), key=lambda p: p.stat().st_mtime)
    report: dict[str, object] = json.loads(reports[-1].read_text())
    report["fit_seconds"] = fit_seconds
    return report


def table(reports: dict[str, dict[str, object]]) -> str:
    rows = ["| application | model | baseline | metric | model | baseline | model better |",
            "|---|---|---|---|---|---|---|"]
    for app, report in reports.items():
        model_scores = report["model_scores"]
        baseline_scores = report["baseline_scores"]
        assert isinstance(model_scores, dict) and isinstance(baseline_scores, dict)
        for key, label, higher in HEADLINES[app]:
            m, b = model_scores.get(key), baseline_scores.get(key)
            better = "-" if m is None or b is None else ("yes" if (m > b) == higher else "no")
            fm = "-" if m is None else f"{m:.3f}"
            fb = "-" if b is None else f"{b:.3f}"
            rows.append(f"| {app} | {report['model']} | {report['baseline']} | {label} | {fm} | {fb} | {better} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("skill_runs"))
    parser.add_argument("--apps", default=",".join(HEADLINES))
    parser.add_argument("--epochs", type=int, default=None, help="override every config's max_epochs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    reports: dict[str, dict[str, object]] = {}
    for app in args.apps.split(","):
        log.info("fitting %s", app)
        reports[app] = run_app(app, args.out.resolve(), args.epochs)
        log.info("%s: fit in %.0f s", app, reports[app]["fit_seconds"])
    (args.out / "skill.json").write_text(json.dumps(reports, indent=2, default=str))
    print(table(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
