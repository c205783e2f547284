"""The comparison table and plot of ``geocl compare``: an evaluation's metrics per recipe and label subset.

Input everywhere is the results frame that ``geocl compare`` writes as ``results.csv``:
one row per (recipe, label fraction, seed) with at least the columns ``recipe``,
``status`` (``"ok"`` or ``"failed: <message>"``) and the metric columns of one
evaluation; ``label_fraction`` (1.0 when absent) and ``method`` are optional. Which
columns are metrics, and their names, the caller says with a
:class:`~geocl.report.columns.MetricColumns` (plain data: this module knows no
evaluation; :mod:`geocl.experiments.results` fills it from the comparison's).

Conventions:

- mean and std are over the successful runs (label subsets × seeds) of one (recipe,
  label fraction, metric) cell; std is the *sample* standard deviation (``ddof=1``,
  pandas' default), so it is undefined for a single run: the table then shows ``–`` in
  its place rather than a misleading ``0.000``, and the plot draws no error bar.
- a run counts for a metric when its status is ``ok`` and that metric is a number.
- a cell whose runs all failed reads ``failed``; a cell where only some runs failed
  shows the others' mean ± std and ``(k failed)``.
- recipes keep the order in which they first appear; label fractions are sorted.
- table columns, one per (metric, label fraction): the label fractions when there is
  one metric (segmentation: ``| recipe | 0.01 | 0.2 | n |``), the metric names when
  there is one fraction (natural images: ``| recipe | kNN top-1 | linear-probe top-1 | n |``),
  ``<metric> @ <fraction>`` otherwise.
- plot: each metric against label fraction (log x), one line per recipe, when there
  are several fractions; bars per recipe, one per metric, otherwise. Error bars are the
  95 % t interval of the mean over runs, or, for a recipe pretrained several times
  (``--pretrain-seeds``), over its pretrainings' means
  (:func:`~geocl.report.paired.recipe_interval`): the runs of one pretraining share its luck.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from geocl.io import save_figure
from geocl.report.columns import MetricColumns
from geocl.report.paired import RANDOM_INIT, pretraining_of, recipe_interval

#: Columns of :func:`summarize`'s frame.
SUMMARY_COLUMNS = [
    "recipe",
    "method",
    "label_fraction",
    "mean",
    "std",
    "n",
    "interval_mean",
    "half_width",
    "failed",
    "error",
]
#: Shown for a std that one seed cannot give.
NO_STD = "–"


def summarize(
    results: pd.DataFrame,
    metrics: MetricColumns,
    metric: str | None = None,
    pretrain_seeds: Mapping[str, int] | None = None,
) -> pd.DataFrame:
    """Mean, std (ddof=1) and count of one metric per (recipe, label fraction), failures marked.

    Args:
        results: one row per run (the ``results.csv`` columns; ``method`` optional).
        metrics: which columns are metrics and their names.
        metric: the metric column; default: the primary one.
        pretrain_seeds: by recipe, how many times it was pretrained (the run of seed ``s``
            read pretraining ``s mod N``): its ``half_width`` is then taken over the
            pretrainings' means.

    Returns:
        One row per (recipe, label fraction) with columns :data:`SUMMARY_COLUMNS`:
        ``mean``/``std`` over successful runs (NaN when none, ``std`` NaN when only
        one), ``n`` successful runs, ``interval_mean`` and ``half_width`` the centre and
        half-width of the 95 % t interval the plots draw (:func:`~geocl.report.paired.recipe_interval`:
        over the runs, where ``interval_mean`` is ``mean``, or over the pretrainings' means;
        ``half_width`` NaN where the interval is undefined),
        ``failed`` unsuccessful runs, ``error`` the
        first failure's message (without the ``failed: `` prefix) or ``""``.
        Recipes in order of first appearance, label fractions ascending.
    """
    if results.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    metric = metric or metrics.primary
    values = pd.to_numeric(results[metric], errors="coerce")
    ok = values.notna()
    if "status" in results:
        ok &= results["status"].astype(str) == "ok"
    fractions = results["label_fraction"].astype(float) if "label_fraction" in results else 1.0
    frame = results.assign(_value=values, _ok=ok, label_fraction=fractions)
    rows = []
    for recipe in frame["recipe"].drop_duplicates():
        of_recipe = frame[frame["recipe"] == recipe]
        method = str(of_recipe["method"].iloc[0]) if "method" in of_recipe else ""
        for fraction in sorted(of_recipe["label_fraction"].unique()):
            cell = of_recipe[of_recipe["label_fraction"] == fraction]
            good = cell.loc[cell["_ok"], "_value"]
            interval = recipe_interval(good.tolist(), pretraining_of(cell[cell["_ok"]], pretrain_seeds, recipe))
            bad = cell[~cell["_ok"]]
            error = ""
            if len(bad):
                status = str(bad["status"].iloc[0]) if "status" in bad else "ok"
                # a run that succeeded without this number still failed to give it
                error = f"no {metrics.label(metric)}" if status == "ok" else status.removeprefix("failed:").strip()
            rows.append(
                {
                    "recipe": recipe,
                    "method": method,
                    "label_fraction": float(fraction),
                    "mean": float(good.mean()) if len(good) else math.nan,
                    # pandas' std is ddof=1 and NaN for one value, which is what we want to show
                    "std": float(good.std(ddof=1)) if len(good) else math.nan,
                    "n": len(good),
                    "interval_mean": interval.mean,
                    "half_width": interval.high - interval.mean,
                    "failed": len(bad),
                    "error": error,
                }
            )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _summaries(
    results: pd.DataFrame, metrics: MetricColumns, pretrain_seeds: Mapping[str, int] | None = None
) -> dict[str, pd.DataFrame]:
    """:func:`summarize` of every metric column, in column order."""
    return {metric: summarize(results, metrics, metric, pretrain_seeds) for metric in metrics.columns}


def _fraction_label(fraction: float) -> str:
    """``0.01`` -> ``"0.01"`` (``g`` format: no trailing zeros, no float noise)."""
    return f"{fraction:g}"


def _escape(text: str) -> str:
    """Text safe inside a markdown table cell (a ``|`` would split the cell)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _cell(row: pd.Series) -> str:
    """One table cell: ``0.432 ± 0.012``, ``0.432 ± –`` (one seed), ``failed``, ``+ (k failed)``."""
    if row["n"] == 0:
        return "failed" if row["failed"] else ""
    std = NO_STD if math.isnan(row["std"]) else f"{row['std']:.3f}"
    text = f"{row['mean']:.3f} ± {std}"
    if row["failed"]:
        text += f" ({row['failed']} failed)"
    return text


