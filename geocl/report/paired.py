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
  undefined (NaN) for a single run; over the pretrainings' means instead for a recipe
  pretrained several times (below).
- **Paired difference** to the baseline recipe: the mean of ``recipe - baseline`` over
  the pairs both have, its 95 % percentile bootstrap interval over the pairs
  (``scipy.stats.bootstrap``, 9999 resamples, seeded so that a report is reproducible),
  and the counts of wins and losses. When the interval covers 0 the difference is
  *not distinguishable*; a single pair gives no interval: "too few pairs".
- **Every other pair** (:func:`pairwise_differences`): the same paired difference between
  any two recipes of a group besides the baseline, the one with the higher mean first
  (GraSS − SimCLR in a comparison whose baseline is random init).
- **Too few pairs**: an interval that excludes 0 from fewer than :data:`MIN_PAIRS`
  pairs gives no verdict. The percentile bootstrap of a handful of pairs excludes 0
  whenever they all share a sign (every resample mean does), whatever their count,
  while the chance of that with no real difference is ``2 * 0.5**n``: 0.5 for two
  pairs, 0.06 for five, 0.03 for six, the first count at which it falls below 5 %
  (the exact sign test's smallest sample that can reject at the 5 % level).

- **Several pretrainings** (``geocl compare --pretrain-seeds N``): the run of seed ``s``
  reads pretraining ``s mod N`` of each recipe, so the pairs of one pretraining share
  its luck: twelve pairs from two pretrainings are two draws of it, not twelve. No
  resampling of two values can tell how far a third would lie (a bootstrap over the
  pretrainings keeps (N-1)/N of their spread; with two it covers the truth about half
  the time when pretrainings differ more than pairs do). The pretraining is then the
  unit that repeats: each pretraining's mean difference over its pairs
  (``by_pretraining``), and Student's t interval over those N values (N-1 degrees of
  freedom), centred on their mean, each pretraining weighing the same whatever its
  count of pairs. It assumes their differences are roughly normal; with two,
  t(0.975, 1) = 12.7 keeps the interval wide unless they agree closely, which is what two
  draws can support. Where only one pretraining has pairs left (the other's runs
  failed), there is no interval: "too few pretrainings". A recipe's own mean is taken the
  same way (:func:`recipe_interval`): the mean of its pretrainings' means, with the t
  interval over them, so its cell and its point on a learning curve say how far a new
  pretraining's score may lie, not only a new label subset's.

The percentile method, not BCa: with the few pairs a comparison has (often 2-10) BCa's
acceleration estimate is unstable or undefined, and the percentile interval of the
mean is what a reader checks by hand.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from geocl.io import save_figure

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
    #: The mean difference of each pretraining's pairs (several pretrainings only), in pretraining order.
    by_pretraining: tuple[float, ...] = ()

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
        if len(self.by_pretraining) == 1:
            return "too few pretrainings"  # pretrainings were compared, and one is left: no interval
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


def pretraining_means(values: Sequence[float], pretrainings: Sequence[int]) -> tuple[float, ...]:
    """Each pretraining's mean of ``values`` (one pretraining per value), in pretraining order."""
    data, groups = np.asarray(values, dtype=np.float64), np.asarray(pretrainings)
    return tuple(float(data[groups == group].mean()) for group in np.unique(groups))


def recipe_interval(
    values: Sequence[float], pretrainings: Sequence[int] | None = None, confidence: float = CONFIDENCE
) -> Interval:
    """A recipe's mean score and its interval: Student's t over its runs, or, where its runs
    read several pretrainings, over the pretrainings' own means (each weighs the same, as in
    :func:`paired_difference`); ``n`` stays the count of runs. The runs of one pretraining
    share its luck, so an interval over them would not cover a new pretraining's score."""
    if pretrainings is None:
        return mean_interval(values, confidence)
    over = mean_interval(pretraining_means(values, pretrainings), confidence)  # one value: no interval
    return Interval(over.mean, over.low, over.high, len(values))


def paired_difference(
    differences: Sequence[float],
    confidence: float = CONFIDENCE,
    seed: int = 0,
    resamples: int = RESAMPLES,
    pretrainings: Sequence[int] | None = None,
) -> PairedDifference:
    """Mean paired difference, its percentile bootstrap interval, wins and losses.

    ``pretrainings``: the pretraining each pair read (one per difference). Given, the
    difference is summarised over the pretrainings instead (module docstring):
    ``by_pretraining`` holds each one's mean difference, and the mean and interval are
    :func:`mean_interval`'s over them.
    """
    data = np.asarray(differences, dtype=np.float64)
    n = len(data)
    wins, losses = int((data > 0).sum()), int((data < 0).sum())
    if n == 0:
        return PairedDifference(math.nan, math.nan, math.nan, 0)
    if pretrainings is not None:
        by = pretraining_means(differences, pretrainings)
        over = mean_interval(by, confidence)  # one value: no interval
        return PairedDifference(over.mean, over.low, over.high, n, wins, losses, by)
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


