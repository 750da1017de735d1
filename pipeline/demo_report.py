"""The demo's report: one summary table first, every metric in a CSV per application, and an HTML copy.

A newcomer asks one thing first: does each model beat its classic baseline? The report opens
with that table (the application's headline metric, the model's value, the baseline's, the
winner); the complete scores go to ``metrics/<app>.csv``, linked from the report. The HTML
version has the pictures (quicklooks, filter grids) inline, written by hand with every text
escaped, so it opens in a browser with nothing installed.
"""

from __future__ import annotations

import base64
import csv
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meteovision.core.applications import get_application

#: Why a model may lose to its baseline in the demo, written beside it in the summary.
KNOWN_LOSSES: dict[str, str] = {
    "webcam_visibility": "a classifier trained for a few minutes on 192 images may not have learnt the four "
                         "classes yet; the full config beats the rule (README)",
}


@dataclass(frozen=True)
class Headline:
    """One summary row: the application's headline metric for the model and the baseline."""

    app: str
    label: str
    model: float | None
    baseline_name: str
    baseline: float | None
    higher_is_better: bool

    @property
    def winner(self) -> str:
        if self.model is None or self.baseline is None or math.isnan(self.model) or math.isnan(self.baseline):
            return "-"
        better = self.model > self.baseline if self.higher_is_better else self.model < self.baseline
        return "model" if better else "baseline"


def headline_of(app: str, test_report: dict[str, object]) -> Headline:
    """The headline row of one application from its ``test_metrics.json`` content (empty: no scores)."""
    headline = get_application(app).headline_metric
    key, label, higher = headline.key, headline.label, headline.higher_is_better
    model = test_report.get("model_scores") or {}
    base = test_report.get("baseline_scores") or {}
    value = model.get(key) if isinstance(model, dict) else None
    reference = base.get(key) if isinstance(base, dict) else None
    return Headline(app, label, None if value is None else float(value), str(test_report.get("baseline") or "-"),
                    None if reference is None else float(reference), higher)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def summary_rows(headlines: Sequence[Headline]) -> list[list[str]]:
    """Header and rows of the summary table (a note beside a model that loses)."""
    rows = [["application", "headline metric", "model", "baseline", "baseline value", "winner", "note"]]
    for h in headlines:
        note = KNOWN_LOSSES.get(h.app, "short training") if h.winner == "baseline" else ""
        rows.append([h.app, h.label, _fmt(h.model), h.baseline_name, _fmt(h.baseline), h.winner, note])
    return rows


def write_metrics_csv(app: str, test_report: dict[str, object], path: Path) -> Path:
    """Every metric of one application: ``metric,model,baseline`` (empty where the baseline has none)."""
    model = test_report.get("model_scores") or {}
    base = test_report.get("baseline_scores") or {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["metric", "model", "baseline"])
        scores = model if isinstance(model, dict) else {}
        for key in sorted(scores):
            other = base.get(key) if isinstance(base, dict) else None
            writer.writerow([key, scores[key], "" if other is None else other])
    return path


def filter_note() -> str:
    """What the figures under a filter grid mean (:func:`filter_figures`)."""
    from meteovision.pipeline.explain.filters import RISE_MARGIN

    return ("each filter's response (pre-activation at the centre of its map) to a featureless input -> to the "
            f"picture, and the rise in standard deviations (sd) of its response to random inputs (clear: >= "
            f"{RISE_MARGIN:g} sd)")


def filter_figures(png: Path) -> str:
    """``filter 3: 0.08 -> 3.1 (+6.2 sd), ...`` from the ``.npz`` beside a filter grid ('' without one).

    The check is the grid's own (:func:`meteovision.pipeline.explain.filters.clearly_raised`).
    """
    from meteovision.pipeline.explain.filters import clearly_raised, rise_text

    npz = png.with_suffix(".npz")
    if not npz.is_file():
        return ""
    with np.load(npz) as data:
        filters, before, after = data["filters"], data["initial_activation"], data["final_activation"]
        if "spread" not in data:  # written before the spread was kept: the responses only
            return ", ".join(f"filter {f}: {b:.3g} -> {a:.3g}" for f, b, a in zip(filters, before, after, strict=True))
        spread = data["spread"]
    raised = clearly_raised(before, after, spread)
    return ", ".join(f"filter {f}: {rise_text(float(b), float(a), float(s))}{'' if ok else ' (no clear rise)'}"
                     for f, b, a, s, ok in zip(filters, before, after, spread, raised, strict=True))


def markdown_table(rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return lines + ["| " + " | ".join(row) + " |" for row in rows[1:]]


def html_report(title: str, blocks: Sequence[tuple[str, object]], out: Path) -> str:
    """A self-contained HTML page from blocks: ``("h1"|"h2"|"p"|"pre", text)``, ``("table", rows)``,
    ``("img", path)`` (inlined as base64) and ``("link", path)`` (relative to ``out``)."""
    parts = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">", f"<title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}</style></head><body>"]
    for kind, value in blocks:
        if kind in ("h1", "h2", "p"):
            parts.append(f"<{kind}>{html.escape(str(value))}</{kind}>")
        elif kind == "pre":
            parts.append(f"<pre>{html.escape(str(value))}</pre>")
        elif kind == "table":
            rows = list(value)  # type: ignore[call-overload]
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in rows[0]) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:]]
            parts.append("</table>")
        elif kind == "img":
            path = Path(str(value))
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt=\"{html.escape(path.name)}\" src=\"data:image/png;base64,{data}\">"
                         f"<figcaption>{html.escape(str(path.relative_to(out)))}</figcaption></figure>")
        elif kind == "link":
            rel = str(Path(str(value)).relative_to(out))
            parts.append(f"<p><a href=\"{html.escape(rel)}\">{html.escape(rel)}</a></p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