def _columns(
    summaries: dict[str, pd.DataFrame], metrics: MetricColumns
) -> tuple[list[tuple[str, float]], list[str], str]:
    """The table's (metric, fraction) columns, their headers and the caption's note on them."""
    fractions = sorted({float(f) for summary in summaries.values() for f in summary["label_fraction"]})
    columns = [(metric, fraction) for metric in summaries for fraction in fractions]
    if len(summaries) == 1:
        return columns, [_fraction_label(f) for _, f in columns], " Columns: label fraction."
    if len(fractions) == 1:
        return columns, [metrics.label(metric) for metric, _ in columns], ""
    headers = [f"{metrics.label(metric)} @ {_fraction_label(f)}" for metric, f in columns]
    return columns, headers, " Columns: metric @ label fraction."


#: Marks a flagged recipe's row; the flag's text follows the table.
FLAG = "⚠"


def results_markdown(results: pd.DataFrame, metrics: MetricColumns, flags: Mapping[str, str] | None = None) -> str:
    """The comparison as a markdown table: recipes as rows, (metric, label fraction) as columns.

    Cells read ``mean ± std`` over runs (label subsets × seeds; 3 decimals, std with
    ddof=1, ``–`` for one run), ``failed`` where every run failed. The last column ``n``
    is the number of successful runs per cell: one number when all cells of the row agree, else one
    per column (``3, 2, 3``). A caption (``metrics.caption``, then the conventions) and,
    when anything failed, each failing recipe's first message follow the table.

    Args:
        results: one row per run (see :func:`summarize`).
        metrics: which columns are metrics, their names and the caption.
        flags: recipe -> why its numbers are not what its name says (a pretraining that
            never reached the method's own stage); the row is marked :data:`FLAG` and the
            reason listed after the caption.

    Returns:
        Markdown text ending in a newline.
    """
    flags = {recipe: text for recipe, text in (flags or {}).items() if text}
    summaries = _summaries(results, metrics)
    columns, headers, note = _columns(summaries, metrics)
    lines = [
        "| " + " | ".join(["recipe", *headers, "n"]) + " |",
        "|" + "|".join(["---", *("---:" for _ in columns), "---:"]) + "|",
    ]
    cells_of = {metric: summary.set_index(["recipe", "label_fraction"]) for metric, summary in summaries.items()}
    recipes = next(iter(summaries.values()))["recipe"].drop_duplicates()
    failures: list[str] = []
    for recipe in recipes:
        cells, counts, errors = [], [], []
        for metric, fraction in columns:
            if (recipe, fraction) not in cells_of[metric].index:
                cells.append("")  # a recipe run at fewer fractions than the others: leave the cell empty
                continue
            summary = cells_of[metric].loc[(recipe, fraction)]
            cells.append(_cell(summary))
            counts.append(str(summary["n"]))
            if summary["failed"]:
                errors.append(summary["error"])
        n = counts[0] if len(set(counts)) == 1 else ", ".join(counts)
        shown = f"{recipe} {FLAG}" if recipe in flags else str(recipe)
        lines.append("| " + " | ".join([_escape(shown), *cells, n]) + " |")
        if errors:
            failures.append(f"- {_escape(recipe)}: {_escape(errors[0])}")
    lines += [
        "",
        f"{metrics.caption} mean ± sample std (ddof=1) over runs (label subsets × seeds); "
        f"{NO_STD} where only one run succeeded.{note} n: successful runs per cell.",
    ]
    flagged = [f"- {FLAG} {_escape(text)}" for recipe, text in flags.items() if recipe in set(recipes)]
    if flagged:
        lines += ["", "Flagged (the numbers are not the named method's):", *flagged]
    if failures:
        lines += ["", "Failures (first message of each recipe):", *failures]
    return "\n".join(lines) + "\n"