def paired_summary(
    results: pd.DataFrame, metric: str, baseline: str, pretrain_seeds: Mapping[str, int] | None = None
) -> pd.DataFrame:
    """Per (recipe, label fraction): mean with interval, and the paired difference to ``baseline``.

    Args:
        results: ``results.csv`` rows (``recipe``, ``status``, ``seed``, the metric;
            ``label_fraction`` and ``subset_seed`` where present).
        metric: the metric column.
        baseline: the recipe the others are compared with.
        pretrain_seeds: by recipe, how many times it was pretrained: the run of seed ``s``
            read pretraining ``s mod N`` (see the module docstring); a recipe not named
            reads no pretraining (random init, a semi-supervised row), and the pairs of two
            such recipes share nothing to resample.

    Returns:
        Columns ``recipe, label_fraction, mean, low, high, n, pretrainings, delta, delta_low,
        delta_high, pairs, wins, losses, by_pretraining, verdict`` (the baseline's own row has
        no delta). ``mean``/``low``/``high`` are :func:`recipe_interval`'s: over the runs, or
        over the ``pretrainings`` (their count; 0 where over runs) of a recipe pretrained
        several times; ``n`` counts runs.
    """
    frame, keys = scored_runs(results, metric)
    rows = []
    for recipe in results["recipe"].drop_duplicates():
        for fraction in sorted(frame["label_fraction"].astype(float).unique()):
            mine = frame[(frame["recipe"] == recipe) & (frame["label_fraction"].astype(float) == fraction)]
            pretrainings = pretraining_of(mine, pretrain_seeds, recipe)
            cell = recipe_interval(mine["_value"].tolist(), pretrainings)
            row = {
                "recipe": recipe,
                "label_fraction": fraction,
                "mean": cell.mean,
                "low": cell.low,
                "high": cell.high,
                "n": cell.n,
                "pretrainings": len(set(pretrainings or ())),
            }
            if recipe != baseline:
                base = frame[(frame["recipe"] == baseline) & (frame["label_fraction"].astype(float) == fraction)]
                pairs = mine[keys + ["_value"]].merge(base[keys + ["_value"]], on=keys, suffixes=("", "_base"))
                diff = paired_difference(
                    (pairs["_value"] - pairs["_value_base"]).tolist(),
                    pretrainings=pretraining_of(pairs, pretrain_seeds, recipe, baseline),
                )
                row.update(difference_fields(diff, diff.verdict))
            rows.append(row)
    columns = ["recipe", "label_fraction", "mean", "low", "high", "n", "pretrainings", *DIFFERENCE_COLUMNS]
    return pd.DataFrame(rows, columns=columns)


def scored_runs(results: pd.DataFrame, metric: str, by: Sequence[str] = ()) -> tuple[pd.DataFrame, list[str]]:
    """The runs that succeeded, the metric as ``_value``, one per distinct labels and seed; the pair keys.

    ``by``: further columns that tell runs apart (a sweep's budget), kept out of the pair keys.
    """
    values = pd.to_numeric(results[metric], errors="coerce")
    ok = values.notna()
    if "status" in results:
        ok &= results["status"].astype(str) == "ok"
    frame = results.assign(_value=values)[ok]
    if "label_fraction" not in frame:
        frame = frame.assign(label_fraction=1.0)
    keys = [key for key in PAIR_KEYS if key in frame.columns]
    return distinct_runs(frame, [*keys, *by]), keys


def pretraining_of(pairs: pd.DataFrame, pretrain_seeds: Mapping[str, int] | None, *recipes: str) -> list[int] | None:
    """The pretraining each pair of ``recipes``' runs read: its seed mod N; None where neither was
    pretrained more than once. ``geocl compare`` pretrains every recipe that pretrains N times,
    so two recipes' counts are N or 1 (no pretraining), and N, the larger, is the one to use."""
    count = max((pretrain_seeds or {}).get(recipe, 1) for recipe in recipes)
    if count <= 1 or "seed" not in pairs.columns:
        return None
    return (pairs["seed"].astype(int) % count).tolist()


