"""The report files of a comparison: ``results.csv`` and its summary, ``results.md``, the figures, ``pretraining.csv``.

The tables and plots themselves are :mod:`geocl.report`, which takes plain data: this
module tells it which columns are metrics and how to name them (:func:`metric_columns`,
from each evaluation), groups the rows (one section per evaluation and pretraining
budget) and writes the files, atomically. A report made with other evaluation settings
is moved aside first (:func:`keep_earlier_report`). See :mod:`geocl.experiments` for each
file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from geocl.errors import GeoclError
from geocl.evaluation import Evaluation
from geocl.evaluation.protocol import TestSet, evaluation_names, get_evaluation
from geocl.experiments.candidates import Candidate
from geocl.experiments.plan import thin_classes
from geocl.experiments.records import describe_changes
from geocl.io import atomic_path, atomic_write_text
from geocl.report.budgets import budget_gains, budget_gains_markdown, plot_budgets
from geocl.report.columns import MetricColumns
from geocl.report.environment import describe_environment, environment_line
from geocl.report.paired import paired_markdown, paired_summary, pairwise_differences, pairwise_markdown, plot_paired
from geocl.report.table import RANDOM_INIT, per_class_markdown, plot_comparison, results_markdown

__all__ = [
    "COMPARISON_RECORD",
    "REPORT_FILES",
    "columns_of",
    "evaluation_of",
    "keep_earlier_report",
    "metric_columns",
    "results_columns",
    "results_table",
    "write_csv",
    "write_pretraining_csv",
    "write_results",
]

#: The comparison's own settings (its evaluations'), in the comparison folder.
COMPARISON_RECORD = "comparison.json"
#: The report files a comparison writes, moved aside together when its settings change.
REPORT_FILES = (
    "results.csv",
    "results_summary.csv",
    "results.md",
    "results.png",
    "results_paired.png",
    "results_budget.png",
    "results_budget_gains.csv",
    "results_pairwise.csv",
    "pretraining.csv",
    "environment.json",
    COMPARISON_RECORD,
)


#: Report files only some comparisons have (several budgets; pairs besides the baseline's).
_OPTIONAL_REPORT_FILES = frozenset({"results_budget.png", "results_budget_gains.csv", "results_pairwise.csv"})


def results_columns(
    evaluation: Evaluation | type[Evaluation] | list[Evaluation], extra: list[str] | tuple[str, ...] = ()
) -> list[str]:
    """Columns of ``results.csv`` (and of the frame :func:`~geocl.experiments.runner.run_compare` returns) for one or
    more evaluations.

    ``extra``: further columns the runs gave (per-class IoU), after the evaluations' own.
    """
    evaluations = evaluation if isinstance(evaluation, list) else [evaluation]
    metrics = list(dict.fromkeys(column for each in evaluations for column in each.metric_columns))
    own = list(dict.fromkeys(column for each in evaluations for column in each.extra_columns))
    return [
        "recipe",
        "method",
        "evaluation",
        "pretrain_steps",
        "label_fraction",
        "subset_seed",
        "seed",
        *metrics,
        "status",
        "seconds",
        "checkpoint",
        *own,
        *(column for column in extra if column not in own),
        "few_test_pixels",
    ]


def metric_columns(evaluation: Evaluation | type[Evaluation]) -> MetricColumns:
    """What the report needs to know of an evaluation's numbers, as plain data."""
    return MetricColumns(
        name=evaluation.name,
        columns=tuple(evaluation.metric_columns),
        labels=dict(evaluation.metric_labels),
        primary=evaluation.primary(),
        lower_is_better=tuple(evaluation.lower_is_better),
        caption=evaluation.caption,
        title=evaluation.title,
        axis_label=evaluation.axis_label,
    )


