"""The comparison table and plot of ``geocl compare``: mIoU per recipe and label fraction.

Input everywhere is the results frame that ``geocl compare`` writes as ``results.csv``:
one row per (recipe, label fraction, seed) with at least the columns ``recipe``,
``label_fraction``, ``miou`` and ``status`` (``"ok"`` or ``"failed: <message>"``).

Conventions:

- mean and std are over the successful seeds of one (recipe, label fraction) cell;
  std is the *sample* standard deviation (``ddof=1``, pandas' default), so it is
  undefined for a single seed: the table then shows ``–`` in its place rather than
  a misleading ``0.000``, and the plot draws no error bar.
- a cell whose runs all failed reads ``failed``; a cell where only some seeds failed
  shows the others' mean ± std and ``(k failed)``.
- recipes keep the order in which they first appear; label fractions are sorted.

Natural-image comparisons (a frame with :data:`ACCURACY_COLUMNS` instead of
``miou``/``label_fraction``, one row per (recipe, seed)) get the same conventions with
the accuracies as columns: ``| recipe | kNN top-1 | linear-probe top-1 | n |``, and a
bar plot of both accuracies per recipe.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from geocl.io import save_figure

#: Columns of :func:`summarize`'s frame.
SUMMARY_COLUMNS = ["recipe", "method", "label_fraction", "mean", "std", "n", "failed", "error"]
#: The recipe name of the baseline row (finetuning from a random encoder).
RANDOM_INIT = "random-init"
#: Shown for a std that one seed cannot give.
NO_STD = "–"
#: Metric columns of a natural-image results frame and their names in the table and plot.
ACCURACY_COLUMNS = {"knn_top1": "kNN top-1", "probe_top1": "linear-probe top-1"}
#: Columns of :func:`summarize_accuracy`'s frame.
ACCURACY_SUMMARY_COLUMNS = ["recipe", "method", "metric", "mean", "std", "n", "failed", "error"]


def is_accuracy_frame(results: pd.DataFrame) -> bool:
    """Whether ``results`` holds natural-image accuracies rather than mIoU at label fractions."""
    return all(column in results.columns for column in ACCURACY_COLUMNS) and "miou" not in results.columns


def summarize_accuracy(results: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof=1) and count of each accuracy per recipe, failures marked.

    Args:
        results: one row per (recipe, seed) with the :data:`ACCURACY_COLUMNS`, ``recipe``
            and ``status`` (``method`` optional).

    Returns:
        One row per (recipe, metric) with columns :data:`ACCURACY_SUMMARY_COLUMNS`
        (``metric`` a key of :data:`ACCURACY_COLUMNS`); a run counts for a metric when
        its status is ``ok`` and that metric is a number.
    """
    if results.empty:
        return pd.DataFrame(columns=ACCURACY_SUMMARY_COLUMNS)
    rows = []
    for recipe in results["recipe"].drop_duplicates():
        of_recipe = results[results["recipe"] == recipe]
        method = str(of_recipe["method"].iloc[0]) if "method" in of_recipe else ""
        for metric in ACCURACY_COLUMNS:
            values = pd.to_numeric(of_recipe[metric], errors="coerce")
            ok = values.notna()
            if "status" in of_recipe:
                ok &= of_recipe["status"].astype(str) == "ok"
            good, bad = values[ok], of_recipe[~ok]
            error = ""
            if len(bad):
                status = str(bad["status"].iloc[0]) if "status" in bad else "no value"
                error = status.removeprefix("failed:").strip()
            rows.append(
                {
                    "recipe": recipe, "method": method, "metric": metric,
                    "mean": float(good.mean()) if len(good) else math.nan,
                    "std": float(good.std(ddof=1)) if len(good) else math.nan,
                    "n": len(good), "failed": len(bad), "error": error,
                }
            )
    return pd.DataFrame(rows, columns=ACCURACY_SUMMARY_COLUMNS)


