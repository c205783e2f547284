"""The comparison table and plot on hand-made results (no training).

Segmentation (one metric, several label fractions) and natural-image results (two
metrics, all labels) go through the same functions; which columns are metrics the
caller says as plain data (:class:`~geocl.report.columns.MetricColumns`): the report
imports no evaluation, so these tests build none.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from geocl.report.columns import MetricColumns
from geocl.report.table import SUMMARY_COLUMNS, interval_note, plot_results, results_markdown, summarize

#: A segmentation comparison's one metric.
MIOU = MetricColumns("finetune", ("miou",), {"miou": "mIoU"}, caption="mIoU on the test tiles,", axis_label="test mIoU")
#: Natural images: two accuracies, the second one ranks.
TOP1 = MetricColumns(
    "knn-probe",
    ("knn_top1", "probe_top1"),
    {"knn_top1": "kNN top-1", "probe_top1": "linear-probe top-1"},
    primary="probe_top1",
    caption="Top-1 accuracy on the val split;",
    title="Top-1",
    axis_label="top-1 accuracy",
)
#: Medical volumes: two scores in [0, 1] and two distances in mm.
DICE = MetricColumns(
    "dice",
    ("dice", "jaccard", "hd95", "asd"),
    {"hd95": "95HD (mm)", "asd": "ASD (mm)"},
    lower_is_better=("hd95", "asd"),
    axis_label="test Dice",
)


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


def _natural() -> pd.DataFrame:
    """Natural-image results as compare writes them: two accuracies, all labels (fraction 1.0)."""
    rows = [
        # a: kNN mean 0.305, sample std of (0.30, 0.31) = 0.00707
        ("a", "simclr", 0, 0.30, 0.40, "ok"),
        ("a", "simclr", 1, 0.31, 0.41, "ok"),
        ("b", "grass", 0, math.nan, math.nan, "failed: RuntimeError: boom"),
        # c: a run that gave kNN but no probe number: the probe cell fails
        ("c", "moco", 0, 0.2, math.nan, "ok"),
    ]
    frame = pd.DataFrame(rows, columns=["recipe", "method", "seed", "knn_top1", "probe_top1", "status"])
    return frame.assign(evaluation="knn-probe", label_fraction=1.0)


def test_error_bars_are_a_t_interval_over_runs_or_over_pretrainings() -> None:
    # a @ 0.1: 0.5, 0.6 -> t(0.975, 1) = 12.706205 * sqrt(0.005) / sqrt(2) = 0.635310
    cells = summarize(_results(), MIOU).set_index(["recipe", "label_fraction"])
    assert cells.loc[("a", 0.1), "half_width"] == pytest.approx(0.635310, abs=1e-6)
    assert math.isnan(cells.loc[("a", 0.01), "half_width"])  # one run: no interval
    # four runs, seeds 0-3, of a recipe pretrained twice: seeds 0 and 2 read pretraining 0 (mean 0.45),
    # 1 and 3 pretraining 1 (mean 0.55); over those two means: 12.706205 * sqrt(0.005) / sqrt(2) again
    runs = pd.DataFrame(
        {"recipe": "a", "label_fraction": 0.1, "seed": [0, 1, 2, 3], "miou": [0.4, 0.5, 0.5, 0.6], "status": "ok"}
    )
    over_runs = summarize(runs, MIOU)["half_width"].iloc[0]  # s = 0.0816497, t(0.975, 3) = 3.182446
    assert over_runs == pytest.approx(3.182446 * 0.0816497 / 2, abs=1e-6)
    over_pretrainings = summarize(runs, MIOU, pretrain_seeds={"a": 2})["half_width"].iloc[0]
    assert over_pretrainings == pytest.approx(0.635310, abs=1e-6)
    assert summarize(runs, MIOU, pretrain_seeds={"other": 2})["half_width"].iloc[0] == over_runs
    # seed 3 failed: pretraining 0 keeps 0.4 and 0.5 (mean 0.45), pretraining 1 keeps 0.5 alone; the bar is
    # centred on their mean, 0.475, as the paired table's cell is, not on the three runs' 0.4667
    failed = runs.assign(status=["ok", "ok", "ok", "failed: boom"])
    cell = summarize(failed, MIOU, pretrain_seeds={"a": 2}).iloc[0]
    assert cell["mean"] == pytest.approx(1.4 / 3) and cell["interval_mean"] == pytest.approx(0.475)
    assert "over pretrainings" in interval_note({"a": 2}) and "pretrainings" not in interval_note({"a": 1})


def test_metric_columns_default_and_check_their_primary() -> None:
    assert MIOU.primary == "miou" and MIOU.label("miou") == "mIoU" and MIOU.label("other") == "other"
    assert TOP1.primary == "probe_top1"
    with pytest.raises(ValueError, match="at least one metric column"):
        MetricColumns("empty", ())
    with pytest.raises(ValueError, match="top5 not among the metric columns"):
        MetricColumns("x", ("top1",), primary="top5")
    with pytest.raises(ValueError, match="hd95 not among"):
        MetricColumns("x", ("dice",), lower_is_better=("hd95",))


def test_the_report_imports_no_evaluation() -> None:
    """The table and plots take plain data: importing them loads neither evaluation nor experiments."""
    import subprocess
    import sys

    code = (
        "import sys, geocl.report.table, geocl.report.paired, geocl.report.columns; "
        "print(sorted(m for m in sys.modules if m.startswith(('geocl.evaluation', 'geocl.experiments'))))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_summarize_means_sample_std_counts_and_failures() -> None:
    summary = summarize(_results(), MIOU)
    assert list(summary.columns) == SUMMARY_COLUMNS
    # recipes in order of appearance, fractions ascending
    assert list(zip(summary["recipe"], summary["label_fraction"], strict=True)) == [
        ("a", 0.01),
        ("a", 0.1),
        ("b", 0.01),
        ("b", 0.1),
    ]
    cells = summary.set_index(["recipe", "label_fraction"])
    assert cells.loc[("a", 0.1), "mean"] == pytest.approx(0.55)
    assert cells.loc[("a", 0.1), "std"] == pytest.approx(math.sqrt(0.005))  # ddof=1; ddof=0 would be 0.05
    assert math.isnan(cells.loc[("a", 0.01), "std"])  # one seed: undefined, not 0
    assert cells.loc[("b", 0.1), ["mean", "n", "failed"]].tolist() == [pytest.approx(0.4), 1, 1]
    assert cells.loc[("b", 0.1), "error"] == "RuntimeError: out of memory"
    assert cells.loc[("b", 0.01), "n"] == 0 and math.isnan(cells.loc[("b", 0.01), "mean"])
    assert cells.loc[("b", 0.01), "method"] == "grass"


def test_markdown_cells_n_column_and_failures() -> None:
    text = results_markdown(_results(), MIOU)
    lines = text.splitlines()
    assert lines[0] == "| recipe | 0.01 | 0.1 | n |"
    assert lines[1] == "|---|---:|---:|---:|"
    assert lines[2] == "| a | 0.250 ± – | 0.550 ± 0.071 | 1, 2 |"
    assert lines[3] == "| b | failed | 0.400 ± – (1 failed) | 0, 1 |"
    assert "ddof=1" in text and text.count("mIoU on the test tiles, mean ± sample std") == 1
    assert "over runs (label subsets × seeds)" in text and "n: successful runs per cell" in text
    assert "- b: RuntimeError: out of memory" in lines


def test_markdown_uniform_n_is_one_number_and_pipes_are_escaped() -> None:
    frame = pd.DataFrame(
        {
            "recipe": ["x|y"] * 2,
            "label_fraction": [0.5, 0.5],
            "seed": [0, 1],
            "miou": [0.2, 0.4],
            "status": ["ok", "ok"],
        }
    )
    assert results_markdown(frame, MIOU).splitlines()[2] == "| x\\|y | 0.300 ± 0.141 | 2 |"


def test_a_flagged_recipe_is_marked_and_its_reason_follows_the_table() -> None:
    text = results_markdown(
        _results(), MIOU, flags={"b": "b: 3 pretraining steps end inside its 8-step warm-up", "zz": "not here"}
    )
    lines = text.splitlines()
    assert any(line.startswith("| b ⚠ |") for line in lines) and any(line.startswith("| a |") for line in lines)
    assert "- ⚠ b: 3 pretraining steps end inside its 8-step warm-up" in lines
    assert "not here" not in text  # only recipes of this table
    assert "⚠" not in results_markdown(_results(), MIOU, flags={"b": ""})


def test_plot_is_a_png_even_when_everything_failed(tmp_path: Path) -> None:
    png = plot_results(_results(), tmp_path / "plot" / "results.png", MIOU)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    failed = _results().assign(miou=math.nan, status="failed: boom")
    assert plot_results(failed, tmp_path / "failed.png", MIOU).read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["failed.png", "plot"]  # no temp files left


def test_natural_results_take_the_same_path() -> None:
    knn = summarize(_natural(), TOP1, "knn_top1")
    assert list(knn.columns) == SUMMARY_COLUMNS
    knn = knn.set_index("recipe")
    assert knn.loc["a", "mean"] == pytest.approx(0.305) and knn.loc["a", "std"] == pytest.approx(math.sqrt(0.00005))
    assert set(knn["label_fraction"]) == {1.0}
    probe = summarize(_natural(), TOP1).set_index("recipe")  # the primary metric: linear-probe top-1
    assert probe.loc["a", "mean"] == pytest.approx(0.405)
    assert probe.loc["c", ["n", "failed", "error"]].tolist() == [0, 1, "no linear-probe top-1"]

    text = results_markdown(_natural(), TOP1)
    lines = text.splitlines()
    assert lines[0] == "| recipe | kNN top-1 | linear-probe top-1 | n |"
    assert lines[1] == "|---|---:|---:|---:|"
    assert lines[2] == "| a | 0.305 ± 0.007 | 0.405 ± 0.007 | 2 |"
    assert lines[3] == "| b | failed | failed | 0 |"
    assert lines[4] == "| c | 0.200 ± – | failed | 1, 0 |"
    assert "Top-1 accuracy on the val split; mean ± sample std" in text and "ddof=1" in text and "Columns:" not in text
    assert "- b: RuntimeError: boom" in lines and "- c: no linear-probe top-1" in lines


def test_natural_plot_is_a_png_even_when_everything_failed(tmp_path: Path) -> None:
    assert plot_results(_natural(), tmp_path / "bars.png", TOP1).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    failed = _natural().assign(knn_top1=math.nan, probe_top1=math.nan, status="failed: boom")
    assert plot_results(failed, tmp_path / "failed.png", TOP1).read_bytes()[:4] == b"\x89PNG"
    # one label fraction of a segmentation comparison: bars too
    one = _results()[_results()["label_fraction"] == 0.1]
    assert plot_results(one, tmp_path / "one.png", MIOU).read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bars.png", "failed.png", "one.png"]


def test_scores_and_distances_get_their_own_axes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dice/Jaccard in [0, 1] and 95HD/ASD in mm at one fraction: two panels, never one mixed scale."""
    import geocl.report.table as table

    figures = []
    monkeypatch.setattr(table, "save_figure", lambda figure, path: figures.append(figure) or Path(path))
    rows = [("a", "simclr", 0.2, seed, 0.8 + seed / 100, 0.7, 4.0 + seed, 1.5, "ok") for seed in range(3)]
    frame = pd.DataFrame(
        rows, columns=["recipe", "method", "label_fraction", "seed", "dice", "jaccard", "hd95", "asd", "status"]
    )
    plot_results(frame.assign(evaluation="dice"), tmp_path / "dice.png", DICE)
    (figure,) = figures
    labels = [axes.get_ylabel() for axes in figure.axes]
    assert labels == ["test Dice", "95HD (mm), ASD (mm) (lower is better)"]
    scores, distances = figure.axes
    assert scores.get_ylim() == (0.0, 1.0) and distances.get_ylim()[1] > 4.0
    assert len(scores.patches) == 2 and len(distances.patches) == 2  # two metrics x one recipe each