def plot_results(
    results: pd.DataFrame,
    out_png: str | os.PathLike[str],
    metrics: MetricColumns,
    pretrain_seeds: Mapping[str, int] | None = None,
) -> Path:
    """Plot the comparison (error bars: 95 % t interval of the mean, see the module docstring); written atomically.

    Several label fractions: each metric against label fraction (log x), one panel a
    metric, one line a recipe; the random-init baseline dashed and grey, a recipe with
    no successful run a legend entry ``<name>: failed`` and no line. One fraction: bars
    per recipe, one a metric; random-init hatched, a failed recipe's tick marked.

    Args:
        results: one row per run (see :func:`summarize`).
        out_png: the PNG path.
        metrics: which columns are metrics, their names and the plot's labels.
        pretrain_seeds: by recipe, how many times it was pretrained (:func:`summarize`).

    Returns:
        The PNG path.
    """
    return plot_comparison([("", results, metrics)], out_png, pretrain_seeds)


def plot_comparison(
    panels: list[tuple[str, pd.DataFrame, MetricColumns]],
    out_png: str | os.PathLike[str],
    pretrain_seeds: Mapping[str, int] | None = None,
) -> Path:
    """Several groups of one comparison side by side (protocols, pretraining budgets), one panel each.

    Each panel is drawn as :func:`plot_results` draws one group (its primary metric
    when a group has several); ``panels`` holds (title, results rows, their metric columns).
    """
    # results without seeds cannot say which pretraining a run read: their intervals stay over runs
    note = interval_note(pretrain_seeds if any("seed" in results for _, results, _ in panels) else None)
    # A bare Figure draws with the Agg canvas without touching pyplot's global backend,
    # so a caller's interactive session keeps its own.
    from matplotlib.figure import Figure

    if len(panels) == 1:
        title, results, metrics = panels[0]
        summaries = _summaries(results, metrics, pretrain_seeds)
        names = list(summaries)
    else:
        names = []
    fractions_all = sorted({float(f) for _, results, _ in panels for f in results.get("label_fraction", [1.0])})
    lines = len(fractions_all) > 1
    if len(panels) == 1 and lines:
        count = len(names)
        figure = Figure(figsize=(7 * count, 4.5))
        for index, (metric, summary) in enumerate(summaries.items()):
            axes = figure.add_subplot(1, count, index + 1)
            _plot_lines(axes, summary, fractions_all, metrics)
            axes.set_title(metrics.label(metric) if count > 1 else f"{metrics.title} against label fraction {note}")
        if count > 1:
            figure.suptitle(f"{metrics.title} against label fraction {note}")
    elif len(panels) == 1:
        recipes = list(next(iter(summaries.values()))["recipe"].drop_duplicates())
        # scores in [0, 1] share one axes; lower-is-better metrics (distances in mm) get their own
        lower = set(metrics.lower_is_better)
        groups = [group for group in ([m for m in names if m not in lower], [m for m in names if m in lower]) if group]
        figure = Figure(figsize=(max(5.0, 1.6 * len(recipes) + 2) * len(groups), 4.5))
        for index, group in enumerate(groups):
            axes = figure.add_subplot(1, len(groups), index + 1)
            distances = group[0] in lower
            axis_label = f"{', '.join(metrics.label(m) for m in group)} (lower is better)" if distances else None
            group_summaries = {metric: summaries[metric] for metric in group}
            _plot_bars(axes, group_summaries, recipes, metrics, note, axis_label=axis_label)
            if fractions_all:
                all_labels = " (all labels)" if fractions_all[0] == 1.0 else ""
                axes.set_xlabel(f"label fraction {_fraction_label(fractions_all[0])}{all_labels}")
    else:
        columns = min(len(panels), 3)
        rows = math.ceil(len(panels) / columns)
        width = 7.0 if lines else max(5.0, 1.4 * max(results["recipe"].nunique() for _, results, _ in panels) + 2)
        figure = Figure(figsize=(width * columns, 4.5 * rows))
        for index, (title, results, metrics) in enumerate(panels):
            axes = figure.add_subplot(rows, columns, index + 1)
            metric = metrics.primary
            summary = summarize(results, metrics, metric, pretrain_seeds)
            if lines:
                _plot_lines(axes, summary, fractions_all, metrics)
            else:
                _plot_bars(axes, {metric: summary}, list(summary["recipe"].drop_duplicates()), metrics, note)
                axes.set_xlabel(f"label fraction {_fraction_label(fractions_all[0])}")
            axes.set_title(title or metrics.title)
        figure.suptitle(note.strip("()").capitalize())
    figure.tight_layout()
    return save_figure(figure, out_png)


