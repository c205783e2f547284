"""Learning curves of a budget sweep: each recipe's score against pretraining steps, and where it flattens.

A sweep (``geocl compare --pretrain-steps 0 300 1000 …``) evaluates every recipe at each
budget on the same label subsets and seeds, and budget 0 is the random-init row (the
encoder before any step). :func:`budget_curves` gives the points ``results_budget.png``
draws (:func:`plot_budgets`), each with its interval; :func:`budget_gains` pairs a recipe's
runs at one budget with its runs at the budget before, as two recipes' runs are paired
(:mod:`geocl.report.paired`), so a gain is a paired difference with its bootstrap interval:
a curve has flattened where that gain is no longer distinguishable from 0.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from geocl.io import save_figure
from geocl.report.columns import MetricColumns
from geocl.report.paired import (
    DIFFERENCE_COLUMNS,
    RANDOM_INIT,
    difference_fields,
    difference_text,
    means_over_pretrainings,
    paired_difference,
    per_pretraining_note,
    pretraining_of,
    record_text,
    scored_runs,
)

#: Columns of :func:`budget_curves`.
CURVE_COLUMNS = ["evaluation", "label_fraction", "recipe", "pretrain_steps", "mean", "low", "high", "n"]


def budget_curves(summary: pd.DataFrame, from_step_zero: Collection[str] | None = None) -> pd.DataFrame:
    """The points ``results_budget.png`` draws: score against pretraining steps per recipe.

    Args:
        summary: :func:`paired_summary` rows of every group of a sweep with ``evaluation``
            and ``pretrain_steps`` (the group's budget) columns; :data:`RANDOM_INIT` is in
            every group with the same numbers, and alone in budget 0's group.
        from_step_zero: the recipes whose encoder before its first step is the random-init
            row's (default: every recipe).

    Returns:
        Columns :data:`CURVE_COLUMNS`, one row per (evaluation, label fraction, recipe,
        steps). :data:`RANDOM_INIT` once per (evaluation, label fraction): at steps 0 when
        the sweep has budget 0, else with steps NaN (a level without steps). Every other
        recipe at its budgets, preceded at 0 by the random-init numbers (the same row,
        not a run of its own) when the sweep has budget 0 and ``from_step_zero`` names it.
    """
    steps = pd.to_numeric(summary["pretrain_steps"], errors="coerce")
    frame = summary.assign(pretrain_steps=steps, label_fraction=summary["label_fraction"].astype(float))
    points: list[dict[str, Any]] = []
    for (evaluation, fraction), cell in frame.groupby(["evaluation", "label_fraction"], sort=False):
        random = cell[cell["recipe"] == RANDOM_INIT]
        start = random[random["pretrain_steps"] == 0]
        reference = (start if len(start) else random).head(1)
        for row in reference.itertuples():
            points.append(
                {
                    "evaluation": evaluation,
                    "label_fraction": fraction,
                    "recipe": RANDOM_INIT,
                    "pretrain_steps": 0 if len(start) else math.nan,
                    "mean": row.mean,
                    "low": row.low,
                    "high": row.high,
                    "n": row.n,
                }
            )
        trained = cell[(cell["recipe"] != RANDOM_INIT) & (cell["pretrain_steps"] > 0)]
        for recipe in trained["recipe"].drop_duplicates():
            if len(start) and (from_step_zero is None or recipe in from_step_zero):
                points.append(
                    {"evaluation": evaluation, "label_fraction": fraction, "recipe": recipe, **_start_point(start)}
                )
            for row in trained[trained["recipe"] == recipe].sort_values("pretrain_steps").itertuples():
                points.append(
                    {
                        "evaluation": evaluation,
                        "label_fraction": fraction,
                        "recipe": recipe,
                        "pretrain_steps": row.pretrain_steps,
                        "mean": row.mean,
                        "low": row.low,
                        "high": row.high,
                        "n": row.n,
                    }
                )
    curves = pd.DataFrame(points, columns=CURVE_COLUMNS)
    return curves.astype({"pretrain_steps": float})


#: Columns of :func:`budget_gains`.
GAIN_COLUMNS = ["recipe", "label_fraction", "from_steps", "to_steps", *DIFFERENCE_COLUMNS]
#: A budget step's verdict, from that of its paired difference.
_GAIN_VERDICTS = {"better": "still rising", "worse": "falling", "not distinguishable": "no gain detected"}


def budget_gains(
    results: pd.DataFrame,
    metric: str,
    from_step_zero: Collection[str] | None = None,
    pretrain_seeds: Mapping[str, int] | None = None,
) -> pd.DataFrame:
    """Where a learning curve flattens: each recipe's paired gain from one budget of a sweep to the next.

    The runs of one recipe at two budgets pair up as two recipes' runs do (label
    fraction, subset seed, seed), so the gain of a budget step is a paired difference
    (:func:`paired_difference`): what the extra steps added on the same labels and
    seeds. A curve has flattened where the gain is no longer distinguishable from 0;
    a gain smaller than about half the interval's width may still be there.

    Args:
        results: ``results.csv`` rows of one evaluation of a sweep (``pretrain_steps``;
            :data:`RANDOM_INIT` at 0 when the sweep has budget 0).
        metric: the metric column.
        from_step_zero: the recipes whose first step is taken from the random-init
            row (their encoder before training is that row's; default: every recipe).
        pretrain_seeds: by recipe, its pretrainings at each budget (the run of seed ``s``
            read pretraining ``s mod N``): a gain is then the mean of each pretraining's own,
            with Student's t interval over them (:func:`~geocl.report.paired.paired_difference`).

    Returns:
        Columns :data:`GAIN_COLUMNS`, one row per (recipe, label fraction, step between
        consecutive budgets); ``verdict`` is "still rising", "falling", "no gain
        detected" or, with fewer than :data:`MIN_PAIRS` pairs, "too few pairs".
    """
    steps = results.assign(_steps=pd.to_numeric(results["pretrain_steps"], errors="coerce"))
    frame, keys = scored_runs(steps, metric, by=["_steps"])  # runs on the same labels, per budget
    frame = frame.assign(label_fraction=frame["label_fraction"].astype(float))
    start = frame[(frame["recipe"] == RANDOM_INIT) & (frame["_steps"] == 0)]
    rows = []
    for recipe in frame["recipe"].drop_duplicates():
        if recipe == RANDOM_INIT:
            continue
        for fraction in sorted(frame["label_fraction"].unique()):
            mine = frame[(frame["recipe"] == recipe) & (frame["label_fraction"] == fraction) & (frame["_steps"] > 0)]
            points = [(int(steps), mine[mine["_steps"] == steps]) for steps in sorted(mine["_steps"].unique())]
            if len(start) and (from_step_zero is None or recipe in from_step_zero):
                points.insert(0, (0, start[start["label_fraction"] == fraction]))
            for (before_steps, before), (after_steps, after) in zip(points, points[1:], strict=False):
                pairs = after[keys + ["_value"]].merge(before[keys + ["_value"]], on=keys, suffixes=("", "_before"))
                gain = paired_difference(
                    (pairs["_value"] - pairs["_value_before"]).tolist(),
                    pretrainings=pretraining_of(pairs, pretrain_seeds, recipe),
                )
                rows.append(
                    {
                        "recipe": recipe,
                        "label_fraction": fraction,
                        "from_steps": before_steps,
                        "to_steps": after_steps,
                        **difference_fields(gain, _GAIN_VERDICTS.get(gain.verdict, gain.verdict)),
                    }
                )
    return pd.DataFrame(rows, columns=GAIN_COLUMNS)


def budget_gains_markdown(gains: pd.DataFrame, metric_label: str) -> str:
    """:func:`budget_gains` as a markdown table, with how to read it."""
    lines = [
        f"{metric_label} gained from each budget to the next: the same recipe's runs paired by label subset "
        f"and seed (step 0: the random-init row) [95 % percentile bootstrap interval]. A curve has flattened "
        f"where the gain is no longer distinguishable from 0; a gain smaller than about half its interval's "
        f"width may still be there." + per_pretraining_note(gains),
        "",
        "| recipe | label fraction | steps | gain [95 % CI] | wins / losses | verdict |",
        "|---|---:|---|---|---:|---|",
    ]
    for row in gains.itertuples(index=False):
        lines.append(
            f"| {row.recipe} | {row.label_fraction:g} | {row.from_steps} → {row.to_steps} | {difference_text(row)} | "
            f"{record_text(row)} | {row.verdict} |"
        )
    return "\n".join(lines) + "\n"


def _start_point(start: pd.DataFrame) -> dict[str, Any]:
    """Step 0 of a curve: the random-init row's numbers."""
    row = start.iloc[0]
    return {"pretrain_steps": 0, "mean": row["mean"], "low": row["low"], "high": row["high"], "n": row["n"]}


def plot_budgets(
    summary: pd.DataFrame,
    out_png: str | os.PathLike[str],
    evaluations: Sequence[MetricColumns],
    from_step_zero: Collection[str] | None = None,
) -> Path:
    """Score against pretraining steps, one line a recipe with its 95 % t interval; one panel per
    (evaluation, label fraction). The points are :func:`budget_curves`': their interval is over
    runs, or over the pretrainings' means of a recipe pretrained several times (``--pretrain-seeds``;
    the figure then says so).

    With budget 0 each curve of ``from_step_zero`` starts at step 0, the random-init row
    (a grey square with its interval, drawn once), and the x axis is linear up to the
    smallest positive budget, logarithmic above (symlog); without it the axis is
    logarithmic and random init, which has no steps, is a grey band (its interval).

    Args:
        summary: :func:`paired_summary` rows of every group with ``evaluation`` and
            ``pretrain_steps`` columns (see :func:`budget_curves`).
        out_png: the PNG path.
        evaluations: the metric columns of the comparison's evaluations (``name`` matches the
            ``evaluation`` column; titles and labels), in panel order.
        from_step_zero: the recipes whose curves start at the random-init row
            (default: every recipe).
    """
    from matplotlib.figure import Figure  # a bare Figure: no pyplot state

    curves = budget_curves(summary, from_step_zero)
    fractions = sorted(curves["label_fraction"].unique())
    panels = [(evaluation, fraction) for evaluation in evaluations for fraction in fractions]
    figure = Figure(figsize=(6.5 * max(1, len(panels)), 4.5))
    for index, (evaluation, fraction) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        cell = curves[(curves["evaluation"] == evaluation.name) & (curves["label_fraction"] == fraction)]
        random = cell[cell["recipe"] == RANDOM_INIT]
        for row in random[random["pretrain_steps"].isna()].itertuples():
            if not math.isnan(row.low):
                axes.axhspan(row.low, row.high, color="0.85", label=f"{row.recipe} (95 % interval)")
            axes.axhline(row.mean, color="0.45", linestyle="--")
        for recipe in cell.loc[cell["recipe"] != RANDOM_INIT, "recipe"].drop_duplicates():
            line = cell[cell["recipe"] == recipe]
            axes.errorbar(line["pretrain_steps"], line["mean"], yerr=_error(line), marker="o", capsize=3, label=recipe)
        start = random[random["pretrain_steps"] == 0]
        if len(start):  # drawn last, over the curves that start there
            axes.errorbar(
                start["pretrain_steps"],
                start["mean"],
                yerr=_error(start),
                marker="s",
                markersize=8,
                capsize=3,
                color="0.3",
                linestyle="none",
                label=f"{RANDOM_INIT} (step 0)",
                zorder=3,
            )
        steps = sorted(cell["pretrain_steps"].dropna().unique())
        positive = [value for value in steps if value > 0]
        if len(start):
            axes.set_xscale("symlog", linthresh=positive[0] if positive else 1.0)
            axes.set_xlabel(f"pretraining steps (0: random init; log scale from {positive[0] if positive else 1:g})")
        else:
            axes.set_xscale("log")
            axes.set_xlabel("pretraining steps (log scale)")
        if steps:
            axes.set_xticks(steps, [f"{value:g}" for value in steps])
            axes.minorticks_off()
        axes.set_ylabel(evaluation.axis_label)
        axes.set_title(f"{evaluation.title} at label fraction {fraction:g}, {evaluation.name} protocol")
        axes.grid(True, alpha=0.3)
        axes.legend()
    if means_over_pretrainings(summary):
        figure.suptitle("95 % t interval over runs;\nover pretrainings for a recipe pretrained several times")
    figure.tight_layout()
    return save_figure(figure, out_png)


def _error(line: pd.DataFrame) -> list[pd.Series]:
    """Asymmetric error bars from a curve's interval (none where it is undefined: one run)."""
    return [(line["mean"] - line["low"]).fillna(0.0), (line["high"] - line["mean"]).fillna(0.0)]
