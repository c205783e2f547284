""":func:`run_compare`, the entry of ``geocl compare``: plan, then pretrain and evaluate each recipe, then report.

The steps are those of :mod:`geocl.experiments`; each lives in its own module (plan,
pretraining, rows, results), and this one is the loop that calls them in order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from geocl.evaluation import Evaluation
from geocl.experiments.budgets import say_step_zero
from geocl.experiments.plan import Plan, plan_comparison, row_grids, rows_served, state_test_sets
from geocl.experiments.pretraining import pretrain_candidate, snapshot_checkpoint
from geocl.experiments.process import deterministic_algorithms, stop_on_sigterm
from geocl.experiments.results import keep_earlier_report, write_pretraining_csv, write_results
from geocl.experiments.rows import RowRunner
from geocl.experiments.tracking import check_loggers, log_summary, logging_scope
from geocl.io import check_output_folder
from geocl.recipes.compare_options import CompareOptions
from geocl.report.table import FLAG, RANDOM_INIT

__all__ = ["run_compare"]

log = logging.getLogger(__name__)


def run_compare(
    options: CompareOptions,
    *,
    pretrain_fn: Callable[..., Any] | None = None,
    evaluation: Evaluation | str | None = None,
    echo: Callable[[str], None] | None = print,
) -> pd.DataFrame:
    """Pretrain and evaluate every recipe, then write results.csv, results.md and results.png.

    While it runs, SIGTERM stops it (:func:`~geocl.experiments.process.stop_on_sigterm`)
    and ``options.deterministic`` turns on torch's deterministic algorithms
    (:func:`~geocl.experiments.process.deterministic_algorithms`); both are as they were
    when it returns.

    Args:
        options: what to compare (:class:`geocl.recipes.compare_options.CompareOptions`, which
            checks its values when it is built); ``options.finetune`` and
            ``options.evaluate`` configure the evaluations (see their ``from_options``).
        pretrain_fn: ``pretrain_fn(recipe) -> result`` with ``.checkpoint``; called with
            ``resume=True`` too when an interrupted run is continued. Default:
            :func:`geocl.training.pretrain.run_pretrain`.
        evaluation: the downstream evaluation: an instance, or a registered name built
            from ``options``; default: the one registered for the recipes' ``data.format``
            (:func:`geocl.evaluation.evaluation_for`). It must serve every recipe's format.
        echo: receives one progress line per row and, at the end, the markdown table;
            None for silence.

    Returns:
        The rows of ``results.csv`` (columns :func:`~geocl.experiments.results.results_columns`),
        failed ones included (``status`` other than ``"ok"``): one recipe's failure does
        not stop the others. :func:`~geocl.experiments.failures.describe_failures` says
        which failed, for a command's exit.

    Raises:
        GeoclError: a bad recipe file, recipes that need different evaluations, an
            evaluation that cannot use its options (before anything runs).
        CompareInterrupted: SIGTERM stopped it (a :class:`KeyboardInterrupt`): the rows
            finished so far are in ``results.csv``, and rerunning resumes.
    """
    say = echo or (lambda _text: None)
    out = Path(options.out)
    with stop_on_sigterm():
        plan = plan_comparison(options, evaluation)
        # the last check before work: a read-only or misplaced --out is said before hours of pretraining
        check_output_folder(out, key="out")
        check_loggers([candidate for _, candidate in plan.pretrainings] or plan.candidates, out)
        with deterministic_algorithms(options.deterministic):
            return _run(plan, options, out, pretrain_fn, say)


def _run(
    plan: Plan, options: CompareOptions, out: Path, pretrain_fn: Callable[..., Any] | None, say: Callable[[str], None]
) -> pd.DataFrame:
    """The checked comparison: every pretraining and its rows, the random-init rows, the report."""
    if pretrain_fn is None:
        # Imported here, not at module level: it pulls in Lightning (seconds), which a
        # partial install that only reads results may lack.
        from geocl.training.pretrain import run_pretrain

        pretrain_fn = run_pretrain
    first = plan.candidates[0].recipe
    main = plan.evaluations[0]
    if (
        plan.random_init is not None
        and len({main.labelled_data(candidate.recipe) for candidate in plan.candidates}) > 1
    ):
        log.warning(
            "recipes read different data; %s is evaluated on %s", RANDOM_INIT, main.labelled_data(plan.random_init)
        )
    keep_earlier_report(out, _report_settings(plan, options), say)
    for text in plan.stage_flags.values():
        say(f"{FLAG} {text}")
    from_step_zero = (
        say_step_zero(plan.candidates, plan.random_init, bool(plan.trained), say) if plan.step_zero else set()
    )
    test_sets = state_test_sets(plan.evaluations, first, options.min_test_pixels, say)
    grids = row_grids(plan.evaluations, options, first, say)
    row_runner = RowRunner(
        out,
        plan.evaluations,
        grids,
        test_sets,
        min_test_pixels=options.min_test_pixels,
        total=plan.encoders * sum(len(grid) for grid in grids.values()),
        subset_seeds=options.subset_seeds,
        sweep=plan.sweep,
        say=say,
    )
    done: dict[int, tuple[Path | None, bool] | str] = {}  # id of a long run's candidate -> its outcome
    for steps, candidate in plan.pretrainings:
        method = str(candidate.recipe.method.name)
        pretrained: tuple[Path | None, bool] | str
        if candidate.snapshot_of is not None and steps is not None:
            long_run = candidate.snapshot_of
            pretrained = snapshot_checkpoint(long_run, done[id(long_run)], steps)
            recipe, snapshot = long_run.recipe, True
        else:
            with logging_scope(out, candidate.recipe):
                pretrained = pretrain_candidate(candidate, pretrain_fn, say)
            done[id(candidate)] = pretrained
            recipe, snapshot = candidate.recipe, False
        seeds = rows_served(candidate, plan.pretrain_seeds)  # --pretrain-seeds N: every N-th seed's rows
        if isinstance(pretrained, str):
            row_runner.fail_encoder(candidate.name, method, pretrained, steps, seeds=seeds)
        else:
            row_runner.evaluate_encoder(
                candidate.name, method, recipe, *pretrained, steps, snapshot=snapshot, seeds=seeds
            )
    if plan.random_init is not None:
        # No pretraining: its old runs are as valid as ever. With budget 0 it is step 0.
        row_runner.evaluate_encoder(RANDOM_INIT, "none", plan.random_init, None, True, 0 if plan.step_zero else None)
    else:
        say(f"no {RANDOM_INIT} row: no recipe pretrains an encoder")

    pretrainings = [candidate for _, candidate in plan.pretrainings]
    write_pretraining_csv(pretrainings, out, plan.budgets)
    results = write_results(
        row_runner.rows,
        plan.evaluations,
        out,
        say,
        plan.baseline,
        options.deterministic,
        budgets=plan.budgets,
        test_sets=test_sets,
        min_test_pixels=options.min_test_pixels,
        flags=plan.stage_flags,
        from_step_zero=from_step_zero,
        pretrained={candidate.name: plan.pretrain_seeds for candidate in pretrainings if candidate.pretrains},
    )
    log_summary([candidate.recipe for candidate in pretrainings] or [plan.random_init], out, plan.baseline, say)
    return results


def _report_settings(plan: Plan, options: CompareOptions) -> dict[str, Any]:
    """What a comparison's report is of: its evaluations' settings, and the recipes, budgets and grid
    its tables cover. A rerun that changes any of them moves the earlier report aside rather than
    overwrite it (:func:`~geocl.experiments.results.keep_earlier_report`)."""
    return {
        "evaluations": {each.name: each.settings() for each in plan.evaluations},
        "recipes": list(dict.fromkeys(candidate.name for candidate in plan.candidates)),
        "budgets": plan.budgets,
        "baseline": plan.baseline,
        "label_fractions": [float(fraction) for fraction in options.label_fractions],
        "subset_seeds": options.subset_seeds,
        "seeds": options.seeds,
        "pretrain_seeds": options.pretrain_seeds,
        "snapshots": options.snapshots,
        "min_test_pixels": options.min_test_pixels,
        "overrides": list(options.overrides),
    }