def interval_note(pretrain_seeds: Mapping[str, int] | None = None) -> str:
    """How the plots' error bars read: over runs, and over pretrainings where a recipe has several."""
    if max((pretrain_seeds or {}).values(), default=1) > 1:
        return "(mean and 95 % t interval over runs; over pretrainings for a recipe pretrained several times)"
    return "(mean and 95 % t interval over runs)"


def interval_half_width(summary: pd.DataFrame) -> pd.Series:
    """Half-width of each summary row's 95 % t interval (:func:`summarize`); 0 where it is undefined."""
    return summary["half_width"].astype(float).fillna(0.0)


def per_class_markdown(results: pd.DataFrame, flagged: str, min_pixels: int) -> str:
    """Mean per-class IoU per recipe (the ``iou_<class>`` columns), thin classes flagged; "" without them.

    Args:
        results: rows of one group (``recipe``, ``status``, ``iou_*`` columns).
        flagged: the classes with fewer than ``min_pixels`` labelled test pixels, ``;``-separated.
        min_pixels: the threshold, for the note.
    """
    columns = [column for column in results.columns if str(column).startswith("iou_")]
    ok = results[results["status"].astype(str) == "ok"] if "status" in results else results
    if not columns or ok.empty:
        return ""
    thin = set(filter(None, flagged.split(";")))
    headers = [
        f"{column.removeprefix('iou_')}{' ⚑' if column.removeprefix('iou_') in thin else ''}" for column in columns
    ]
    lines = [
        "",
        "Per-class IoU on the test tiles, mean over runs (– : class absent from the test tiles):",
        "",
        "| recipe | " + " | ".join(f"class {header}" for header in headers) + " |",
        "|---|" + "|".join("---:" for _ in columns) + "|",
    ]
    for recipe in ok["recipe"].drop_duplicates():
        means = ok[ok["recipe"] == recipe][columns].apply(pd.to_numeric, errors="coerce").mean()
        cells = [NO_STD if math.isnan(value) else f"{value:.3f}" for value in means]
        lines.append(f"| {_escape(recipe)} | " + " | ".join(cells) + " |")
    if thin:
        lines += ["", f"⚑ fewer than {min_pixels:,} labelled test pixels: too few to judge that class's IoU."]
    return "\n".join(lines) + "\n"


