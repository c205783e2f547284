"""``geocl compare``: pretrain several recipes, then evaluate each encoder at several label subsets and seeds.

The downstream evaluation is an :class:`~geocl.evaluation.protocol.Evaluation`, chosen
from the recipes' ``data.format`` through the registry of :mod:`geocl.evaluation`:
tile sets get ``finetune`` (a segmenter finetuned at each label fraction, mIoU on the
test tiles), image folders and CIFAR batches get ``knn-probe`` (kNN and linear-probe
top-1 of the frozen encoder on the val split, with all labels). Compare knows no task
beyond that interface; a new evaluation needs no change here.

For every recipe (in the order given):

1. load it with the shared overrides plus ``out=<out>/pretrain/<recipe file stem>``;
2. pretrain it, or reuse the finished run in that folder (``metrics.json`` present and
   ``config.yaml`` equal to the resolved recipe); an interrupted run (``last.ckpt``
   but no ``metrics.json``) of the same recipe is resumed;
3. evaluate its encoder at every label subset of the evaluation and every seed (seeds
   ``0 .. seeds-1``), each into its run folder: ``finetune/<name>-f<fraction>-s<seed>``
   (one subset per label fraction), ``evaluate/<name>-s<seed>`` (natural images: one
   subset, all labels, whatever the fractions).

Then the same runs from a random encoder (row ``random-init``, method ``none``) on the
first recipe's data with its encoder architecture, initialised with each seed (the
first recipe that pretrains: see below).

Budgets: ``pretrain_steps`` gives every recipe the same optimizer steps; several budgets
sweep them (``pretrain/<stem>-<N>steps``, one report section per budget and
``results_budget.png``: the score against pretraining steps). Budget 0 is random init:
every recipe's encoder before its first step is the same random encoder (the encoder
section, initialised with the row's seed), so step 0 is *the* random-init row, evaluated
once with ``pretrain_steps`` 0, not a copy per recipe (identical encoders are not
independent rows). It has its own report section and is the first point of each curve
whose recipe builds that encoder (a recipe with another encoder section, or one whose
method pretrains nothing, starts at its first budget, which a line says). ``0`` alone
runs the random-init rows only; ``0`` when no recipe pretrains is refused. Budget 0
pretrains nothing, so it is never checked against a warm-up nor flagged.

Methods that pretrain nothing: a method class with ``pretrains = False`` (a
semi-supervised segmenter) is itself the downstream training. Step 2 then only records
the recipe in its pretraining folder (``config.yaml``; a different recipe recorded
there is refused as for a pretraining), and each row trains the method's own
``downstream_training`` in place of the evaluation's finetuning, on the same label
subset, seed and budget, so that its rows pair with every other recipe's. A method that
pretrains nothing and has no training for the comparison's evaluation is refused
before any work. The random-init row takes the data and encoder of the first recipe
that pretrains; when none does, there is no random-init row (there is no pretraining
to measure, and each such recipe trains from random init itself: pair it with its own
supervised baseline). Compare asks the method class; it knows no method by name.

Output folder::

    results.csv   one row per (recipe, subset, seed), columns :func:`results_columns`:
                  recipe, method, evaluation, label_fraction (1.0 for all labels),
                  subset_seed (the seed that drew the labelled subset), seed,
                  the evaluation's metrics (miou; knn_top1, probe_top1), status ("ok" or
                  "failed: <message>"), seconds, checkpoint (the finetuned model; the
                  evaluated encoder); rewritten after every row
    results.md    mean ± std per recipe and subset (see geocl.report.table), then each
                  recipe's mean [95 % t interval] and its paired difference to the
                  baseline recipe [95 % bootstrap interval], wins/losses and whether it
                  is distinguishable (see geocl.report.paired)
    results.png   the metrics against label fraction (bars when there is one)
    results_paired.png  the paired differences with their intervals (forest plot)

Pairs: every recipe (and random-init) runs the same grid of label subsets and
training seeds. By default a run draws its subset with its training seed; with
``subset_seeds`` N the subsets are drawn with subset seeds 0..N-1 apart from the
training seeds 0..M-1, so N x M runs per fraction pair up across recipes.
    pretraining.csv  each recipe's pretraining as spent: steps, samples seen, seconds, final
                  loss (``pretrain_steps`` gives every recipe the same step budget)
    pretrain/     one pretraining run folder per recipe
    finetune/     (or evaluate/) one run folder per row, with its ``row.json`` (the
                  settings that made it, see Resuming)
    comparison.json  the evaluations' settings of the report beside it

Identical label subsets are one subset: a label fraction of 1 holds every label
whatever its subset seed (and a tile set's fraction that rounds up to every train tile
too, :meth:`~geocl.evaluation.protocol.Evaluation.subset_identity`), so its subset seeds
collapse into the first, which a line says: six runs on the same labels with the same
seed are one run repeated, not six pairs.

Budgets (before any work): a recipe whose learning-rate warm-up
(``scheduler.warmup_epochs``) is longer than its step budget is refused, naming the key
and both lengths in steps; one whose budget ends inside its method's own warm-up stage
(:meth:`~geocl.methods.base.PretrainMethod.warm_up`: GraSS's SimCLR epochs, SPPS's epochs
before mining) is flagged: a line now, a ⚠ and the reason in ``results.md`` and a
``flag`` in ``results_summary.csv`` (its rows are the warm-up's method under another name).

Failures: an exception while pretraining marks all rows of that recipe failed; one
while evaluating marks that row failed, as does a metric that is not a finite number;
either way the other rows still run. User errors are raised before any work starts,
since finding a typo after hours of pretraining helps nobody: bad options when
:class:`~geocl.recipes.options.CompareOptions` is built, then a bad recipe file, two
recipes with the same file stem or name, recipes that need different evaluations
(tile sets and natural images: compare them separately), evaluation options an
evaluation cannot use, a learning-rate warm-up longer than the budget and an ``out``
that cannot be written.

The outcome: :func:`run_compare` returns every row, failed ones included;
:func:`describe_failures` turns the failed rows into the one line a command shows
before it exits non-zero (the reasons are in ``results.md``).

Resuming: rerunning the same command after a crash redoes only what is missing.
A row is reused only when everything that determines it is unchanged. Every finished
run folder holds ``row.json``, the row's settings: the evaluation and all its options
(:meth:`~geocl.evaluation.protocol.Evaluation.settings`: ``--finetune-lr``,
``--finetune-arch``, ``--epochs``...), label fraction, subset seed, seed, the test set,
and what the encoder is (the pretraining recipe, or the random init's data and
encoder). A run folder whose result file (``metrics.json``, ``evaluation.json``) holds
every metric is read instead of rerun when its ``row.json`` records the same settings
and its encoder came from a pretraining that was itself reused (a recipe pretrained
afresh in this call has its runs redone: old ones would describe the old encoder).
A rerun with other options therefore reuses the pretrainings and redoes the rows; the
old rows never enter the new table. A folder without ``row.json`` (made before compare
recorded it) is redone too. The comparison's own settings are kept in
``comparison.json``: when they changed, the earlier report (``results.*``,
``pretraining.csv``, ``environment.json``) is moved to ``report.stale-<n>/`` first.

A comparison folder can be moved or copied: nothing recorded in it names the folder
(the ``out`` of a pretraining's ``config.yaml`` is not compared, a row's checkpoint is
recorded relative to the comparison folder), so a rerun in the new place reuses
everything.

Runs redone are never mixed with the old ones: a run folder that is not reused but
holds files (the runs of a recipe pretrained afresh, a run made with other settings,
a run interrupted before its result file) is first moved aside to
``<folder>.stale-<n>`` (the smallest free ``n``), which a line of the progress output
says, naming the settings that changed. Nothing is deleted: the old model and figures
stay there until the user removes them. (``geocl finetune`` itself refuses a folder
that holds a run; compare decides for its own folders.)
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from geocl.errors import GeoclError
from geocl.evaluation import Evaluation, Subset, evaluation_for, get_evaluation
from geocl.evaluation.protocol import TestSet
from geocl.io import atomic_path, atomic_write_text, check_output_folder
from geocl.recipes import load_recipe, read_saved_recipe, recipe_to_dict, save_recipe
from geocl.recipes.options import CompareOptions
from geocl.report.environment import describe_environment, environment_line
from geocl.report.paired import paired_markdown, paired_summary, plot_budgets, plot_paired
from geocl.report.table import FLAG, RANDOM_INIT, per_class_markdown, plot_comparison, results_markdown
from geocl.training.loggers import (
    check_logger,
    experiment_name,
    flat_keys,
    log_comparison_summary,
    log_result,
    log_scope,
    open_experiment,
    shown_uri,
    tracking_uri,
)

__all__ = ["CompareOptions", "describe_failures", "results_columns", "run_compare"]

log = logging.getLogger(__name__)

#: Longest failure message kept in a status (a CSV cell, a table footnote).
_MAX_MESSAGE = 300
#: The settings of a finished row, in its run folder (see the module docstring).
ROW_RECORD = "row.json"
#: The comparison's own settings (its evaluations'), in the comparison folder.
COMPARISON_RECORD = "comparison.json"
#: The report files a comparison writes, moved aside together when its settings change.
REPORT_FILES = (
    "results.csv", "results_summary.csv", "results.md", "results.png", "results_paired.png", "results_budget.png",
    "pretraining.csv", "environment.json", COMPARISON_RECORD,
)
#: Changed settings named in one line before "and N more".
_SHOWN_CHANGES = 3


def results_columns(
    evaluation: Evaluation | type[Evaluation] | list[Evaluation], extra: list[str] | tuple[str, ...] = ()
) -> list[str]:
    """Columns of ``results.csv`` (and of the frame :func:`run_compare` returns) for one or more evaluations.

    ``extra``: further columns the runs gave (per-class IoU), after the evaluations' own.
    """
    evaluations = evaluation if isinstance(evaluation, list) else [evaluation]
    metrics = list(dict.fromkeys(column for each in evaluations for column in each.metric_columns))
    own = list(dict.fromkeys(column for each in evaluations for column in each.extra_columns))
    return [
        "recipe", "method", "evaluation", "pretrain_steps", "label_fraction", "subset_seed", "seed", *metrics,
        "status", "seconds", "checkpoint", *own, *(column for column in extra if column not in own),
        "few_test_pixels",
    ]


@dataclass
class _Candidate:
    """One recipe under comparison: its file, loaded recipe and table row name."""

    path: Path
    recipe: Any

    @property
    def name(self) -> str:
        return str(self.recipe.name)


def run_compare(
    options: CompareOptions,
    *,
    pretrain_fn: Callable[..., Any] | None = None,
    evaluation: Evaluation | str | None = None,
    echo: Callable[[str], None] | None = print,
) -> pd.DataFrame:
    """Pretrain and evaluate every recipe, then write results.csv, results.md and results.png.

    Args:
        options: what to compare (:class:`geocl.recipes.options.CompareOptions`, which
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
        The rows of ``results.csv`` (columns :func:`results_columns`), failed ones
        included (``status`` other than ``"ok"``): one recipe's failure does not stop
        the others. :func:`describe_failures` says which failed, for a command's exit.

    Raises:
        GeoclError: a bad recipe file, recipes that need different evaluations, an
            evaluation that cannot use its options (before anything runs).
    """
    say = echo or (lambda _text: None)
    out = Path(options.out)
    budgets: list[int | None] = list(options.pretrain_steps or [None])
    sweep = len(budgets) > 1
    # budget 0 is random init: the random-init row, never a pretraining (see the module docstring)
    step_zero = 0 in budgets
    trained = [steps for steps in budgets if steps != 0]
    by_budget = {steps: [_load(path, options, steps, sweep) for path in options.recipes] for steps in trained}
    candidates = by_budget[trained[0]] if trained else [_load(path, options) for path in options.recipes]
    _check_unique(candidates)
    evaluations = _choose_all(candidates, options, evaluation)
    _check_method_trainings(candidates, evaluations)
    fractions = [float(fraction) for fraction in options.label_fractions]
    random_init = _random_init_recipe(candidates)
    if step_zero and random_init is None:
        raise GeoclError(
            "0 is random init, and no recipe pretrains an encoder: there is no step 0 to evaluate; leave 0 out",
            key="pretrain_steps",
        )
    baseline = _baseline(candidates, options, random_init is not None)
    _prepare_benchmarks(candidates)
    stage_flags = _check_budgets([(steps, candidate) for steps in trained for candidate in by_budget[steps]])
    # the last check before work: a read-only or misplaced --out is said before hours of pretraining
    check_output_folder(out, key="out")
    _check_loggers([candidate for steps in trained for candidate in by_budget[steps]] or candidates, out)
    if options.deterministic:
        _use_deterministic_algorithms()
    # Imported here, not at module level: it pulls in Lightning (seconds), which a
    # partial install that only reads results may lack.
    if pretrain_fn is None:
        from geocl.training.pretrain import run_pretrain as pretrain_fn

    first = candidates[0].recipe
    main = evaluations[0]
    if random_init is not None and len({main.labelled_data(candidate.recipe) for candidate in candidates}) > 1:
        log.warning("recipes read different data; %s is evaluated on %s", RANDOM_INIT, main.labelled_data(random_init))
    _keep_earlier_report(out, {"evaluations": {each.name: each.settings() for each in evaluations}}, say)
    for text in stage_flags.values():
        say(f"{FLAG} {text}")
    from_step_zero = _step_zero_lines(candidates, random_init, bool(trained), say) if step_zero else set()
    test_sets = _state_test_sets(evaluations, first, options.min_test_pixels, say)
    flagged = {name: ";".join(_thin_classes(test_set, options.min_test_pixels)) for name, test_set in test_sets.items()}
    grids = {
        each.name: [
            (subset, seed)
            for subset in _distinct_subsets(each, each.subsets(fractions, options.subset_seeds), first, say)
            for seed in range(options.seeds)
        ]
        for each in evaluations
    }
    rows: list[dict[str, Any]] = []
    runs = len(candidates) * len(trained) + (random_init is not None)
    total = runs * sum(len(grid) for grid in grids.values())

    def record(row: dict[str, Any]) -> None:
        row["few_test_pixels"] = flagged.get(row["evaluation"], "")
        rows.append(row)
        # Rewritten after every row so that a crash keeps what was finished.
        _write_csv(rows, out / "results.csv", _columns_of(rows, evaluations))
        chosen = next(each for each in evaluations if each.name == row["evaluation"])
        if row["status"] == "ok":
            result = ", ".join(f"{chosen.label(column)} {row[column]:.3f}" for column in chosen.metric_columns)
        else:
            result = row["status"]
        protocol = f" [{chosen.name}]" if len(evaluations) > 1 else ""
        budget = "" if row["pretrain_steps"] is None else f" steps={row['pretrain_steps']}"
        subset = f" subset={row['subset_seed']}" if (options.subset_seeds or 1) > 1 else ""
        say(f"[{len(rows)}/{total}] {row['recipe']}{protocol}{budget} f={row['label_fraction']:g}{subset} "
            f"seed={row['seed']}: {result}")

    def evaluate_all(
        name: str, method: str, recipe: Any, checkpoint: Path | None, reuse: bool, steps: int | None
    ) -> None:
        # random-init at step 0 keeps its one folder: the same rows with or without budget 0
        folder_name = name if steps is None or steps == 0 or not sweep else f"{name}-{steps}steps"
        encoder = _encoder_identity(recipe, random=checkpoint is None and method == "none")
        for each in evaluations:
            test_set = test_sets.get(each.name)
            for subset, seed in grids[each.name]:
                settings = _row_settings(each, subset, seed, encoder, test_set)
                tags = {"recipe": name, "method": method, "evaluation": each.name, "label_fraction": subset.label_fraction,
                        "subset_seed": seed if subset.subset_seed is None else subset.subset_seed, "seed": seed,
                        **({} if steps is None else {"pretrain_steps": steps})}
                with _logging(out, recipe, tags=tags, params=flat_keys(encoder)):
                    row = _evaluate_row(
                        each, out, folder_name, method, recipe, checkpoint, subset, seed, reuse, say, settings=settings
                    )
                record({**row, "recipe": name, "pretrain_steps": steps})

    for steps in trained:
        for candidate in by_budget[steps]:
            method = str(candidate.recipe.method.name)
            with _logging(out, candidate.recipe):
                pretrained = _pretrain_or_failure(candidate, pretrain_fn, say)
            if isinstance(pretrained, str):
                for each in evaluations:
                    for subset, seed in grids[each.name]:
                        record({**_row(each, candidate.name, method, subset, seed, status=pretrained), "pretrain_steps": steps})
                continue
            checkpoint, reused = pretrained
            evaluate_all(candidate.name, method, candidate.recipe, checkpoint, reused, steps)
    if random_init is not None:
        # No pretraining: its old runs are as valid as ever. With budget 0 it is step 0.
        evaluate_all(RANDOM_INIT, "none", random_init, None, True, 0 if step_zero else None)
    else:
        say(f"no {RANDOM_INIT} row: no recipe pretrains an encoder")

    _write_pretraining([candidate for steps in trained for candidate in by_budget[steps]], out, budgets)
    results = _write_results(
        rows, evaluations, out, say, baseline, options.deterministic, budgets=budgets,
        test_sets=test_sets, min_test_pixels=options.min_test_pixels, flags=stage_flags,
        from_step_zero=from_step_zero,
    )
    _log_summary([candidate.recipe for steps in trained for candidate in by_budget[steps]] or [random_init], out, baseline, say)
    return results


def _step_zero_lines(
    candidates: list[_Candidate], random_init: Any, trained: bool, say: Callable[[str], None]
) -> set[str]:
    """Say what budget 0 is; the recipes whose curves start at the random-init row (their step 0).

    A recipe starts there when its method pretrains and its encoder section is the
    random-init row's: before its first step its encoder is that random encoder.
    """
    encoder = recipe_to_dict(random_init).get("encoder")
    name = (encoder or {}).get("name", "?") if isinstance(encoder, dict) else "?"
    if not trained:
        say(f"--pretrain-steps 0 alone: only the {RANDOM_INIT} rows run (step 0 is the never-trained encoder "
            f"{name}); no recipe is pretrained")
        return set()
    say(f"step 0 is the {RANDOM_INIT} row (encoder {name}, never trained): evaluated once, the first point of "
        "every recipe's curve")
    starting: set[str] = set()
    for candidate in candidates:
        cls = _method_class(candidate.recipe)
        own = recipe_to_dict(candidate.recipe).get("encoder")
        if cls is not None and not cls.pretrains:
            say(f"  {candidate.name}: method {candidate.recipe.method.name} pretrains nothing; its curve has no step 0")
        elif own != encoder:
            other = own.get("name", "?") if isinstance(own, dict) else "?"
            say(f"  {candidate.name}: its encoder ({other}) is not {RANDOM_INIT}'s ({name}); "
                "its curve starts at its first budget, not at step 0")
        else:
            starting.add(candidate.name)
    return starting


def _columns_of(rows: list[dict[str, Any]], evaluations: list[Evaluation]) -> list[str]:
    """results.csv columns for the rows so far: per-class columns in order of first appearance."""
    base = set(results_columns(evaluations))
    extra = list(dict.fromkeys(key for row in rows for key in row if key not in base))
    return results_columns(evaluations, extra)


def _prepare_benchmarks(candidates: list[_Candidate]) -> None:
    """Tile the benchmark datasets recipes name (``data.dataset``) now, before any work: a dataset
    missing under its root is said at once, and the test split can be described."""
    named = [candidate for candidate in candidates if getattr(candidate.recipe.data, "dataset", "")]
    if not named:
        return
    from geocl.data.benchmarks import ensure_recipe_tiles  # torchgeo: only when a recipe names a benchmark

    for candidate in named:
        try:
            ensure_recipe_tiles(candidate.recipe)
        except GeoclError as error:
            raise GeoclError(str(error), path=candidate.path, key=error.key) from None


def _thin_classes(test_set: TestSet, min_pixels: int) -> list[str]:
    """The classes with fewer than ``min_pixels`` labelled test pixels."""
    return [name for name, count in test_set.class_pixels.items() if count < min_pixels]


def _state_test_sets(
    evaluations: list[Evaluation], recipe: Any, min_pixels: int, say: Callable[[str], None]
) -> dict[str, TestSet]:
    """Say what the runs are scored on; warn about thin classes. Returns evaluation -> its test set (where stated)."""
    test_sets: dict[str, TestSet] = {}
    for each in evaluations:
        test_set = each.test_set(recipe)
        if test_set is None:
            continue
        if test_set not in test_sets.values():  # the finetune and frozen protocols share the tiles
            say(test_set.description)
            for name in _thin_classes(test_set, min_pixels):
                log.warning(
                    "class %s has %d labelled test pixels (< %d): its IoU is flagged in results.csv and results.md",
                    name, test_set.class_pixels[name], min_pixels,
                )
        test_sets[each.name] = test_set
    return test_sets


# ------------------------------------------------------------------- checking


def _load(path: Path, options: CompareOptions, steps: int | None = None, sweep: bool = False) -> _Candidate:
    """Load one recipe with the shared overrides, compare's own ``out`` and the step budget ``steps``.

    In a sweep of budgets each budget pretrains into ``pretrain/<stem>-<steps>steps``.
    """
    path = Path(path)
    folder = path.stem if not sweep else f"{path.stem}-{steps}steps"
    # Last, so it wins over an ``out=`` among the user's overrides: compare owns the layout.
    overrides = [*options.overrides, f"out={Path(options.out) / 'pretrain' / folder}"]
    if steps is not None:
        # one budget for every recipe: the same optimizer steps, whatever their epoch lengths
        overrides += [f"trainer.max_steps={steps}", "trainer.max_epochs=-1"]
    try:
        recipe = load_recipe(path, overrides)
    except GeoclError as exc:
        # Loading needs the recipe's method registered. The built-in ones register on
        # importing geocl.methods, which pulls in Lightning (seconds); import it only
        # when the recipe's method section is refused (its method not registered yet),
        # then try again.
        if not (exc.key or "").startswith("method") or "geocl.methods" in sys.modules:
            raise
        import geocl.methods  # noqa: F401

        recipe = load_recipe(path, overrides)
    return _Candidate(path, recipe)


def _check_unique(candidates: list[_Candidate]) -> None:
    """Folder names (file stems) and row names (``name`` fields) must not collide."""
    stems: dict[str, Path] = {}
    names: dict[str, Path] = {}
    for candidate in candidates:
        stem, name = candidate.path.stem, candidate.name
        if stem in stems:
            raise GeoclError(
                f"same file name as {stems[stem]}: both would pretrain into pretrain/{stem}; rename one",
                path=candidate.path,
            )
        if name in names:
            raise GeoclError(f"name {name!r} is also the name of {names[name]}; rows need distinct names", path=candidate.path)
        if name == RANDOM_INIT:
            raise GeoclError(f"name {name!r} is reserved for the random-init baseline", path=candidate.path)
        if "/" in name or "\\" in name:
            raise GeoclError(f"name {name!r} names run folders and must not contain a slash", path=candidate.path)
        stems[stem], names[name] = candidate.path, candidate.path


def _choose_all(
    candidates: list[_Candidate], options: CompareOptions, evaluation: Evaluation | str | None
) -> list[Evaluation]:
    """The evaluations of the comparison: one, or the finetune and frozen protocols with ``protocol: both``."""
    if evaluation is None and options.protocol == "both":
        return [_choose(candidates, options, name) for name in ("finetune", "frozen")]
    return [_choose(candidates, options, evaluation)]


def _choose(candidates: list[_Candidate], options: CompareOptions, evaluation: Evaluation | str | None) -> Evaluation:
    """The evaluation of every recipe, configured by the options (refusing recipes that need different ones)."""
    if evaluation is None and options.protocol != "finetune":
        evaluation = options.protocol  # the frozen protocol of tile sets, by its registry name
    if evaluation is None:
        kinds = [evaluation_for(str(candidate.recipe.data.format)) for candidate in candidates]
        for candidate, kind in zip(candidates, kinds, strict=True):
            if kind is not kinds[0]:
                raise GeoclError(
                    f"recipes need different evaluations ({candidates[0].path}: {_describe(kinds[0])}; "
                    f"{candidate.path}: {_describe(kind)}); compare them separately",
                    key="recipes",
                )
        return kinds[0].from_options(options)
    chosen = get_evaluation(evaluation).from_options(options) if isinstance(evaluation, str) else evaluation
    for candidate in candidates:
        data_format = str(candidate.recipe.data.format)
        if data_format not in chosen.formats:
            raise GeoclError(
                f"data.format {data_format} is not one evaluation {chosen.name!r} reads ({', '.join(chosen.formats)})",
                path=candidate.path,
            )
    return chosen


def _method_class(recipe: Any) -> Any:
    """The method class a recipe names, or None (a method registered by its parameters alone).

    Method classes register when :mod:`geocl.methods` is imported, and no recipe can
    name one before, so nothing is imported here (compare's own tests run without Lightning).
    """
    registry = sys.modules.get("geocl.methods.registry")
    return None if registry is None else registry.METHODS.get(str(recipe.method.name))


def _check_method_trainings(candidates: list[_Candidate], evaluations: list[Evaluation]) -> None:
    """Refuse, before any work, a recipe whose method pretrains nothing and cannot serve an evaluation."""
    for candidate in candidates:
        cls = _method_class(candidate.recipe)
        if cls is None:
            continue
        for each in evaluations:
            try:
                cls.training_for(each.name, candidate.recipe.method)
            except GeoclError as error:  # said with the recipe file, which the key alone does not name
                message = str(error).removeprefix(f"{error.key}: ")
                raise GeoclError(message, path=candidate.path, key=error.key) from None


def _random_init_recipe(candidates: list[_Candidate]) -> Any:
    """The recipe whose data and encoder the random-init row evaluates: the first whose method pretrains, or None.

    A recipe whose method pretrains nothing brings its own training to every row it
    names, so it cannot stand for "the evaluation from a random encoder".
    """
    for candidate in candidates:
        cls = _method_class(candidate.recipe)
        if cls is None or cls.pretrains:
            return candidate.recipe
    return None


def _check_budgets(candidates: list[tuple[int | None, _Candidate]]) -> dict[tuple[str, int | None], str]:
    """Before any work: refuse learning-rate warm-ups longer than a step budget; flag budgets that end
    inside a method's own warm-up stage.

    Args:
        candidates: (budget, recipe) of every pretraining to run (budget None: the recipe's own).

    Returns:
        (recipe name, budget) -> the flag's text, for the recipes whose pretraining never
        reaches its method's own stage.

    Raises:
        GeoclError: a learning-rate warm-up (``scheduler.warmup_epochs``) longer than the
            step budget, naming the recipe file, the key and both lengths in steps.
    """
    flags: dict[tuple[str, int | None], str] = {}
    epochs: dict[str, int | None] = {}  # one count a data section and device count (a sweep repeats them)
    for budget, candidate in candidates:
        recipe = candidate.recipe
        cls = _method_class(recipe)
        if cls is None or not cls.pretrains:
            continue
        trainer = recipe.trainer
        stage = cls.warm_up(recipe.method)
        lr_warmup = int(recipe.scheduler.warmup_epochs) if str(recipe.scheduler.name) != "none" else 0
        stepped = int(trainer.max_steps) > 0
        epoch = None
        if stepped and (lr_warmup or stage is not None):
            data = json.dumps([recipe_to_dict(recipe)["data"], _world_size(trainer)], sort_keys=True, default=str)
            if data not in epochs:
                epochs[data] = _epoch_steps(recipe)
            epoch = epochs[data]
        if lr_warmup and stepped and int(trainer.max_epochs) == -1 and epoch is not None:
            # Lightning imported with the method classes already; geocl.methods.base is their base
            from geocl.methods.base import check_warmup_fits

            try:
                check_warmup_fits(lr_warmup, epoch, int(trainer.max_steps))
            except GeoclError as error:
                message = str(error).removeprefix(f"{error.key}: ").replace(
                    "the run's budget", "the pretraining budget" + (" (pretrain_steps)" if budget is not None else "")
                )
                raise GeoclError(f"{error.key}: {message}", path=candidate.path, key=error.key) from None
        if stage is not None:
            text = _stage_flag(candidate, stage, epoch)
            if text is not None:
                flags[(candidate.name, budget)] = text
    return flags


def _stage_flag(candidate: _Candidate, stage: Any, epoch: int | None) -> str | None:
    """Why a pretraining never reaches its method's own stage (``stage``: a :class:`WarmUp`), or None."""
    recipe = candidate.recipe
    trainer = recipe.trainer
    method = str(recipe.method.name)
    tail = f"it trained as {stage.trains_as} only, never as {method}"
    if int(trainer.max_steps) <= 0:
        epochs = int(trainer.max_epochs)
        if epochs > stage.epochs:
            return None
        return f"{candidate.name}: {epochs} pretraining epochs end inside its {stage.epochs}-epoch warm-up ({stage.key}): {tail}"
    if epoch is None:
        return None  # the size of the data is unknown: the pretraining says what is wrong with it
    limit = trainer.limit_train_batches
    if isinstance(limit, int) and not isinstance(limit, bool):
        epoch = min(epoch, limit)
    elif isinstance(limit, float) and limit < 1:
        epoch = max(1, int(epoch * limit))
    total = int(trainer.max_steps)
    if int(trainer.max_epochs) > 0:
        total = min(total, int(trainer.max_epochs) * epoch)
    start = stage.epochs * epoch
    if total > start:
        return None
    return (
        f"{candidate.name}: {total} pretraining steps end inside its {start}-step warm-up "
        f"({stage.key} {stage.epochs} x {epoch} steps an epoch): {tail}"
    )


def _epoch_steps(recipe: Any) -> int | None:
    """Optimizer steps of one pretraining epoch of ``recipe`` (its train images, batch and devices); None if unreadable."""
    # Lightning and the datasets: only for recipes of a method class (imported with Lightning already)
    from geocl.methods.base import steps_per_epoch
    from geocl.training.pretrain import train_dataset

    try:
        items = len(train_dataset(recipe))
    except GeoclError:
        return None  # the pretraining states what is wrong with the data
    return steps_per_epoch(items, int(recipe.data.batch_size), _world_size(recipe.trainer))


def _world_size(trainer: Any) -> int:
    """Processes a pretraining runs on: ``devices`` x ``num_nodes`` (``auto``/-1: the visible GPUs, else 1)."""
    devices = trainer.devices
    if not isinstance(devices, int) or devices < 1:
        import torch

        gpu = str(trainer.accelerator) in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        devices = torch.cuda.device_count() if gpu else 1
    return max(1, devices) * int(trainer.num_nodes)


def _distinct_subsets(evaluation: Evaluation, subsets: list[Subset], recipe: Any, say: Callable[[str], None]) -> list[Subset]:
    """The subsets of each label fraction that hold different labels (the first of each), saying which collapsed.

    Fractions stay apart even where two of them hold the same labels: each is a column
    the user asked for, and pairs never cross fractions.
    """
    kept: dict[Any, Subset] = {}
    merged: dict[Any, int] = {}
    for subset in subsets:
        identity = (subset.label_fraction, evaluation.subset_identity(subset, recipe))
        kept.setdefault(identity, subset)
        merged[identity] = merged.get(identity, 0) + 1
    for identity, count in merged.items():
        if count > 1:
            subset = kept[identity]
            labels = "keeps every label" if identity[1] == ("all labels",) else "draws the same labels with every subset seed"
            say(
                f"label fraction {subset.label_fraction:g} {labels}: its {count} label subsets are one and run once "
                f"(subset seed {subset.subset_seed}); identical subsets are not independent pairs"
            )
    return list(kept.values())


def _describe(evaluation: type[Evaluation]) -> str:
    """``knn-probe (kNN top-1, linear-probe top-1)``."""
    return f"{evaluation.name} ({', '.join(evaluation.label(column) for column in evaluation.metric_columns)})"


# ------------------------------------------------------------------ logging


def _check_loggers(recipes: list[_Candidate], out: Path) -> None:
    """Before any work: each recipe's ``trainer.logger`` installed; an MLflow store reachable (one line if not)."""
    for candidate in recipes:
        check_logger(str(candidate.recipe.trainer.logger), path=candidate.path)
    if any(str(candidate.recipe.trainer.logger) == "mlflow" for candidate in recipes):
        open_experiment(tracking_uri(out), experiment_name(out.resolve().name))


def _logging(out: Path, recipe: Any, *, tags: dict[str, Any] | None = None, params: dict[str, Any] | None = None) -> Any:
    """The logging scope of a pretraining or a row (:func:`geocl.training.loggers.log_scope`): the recipe's
    ``trainer.logger``, the comparison's MLflow store and experiment, the ``comparison`` tag and ``tags``."""
    return log_scope(
        kind=str(recipe.trainer.logger), store=out, experiment=out.resolve().name,
        tags={"comparison": out.resolve().name, **(tags or {})}, params=params,
    )


def _log_summary(recipes: list[Any], out: Path, baseline: str, say: Callable[[str], None]) -> None:
    """The paired summary (``results_summary.csv``) to MLflow when a recipe's ``trainer.logger`` is ``mlflow``; a line
    says where the comparison's runs are."""
    if not any(recipe is not None and str(recipe.trainer.logger) == "mlflow" for recipe in recipes):
        return
    summary = pd.read_csv(out / "results_summary.csv")
    rows = [{key: value for key, value in row.items() if not (isinstance(value, float) and math.isnan(value))}
            for row in summary.to_dict("records")]
    files = [out / name for name in ("results.md", "results_summary.csv", "results.csv", "results_paired.png")]
    log_comparison_summary(rows, out, baseline=baseline, files=files)
    say(f"MLflow: experiment {experiment_name(out.resolve().name)!r} at {shown_uri(tracking_uri(out))}")


# ------------------------------------------------------------------ running


def _differing_keys(before: Any, now: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain-data recipes (``seed``, ``method.temperature``)."""
    if isinstance(before, dict) and isinstance(now, dict):
        keys = [*before, *(key for key in now if key not in before)]
        return [name for key in keys for name in _differing_keys(before.get(key), now.get(key), f"{prefix}{key}.")]
    return [] if before == now else [prefix.rstrip(".") or "the recipe"]


#: Recipe keys that change nothing a run trains: where its folder is (``out``: a comparison
#: may be moved) and the online representation monitor, which leaves the weights as they are.
UNTRAINED_KEYS = ("out", "monitor")
#: Keys of the ``trainer`` section that change nothing a run trains: the experiment logger
#: (switching a comparison to MLflow keeps its pretrainings and rows).
UNTRAINED_TRAINER_KEYS = ("logger",)


def _trained_part(recipe: Any) -> Any:
    """A plain-data recipe without :data:`UNTRAINED_KEYS` (and :data:`UNTRAINED_TRAINER_KEYS`): what decides
    whether a folder holds the same run."""
    if not isinstance(recipe, dict):
        return recipe
    kept = {key: value for key, value in recipe.items() if key not in UNTRAINED_KEYS}
    if isinstance(kept.get("trainer"), dict):
        kept["trainer"] = {key: value for key, value in kept["trainer"].items() if key not in UNTRAINED_TRAINER_KEYS}
    return kept


def _encoder_identity(recipe: Any, *, random: bool) -> dict[str, Any]:
    """What a row's encoder is, as plain data: the pretraining recipe (without ``out`` and ``monitor``), or a random init's data and encoder."""
    plain = recipe_to_dict(recipe)
    if random:
        return {"random_init": {"data": plain.get("data"), "encoder": plain.get("encoder")}}
    return {"recipe": _trained_part(plain)}


def _row_settings(
    evaluation: Evaluation, subset: Subset, seed: int, encoder: dict[str, Any], test_set: TestSet | None
) -> dict[str, Any]:
    """Everything that determines one row's numbers, as the JSON data ``row.json`` holds."""
    settings = {
        "evaluation": evaluation.settings(),
        "label_fraction": subset.label_fraction,
        "subset_seed": subset.subset_seed,
        "seed": seed,
        "encoder": encoder,
        "test_set": None if test_set is None else {"description": test_set.description, "class_pixels": test_set.class_pixels},
    }
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def _read_row_record(folder: Path) -> dict[str, Any] | None:
    """A run folder's ``row.json``, or None (absent or unreadable)."""
    try:
        record = json.loads((folder / ROW_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("settings"), dict) else None


def _write_row_record(folder: Path, root: Path, settings: dict[str, Any], checkpoint: str) -> None:
    """Record a finished row's settings, its checkpoint relative to the comparison folder where it lies inside."""
    if checkpoint:
        try:
            checkpoint = Path(checkpoint).resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            pass  # outside the comparison: kept as it is
    atomic_write_text(folder / ROW_RECORD, json.dumps({"settings": settings, "checkpoint": checkpoint}, indent=1))


def _recorded_checkpoint(record: dict[str, Any], root: Path, fallback: str) -> str:
    """A reused row's checkpoint: recorded relative to the comparison folder, wherever that is now."""
    recorded = record.get("checkpoint")
    if not isinstance(recorded, str) or not recorded:
        return fallback
    return recorded if Path(recorded).is_absolute() else str(root / recorded)


def _describe_changes(before: dict[str, Any], now: dict[str, Any]) -> str:
    """``finetune lr 0.001, now 0.01; ...``: the settings that differ, evaluation options by their own names."""
    changed = []
    for key in _differing_keys(before, now):
        old, new = _at(before, key), _at(now, key)
        shown = key
        if key.startswith("evaluation.options."):
            shown = f"{now.get('evaluation', {}).get('name', 'evaluation')} {key.removeprefix('evaluation.options.')}"
        elif key.startswith("evaluations.") and key.count(".") >= 3:  # comparison.json: evaluations.<name>.options.<key>
            _, name, _, option = key.split(".", 3)
            shown = f"{name} {option}"
        elif key.startswith("encoder.recipe."):
            shown = f"pretraining {key.removeprefix('encoder.recipe.')}"
        changed.append(f"{shown} {_plain(old)}, now {_plain(new)}")
    more = f"; and {len(changed) - _SHOWN_CHANGES} more" if len(changed) > _SHOWN_CHANGES else ""
    return "; ".join(changed[:_SHOWN_CHANGES]) + more


def _at(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _plain(value: Any) -> str:
    if value is None:
        return "unset"
    text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= 60 else text[:59] + "…"


def _keep_earlier_report(out: Path, settings: dict[str, Any], say: Callable[[str], None]) -> None:
    """Move the report of a comparison made with other evaluation settings to ``report.stale-<n>/``; record these.

    The rows themselves are checked one by one (``row.json``); this keeps the earlier
    table and figures, which the new ones would replace, beside them.
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
        why = "it records no settings" if not isinstance(before, dict) else (
            "made with other settings: " + _describe_changes(before, settings)
        )
        say(f"{out} held the report of an earlier comparison ({why}); moved it to {aside.name}")
    atomic_write_text(record, json.dumps(settings, indent=1))


def _pretrained(recipe: Any, pretrain_fn: Callable[..., Any]) -> tuple[Path, bool]:
    """(encoder checkpoint, whether a finished run was reused) for one recipe."""
    from geocl.training.pretrain import holds_checkpoints  # Lightning: only when a recipe runs

    out = Path(recipe.out)
    last = out / "checkpoints" / "last.ckpt"
    saved = out / "config.yaml"
    before = read_saved_recipe(saved) if saved.exists() else None
    now = recipe_to_dict(recipe)
    interrupted = holds_checkpoints(out)  # last.ckpt, or epoch checkpoints a crash left alone
    started = (out / "metrics.json").exists() or interrupted
    if started and _trained_part(before) != _trained_part(now):
        # Said here because run_pretrain's own refusal would point at --resume, which
        # compare does not have.
        if before is None:
            why = "its config.yaml is missing or no longer a valid recipe"
        else:
            why = f"config.yaml differs in {', '.join(_differing_keys(_trained_part(before), _trained_part(now)))}"
        raise GeoclError(
            f"holds a pretraining run of a different recipe ({why}); "
            "delete the folder or compare into another out",
            path=out,
        )
    if (out / "metrics.json").exists() and last.exists():
        return last, True
    if (out / "metrics.json").exists() and not interrupted:
        raise GeoclError("finished pretraining run has no checkpoint left; delete the folder to redo it", path=out)
    # a finished run whose last.ckpt a kill left missing is repaired by a resume (from its epoch checkpoint)
    result = pretrain_fn(recipe, resume=True) if interrupted else pretrain_fn(recipe)
    return Path(result.checkpoint), False


def _recorded(recipe: Any) -> bool:
    """Record a recipe whose method pretrains nothing in its pretraining folder; whether it was recorded before.

    Its earlier rows stand when the same recipe was recorded (they are reused like the
    rows of a reused pretraining); a first record has them redone.

    Raises:
        GeoclError: the folder records or holds a run of a different recipe.
    """
    out = Path(recipe.out)
    saved = out / "config.yaml"
    now = recipe_to_dict(recipe)
    if saved.exists():
        before = read_saved_recipe(saved)
        if before is not None and _trained_part(before) == _trained_part(now):
            return True
        why = "its config.yaml is no longer a valid recipe" if before is None else (
            f"config.yaml differs in {', '.join(_differing_keys(_trained_part(before), _trained_part(now)))}"
        )
        raise GeoclError(f"holds a run of a different recipe ({why}); delete the folder or compare into another out",
                         path=out)
    if out.is_dir() and any(out.iterdir()):
        raise GeoclError("holds files but no config.yaml; delete the folder or compare into another out", path=out)
    save_recipe(recipe, saved)
    return False


def _pretrain_or_failure(
    candidate: _Candidate, pretrain_fn: Callable[..., Any], say: Callable[[str], None]
) -> tuple[Path | None, bool] | str:
    """(checkpoint, reused) of a recipe's pretraining, or the failure status of its rows.

    A recipe whose method pretrains nothing has no checkpoint (None): its rows train the
    method's own downstream training (see the module docstring).
    """
    recipe = candidate.recipe
    cls = _method_class(recipe)
    if cls is not None and not cls.pretrains:
        say(f"{candidate.name}: method {recipe.method.name} pretrains nothing; it trains at every row")
        try:
            return None, _recorded(recipe)
        except Exception as exc:  # noqa: BLE001 - one recipe's failure must not stop the others
            return _failure(exc, f"recording {candidate.name}")
    try:
        say(f"pretraining {candidate.name} ({candidate.path}) into {recipe.out}")
        checkpoint, reused = _pretrained(recipe, pretrain_fn)
    except Exception as exc:  # noqa: BLE001 - one recipe's failure must not stop the others
        return _failure(exc, f"pretraining {candidate.name}")
    if reused:
        say(f"  reusing the finished run in {recipe.out}")
    return checkpoint, reused


def _evaluate_row(
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
    its ``row.json`` records ``settings`` (see the module docstring); a run folder that
    is not reused but holds files is moved aside first, so the new run starts in an
    empty folder. A finished run records ``settings`` in its ``row.json``.
    """
    settings = settings if settings is not None else {}
    out = root / evaluation.run_folder(name, subset, seed)
    finished = evaluation.read_finished(out) if reuse else None
    why = "it left no complete result" if reuse else "its encoder was pretrained again"
    if finished is not None:
        record = _read_row_record(out)
        if record is not None and record["settings"] == settings:
            seconds = math.nan if finished.seconds is None else finished.seconds
            return _row(
                evaluation, name, method, subset, seed, metrics=finished.metrics, seconds=seconds,
                checkpoint=_recorded_checkpoint(record, root, finished.checkpoint), extra=finished.extra,
            )
        why = "it records no settings to check" if record is None else (
            f"made with other settings: {_describe_changes(record['settings'], settings)}"
        )
    start = time.perf_counter()
    try:
        stale = _set_aside(out)
        if stale is not None:
            say(f"  {out} held an earlier run ({why}); moved it to {stale.name}")
        measured = evaluation.run(checkpoint, recipe=recipe, subset=subset, seed=seed, out=out)
        metrics = {column: float(measured.metrics[column]) for column in evaluation.metric_columns}
    except Exception as exc:  # noqa: BLE001 - one row's failure must not stop the others
        return _row(evaluation, name, method, subset, seed, status=_failure(exc, f"{evaluation.doing} {out.name}"))
    seconds = time.perf_counter() - start
    bad = [f"{evaluation.label(column)} is {value}" for column, value in metrics.items() if not math.isfinite(value)]
    if bad:
        return _row(evaluation, name, method, subset, seed, status=f"failed: {', '.join(bad)}", seconds=seconds)
    try:
        _write_row_record(out, root, settings, measured.checkpoint)
    except OSError as exc:  # the row stands; a rerun redoes it, having no record to check
        log.warning("could not record the settings of %s: %s", out, exc)
    try:  # into the row's experiment log (trainer.logger) where it has one
        log_result(out, metrics)
    except (GeoclError, OSError) as exc:  # the row stands; its experiment log lacks the result
        log.warning("could not log the result of %s: %s", out, exc)
    return _row(
        evaluation, name, method, subset, seed, metrics=metrics, seconds=seconds,
        checkpoint=measured.checkpoint, extra=measured.extra,
    )


def _set_aside(folder: Path) -> Path | None:
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


def describe_failures(results: pd.DataFrame, out: str | Path) -> str | None:
    """The one line that says which rows of a comparison failed, or None when all are ok.

    Args:
        results: what :func:`run_compare` returned (its ``recipe`` and ``status`` columns).
        out: the comparison folder (``CompareOptions.out``), where ``results.md`` lists
            the reasons.

    Returns:
        E.g. ``"7 of 18 runs failed: beta (6 of 6), alpha (1 of 6); the reasons are in
        runs/compare/results.md"``; recipes in table order.
    """
    failed = results["status"] != "ok"
    if not failed.any():
        return None
    counts = results.assign(failed=failed).groupby("recipe", sort=False)["failed"].agg(["sum", "size"])
    named = [f"{recipe} ({int(row['sum'])} of {int(row['size'])})" for recipe, row in counts.iterrows() if row["sum"]]
    return (
        f"{int(failed.sum())} of {len(results)} runs failed: {', '.join(named)}; "
        f"the reasons are in {Path(out) / 'results.md'}"
    )


def _row(
    evaluation: Evaluation, name: str, method: str, subset: Subset, seed: int, *,
    metrics: dict[str, float] | None = None, status: str = "ok", seconds: float = math.nan, checkpoint: str = "",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A results row (see :func:`results_columns`)."""
    metrics, extra = metrics or {}, extra or {}
    return {
        "recipe": name, "method": method, "evaluation": evaluation.name, "pretrain_steps": None,
        "label_fraction": subset.label_fraction,
        # the seed that drew the labelled subset: runs of two recipes pair up on it
        "subset_seed": seed if subset.subset_seed is None else subset.subset_seed, "seed": seed, **{column: metrics.get(column, math.nan) for column in evaluation.metric_columns},
        "status": status, "seconds": round(seconds, 1), "checkpoint": checkpoint,
        **{column: extra.get(column) for column in evaluation.extra_columns},
        **{column: value for column, value in extra.items() if column not in evaluation.extra_columns},
    }


def _use_deterministic_algorithms() -> None:
    """torch's deterministic algorithms for every run of this process (slower; an op without
    a deterministic version fails with a message naming it)."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
    torch.use_deterministic_algorithms(True)


def _write_pretraining(candidates: list[_Candidate], out: Path, budgets: list[int | None]) -> None:
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
        rows.append({
            "recipe": candidate.name, "method": str(candidate.recipe.method.name), "pretrain_steps": budget,
            **{key: metrics.get(key) for key in ("global_step", "samples_seen", "seconds", "final_loss")},
        })
    columns = ["recipe", "method", "pretrain_steps", "global_step", "samples_seen", "seconds", "final_loss"]
    with atomic_path(out / "pretraining.csv") as temp:
        pd.DataFrame(rows, columns=columns).to_csv(temp, index=False)


def _baseline(candidates: list[_Candidate], options: Any, random_init: bool = True) -> str:
    """The recipe the paired differences are taken to: ``options.baseline`` or the first recipe."""
    names = [candidate.name for candidate in candidates] + ([RANDOM_INIT] if random_init else [])
    baseline = options.baseline or names[0]
    if baseline not in names:
        raise GeoclError(f"{baseline!r} is none of the compared recipes ({', '.join(names)})", key="baseline")
    return baseline


def _write_results(
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
) -> pd.DataFrame:
    """results.csv, results_summary.csv, results.md and the PNGs of the finished rows; the table is echoed.

    ``flags``: (recipe, budget) -> why its rows are not its method's (see
    :func:`_check_budgets`): marked in the group's table, in the ``flag`` column of
    ``results_summary.csv``.

    One section per (evaluation, pretraining budget) group, random-init in every group:
    the mean ± std table, then each recipe's mean with its interval and its paired
    difference to ``baseline`` (:mod:`geocl.report.paired`), then per-class IoU with
    the classes that have too few test pixels flagged. Budget 0's group holds the
    random-init rows alone (its own baseline). Over several budgets,
    ``results_budget.png`` draws each recipe's score against pretraining steps, starting
    at step 0 (the random-init row) for the recipes of ``from_step_zero``.
    """
    budgets = budgets or [None]
    columns = _columns_of(rows, evaluations)
    results = pd.DataFrame(rows, columns=columns)
    _write_csv(rows, out / "results.csv", columns)
    environment = describe_environment(deterministic=deterministic)
    atomic_write_text(out / "environment.json", json.dumps(environment, indent=1))
    sections, panels, summaries = [], [], []
    for evaluation in evaluations:
        of_evaluation = results[results["evaluation"] == evaluation.name]
        metric = evaluation.primary()
        for steps in budgets:
            group = of_evaluation[of_evaluation["pretrain_steps"].isna()] if steps is None else of_evaluation[
                (of_evaluation["pretrain_steps"] == steps) | (of_evaluation["recipe"] == RANDOM_INIT)
            ]
            title = _group_title(evaluation, steps, len(evaluations) > 1 or len(budgets) > 1)
            # step 0 is random init alone: nothing to pair with another baseline
            group_baseline = RANDOM_INIT if steps == 0 else baseline
            paired = paired_summary(group, metric, group_baseline)
            group_flags = {name: text for (name, budget), text in (flags or {}).items() if budget == steps}
            summaries.append(paired.assign(
                evaluation=evaluation.name, pretrain_steps=steps, flag=[group_flags.get(recipe, "") for recipe in paired["recipe"]],
            ))
            text = results_markdown(group, evaluation, flags=group_flags) + "\n" + paired_markdown(
                paired, evaluation.label(metric), group_baseline
            )
            test_set = (test_sets or {}).get(evaluation.name)
            thin = [] if test_set is None else _thin_classes(test_set, min_test_pixels)
            text += per_class_markdown(group, ";".join(thin), min_test_pixels)
            sections.append((f"## {title}\n\n" if title else "") + text)
            panels.append((title, group, evaluation))
    test_set = (test_sets or {}).get(evaluations[0].name)
    header = f"{test_set.description}.\n\n" if test_set is not None else ""
    table = header + "\n".join(sections) + "\n" + environment_line(environment) + "\n"
    summary = pd.concat(summaries, ignore_index=True)
    with atomic_path(out / "results_summary.csv") as temp:
        summary.to_csv(temp, index=False)
    plot_paired(
        summary[summary["pretrain_steps"] != 0],  # step 0: random init alone, no differences
        out / "results_paired.png", evaluations[0].label(evaluations[0].primary()), baseline,
        group_labels=len(panels) > 1,
    )
    atomic_write_text(out / "results.md", table)
    plot_comparison(panels, out / "results.png")
    files = ["results.csv", "results_summary.csv", "results.md", "results.png", "results_paired.png"]
    if len(budgets) > 1:
        plot_budgets(summary, out / "results_budget.png", evaluations, from_step_zero=from_step_zero or set())
        files.append("results_budget.png")
    say(f"\n{table}\nresults: {', '.join(str(out / name) for name in files)}")
    return pd.read_csv(out / "results.csv")  # the rows as the file holds them (empty cells: NaN)


def _group_title(evaluation: Evaluation, steps: int | None, named: bool) -> str:
    """``finetune protocol, 300 pretraining steps``; "" when the comparison has one group."""
    if not named:
        return ""
    title = f"{evaluation.name} protocol"
    if steps == 0:
        return f"{title}, 0 pretraining steps ({RANDOM_INIT})"
    return title if steps is None else f"{title}, {steps} pretraining steps"


def _failure(exc: Exception, doing: str) -> str:
    """``failed: <one line>``; logs the traceback of anything that is not a user error."""
    message = " ".join(str(exc).split())
    if isinstance(exc, GeoclError):
        log.warning("%s failed: %s", doing, message)
    else:
        # Probably a bug: keep its type in the status and its traceback in the log
        # (printed on stderr when logging is not configured).
        message = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        log.warning("%s failed", doing, exc_info=exc)
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 1] + "…"
    return f"failed: {message}"


def _write_csv(rows: list[dict[str, Any]], path: Path, columns: list[str]) -> None:
    """Write the rows so far as CSV, atomically."""
    with atomic_path(path) as temp:
        pd.DataFrame(rows, columns=columns).to_csv(temp, index=False)