#: The columns a paired difference fills in a summary (:func:`paired_summary`, :func:`pairwise_differences`,
#: :func:`geocl.report.budgets.budget_gains`).
DIFFERENCE_COLUMNS = ["delta", "delta_low", "delta_high", "pairs", "wins", "losses", "by_pretraining", "verdict"]


def difference_fields(diff: PairedDifference, verdict: str) -> dict[str, Any]:
    """:data:`DIFFERENCE_COLUMNS` of one paired difference (:mod:`geocl.report.budgets` fills them too)."""
    return {
        "delta": diff.mean,
        "delta_low": diff.low,
        "delta_high": diff.high,
        "pairs": diff.n,
        "wins": diff.wins,
        "losses": diff.losses,
        "by_pretraining": " ".join(f"{value:+.6f}" for value in diff.by_pretraining),
        "verdict": verdict,
    }


#: Columns of :func:`pairwise_differences`.
PAIRWISE_COLUMNS = ["recipe", "versus", "label_fraction", "mean", "versus_mean", *DIFFERENCE_COLUMNS]


def pairwise_differences(
    results: pd.DataFrame, metric: str, without: str | None = None, pretrain_seeds: Mapping[str, int] | None = None
) -> pd.DataFrame:
    """The paired difference of every two recipes, per label fraction, the higher mean first.

    A comparison's table pairs each recipe with its baseline; this answers the other
    questions its rows can answer (GraSS against SimCLR when the baseline is random init)
    with the same pairs (label fraction, subset seed, seed) and the same bootstrap.

    Args:
        results: ``results.csv`` rows of one group (one evaluation and budget).
        metric: the metric column.
        without: a recipe whose pairs are left out (the baseline: they are in the table above).
        pretrain_seeds: as in :func:`paired_summary`.

    Returns:
        Columns :data:`PAIRWISE_COLUMNS`: ``recipe - versus`` with ``recipe`` the one with
        the higher mean over the pairs, so every difference reads as how much it is ahead.
    """
    frame, keys = scored_runs(results, metric)
    recipes = [name for name in results["recipe"].drop_duplicates() if name != without]
    rows = []
    for fraction in sorted(frame["label_fraction"].astype(float).unique()):
        at = frame[frame["label_fraction"].astype(float) == fraction]
        for index, first in enumerate(recipes):
            for second in recipes[index + 1 :]:
                pairs = at[at["recipe"] == first][keys + ["_value"]].merge(
                    at[at["recipe"] == second][keys + ["_value"]], on=keys, suffixes=("", "_versus")
                )
                if pairs.empty:
                    continue
                ahead, behind = (
                    (first, second) if pairs["_value"].mean() >= pairs["_value_versus"].mean() else (second, first)
                )
                lead, trail = ("_value", "_value_versus") if ahead == first else ("_value_versus", "_value")
                diff = paired_difference(
                    (pairs[lead] - pairs[trail]).tolist(),
                    pretrainings=pretraining_of(pairs, pretrain_seeds, first, second),
                )
                rows.append(
                    {
                        "recipe": ahead,
                        "versus": behind,
                        "label_fraction": fraction,
                        "mean": float(pairs[lead].mean()),
                        "versus_mean": float(pairs[trail].mean()),
                        **difference_fields(diff, diff.verdict),
                    }
                )
    return pd.DataFrame(rows, columns=PAIRWISE_COLUMNS)


def pairwise_markdown(pairwise: pd.DataFrame, metric_label: str) -> str:
    """:func:`pairwise_differences` as a markdown table, with how to read it ("" when empty)."""
    if pairwise.empty:
        return ""
    lines = [
        f"Between the other recipes: {metric_label} of the one ahead minus the other's, over the runs both "
        "have (same label subset and seed) [95 % percentile bootstrap interval]." + per_pretraining_note(pairwise),
        "",
        "| recipe | versus | label fraction | means | Δ [95 % CI] | wins / losses | verdict |",
        "|---|---|---:|---|---|---:|---|",
    ]
    for row in pairwise.itertuples(index=False):
        means = f"{_number(row.mean)} vs {_number(row.versus_mean)}"
        lines.append(
            f"| {row.recipe} | {row.versus} | {row.label_fraction:g} | {means} | {difference_text(row)} | "
            f"{record_text(row)} | {row.verdict} |"
        )
    return "\n".join(lines) + "\n"


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
    """A score in a report's tables (3 decimals, – for none)."""
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _signed(value: float) -> str:
    """A difference in a report's tables (signed, 3 decimals, – for none)."""
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:+.3f}"


