"""Paired statistics of a comparison: intervals of each recipe's mean, and its paired difference to a baseline.

Every recipe of a comparison is evaluated on the same label subsets with the same
training seeds, so two recipes' runs pair up by (label fraction, subset seed, seed):
the difference of a pair removes what the subset and the seed do to both. That is what
tells methods apart when the seed alone moves a score by more than any method does.

Pairs are counted over *distinct* label subsets: a label fraction of 1 is every label
whatever its subset seed, so its runs with one training seed are one run repeated, not
independent pairs; they collapse into one (their mean) before anything is counted
(``geocl compare`` does not even run them twice).

- **Mean and its interval** per (recipe, label fraction): the mean over successful
  runs and Student's t interval ``mean ± t(0.975, n-1) s / sqrt(n)`` (``scipy.stats.t``);
  undefined (NaN) for a single run.
- **Paired difference** to the baseline recipe: the mean of ``recipe - baseline`` over
  the pairs both have, its 95 % percentile bootstrap interval over the pairs
  (``scipy.stats.bootstrap``, 9999 resamples, seeded so that a report is reproducible),
  and the counts of wins and losses. When the interval covers 0 the difference is
  *not distinguishable*; a single pair gives no interval: "too few pairs".
- **Too few pairs**: an interval that excludes 0 from fewer than :data:`MIN_PAIRS`
  pairs gives no verdict. The percentile bootstrap of a handful of pairs excludes 0
  whenever they all share a sign (every resample mean does), whatever their count,
  while the chance of that with no real difference is ``2 * 0.5**n``: 0.5 for two
  pairs, 0.06 for five, 0.03 for six, the first count at which it falls below 5 %
  (the exact sign test's smallest sample that can reject at the 5 % level).

The percentile method, not BCa: with the few pairs a comparison has (often 2-10) BCa's
acceleration estimate is unstable or undefined, and the percentile interval of the
mean is what a reader checks by hand.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from geocl.io import save_figure
from geocl.report.columns import MetricColumns

#: The interval's confidence level.
CONFIDENCE = 0.95
#: Bootstrap resamples of the paired differences.
RESAMPLES = 9999
#: Pairs below which no verdict is given (see the module docstring: the sign test's smallest
#: sample that can reject at 5 %).
MIN_PAIRS = 6
#: Columns that pair two recipes' runs (those the frame has).
PAIR_KEYS = ("label_fraction", "subset_seed", "seed")


@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided interval (NaN bounds where it is undefined)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def covers_zero(self) -> bool:
        return not (self.low > 0 or self.high < 0)


@dataclass(frozen=True)
class PairedDifference(Interval):
    """``recipe - baseline`` over the pairs both have, with wins and losses."""

    wins: int = 0
    losses: int = 0

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies on one side of 0 (never for a single pair)."""
        return self.n >= 2 and not math.isnan(self.low) and not self.covers_zero

    @property
    def distinguishable(self) -> bool:
        """Whether the interval excludes 0 over at least :data:`MIN_PAIRS` pairs."""
        return self.excludes_zero and self.n >= MIN_PAIRS

    @property
    def verdict(self) -> str:
        if self.n == 0:
            return "no pairs"
        if self.n == 1:
            return "too few pairs"  # no interval at all: nothing was tested
        if not self.excludes_zero:
            return "not distinguishable"
        if self.n < MIN_PAIRS:
            return "too few pairs"
        return "better" if self.mean > 0 else "worse"


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean and Student's t interval of independent runs."""
    data = np.asarray(values, dtype=np.float64)
    n = len(data)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(data.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * data.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n)


