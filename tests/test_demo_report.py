"""Demo report: the summary row names the winner on the headline metric, the CSV holds every metric,
and the HTML escapes text and inlines pictures."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from meteovision.pipeline.demo_report import filter_figures, headline_of, html_report, summary_rows, write_metrics_csv

REPORT: dict[str, object] = {
    "baseline": "visibility_rule",
    "model_scores": {"cls/f1_macro": 0.15, "cls/accuracy": 0.41},
    "baseline_scores": {"cls/f1_macro": 0.27, "cls/accuracy": 0.33},
}


def test_headline_winner_and_note() -> None:
    h = headline_of("webcam_visibility", REPORT)
    assert (h.model, h.baseline, h.winner) == (0.15, 0.27, "baseline")
    row = summary_rows([h])[1]
    assert row[:6] == ["webcam_visibility", "macro-F1", "0.150", "visibility_rule", "0.270", "baseline"]
    assert "192 images" in row[6]
    rmse = headline_of("sat2precip", {"baseline": "b", "model_scores": {"reg/rmse": 1.0},
                                      "baseline_scores": {"reg/rmse": 2.0}})
    assert rmse.winner == "model" and summary_rows([rmse])[1][6] == ""  # lower RMSE wins, no note
    assert headline_of("bow_echo", {}).winner == "-"


def test_metrics_csv_and_html(tmp_path: Path) -> None:
    path = write_metrics_csv("webcam_visibility", REPORT, tmp_path / "metrics" / "v.csv")
    with open(path, encoding="utf-8") as handle:
        assert list(csv.reader(handle)) == [["metric", "model", "baseline"], ["cls/accuracy", "0.41", "0.33"],
                                            ["cls/f1_macro", "0.15", "0.27"]]
    png = tmp_path / "a.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    page = html_report("t", [("p", "<b>&"), ("table", [["a<"], ["1"]]), ("img", png), ("link", path)], tmp_path)
    assert "<p>&lt;b&gt;&amp;</p>" in page and "<th>a&lt;</th>" in page
    assert 'src="data:image/png;base64,iVBORw0KGgo="' in page
    assert '<a href="metrics/v.csv">' in page


def test_filter_figures_from_npz(tmp_path: Path) -> None:
    png = tmp_path / "filters_x.png"
    np.savez(png.with_suffix(".npz"), filters=np.array([3, 7]), initial_activation=np.array([0.08, -1.19]),
             final_activation=np.array([3.1, -1.08]), spread=np.array([0.5, 0.1]))
    # The grid's rule: a rise of at least RISE_MARGIN (2) spreads; 0.11 / 0.1 = 1.1 falls short.
    assert filter_figures(png) == "filter 3: 0.08 -> 3.1 (+6.0 sd), filter 7: -1.19 -> -1.08 (+1.1 sd) (no clear rise)"
    old = tmp_path / "filters_old.png"  # an npz written before the spread was kept: responses only
    np.savez(old.with_suffix(".npz"), filters=np.array([3]), initial_activation=np.array([0.08]),
             final_activation=np.array([3.1]))
    assert filter_figures(old) == "filter 3: 0.08 -> 3.1"
    assert filter_figures(tmp_path / "other.png") == ""
