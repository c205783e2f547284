"""The comparison table and plot on hand-made results (no training)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from geocl.report.table import plot_results, results_markdown, summarize


def _results() -> pd.DataFrame:
    """Two recipes at two fractions: full, single-seed, partly failed and failed cells."""
    rows = [
        # a @ 0.1: two seeds -> mean 0.55, sample std sqrt(0.005) = 0.0707
        ("a", "simclr", 0.1, 0, 0.5, "ok"),
        ("a", "simclr", 0.1, 1, 0.6, "ok"),
        # a @ 0.01: one seed -> no std
        ("a", "simclr", 0.01, 0, 0.25, "ok"),
        # b @ 0.1: one ok, one failed
        ("b", "grass", 0.1, 0, 0.4, "ok"),
        ("b", "grass", 0.1, 1, math.nan, "failed: RuntimeError: out of memory"),
        # b @ 0.01: everything failed
        ("b", "grass", 0.01, 0, math.nan, "failed: RuntimeError: out of memory"),
    ]
    return pd.DataFrame(rows, columns=["recipe", "method", "label_fraction", "seed", "miou", "status"])


def test_summarize_means_sample_std_counts_and_failures() -> None:
    summary = summarize(_results())
    # recipes in order of appearance, fractions ascending
    assert list(zip(summary["recipe"], summary["label_fraction"])) == [("a", 0.01), ("a", 0.1), ("b", 0.01), ("b", 0.1)]
    cells = summary.set_index(["recipe", "label_fraction"])
    assert cells.loc[("a", 0.1), "mean"] == pytest.approx(0.55)
    assert cells.loc[("a", 0.1), "std"] == pytest.approx(math.sqrt(0.005))  # ddof=1; ddof=0 would be 0.05
    assert math.isnan(cells.loc[("a", 0.01), "std"])  # one seed: undefined, not 0
    assert cells.loc[("b", 0.1), ["mean", "n", "failed"]].tolist() == [pytest.approx(0.4), 1, 1]
    assert cells.loc[("b", 0.1), "error"] == "RuntimeError: out of memory"
    assert cells.loc[("b", 0.01), "n"] == 0 and math.isnan(cells.loc[("b", 0.01), "mean"])
    assert cells.loc[("b", 0.01), "method"] == "grass"


def test_markdown_cells_n_column_and_failures() -> None:
    text = results_markdown(_results())
    lines = text.splitlines()
    assert lines[0] == "| recipe | 0.01 | 0.1 | n |"
    assert lines[1] == "|---|---:|---:|---:|"
    assert lines[2] == "| a | 0.250 ± – | 0.550 ± 0.071 | 1, 2 |"
    assert lines[3] == "| b | failed | 0.400 ± – (1 failed) | 0, 1 |"
    assert "ddof=1" in text
    assert "- b: RuntimeError: out of memory" in lines


def test_markdown_uniform_n_is_one_number_and_pipes_are_escaped() -> None:
    frame = pd.DataFrame(
        {"recipe": ["x|y"] * 2, "label_fraction": [0.5, 0.5], "seed": [0, 1], "miou": [0.2, 0.4], "status": ["ok", "ok"]}
    )
    assert results_markdown(frame).splitlines()[2] == "| x\\|y | 0.300 ± 0.141 | 2 |"


def test_plot_is_a_png_even_when_everything_failed(tmp_path: Path) -> None:
    png = plot_results(_results(), tmp_path / "plot" / "results.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    failed = _results().assign(miou=math.nan, status="failed: boom")
    assert plot_results(failed, tmp_path / "failed.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["failed.png", "plot"]  # no temp files left