def paired_difference(
    differences: Sequence[float], confidence: float = CONFIDENCE, seed: int = 0, resamples: int = RESAMPLES
) -> PairedDifference:
    """Mean paired difference, its percentile bootstrap interval, wins and losses."""
    data = np.asarray(differences, dtype=np.float64)
    n = len(data)
    wins, losses = int((data > 0).sum()), int((data < 0).sum())
    if n == 0:
        return PairedDifference(math.nan, math.nan, math.nan, 0)
    mean = float(data.mean())
    if n == 1:
        return PairedDifference(mean, math.nan, math.nan, 1, wins, losses)
    if np.ptp(data) == 0:  # every resample has the same mean: the interval is that point
        return PairedDifference(mean, mean, mean, n, wins, losses)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's note on few distinct resample means
        result = stats.bootstrap(
            (data,),
            np.mean,
            confidence_level=confidence,
            n_resamples=resamples,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    low, high = result.confidence_interval
    return PairedDifference(mean, float(low), float(high), n, wins, losses)


def paired_summary(results: pd.DataFrame, metric: str, baseline: str) -> pd.DataFrame:
    """Per (recipe, label fraction): mean with interval, and the paired difference to ``baseline``.

    Args:
        results: ``results.csv`` rows (``recipe``, ``status``, ``seed``, the metric;
            ``label_fraction`` and ``subset_seed`` where present).
        metric: the metric column.
        baseline: the recipe the others are compared with.

    Returns:
        Columns ``recipe, label_fraction, mean, low, high, n, delta, delta_low,
        delta_high, pairs, wins, losses, verdict`` (the baseline's own row has no delta).
    """
    values = pd.to_numeric(results[metric], errors="coerce")
    ok = values.notna()
    if "status" in results:
        ok &= results["status"].astype(str) == "ok"
    frame = results.assign(_value=values)[ok]
    if "label_fraction" not in frame:
        frame = frame.assign(label_fraction=1.0)
    keys = [key for key in PAIR_KEYS if key in frame.columns]
    frame = distinct_runs(frame, keys)
    rows = []
    for recipe in results["recipe"].drop_duplicates():
        for fraction in sorted(frame["label_fraction"].astype(float).unique()):
            mine = frame[(frame["recipe"] == recipe) & (frame["label_fraction"].astype(float) == fraction)]
            cell = mean_interval(mine["_value"].tolist())
            row = {
                "recipe": recipe,
                "label_fraction": fraction,
                "mean": cell.mean,
                "low": cell.low,
                "high": cell.high,
                "n": cell.n,
            }
            if recipe != baseline:
                base = frame[(frame["recipe"] == baseline) & (frame["label_fraction"].astype(float) == fraction)]
                pairs = mine[keys + ["_value"]].merge(base[keys + ["_value"]], on=keys, suffixes=("", "_base"))
                diff = paired_difference((pairs["_value"] - pairs["_value_base"]).tolist())
                row.update(_difference_fields(diff, diff.verdict))
            rows.append(row)
    return pd.DataFrame(rows, columns=["recipe", "label_fraction", "mean", "low", "high", "n", *DIFFERENCE_COLUMNS])


#: The columns a paired difference fills in a summary (:func:`paired_summary`, :func:`budget_gains`).
DIFFERENCE_COLUMNS = ["delta", "delta_low", "delta_high", "pairs", "wins", "losses", "verdict"]


def _difference_fields(diff: PairedDifference, verdict: str) -> dict[str, Any]:
    """:data:`DIFFERENCE_COLUMNS` of one paired difference."""
    return {
        "delta": diff.mean,
        "delta_low": diff.low,
        "delta_high": diff.high,
        "pairs": diff.n,
        "wins": diff.wins,
        "losses": diff.losses,
        "verdict": verdict,
    }


#: The subset seed every run with all labels is counted under (they all hold the same labels).
ALL_LABELS_SUBSET = -1


def distinct_runs(frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """One row per (recipe, distinct label subset, seed): runs on the same labels with the same seed averaged.

    A label fraction of 1 holds every label whatever its subset seed, so its subset
    seed is set to :data:`ALL_LABELS_SUBSET` first; ``_value`` holds the metric.
    """
    if "subset_seed" not in frame.columns or frame.empty:
        return frame
    every_label = frame["label_fraction"].astype(float) >= 1.0
    if not every_label.any():
        return frame
    frame = frame.assign(subset_seed=frame["subset_seed"].where(~every_label, ALL_LABELS_SUBSET))
    return frame.groupby(["recipe", *keys], as_index=False, sort=False, dropna=False)["_value"].mean()


def _number(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _signed(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:+.3f}"


def paired_markdown(summary: pd.DataFrame, metric_label: str, baseline: str) -> str:
    """The paired summary as a markdown table, with how to read it."""
    lines = [
        f"{metric_label}: mean [95 % t interval] over runs, and the paired difference to {baseline} "
        f"[95 % percentile bootstrap interval over the pairs of label subset and seed]; "
        f"a difference whose interval covers 0 is not distinguishable; one whose interval excludes 0 "
        f"from fewer than {MIN_PAIRS} pairs gets no verdict (too few pairs: they share a sign by chance "
        f"too often).",
        "",
        f"| recipe | label fraction | mean [95 % CI] | n | Δ vs {baseline} [95 % CI] | wins / losses | verdict |",
        "|---|---:|---|---:|---|---:|---|",
    ]
    for row in summary.itertuples(index=False):
        interval = f"{_number(row.mean)} [{_number(row.low)}, {_number(row.high)}]"
        if row.recipe == baseline:
            delta, record, verdict = "(baseline)", "", ""
        else:
            delta = f"{_signed(row.delta)} [{_signed(row.delta_low)}, {_signed(row.delta_high)}]"
            record = f"{int(row.wins)} / {int(row.losses)} of {int(row.pairs)}"
            verdict = str(row.verdict)
        lines.append(
            f"| {row.recipe} | {row.label_fraction:g} | {interval} | {int(row.n)} | {delta} | {record} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def plot_paired(
    summary: pd.DataFrame, out_png: str | os.PathLike[str], metric_label: str, baseline: str, group_labels: bool = False
) -> Path:
    """A forest plot of the paired differences: one row per (recipe, label fraction), 0 marked.

    Each row shows the mean difference to ``baseline`` and its 95 % bootstrap interval;
    a filled marker is a distinguishable difference, a hollow one is not. With
    ``group_labels`` the rows also name their ``evaluation`` and ``pretrain_steps``.
    """
    from matplotlib.figure import Figure  # a bare Figure: no pyplot state

    rows = summary[summary["recipe"] != baseline].reset_index(drop=True)
    figure = Figure(figsize=(7, max(2.5, 0.45 * len(rows) + 1.5)))
    axes = figure.add_subplot()
    for index, row in rows.iterrows():
        y = len(rows) - 1 - index
        if not math.isnan(row["delta_low"]):
            axes.plot([row["delta_low"], row["delta_high"]], [y, y], color="0.3", linewidth=2)
        filled = row["verdict"] in ("better", "worse")
        axes.plot(row["delta"], y, "o", color="tab:blue", markerfacecolor="tab:blue" if filled else "white")
    axes.axvline(0.0, color="tab:red", linewidth=1)

    def label(row: Any) -> str:
        text = f"{row.recipe} @ {row.label_fraction:g}"
        if group_labels:
            steps = getattr(row, "pretrain_steps", None)
            text += f", {row.evaluation}" + ("" if steps is None or pd.isna(steps) else f", {int(steps)} steps")
        return text

    axes.set_yticks(range(len(rows)), [label(r) for r in rows.itertuples()][::-1])
    axes.set_xlabel(f"{metric_label} − {baseline} (paired, 95 % bootstrap interval)")
    axes.set_title(f"Paired differences to {baseline}; hollow: interval covers 0")
    axes.grid(True, axis="x", alpha=0.3)
    figure.tight_layout()
    return save_figure(figure, out_png)


#: The row of a comparison's random encoder (never trained): its step 0 in a budget sweep.
RANDOM_INIT = "random-init"
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


def budget_gains(results: pd.DataFrame, metric: str, from_step_zero: Collection[str] | None = None) -> pd.DataFrame:
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

    Returns:
        Columns :data:`GAIN_COLUMNS`, one row per (recipe, label fraction, step between
        consecutive budgets); ``verdict`` is "still rising", "falling", "no gain
        detected" or, with fewer than :data:`MIN_PAIRS` pairs, "too few pairs".
    """
    values = pd.to_numeric(results[metric], errors="coerce")
    ok = values.notna()
    if "status" in results:
        ok &= results["status"].astype(str) == "ok"
    frame = results.assign(_value=values, _steps=pd.to_numeric(results["pretrain_steps"], errors="coerce"))[ok]
    frame = frame.assign(label_fraction=frame["label_fraction"].astype(float))
    keys = [key for key in PAIR_KEYS if key in frame.columns]
    frame = distinct_runs(frame, [*keys, "_steps"])  # runs on the same labels, per budget
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
                gain = paired_difference((pairs["_value"] - pairs["_value_before"]).tolist())
                rows.append(
                    {
                        "recipe": recipe,
                        "label_fraction": fraction,
                        "from_steps": before_steps,
                        "to_steps": after_steps,
                        **_difference_fields(gain, _GAIN_VERDICTS.get(gain.verdict, gain.verdict)),
                    }
                )
    return pd.DataFrame(rows, columns=GAIN_COLUMNS)


def budget_gains_markdown(gains: pd.DataFrame, metric_label: str) -> str:
    """:func:`budget_gains` as a markdown table, with how to read it."""
    lines = [
        f"{metric_label} gained from each budget to the next: the same recipe's runs paired by label subset "
        f"and seed (step 0: the random-init row) [95 % percentile bootstrap interval]. A curve has flattened "
        f"where the gain is no longer distinguishable from 0; a gain smaller than about half its interval's "
        f"width may still be there.",
        "",
        "| recipe | label fraction | steps | gain [95 % CI] | wins / losses | verdict |",
        "|---|---:|---|---|---:|---|",
    ]
    for row in gains.itertuples(index=False):
        gain = f"{_signed(row.delta)} [{_signed(row.delta_low)}, {_signed(row.delta_high)}]"
        lines.append(
            f"| {row.recipe} | {row.label_fraction:g} | {row.from_steps} → {row.to_steps} | {gain} | "
            f"{int(row.wins)} / {int(row.losses)} of {int(row.pairs)} | {row.verdict} |"
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
    (evaluation, label fraction). The points are :func:`budget_curves`'.

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
    figure.tight_layout()
    return save_figure(figure, out_png)


def _error(line: pd.DataFrame) -> list[pd.Series]:
    """Asymmetric error bars from a curve's interval (none where it is undefined: one run)."""
    return [(line["mean"] - line["low"]).fillna(0.0), (line["high"] - line["mean"]).fillna(0.0)]