def evaluation_of(results: pd.DataFrame) -> type[Evaluation]:
    """The registered evaluation whose numbers ``results`` holds (a ``results.csv`` read back).

    The one the ``evaluation`` column names, else the one with the most metric columns
    all present in the frame (files written before that column existed).

    Raises:
        ValueError: the frame names several evaluations, or holds no known metric columns.
    """
    if "evaluation" in results.columns:
        named = [str(name) for name in results["evaluation"].dropna().unique()]
        if len(named) > 1:
            raise ValueError(f"results of several evaluations ({', '.join(named)}); report them separately")
        if named and named[0] in evaluation_names():
            return get_evaluation(named[0])
    matching = [
        get_evaluation(name)
        for name in evaluation_names()
        if all(column in results.columns for column in get_evaluation(name).metric_columns)
    ]
    if not matching:
        raise ValueError(f"no evaluation's metric columns among {', '.join(map(str, results.columns))}")
    return max(matching, key=lambda cls: len(cls.metric_columns))


def results_table(results: pd.DataFrame, flags: dict[str, str] | None = None) -> str:
    """The mean ± std markdown table of a ``results.csv`` read back (its evaluation: :func:`evaluation_of`)."""
    return results_markdown(results, metric_columns(evaluation_of(results)), flags=flags)


def columns_of(rows: list[dict[str, Any]], evaluations: list[Evaluation]) -> list[str]:
    """results.csv columns for the rows so far: per-class columns in order of first appearance."""
    base = set(results_columns(evaluations))
    extra = list(dict.fromkeys(key for row in rows for key in row if key not in base))
    return results_columns(evaluations, extra)


def write_csv(rows: list[dict[str, Any]], path: Path, columns: list[str]) -> None:
    """Write the rows so far as CSV, atomically."""
    with atomic_path(path) as temp:
        pd.DataFrame(rows, columns=columns).to_csv(temp, index=False)


def keep_earlier_report(out: Path, settings: dict[str, Any], say: Callable[[str], None]) -> None:
    """Move the report of a comparison made with other settings to ``report.stale-<n>/``; record these.

    ``settings`` are what the report is of (the evaluations' settings, and the recipes,
    budgets and grid its tables cover): a rerun with other options keeps the earlier table
    and figures, which the new ones would replace, beside them. The rows themselves are
    checked one by one (``row.json``) and reused where they are the same.
    """
    settings = json.loads(json.dumps(settings, sort_keys=True, default=str))
    record = out / COMPARISON_RECORD
    try:
        before = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        before = None
    present = [name for name in REPORT_FILES if (out / name).exists()]
    if before != settings and any(name != COMPARISON_RECORD for name in present):
        number = 1
        while (aside := out / f"report.stale-{number}").exists():
            number += 1
        try:
            aside.mkdir()
            for name in present:
                (out / name).rename(aside / name)
        except OSError as exc:
            raise GeoclError(
                f"holds the report of a comparison with other settings, which cannot be moved aside to {aside.name}: "
                f"{exc.strerror or exc}; move it yourself or compare into another out",
                path=out,
            ) from None
        why = (
            "it records no settings"
            if not isinstance(before, dict)
            else ("made with other settings: " + describe_changes(before, settings))
        )
        say(f"{out} held the report of an earlier comparison ({why}); moved it to {aside.name}")
    atomic_write_text(record, json.dumps(settings, indent=1))


def write_pretraining_csv(candidates: list[Candidate], out: Path, budgets: list[int | None]) -> None:
    """``pretraining.csv``: each recipe's budget as spent (steps, samples seen, wall time, final loss);
    budget 0 pretrains nothing and has no line."""
    rows = []
    for candidate in candidates:
        budget = candidate.recipe.trainer.max_steps if budgets != [None] else None
        metrics_file = Path(candidate.recipe.out) / "metrics.json"
        try:
            metrics = json.loads(metrics_file.read_text())
        except (OSError, ValueError):
            metrics = {}
        rows.append(
            {
                "recipe": candidate.name,
                "method": str(candidate.recipe.method.name),
                "pretrain_steps": budget,
                **{key: metrics.get(key) for key in ("global_step", "samples_seen", "seconds", "final_loss")},
                "seed": int(candidate.recipe.seed),
            }
        )
    columns = ["recipe", "method", "pretrain_steps", "global_step", "samples_seen", "seconds", "final_loss", "seed"]
    with atomic_path(out / "pretraining.csv") as temp:
        pd.DataFrame(rows, columns=columns).to_csv(temp, index=False)