def _succeeded(results: pd.DataFrame) -> pd.Series:
    """Rows that count: status ``ok`` (when there is a status column) and a finite mIoU."""
    ok = pd.to_numeric(results["miou"], errors="coerce").notna()
    if "status" in results:
        ok &= results["status"].astype(str) == "ok"
    return ok


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof=1) and count of mIoU per (recipe, label fraction), failures marked.

    Args:
        results: one row per run (the ``results.csv`` columns; ``method`` optional).

    Returns:
        One row per (recipe, label fraction) with columns :data:`SUMMARY_COLUMNS`:
        ``mean``/``std`` over successful runs (NaN when none, ``std`` NaN when only
        one), ``n`` successful runs, ``failed`` unsuccessful runs, ``error`` the
        first failure's message (without the ``failed: `` prefix) or ``""``.
        Recipes in order of first appearance, label fractions ascending.
    """
    if results.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    frame = results.assign(
        miou=pd.to_numeric(results["miou"], errors="coerce"),
        label_fraction=results["label_fraction"].astype(float),
        _ok=_succeeded(results),
    )
    rows = []
    for recipe in frame["recipe"].drop_duplicates():
        of_recipe = frame[frame["recipe"] == recipe]
        method = str(of_recipe["method"].iloc[0]) if "method" in of_recipe else ""
        for fraction in sorted(of_recipe["label_fraction"].unique()):
            cell = of_recipe[of_recipe["label_fraction"] == fraction]
            good = cell.loc[cell["_ok"], "miou"]
            bad = cell[~cell["_ok"]]
            error = ""
            if len(bad):
                status = str(bad["status"].iloc[0]) if "status" in bad else "no mIoU"
                error = status.removeprefix("failed:").strip()
            rows.append(
                {
                    "recipe": recipe,
                    "method": method,
                    "label_fraction": float(fraction),
                    "mean": float(good.mean()) if len(good) else math.nan,
                    # pandas' std is ddof=1 and NaN for one value, which is what we want to show
                    "std": float(good.std(ddof=1)) if len(good) else math.nan,
                    "n": len(good),
                    "failed": len(bad),
                    "error": error,
                }
            )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


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


def _table_row(recipe: str, cells: list[str], counts: list[str]) -> str:
    """One markdown row; ``n`` is one count when the cells agree, else one per cell."""
    n = counts[0] if len(set(counts)) == 1 else ", ".join(counts)
    return "| " + " | ".join([_escape(recipe), *cells, n]) + " |"


def _first_failure(recipe: str, of_recipe: pd.DataFrame) -> list[str]:
    """The recipe's first failure message as a list item (empty when nothing failed)."""
    errors = of_recipe.loc[of_recipe["failed"] > 0, "error"]
    return [f"- {_escape(recipe)}: {_escape(errors.iloc[0])}"] if len(errors) else []


def results_markdown(results: pd.DataFrame) -> str:
    """The comparison as a markdown table: recipes as rows, label fractions as columns.

    Cells read ``mean ± std`` of the mIoU over seeds (3 decimals, std with ddof=1,
    ``–`` for one seed), ``failed`` where every run failed. The last column ``n`` is
    the number of successful seeds per cell: one number when all cells of the row
    agree, else one per label fraction (``3, 2, 3``). A caption and, when anything
    failed, each failing recipe's first message follow the table.

    Args:
        results: one row per run (see :func:`summarize`).

    Returns:
        Markdown text ending in a newline.
    """
    if is_accuracy_frame(results):
        return _accuracy_markdown(results)
    summary = summarize(results)
    fractions = sorted(summary["label_fraction"].unique())
    header = ["recipe", *(_fraction_label(fraction) for fraction in fractions), "n"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", *("---:" for _ in fractions), "---:"]) + "|",
    ]
    failures: list[str] = []
    for recipe in summary["recipe"].drop_duplicates():
        of_recipe = summary[summary["recipe"] == recipe].set_index("label_fraction")
        cells, counts = [], []
        for fraction in fractions:
            if fraction in of_recipe.index:
                cells.append(_cell(of_recipe.loc[fraction]))
                counts.append(str(of_recipe.loc[fraction, "n"]))
            else:  # a recipe run at fewer fractions than the others: leave the cell empty
                cells.append("")
        lines.append(_table_row(recipe, cells, counts))
        failures += _first_failure(recipe, of_recipe)
    lines += [
        "",
        "mIoU on the test tiles, mean ± sample std (ddof=1) over seeds; "
        f"{NO_STD} where only one seed succeeded. Columns: label fraction. n: successful seeds per cell.",
    ]
    if failures:
        lines += ["", "Failures (first message of each recipe):", *failures]
    return "\n".join(lines) + "\n"