def _lists_pretrainings(cell: Any) -> bool:
    """Whether a ``by_pretraining`` cell holds values (a baseline's own row holds NaN, a plain pair "")."""
    return isinstance(cell, str) and bool(cell.strip())


def per_pretraining_note(table: pd.DataFrame) -> str:
    """How to read the differences that list a value per pretraining ("" when none does)."""
    if not table.get("by_pretraining", pd.Series(dtype=object)).map(_lists_pretrainings).any():
        return ""
    return (
        " A difference that lists its value per pretraining is their mean, with Student's t interval over "
        "those values: the pretrainings, not the pairs, are what repeats (one left: too few pretrainings)."
    )


def difference_text(row: Any) -> str:
    """A row's paired difference as a table cell: ``+0.012 [-0.003, +0.025]`` (:data:`DIFFERENCE_COLUMNS`),
    followed by each pretraining's own where there were several: ``(per pretraining +0.020, +0.004)``."""
    text = f"{_signed(row.delta)} [{_signed(row.delta_low)}, {_signed(row.delta_high)}]"
    by = getattr(row, "by_pretraining", "")
    if _lists_pretrainings(by):
        text += " (per pretraining " + ", ".join(_signed(float(value)) for value in by.split()) + ")"
    return text


def record_text(row: Any) -> str:
    """A row's wins and losses as a table cell: ``5 / 1 of 6``."""
    return f"{int(row.wins)} / {int(row.losses)} of {int(row.pairs)}"


def means_over_pretrainings(summary: pd.DataFrame) -> bool:
    """Whether any mean of a :func:`paired_summary` is taken over pretrainings rather than runs
    (its ``pretrainings`` column is 0 over runs, and 1 where one pretraining of several is left)."""
    return bool((summary.get("pretrainings", pd.Series(dtype=int)).fillna(0) > 0).any())


def _recipe_means_note(summary: pd.DataFrame) -> str:
    """How to read the mean cells of the recipes pretrained several times ("" when none was)."""
    if not means_over_pretrainings(summary):
        return ""
    return (
        " The mean of a recipe pretrained several times is the mean of its pretrainings' means, with Student's "
        "t interval over them, not over its runs ([–, –] where one pretraining is left); n still counts runs."
    )


def paired_markdown(summary: pd.DataFrame, metric_label: str, baseline: str) -> str:
    """The paired summary as a markdown table, with how to read it."""
    lines = [
        f"{metric_label}: mean [95 % t interval] over runs, and the paired difference to {baseline} "
        f"[95 % percentile bootstrap interval over the pairs of label subset and seed]; "
        f"a difference whose interval covers 0 is not distinguishable; one whose interval excludes 0 "
        f"from fewer than {MIN_PAIRS} pairs gets no verdict (too few pairs: they share a sign by chance "
        f"too often)." + per_pretraining_note(summary) + _recipe_means_note(summary),
        "",
        f"| recipe | label fraction | mean [95 % CI] | n | Δ vs {baseline} [95 % CI] | wins / losses | verdict |",
        "|---|---:|---|---:|---|---:|---|",
    ]
    for row in summary.itertuples(index=False):
        interval = f"{_number(row.mean)} [{_number(row.low)}, {_number(row.high)}]"
        if row.recipe == baseline:
            delta, record, verdict = "(baseline)", "", ""
        else:
            delta, record = difference_text(row), record_text(row)
            verdict = str(row.verdict)
        lines.append(
            f"| {row.recipe} | {row.label_fraction:g} | {interval} | {int(row.n)} | {delta} | {record} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def plot_paired(
    summary: pd.DataFrame, out_png: str | os.PathLike[str], metric_label: str, baseline: str, group_labels: bool = False
) -> Path:
    """A forest plot of the paired differences: one row per (recipe, label fraction), 0 marked.

    Each row shows the mean difference to ``baseline`` and its 95 % bootstrap interval (Student's t
    over the pretrainings where a row lists them, :func:`paired_difference`);
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
    listed = summary.get("by_pretraining", pd.Series(dtype=object)).map(_lists_pretrainings).any()
    over = " or t over pretrainings" if listed else ""
    axes.set_xlabel(f"{metric_label} − {baseline}\n(paired, 95 % bootstrap interval{over})")
    axes.set_title(f"Paired differences to {baseline}; hollow: interval covers 0")
    axes.grid(True, axis="x", alpha=0.3)
    figure.tight_layout()
    return save_figure(figure, out_png)


#: The row of a comparison's random encoder (never trained): its step 0 in a budget sweep.
RANDOM_INIT = "random-init"
