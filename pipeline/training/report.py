"""Plain-text tables that put a model's scores beside its baseline's."""

from __future__ import annotations

import math

COUNT_KEYS = frozenset({"hits", "misses", "false_alarms", "correct_negatives", "count", "n"})
LOWER_IS_BETTER = frozenset({"rmse", "mae", "far", "loss"})


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    return f"{value:.4f}"


def format_comparison_table(
    application: str,
    model_name: str,
    baseline_name: str | None,
    model_scores: dict[str, float],
    baseline_scores: dict[str, float],
) -> str:
    """A Markdown table, one row per metric: model, baseline and which is better where that is clear."""
    rows = [f"### {application}: {model_name} vs {baseline_name or 'no baseline'}", "",
            "| metric | model | baseline | better |", "|---|---|---|---|"]
    for key in sorted(model_scores):
        leaf = key.rsplit("/", 1)[-1].split("@")[0]
        if leaf in COUNT_KEYS:
            continue
        m = model_scores[key]
        b = baseline_scores.get(key)
        better = "-"
        if b is not None and not (math.isnan(m) or math.isnan(b)):
            if leaf == "fbi":
                better = "model" if abs(m - 1.0) < abs(b - 1.0) else "baseline"
            elif leaf == "bias":
                better = "model" if abs(m) < abs(b) else "baseline"
            elif leaf in LOWER_IS_BETTER:
                better = "model" if m < b else "baseline"
            else:
                better = "model" if m > b else "baseline"
        rows.append(f"| {key} | {_fmt(m)} | {_fmt(b)} | {better} |")
    return "\n".join(rows)
