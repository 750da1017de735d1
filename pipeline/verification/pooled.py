"""Verification across several test windows: one table whose counts are summed over every window before any ratio.

Each window (one :class:`~meteovision.pipeline.verification.evaluate.EvaluationResult`, one
config) keeps its sums per method and lead (:class:`~meteovision.pipeline.verification.lead_scores.LeadSums`).
The pooled table adds them by method and lead time in minutes (a lead only some windows reach
pools those windows; the pixel and analysis-time columns say how many went in) and only then
computes CSI, POD, FAR, frequency bias, FSS and MAE, so a window with many rain pixels weighs
what its pixels weigh, never a mean of per-window ratios. FSS sums pool by the scale in km
(the pixel window differs between grids). Only methods every window ran are pooled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from meteovision.pipeline.verification.evaluate import EvaluationResult
from meteovision.pipeline.verification.lead_scores import LeadSums, format_value

__all__ = ["POOLED_MAX_LEAD_MINUTES", "pooled_sums", "pooled_table", "sums_table", "window_sums"]

#: The tables stop at this lead (minutes).
POOLED_MAX_LEAD_MINUTES = 60.0
#: Thresholds (mm h-1) of the CSI/POD/FAR/FBI columns.
TABLE_THRESHOLDS = (1.0, 5.0)

Sums = dict[str, dict[float, LeadSums]]


def window_sums(result: EvaluationResult, max_lead_minutes: float = POOLED_MAX_LEAD_MINUTES) -> Sums:
    """One window's sums: method -> lead minutes -> :class:`LeadSums`, leads up to ``max_lead_minutes``."""
    out: Sums = {}
    for name in result.methods:
        acc = result.accumulators[name]
        out[name] = {result.lead_minutes(k): acc.lead_sums(k) for k in range(result.n_leads)
                     if result.lead_minutes(k) <= max_lead_minutes + 1e-9}
    return out


def pooled_sums(results: Sequence[EvaluationResult], max_lead_minutes: float = POOLED_MAX_LEAD_MINUTES) -> Sums:
    """The sums of every window added by method and lead (methods that every window ran)."""
    parts = [window_sums(r, max_lead_minutes) for r in results]
    methods = [m for m in parts[0] if all(m in p for p in parts)]
    pooled: Sums = {}
    for name in methods:
        leads: dict[float, LeadSums] = {}
        for part in parts:
            for lead, sums in part[name].items():
                leads[lead] = leads[lead] + sums if lead in leads else sums
        pooled[name] = dict(sorted(leads.items()))
    return pooled


def _columns(sums: LeadSums) -> list[tuple[str, str]]:
    cols: list[tuple[str, str]] = []
    for t in (format_value(v) for v in TABLE_THRESHOLDS):
        if t in sums.hits:
            cols += [(f"csi@{t}", f"CSI {t}"), (f"pod@{t}", f"POD {t}"), (f"far@{t}", f"FAR {t}"),
                     (f"fbi@{t}", f"FBI {t}")]
    cols += [(name, "FSS " + name.split("_", 1)[1]) for name in sums.fss_diff_sq]
    return [*cols, ("mae", "MAE")]


def sums_table(sums: Sums) -> str:
    """Markdown: per lead and method CSI/POD/FAR/FBI at 1 and 5 mm h-1, FSS at every scale, MAE and counts."""
    first = next(iter(next(iter(sums.values())).values()))
    cols = _columns(first)
    header = ["lead", "method", *[label for _, label in cols], "pixels", "analysis times"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    leads = sorted({lead for per_lead in sums.values() for lead in per_lead})
    for lead in leads:
        for name, per_lead in sums.items():
            if lead not in per_lead:
                continue
            s = per_lead[lead]
            values = s.scores()
            cells = [f"{values[m]:.3f}" if math.isfinite(values.get(m, math.nan)) else "-" for m, _ in cols]
            lines.append("| " + " | ".join([f"+{format_value(lead)} min", name, *cells, str(s.n), str(s.times)])
                         + " |")
    return "\n".join(lines)


def pooled_table(results: Sequence[EvaluationResult], max_lead_minutes: float = POOLED_MAX_LEAD_MINUTES) -> str:
    """The pooled Markdown table of several windows (counts summed before any ratio), with its caption."""
    names = ", ".join(r.config.name for r in results)
    caption = (f"Pooled over {len(results)} window(s) ({names}): counts and sums added over every window and "
               "analysis time before the ratios; thresholds in mm h-1, FSS at the FSS threshold")
    return caption + "\n\n" + sums_table(pooled_sums(results, max_lead_minutes))
