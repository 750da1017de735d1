"""The results record and the printed report of ``benchmarks/inference.py``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_common import Timing
from bench_common import machine_info as common_machine_info
from inference_setup import (
    MAX_END_TO_END_RATIO,
    MAX_FMI_RSS_GIB,
    MIN_SPEEDUP_OVER_NAIVE,
    PRECISION_LABELS,
    STAGES,
    BenchSettings,
    Headline,
    mode_named,
)

from meteovision.pipeline.inference.predict import (
    cpu_has_native_bf16,
)

LOG = logging.getLogger("meteovision.benchmarks.inference")

# -- the run ----------------------------------------------------------------------------------------------


@dataclass
class Results:
    """Everything measured (JSON-ready through :meth:`to_dict`).

    ``best`` is the fastest candidate the predict stage runs, in either precision: the headline (a),
    (b) and verdicts are those of its precision; ``headlines`` holds both precisions' (a) and (b).
    """

    size: int
    native_bf16: bool
    candidates: list[Timing]
    candidates_naive: Timing
    best: str
    headlines: dict[str, Headline]
    naive: Timing
    stages: dict[str, dict[str, float]]
    fmi: dict[str, dict[str, Any]]
    bf16_difference: dict[str, float]

    @property
    def best_precision(self) -> str:
        return mode_named(self.best).precision

    def end_to_end_ratio(self, precision: str) -> float:
        h = self.headlines[precision]
        return h.end_to_end.median_s / h.bare.median_s

    def naive_ratio(self, precision: str) -> float:
        return self.naive.median_s / self.headlines[precision].bare.median_s

    def verdicts(self, precision: str) -> dict[str, bool | None]:
        fmi = self.fmi[precision]
        return {"end_to_end": self.end_to_end_ratio(precision) <= MAX_END_TO_END_RATIO,
                "speedup_over_naive": self.naive_ratio(precision) >= MIN_SPEEDUP_OVER_NAIVE,
                "fmi_peak_rss": bool(fmi["pass"]) if fmi.get("status") == "ok" else None}

    def _ratios(self, precision: str) -> dict[str, float]:
        return {"end_to_end_over_bare": self.end_to_end_ratio(precision),
                "naive_over_bare": self.naive_ratio(precision)}

    def to_dict(self) -> dict[str, Any]:
        naive_median = self.candidates_naive.median_s
        best = self.best_precision
        headline = self.headlines[best]
        by_precision = {
            p: {"label": PRECISION_LABELS[p], "best_mode": h.mode, "bare": h.bare.to_dict(),
                "end_to_end": h.end_to_end.to_dict(), "ratios": self._ratios(p), "verdicts": self.verdicts(p),
                "stages_s": self.stages[p], "fmi": self.fmi[p]}
            for p, h in self.headlines.items()
        }
        return {
            "size": self.size,
            "native_bf16": self.native_bf16,
            "candidates": [{**t.to_dict(), "precision": mode_named(t.name).precision,
                            "in_predict": mode_named(t.name).in_predict,
                            "naive_over_mode": naive_median / t.median_s} for t in self.candidates],
            "candidates_naive": self.candidates_naive.to_dict(),
            "best_mode": self.best,
            "best_precision": best,
            "bare": headline.bare.to_dict(),
            "end_to_end": headline.end_to_end.to_dict(),
            "naive": self.naive.to_dict(),
            "ratios": self._ratios(best),
            "stages_s": self.stages[best],
            "fmi": self.fmi[best],
            "verdicts": self.verdicts(best),
            "by_precision": by_precision,
            "bf16_vs_float32": self.bf16_difference,
            "targets": {"max_end_to_end_ratio": MAX_END_TO_END_RATIO,
                        "min_speedup_over_naive": MIN_SPEEDUP_OVER_NAIVE, "max_fmi_rss_gib": MAX_FMI_RSS_GIB},
        }




def machine_info(
    settings: BenchSettings, load_start: Sequence[float], load_end: Sequence[float]
) -> dict[str, Any]:
    return {**common_machine_info(settings.threads, load_start, load_end), "native_bf16": cpu_has_native_bf16()}


def _verdict(ok: bool | None) -> str:
    return {True: "PASS", False: "MISS", None: "SKIPPED"}[ok]


def _times(t: Timing) -> str:
    return ", ".join(f"{s:.3f}" for s in t.times_s)


def _fmi_cell(fmi: dict[str, Any], ok: bool | None) -> str:
    return f"{fmi['peak_rss_gib']:.2f} GiB {_verdict(ok)}" if fmi["status"] == "ok" else "not measured"


def report_lines(res: Results) -> list[str]:
    """The headline table (best mode: figures, stages, ratios, targets, verdicts), both precisions, candidates."""
    best = res.best_precision
    head = res.headlines[best]
    verdicts = res.verdicts(best)
    n = len(head.bare.times_s)
    native = ("yes" if res.native_bf16 else
              "no: its bf16 is emulated, so the bf16 figures say nothing of a CPU that has it")
    lines = [f"Domain {res.size} x {res.size} (synthetic ODIM RATE composite, 1 km LAEA), bow_echo U-Net "
             "(resnet18, depth 4), 1 -> 1 channel, random weights. This CPU computes bf16 natively "
             f"(AVX512-BF16 or AMX): {native}.", "",
             f"Headline: the fastest mode the predict stage runs is `{res.best}` ({PRECISION_LABELS[best]}); "
             f"(b) runs `predict_file` with `precision=\"{best}\"`.", "",
             "| figure | value | target | verdict |", "|---|---:|---:|---|",
             f"| (a) bare forward, best mode `{res.best}` (median of {n}) | {head.bare.median_s:.3f} s | | |",
             f"| (b) end to end, `predict_file --precision {best}` ODIM -> NetCDF (median of {n}) | "
             f"{head.end_to_end.median_s:.3f} s | | |"]
    for key, label in STAGES.items():
        lines.append(f"| &nbsp;&nbsp;(b) stage, one pass: {label} | {res.stages[best][key]:.3f} s | | |")
    lines += [f"| &nbsp;&nbsp;(b) stages, one pass: total | {res.stages[best]['total']:.3f} s | | |",
              f"| (c) naive forward: contiguous NCHW, float32, autograd on, whole frame (median of {n}) | "
              f"{res.naive.median_s:.3f} s | | |",
              f"| ratio (b)/(a) | {res.end_to_end_ratio(best):.3f} | <= {MAX_END_TO_END_RATIO} | "
              f"{_verdict(verdicts['end_to_end'])} |",
              f"| ratio (c)/(a) | {res.naive_ratio(best):.3f} | >= {MIN_SPEEDUP_OVER_NAIVE} | "
              f"{_verdict(verdicts['speedup_over_naive'])} |"]
    fmi = res.fmi[best]
    if fmi["status"] == "ok":
        lines.append(f"| FMI peak RSS, `predict_file --precision {best}` on {Path(fmi['file']).name} "
                     f"({fmi['height']} rows x {fmi['width']} columns, {fmi['predict_s']:.1f} s) | "
                     f"{fmi['peak_rss_gib']:.2f} GiB | <= {MAX_FMI_RSS_GIB:g} GiB | "
                     f"{_verdict(verdicts['fmi_peak_rss'])} |")
    else:
        lines.append(f"| FMI peak RSS: not measured ({fmi['reason']}) | - | <= {MAX_FMI_RSS_GIB:g} GiB | SKIPPED |")
    lines += ["", f"Times (s): (a) {_times(head.bare)}; (b) {_times(head.end_to_end)}; (c) {_times(res.naive)}."]

    # both precisions side by side
    precisions = list(res.headlines)
    cols = " | ".join(f"{PRECISION_LABELS[p]} (`--precision {p}`{', the CPU default' if p == '32' else ''})"
                      for p in precisions)
    row = "| {} | " + " | ".join("{}" for _ in precisions) + " | {} |"
    v = {p: res.verdicts(p) for p in precisions}
    lines += ["", "Both precisions the predict stage offers, from the same interleaved rounds ((c) is one naive "
              "baseline for both):", "", f"| figure | {cols} | target |",
              "|---|" + "---:|" * len(precisions) + "---:|",
              row.format("best mode (a)", *(f"`{res.headlines[p].mode}`" for p in precisions), ""),
              row.format(f"(a) bare forward (median of {n})",
                         *(f"{res.headlines[p].bare.median_s:.3f} s" for p in precisions), ""),
              row.format(f"(b) end to end, `predict_file` ODIM -> NetCDF (median of {n})",
                         *(f"{res.headlines[p].end_to_end.median_s:.3f} s" for p in precisions), ""),
              row.format("&nbsp;&nbsp;(b) stage, one pass: network",
                         *(f"{res.stages[p]['network']:.3f} s" for p in precisions), ""),
              row.format("&nbsp;&nbsp;(b) stage, one pass: everything else",
                         *(f"{res.stages[p]['total'] - res.stages[p]['network']:.3f} s" for p in precisions), ""),
              row.format(f"(c) naive forward (median of {n})", *(f"{res.naive.median_s:.3f} s" for _ in precisions),
                         ""),
              row.format("ratio (b)/(a)", *(f"{res.end_to_end_ratio(p):.3f} {_verdict(v[p]['end_to_end'])}"
                                            for p in precisions), f"<= {MAX_END_TO_END_RATIO}"),
              row.format("ratio (c)/(a)", *(f"{res.naive_ratio(p):.3f} {_verdict(v[p]['speedup_over_naive'])}"
                                            for p in precisions), f">= {MIN_SPEEDUP_OVER_NAIVE}"),
              row.format("FMI peak RSS", *(_fmi_cell(res.fmi[p], v[p]["fmi_peak_rss"]) for p in precisions),
                         f"<= {MAX_FMI_RSS_GIB:g} GiB"), ""]
    for p in precisions:
        h, f = res.headlines[p], res.fmi[p]
        fmi_note = (f"; FMI: {f['predict_s']:.1f} s, RSS {f['peak_rss_before_predict_gib']:.2f} GiB before "
                    f"`predict_file` (torch and the model loaded), product {f['output_bytes'] / 1e6:.0f} MB"
                    if f["status"] == "ok" else "")
        lines.append(f"{PRECISION_LABELS[p]}: times (s) (a) {_times(h.bare)}; (b) {_times(h.end_to_end)}{fmi_note}.")
    d = res.bf16_difference
    lines += ["", f"bf16 against float32 on the benchmark frame ((b)'s two products, random weights): the "
              f"probabilities differ by at most {d['max_abs_probability_difference']:.4f} (mean "
              f"{d['mean_abs_probability_difference']:.5f}) over {d['pixels_with_data']} pixels with data; "
              f"{100 * d['mask_pixels_changed_fraction']:.3f} % of their mask pixels change."]

    naive = res.candidates_naive
    lines += ["", f"Candidate modes, interleaved with the naive baseline (median of {len(naive.times_s)}; "
              f"naive {naive.median_s:.3f} s there):", "",
              "| mode | precision | predict runs it | median s | min s | naive / mode | times s |",
              "|---|---|---|---:|---:|---:|---|"]
    best_of = {h.mode for h in res.headlines.values()}
    for t in res.candidates:
        mode = mode_named(t.name)
        mark = " (best: (a))" if t.name == res.best else (" (best of its precision)" if t.name in best_of else "")
        lines.append(f"| `{t.name}`{mark} | {PRECISION_LABELS[mode.precision]} | {'yes' if mode.in_predict else 'no'} "
                     f"| {t.median_s:.3f} | {min(t.times_s):.3f} | {naive.median_s / t.median_s:.2f} | {_times(t)} |")
    return lines