def _accuracy_markdown(results: pd.DataFrame) -> str:
    """:func:`results_markdown` of a natural-image frame: the accuracies as columns."""
    summary = summarize_accuracy(results)
    header = ["recipe", *ACCURACY_COLUMNS.values(), "n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", *("---:" for _ in ACCURACY_COLUMNS), "---:"]) + "|"]
    failures: list[str] = []
    for recipe in summary["recipe"].drop_duplicates():
        of_recipe = summary[summary["recipe"] == recipe].set_index("metric")
        cells = [_cell(of_recipe.loc[metric]) for metric in ACCURACY_COLUMNS]
        counts = [str(of_recipe.loc[metric, "n"]) for metric in ACCURACY_COLUMNS]
        lines.append(_table_row(recipe, cells, counts))
        failures += _first_failure(recipe, of_recipe)
    lines += [
        "",
        "Top-1 accuracy on the val split (CIFAR: test batch) of the frozen encoder: weighted cosine kNN "
        "and a linear probe; mean ± sample std (ddof=1) over seeds; "
        f"{NO_STD} where only one seed succeeded. n: successful seeds per cell.",
    ]
    if failures:
        lines += ["", "Failures (first message of each recipe):", *failures]
    return "\n".join(lines) + "\n"


def _plot_accuracy(results: pd.DataFrame, out_png: str | os.PathLike[str]) -> Path:
    """Bars of each accuracy per recipe (error bars = std); random-init hatched grey."""
    from matplotlib.figure import Figure

    summary = summarize_accuracy(results)
    recipes = list(summary["recipe"].drop_duplicates())
    figure = Figure(figsize=(max(5.0, 1.6 * len(recipes) + 2), 4.5))
    axes = figure.add_subplot()
    width = 0.8 / len(ACCURACY_COLUMNS)
    for offset, (metric, label) in enumerate(ACCURACY_COLUMNS.items()):
        of_metric = summary[summary["metric"] == metric].set_index("recipe").reindex(recipes)
        positions = [index + (offset - (len(ACCURACY_COLUMNS) - 1) / 2) * width for index in range(len(recipes))]
        bars = axes.bar(
            positions, of_metric["mean"].fillna(0.0), width, yerr=of_metric["std"].fillna(0.0), capsize=3, label=label
        )
        for bar, recipe in zip(bars, recipes, strict=True):
            if recipe == RANDOM_INIT:
                bar.set_hatch("//")
                bar.set_alpha(0.6)
    succeeded = summary.groupby("recipe", sort=False)["n"].max() if not summary.empty else pd.Series(dtype=int)
    axes.set_xticks(range(len(recipes)), [name if succeeded.get(name, 0) > 0 else f"{name}\n(failed)" for name in recipes])
    if summary.empty or not (summary["n"] > 0).any():
        axes.text(0.5, 0.5, "no successful runs", ha="center", va="center", transform=axes.transAxes)
    axes.set_ylim(0, 1)
    axes.set_ylabel("top-1 accuracy")
    axes.set_title("Frozen-encoder top-1 accuracy (mean ± std over seeds)")
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return save_figure(figure, out_png)


def plot_results(results: pd.DataFrame, out_png: str | os.PathLike[str]) -> Path:
    """Plot mIoU against label fraction (log x), one line per recipe, error bars = std.

    The random-init baseline is dashed and grey; a recipe with no successful run gets
    a legend entry ``<name>: failed`` and no line. Written atomically. A natural-image
    frame (see :func:`is_accuracy_frame`) is drawn as bars of both accuracies per recipe.

    Args:
        results: one row per run (see :func:`summarize`).
        out_png: the PNG path.

    Returns:
        The PNG path.
    """
    if is_accuracy_frame(results):
        return _plot_accuracy(results, out_png)
    # A bare Figure draws with the Agg canvas without touching pyplot's global backend,
    # so a caller's interactive session keeps its own.
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    summary = summarize(results)
    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
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
            of_recipe["mean"],
            yerr=of_recipe["std"].fillna(0.0),  # one seed: no spread to show
            marker="o",
            capsize=3,
            label=str(recipe),
            **style,
        )
        handles.append(handle)
    fractions = sorted(f for f in summary["label_fraction"].unique() if f > 0)
    if fractions:
        axes.set_xscale("log")
        axes.set_xticks(fractions, [_fraction_label(f) for f in fractions])
        axes.minorticks_off()
    if summary.empty or not (summary["n"] > 0).any():
        axes.text(0.5, 0.5, "no successful runs", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel("label fraction (log scale)")
    axes.set_ylabel("test mIoU")
    axes.set_title("mIoU against label fraction (mean ± std over seeds)")
    axes.grid(True, alpha=0.3)
    if handles:
        axes.legend(handles=handles)
    figure.tight_layout()
    return save_figure(figure, out_png)