def write_results(
    rows: list[dict[str, Any]],
    evaluations: list[Evaluation],
    out: Path,
    say: Callable[[str], None],
    baseline: str,
    deterministic: bool = False,
    *,
    budgets: list[int | None] | None = None,
    test_sets: dict[str, TestSet] | None = None,
    min_test_pixels: int = 0,
    flags: dict[tuple[str, int | None], str] | None = None,
    from_step_zero: set[str] | None = None,
    pretrained: Mapping[str, int] | None = None,
) -> pd.DataFrame:
    """results.csv, results_summary.csv, results.md and the PNGs of the finished rows; the table is echoed.

    ``flags``: (recipe, budget) -> why its rows are not its method's (see
    :func:`~geocl.experiments.budgets.check_budgets`): marked in the group's table, in the
    ``flag`` column of ``results_summary.csv``.

    ``pretrained``: how many times each recipe that pretrains was pretrained, by name
    (empty: no recipe pretrains); a line under the test set's says what the intervals
    cover of it, and the paired differences of those recipes are taken over their
    pretrainings (:mod:`geocl.report.paired`).

    One section per (evaluation, pretraining budget) group, random-init in every group:
    the mean ± std table, then each recipe's mean with its interval and its paired
    difference to ``baseline`` (:mod:`geocl.report.paired`), then per-class IoU with
    the classes that have too few test pixels flagged. Budget 0's group holds the
    random-init rows alone (its own baseline). Over several budgets,
    ``results_budget.png`` draws each recipe's score against pretraining steps, starting
    at step 0 (the random-init row) for the recipes of ``from_step_zero``, and a section
    per evaluation (and ``results_budget_gains.csv``) gives each recipe's paired gain from
    one budget to the next (:func:`~geocl.report.budgets.budget_gains`): where its curve
    flattens.
    """
    budgets = budgets or [None]
    columns = columns_of(rows, evaluations)
    results = pd.DataFrame(rows, columns=columns)
    write_csv(rows, out / "results.csv", columns)
    environment = describe_environment(deterministic=deterministic)
    atomic_write_text(out / "environment.json", json.dumps(environment, indent=1))
    sections, summaries = [], []
    all_gains: list[pd.DataFrame] = []
    pairs: list[pd.DataFrame] = []  # every two recipes but the baseline, per group
    panels: list[tuple[str, Any, MetricColumns]] = []
    for evaluation in evaluations:
        metrics = metric_columns(evaluation)
        of_evaluation = results[results["evaluation"] == evaluation.name]
        metric = metrics.primary
        for steps in budgets:
            group = (
                of_evaluation[of_evaluation["pretrain_steps"].isna()]
                if steps is None
                else of_evaluation[
                    (of_evaluation["pretrain_steps"] == steps) | (of_evaluation["recipe"] == RANDOM_INIT)
                ]
            )
            title = _group_title(evaluation, steps, len(evaluations) > 1 or len(budgets) > 1)
            # step 0 is random init alone: nothing to pair with another baseline
            group_baseline = RANDOM_INIT if steps == 0 else baseline
            paired = paired_summary(group, metric, group_baseline, pretrained)
            group_flags = {name: text for (name, budget), text in (flags or {}).items() if budget == steps}
            summaries.append(
                paired.assign(
                    evaluation=evaluation.name,
                    pretrain_steps=steps,
                    flag=[group_flags.get(recipe, "") for recipe in paired["recipe"]],
                )
            )
            pairwise = pairwise_differences(group, metric, group_baseline, pretrained)
            pairs.append(pairwise.assign(evaluation=evaluation.name, pretrain_steps=steps))
            text = _group_text(group, metrics, paired, pairwise, group_baseline, group_flags)
            test_set = (test_sets or {}).get(evaluation.name)
            thin = [] if test_set is None else thin_classes(test_set, min_test_pixels)
            text += per_class_markdown(group, ";".join(thin), min_test_pixels)
            sections.append((f"## {title}\n\n" if title else "") + text)
            panels.append((title, group, metrics))
        if len(budgets) > 1:  # where each learning curve flattens
            gains = budget_gains(of_evaluation, metric, from_step_zero or set(), pretrained)
            sections.append(_gains_section(evaluation, gains, metrics.label(metric)))
            all_gains.append(gains.assign(evaluation=evaluation.name))
    test_set = (test_sets or {}).get(evaluations[0].name)
    header = f"{test_set.description}.\n\n" if test_set is not None else ""
    if pretrained:
        header += _pretraining_line(max(pretrained.values())) + "\n\n"
    table = header + "\n".join(sections) + "\n" + environment_line(environment) + "\n"
    summary = pd.concat(summaries, ignore_index=True)
    with atomic_path(out / "results_summary.csv") as temp:
        summary.to_csv(temp, index=False)
    plot_paired(
        summary[summary["pretrain_steps"] != 0],  # step 0: random init alone, no differences
        out / "results_paired.png",
        evaluations[0].label(evaluations[0].primary()),
        baseline,
        group_labels=len(panels) > 1,
    )
    atomic_write_text(out / "results.md", table)
    plot_comparison(panels, out / "results.png", pretrained)
    files = ["results.csv", "results_summary.csv", "results.md", "results.png", "results_paired.png"]
    tables = {"results_pairwise.csv": pairs, "results_budget_gains.csv": all_gains}
    files += _write_optional_tables(out, tables)
    if len(budgets) > 1:
        plot_budgets(
            summary,
            out / "results_budget.png",
            [metric_columns(evaluation) for evaluation in evaluations],
            from_step_zero=from_step_zero or set(),
        )
        files.append("results_budget.png")
    for name in _OPTIONAL_REPORT_FILES.difference(files):  # an earlier report's, of other recipes or budgets
        (out / name).unlink(missing_ok=True)
    say(f"\n{table}\nresults: {', '.join(str(out / name) for name in files)}")
    return pd.read_csv(out / "results.csv")  # the rows as the file holds them (empty cells: NaN)


