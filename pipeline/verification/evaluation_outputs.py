"""What an evaluation writes: scores.json/csv/md, the Markdown table the CLI prints, plots and maps."""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meteovision.pipeline.checkpoints.loading import file_sha256
from meteovision.pipeline.inference.atomic import atomic_write
from meteovision.pipeline.verification.lead_scores import format_value
from meteovision.pipeline.versions import package_versions

if TYPE_CHECKING:
    pass

from meteovision.pipeline.verification.evaluate import EvaluationResult
from meteovision.pipeline.verification.radar_series import iso_time

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- outputs
def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def score_rows(result: EvaluationResult) -> list[dict[str, Any]]:
    """One row per method, lead and metric: the content of ``scores.csv``."""
    rows = []
    for name in result.methods:
        for score in result.accumulators[name].scores():
            rows.append({"method": name, "lead_minutes": result.lead_minutes(score.lead_index),
                         "metric": score.metric, "value": score.value, "n_samples": score.n_samples})
    return rows


def scores_document(result: EvaluationResult) -> dict[str, Any]:
    """Everything ``scores.json`` holds: settings, data, analysis times, windows and every score."""
    s, cfg = result.series, result.config
    scores: dict[str, dict[str, dict[str, float | None]]] = {}
    for row in score_rows(result):
        per_lead = scores.setdefault(row["method"], {}).setdefault(format_value(row["lead_minutes"]), {})
        per_lead[row["metric"]] = _json_number(row["value"])
    first = result.accumulators[result.methods[0]]
    return {
        "name": cfg.name,
        "command": result.command,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config": json.loads(cfg.model_dump_json()),
        "data": {
            "files": [str(p) for p in s.files], "first_time": iso_time(s.times[0]), "last_time": iso_time(s.times[-1]),
            "shape": list(s.rates.shape[1:]), "pixel_size_m": s.pixel_size_m,
            "time_step_minutes": s.time_step_minutes, "crs": s.crs_name,
            "x_range_m": [float(s.x[0]), float(s.x[-1])], "y_range_m": [float(s.y[0]), float(s.y[-1])],
        },
        "analysis_times": [iso_time(t) for t in result.analysis_times],
        "lead_minutes": [result.lead_minutes(k) for k in range(result.n_leads)],
        "methods": result.methods,
        "checkpoint": None if result.checkpoint is None else {
            "path": str(result.checkpoint), "sha256": file_sha256(result.checkpoint)},
        "checkpoints": {name: {"path": str(path), "sha256": file_sha256(path)}
                        for name, path in result.checkpoints.items()},
        "fss_windows": [{"requested_km": w.requested_km, "scale_km": w.scale_km, "pixels": w.pixels,
                         "effective_km": w.effective_km, "metric": first.fss_name(w)} for w in result.windows],
        "mask": "observation valid & Lagrangian source (LK motion) inside domain and coverage & every method finite",
        "n_samples": {format_value(result.lead_minutes(k)): int(first.n_pixels[k]) for k in range(result.n_leads)},
        "seconds_per_forecast": {n: result.seconds[n] / max(1, len(result.analysis_times)) for n in result.methods},
        "scores": scores,
        "versions": package_versions(),
    }


def markdown_table(result: EvaluationResult, leads_minutes: Sequence[float] | None = None) -> str:
    """All methods per lead time: CSI/POD/FAR at 1 mm h-1, CSI at 5, FSS at the table scale, MAE, samples."""
    fss = result.table_fss_metric()
    fss_label = fss.split("@", 1)[1].replace("_", " mm h-1, ")
    metrics = [("csi@1", "CSI 1"), ("pod@1", "POD 1"), ("far@1", "FAR 1"), ("csi@5", "CSI 5"),
               (fss, f"FSS {fss_label}"), ("mae", "MAE (mm h-1)")]
    acc = result.accumulators[result.methods[0]]
    metrics = [(m, label) for m, label in metrics if m in acc.metric_names()]
    header = ["lead", "method", *[label for _, label in metrics], "pixels"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for k in range(result.n_leads):
        lead = result.lead_minutes(k)
        if leads_minutes is not None and not any(math.isclose(lead, m) for m in leads_minutes):
            continue
        for name in result.methods:
            values = [result.value(name, k, m) for m, _ in metrics]
            cells = [f"+{format_value(lead)} min", name, *[f"{v:.3f}" if math.isfinite(v) else "-" for v in values],
                     str(int(result.accumulators[name].n_pixels[k]))]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_caption(result: EvaluationResult) -> str:
    s = result.series
    times = result.analysis_times
    return (f"{result.config.name}: {len(times)} analysis time(s) {iso_time(times[0])} to {iso_time(times[-1])}, "
            f"{s.rates.shape[1]} x {s.rates.shape[2]} cells of {s.pixel_size_m / 1000:.3g} km, "
            f"{s.time_step_minutes:g}-min steps; thresholds in mm h-1; pixels = scored samples (same for all methods)")


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def write_outputs(result: EvaluationResult, out_dir: Path) -> list[Path]:
    """Write scores.json, scores.csv, scores.md and the PNG plots and maps into ``out_dir``; return the paths."""
    from meteovision.pipeline.verification.plots import write_maps, write_skill_plots

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    path = out_dir / "scores.json"
    _write_text(path, json.dumps(scores_document(result), indent=2) + "\n")
    written.append(path)
    path = out_dir / "scores.csv"
    with atomic_write(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["method", "lead_minutes", "metric", "value", "n_samples"])
        writer.writeheader()
        for row in score_rows(result):
            writer.writerow({**row, "lead_minutes": format_value(row["lead_minutes"]),
                             "value": "nan" if not math.isfinite(row["value"]) else repr(row["value"])})
    written.append(path)
    path = out_dir / "scores.md"
    _write_text(path, table_caption(result) + "\n\n" + markdown_table(result) + "\n")
    written.append(path)
    written += write_skill_plots(result, out_dir)
    written += write_maps(result, out_dir)
    for p in written:
        logger.info("wrote %s", p)
    return written
