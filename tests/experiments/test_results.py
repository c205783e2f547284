"""The report files' link to the evaluations: metric columns as plain data, a results.csv read back."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from geocl.evaluation import KnnProbe, SegmentationFinetune
from geocl.evaluation.medical import MedicalDice
from geocl.experiments.results import evaluation_of, metric_columns, results_table
from geocl.report.table import results_markdown


def _segmentation() -> pd.DataFrame:
    rows = [("a", 0.1, 0, 0.5, "ok"), ("a", 0.1, 1, 0.6, "ok"), ("b", 0.1, 0, math.nan, "failed: boom")]
    return pd.DataFrame(rows, columns=["recipe", "label_fraction", "seed", "miou", "status"])


def _natural() -> pd.DataFrame:
    rows = [("a", 0, 0.30, 0.40, "ok"), ("a", 1, 0.31, 0.41, "ok")]
    frame = pd.DataFrame(rows, columns=["recipe", "seed", "knn_top1", "probe_top1", "status"])
    return frame.assign(evaluation="knn-probe", label_fraction=1.0)


@pytest.mark.parametrize("evaluation", [SegmentationFinetune, KnnProbe, MedicalDice])
def test_metric_columns_carry_everything_the_report_reads(evaluation) -> None:
    metrics = metric_columns(evaluation)
    assert metrics.name == evaluation.name and metrics.columns == evaluation.metric_columns
    assert metrics.primary == evaluation.primary() and metrics.lower_is_better == evaluation.lower_is_better
    assert [metrics.label(c) for c in metrics.columns] == [evaluation.label(c) for c in evaluation.metric_columns]
    assert (metrics.caption, metrics.title, metrics.axis_label) == (
        evaluation.caption,
        evaluation.title,
        evaluation.axis_label,
    )


def test_the_evaluation_comes_from_the_frame() -> None:
    assert evaluation_of(_segmentation()) is SegmentationFinetune  # no evaluation column: by metric columns
    assert evaluation_of(_natural()) is KnnProbe
    assert evaluation_of(_natural().drop(columns="evaluation")) is KnnProbe
    with pytest.raises(ValueError, match="several evaluations"):
        evaluation_of(pd.concat([_natural(), _segmentation().assign(evaluation="finetune")]))
    with pytest.raises(ValueError, match="no evaluation's metric columns"):
        evaluation_of(pd.DataFrame({"recipe": ["a"], "score": [1.0]}))


def test_a_results_csv_read_back_gives_its_table() -> None:
    text = results_table(_natural())
    assert text == results_markdown(_natural(), metric_columns(KnnProbe))
    assert text.splitlines()[0] == "| recipe | kNN top-1 | linear-probe top-1 | n |"
    assert KnnProbe.caption in text
    assert results_table(_segmentation()).splitlines()[2] == "| a | 0.550 ± 0.071 | 2 |"