def _write_optional_tables(out: Path, tables: dict[str, list[pd.DataFrame]]) -> list[str]:
    """Write each table that has rows (its parts concatenated); the names written."""
    written = []
    for name, parts in tables.items():
        if any(not part.empty for part in parts):
            with atomic_path(out / name) as temp:
                pd.concat(parts, ignore_index=True).to_csv(temp, index=False)
            written.append(name)
    return written


def _group_text(
    group: pd.DataFrame,
    metrics: MetricColumns,
    paired: pd.DataFrame,
    pairwise: pd.DataFrame,
    baseline: str,
    flags: dict[str, str],
) -> str:
    """A group's tables: mean ± std, each recipe against the baseline, then the other pairs."""
    label = metrics.label(metrics.primary)
    text = results_markdown(group, metrics, flags=flags) + "\n" + paired_markdown(paired, label, baseline)
    if not pairwise.empty:
        text += "\n" + pairwise_markdown(pairwise, label)
    return text


def _gains_section(evaluation: Evaluation, gains: pd.DataFrame, metric_label: str) -> str:
    """The report section of :func:`~geocl.report.budgets.budget_gains` for one evaluation."""
    return f"## {evaluation.name} protocol, gain from each budget to the next\n\n" + budget_gains_markdown(
        gains, metric_label
    )


def _pretraining_line(pretrain_seeds: int) -> str:
    """What the intervals cover of the pretraining's own variation (``--pretrain-seeds``)."""
    if pretrain_seeds == 1:
        return (
            "Each recipe was pretrained once: the intervals cover label subsets and seeds, not the variation "
            "between pretrainings (--pretrain-seeds pretrains each recipe several times)."
        )
    return (
        f"Each recipe was pretrained {pretrain_seeds} times (recipe seeds seed .. seed+{pretrain_seeds - 1}); the "
        f"runs of seed s read pretraining s mod {pretrain_seeds}. A difference that involves a pretrained "
        f"recipe lists its value per pretraining, and its interval is Student's t over those {pretrain_seeds} "
        f"values, not a bootstrap over the pairs: the pairs of one pretraining share its luck. A pretrained "
        f"recipe's own mean interval, and its error bar in the plots, are over its pretrainings' means too."
    )


def _group_title(evaluation: Evaluation, steps: int | None, named: bool) -> str:
    """``finetune protocol, 300 pretraining steps``; "" when the comparison has one group."""
    if not named:
        return ""
    title = f"{evaluation.name} protocol"
    if steps == 0:
        return f"{title}, 0 pretraining steps ({RANDOM_INIT})"
    return title if steps is None else f"{title}, {steps} pretraining steps"