def _no_runs(axes: Any, summaries: list[pd.DataFrame]) -> None:
    """Say so on the axes when no run succeeded."""
    if not any((summary["n"] > 0).any() for summary in summaries):
        axes.text(0.5, 0.5, "no successful runs", ha="center", va="center", transform=axes.transAxes)


def _plot_lines(axes: Any, summary: pd.DataFrame, fractions: list[float], metrics: MetricColumns) -> None:
    """One metric against label fraction (log x), one line a recipe."""
    from matplotlib.lines import Line2D

    # Legend in recipe order; failed recipes get a bare label that takes no colour.
    handles: list[Any] = []
    for recipe in summary["recipe"].drop_duplicates():
        of_recipe = summary[(summary["recipe"] == recipe) & (summary["n"] > 0)]
        if of_recipe.empty:
            handles.append(Line2D([], [], linestyle="none", label=f"{recipe}: failed"))
            continue
        style = {"color": "0.45", "linestyle": "--"} if recipe == RANDOM_INIT else {}
        handle = axes.errorbar(
            of_recipe["label_fraction"],
            of_recipe["interval_mean"],
            yerr=interval_half_width(of_recipe),  # one run, or one pretraining left: no interval to show
            marker="o",
            capsize=3,
            label=str(recipe),
            **style,
        )
        handles.append(handle)
    positive = [f for f in fractions if f > 0]
    if positive:
        axes.set_xscale("log")
        axes.set_xticks(positive, [_fraction_label(f) for f in positive])
        axes.minorticks_off()
    _no_runs(axes, [summary])
    axes.set_xlabel("label fraction (log scale)")
    axes.set_ylabel(metrics.axis_label)
    axes.grid(True, alpha=0.3)
    if handles:
        axes.legend(handles=handles)


def _plot_bars(
    axes: Any,
    summaries: dict[str, pd.DataFrame],
    recipes: list[str],
    metrics: MetricColumns,
    note: str,
    axis_label: str | None = None,
) -> None:
    """Bars of each metric per recipe (one label fraction), all in one unit; random-init hatched grey;
    ``note`` (:func:`interval_note`) says how the error bars are taken."""
    width = 0.8 / len(summaries)
    top = 0.0
    for offset, (metric, summary) in enumerate(summaries.items()):
        of_metric = summary.set_index("recipe").reindex(recipes)
        positions = [index + (offset - (len(summaries) - 1) / 2) * width for index in range(len(recipes))]
        half = interval_half_width(of_metric.fillna({"n": 0}))
        top = max(top, float((of_metric["interval_mean"] + half).max(skipna=True) or 0.0))
        bars = axes.bar(
            positions, of_metric["interval_mean"].fillna(0.0), width, yerr=half, capsize=3, label=metrics.label(metric)
        )
        for bar, recipe in zip(bars, recipes, strict=True):
            if recipe == RANDOM_INIT:
                bar.set_hatch("//")
                bar.set_alpha(0.6)
    succeeded = {
        recipe: any((summary.loc[summary["recipe"] == recipe, "n"] > 0).any() for summary in summaries.values())
        for recipe in recipes
    }
    axes.set_xticks(range(len(recipes)), [name if succeeded[name] else f"{name}\n(failed)" for name in recipes])
    _no_runs(axes, list(summaries.values()))
    axes.set_ylim(0, 1 if not top > 1 else None)  # scores in [0, 1] (accuracy, IoU, Dice) on a fixed scale
    axes.set_ylabel(axis_label or metrics.axis_label)
    axes.set_title(f"{metrics.title} {note}")
    axes.grid(True, axis="y", alpha=0.3)
    if len(summaries) > 1:
        axes.legend()
