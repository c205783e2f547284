"""The rows of a comparison: run (or reuse) one evaluation of one encoder, record it as it finishes.

A row is one (encoder, evaluation, label subset, seed). Its run folder holds the run and
its ``row.json`` (:mod:`geocl.experiments.records`); a finished run with the same
settings is reused, any other folder that holds files is moved aside first (see
:mod:`geocl.experiments`, Resuming). Every finished row is written to ``results.csv`` at
once, so that a crash or an interruption keeps what was finished.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from geocl.errors import GeoclError
from geocl.evaluation import Evaluation, Subset
from geocl.evaluation.protocol import TestSet
from geocl.experiments.failures import failure_status
from geocl.experiments.plan import Grid, thin_classes
from geocl.experiments.process import raise_if_terminated
from geocl.experiments.records import (
    describe_changes,
    encoder_identity,
    read_row_record,
    reused_checkpoint,
    row_settings,
    with_todays_defaults,
    write_row_record,
)
from geocl.experiments.results import columns_of, write_csv
from geocl.experiments.tracking import logging_scope
from geocl.training.loggers import flat_keys, log_result

__all__ = ["RowRunner", "evaluate_row", "make_row", "set_aside"]

log = logging.getLogger(__name__)


class RowRunner:
    """Runs the rows of a comparison one encoder at a time; records each (``results.csv``, a progress line).

    Args:
        out: the comparison folder.
        evaluations: the comparison's evaluations.
        grids: evaluation name -> its (label subset, seed) grid
            (:func:`~geocl.experiments.plan.row_grids`).
        test_sets: evaluation name -> its test set, where stated.
        min_test_pixels: fewer labelled test pixels flag a class (column ``few_test_pixels``).
        total: rows of the whole comparison (the ``[n/total]`` of the progress lines).
        subset_seeds: label subsets a fraction (``CompareOptions.subset_seeds``).
        sweep: several budgets, each pretraining's rows in ``<name>-<steps>steps`` folders.
        say: receives the progress lines.
    """

    def __init__(
        self,
        out: Path,
        evaluations: list[Evaluation],
        grids: dict[str, Grid],
        test_sets: dict[str, TestSet],
        *,
        min_test_pixels: int,
        total: int,
        subset_seeds: int | None,
        sweep: bool,
        say: Callable[[str], None],
    ) -> None:
        self.out = out
        self.evaluations = evaluations
        self.grids = grids
        self.test_sets = test_sets
        self.flagged = {name: ";".join(thin_classes(test_set, min_test_pixels)) for name, test_set in test_sets.items()}
        self.total = total
        self.subset_seeds = subset_seeds
        self.sweep = sweep
        self.say = say
        #: the rows so far, in run order
        self.rows: list[dict[str, Any]] = []

    def evaluate_encoder(
        self,
        name: str,
        method: str,
        recipe: Any,
        checkpoint: Path | None,
        reuse: bool,
        steps: int | None,
        *,
        snapshot: bool = False,
        seeds: tuple[int, int] = (0, 1),
    ) -> None:
        """Every row of one encoder (``checkpoint``; None: random init or a method that trains at every row).

        ``snapshot``: ``checkpoint`` is the state of ``recipe``'s run at step ``steps``.
        ``seeds``: ``(k, n)``, the encoder's rows are those whose seed is ``k`` modulo ``n``
        (the k-th of a recipe's n pretrainings, ``--pretrain-seeds``); default: all.
        """
        # random-init at step 0 keeps its one folder: the same rows with or without budget 0
        folder_name = name if steps is None or steps == 0 or not self.sweep else f"{name}-{steps}steps"
        encoder = encoder_identity(recipe, random=checkpoint is None and method == "none")
        if snapshot:
            encoder["snapshot_step"] = steps
        for each in self.evaluations:
            test_set = self.test_sets.get(each.name)
            for subset, seed in self._grid(each, seeds):
                settings = row_settings(each, subset, seed, encoder, test_set)
                tags = {
                    "recipe": name,
                    "method": method,
                    "evaluation": each.name,
                    "label_fraction": subset.label_fraction,
                    "subset_seed": seed if subset.subset_seed is None else subset.subset_seed,
                    "seed": seed,
                    **({} if steps is None else {"pretrain_steps": steps}),
                }
                with logging_scope(self.out, recipe, tags=tags, params=flat_keys(encoder)):
                    row = evaluate_row(
                        each,
                        self.out,
                        folder_name,
                        method,
                        recipe,
                        checkpoint,
                        subset,
                        seed,
                        reuse,
                        self.say,
                        settings=settings,
                    )
                self._record({**row, "recipe": name, "pretrain_steps": steps})

    def fail_encoder(
        self, name: str, method: str, status: str, steps: int | None, *, seeds: tuple[int, int] = (0, 1)
    ) -> None:
        """Every row of an encoder whose pretraining failed, with its failure ``status`` (``seeds`` as above)."""
        for each in self.evaluations:
            for subset, seed in self._grid(each, seeds):
                self._record({**make_row(each, name, method, subset, seed, status=status), "pretrain_steps": steps})

    def _grid(self, evaluation: Evaluation, seeds: tuple[int, int]) -> Grid:
        replica, replicas = seeds
        return [(subset, seed) for subset, seed in self.grids[evaluation.name] if seed % replicas == replica]

    def _record(self, row: dict[str, Any]) -> None:
        row["few_test_pixels"] = self.flagged.get(row["evaluation"], "")
        self.rows.append(row)
        # Rewritten after every row so that a crash keeps what was finished.
        write_csv(self.rows, self.out / "results.csv", columns_of(self.rows, self.evaluations))
        chosen = next(each for each in self.evaluations if each.name == row["evaluation"])
        if row["status"] == "ok":
            result = ", ".join(f"{chosen.label(column)} {row[column]:.3f}" for column in chosen.metric_columns)
        else:
            result = row["status"]
        protocol = f" [{chosen.name}]" if len(self.evaluations) > 1 else ""
        budget = "" if row["pretrain_steps"] is None else f" steps={row['pretrain_steps']}"
        subset = f" subset={row['subset_seed']}" if (self.subset_seeds or 1) > 1 else ""
        self.say(
            f"[{len(self.rows)}/{self.total}] {row['recipe']}{protocol}{budget} f={row['label_fraction']:g}{subset} "
            f"seed={row['seed']}: {result}"
        )


def evaluate_row(
    evaluation: Evaluation,
    root: Path,
    name: str,
    method: str,
    recipe: Any,
    checkpoint: Path | None,
    subset: Subset,
    seed: int,
    reuse: bool,
    say: Callable[[str], None],
    *,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One run (or its earlier result) as a results row; exceptions become a failed row.

    A finished run is reused when ``reuse`` (its encoder was not pretrained again) and
    its ``row.json`` records ``settings`` (see :mod:`geocl.experiments`); a run folder that
    is not reused but holds files is moved aside first, so the new run starts in an
    empty folder. A finished run records ``settings`` in its ``row.json``. An interruption
    (:mod:`geocl.experiments.process`) is raised, never a failed row.
    """
    settings = settings if settings is not None else {}
    out = root / evaluation.run_folder(name, subset, seed)
    finished = evaluation.read_finished(out) if reuse else None
    why = "it left no complete result" if reuse else "its encoder was pretrained again"
    if finished is not None:
        record = read_row_record(out)
        recorded = None if record is None else with_todays_defaults(record["settings"])
        if record is not None and recorded == settings:
            seconds = math.nan if finished.seconds is None else finished.seconds
            return make_row(
                evaluation,
                name,
                method,
                subset,
                seed,
                metrics=finished.metrics,
                seconds=seconds,
                checkpoint=reused_checkpoint(record, root, finished.checkpoint),
                extra=finished.extra,
            )
        why = (
            "it records no settings to check"
            if recorded is None
            else (f"made with other settings: {describe_changes(recorded, settings)}")
        )
    start = time.perf_counter()
    try:
        stale = set_aside(out)
        if stale is not None:
            say(f"  {out} held an earlier run ({why}); moved it to {stale.name}")
        measured = evaluation.run(checkpoint, recipe=recipe, subset=subset, seed=seed, out=out)
        metrics = {column: float(measured.metrics[column]) for column in evaluation.metric_columns}
    except Exception as exc:  # one row's failure must not stop the others
        raise_if_terminated()
        return make_row(
            evaluation, name, method, subset, seed, status=failure_status(exc, f"{evaluation.doing} {out.name}")
        )
    seconds = time.perf_counter() - start
    bad = [f"{evaluation.label(column)} is {value}" for column, value in metrics.items() if not math.isfinite(value)]
    if bad:
        return make_row(evaluation, name, method, subset, seed, status=f"failed: {', '.join(bad)}", seconds=seconds)
    try:
        write_row_record(out, root, settings, measured.checkpoint)
    except OSError as exc:  # the row stands; a rerun redoes it, having no record to check
        log.warning("could not record the settings of %s: %s", out, exc)
    try:  # into the row's experiment log (trainer.logger) where it has one
        log_result(out, metrics)
    except (GeoclError, OSError) as exc:  # the row stands; its experiment log lacks the result
        log.warning("could not log the result of %s: %s", out, exc)
    return make_row(
        evaluation,
        name,
        method,
        subset,
        seed,
        metrics=metrics,
        seconds=seconds,
        checkpoint=measured.checkpoint,
        extra=measured.extra,
    )


def set_aside(folder: Path) -> Path | None:
    """Rename a run folder that holds files to ``<folder>.stale-<n>`` (smallest free n); its new name, or None.

    Raises:
        GeoclError: the folder cannot be renamed (named, with the reason).
    """
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    number = 1
    while (stale := folder.with_name(f"{folder.name}.stale-{number}")).exists():
        number += 1
    try:
        folder.rename(stale)
    except OSError as exc:
        raise GeoclError(
            f"holds an earlier run that must be redone, and cannot be moved aside to {stale.name}: "
            f"{exc.strerror or exc}; delete or move it yourself",
            path=folder,
        ) from None
    log.info("moved %s aside to %s", folder, stale)
    return stale


def make_row(
    evaluation: Evaluation,
    name: str,
    method: str,
    subset: Subset,
    seed: int,
    *,
    metrics: dict[str, float] | None = None,
    status: str = "ok",
    seconds: float = math.nan,
    checkpoint: str = "",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A results row (see :func:`~geocl.experiments.results.results_columns`)."""
    metrics, extra = metrics or {}, extra or {}
    return {
        "recipe": name,
        "method": method,
        "evaluation": evaluation.name,
        "pretrain_steps": None,
        "label_fraction": subset.label_fraction,
        # the seed that drew the labelled subset: runs of two recipes pair up on it
        "subset_seed": seed if subset.subset_seed is None else subset.subset_seed,
        "seed": seed,
        **{column: metrics.get(column, math.nan) for column in evaluation.metric_columns},
        "status": status,
        "seconds": round(seconds, 1),
        "checkpoint": checkpoint,
        **{column: extra.get(column) for column in evaluation.extra_columns},
        **{column: value for column, value in extra.items() if column not in evaluation.extra_columns},
    }
