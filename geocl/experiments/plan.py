"""What a comparison runs, checked before any work: recipes, evaluations, baseline, budgets and the row grid.

User errors are raised here, before anything runs, since finding a typo after hours of
pretraining helps nobody (see :mod:`geocl.experiments`, Failures).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from geocl.errors import GeoclError
from geocl.evaluation import Evaluation, Subset, evaluation_for, get_evaluation
from geocl.evaluation.protocol import TestSet
from geocl.experiments.budgets import check_budgets
from geocl.experiments.candidates import Candidate, check_unique_names, load_candidate, method_class_of
from geocl.recipes.compare_options import CompareOptions
from geocl.report.table import RANDOM_INIT

__all__ = [
    "Plan",
    "check_method_trainings",
    "choose_baseline",
    "choose_evaluations",
    "distinct_subsets",
    "plan_comparison",
    "prepare_benchmarks",
    "random_init_recipe",
    "row_grids",
    "rows_served",
    "state_test_sets",
    "thin_classes",
]

log = logging.getLogger(__name__)

#: The grid of one evaluation: (label subset, training seed) of every row, in run order.
Grid = list[tuple[Subset, int]]


@dataclass
class Plan:
    """A checked comparison: the pretrainings to run at each budget and what evaluates them.

    Attributes:
        budgets: the step budgets (``[None]``: each recipe's own); 0 is the random-init row.
        by_budget: budget -> the recipes loaded for it (every budget but 0).
        candidates: the recipes of the first budget that pretrains (or loaded without a
            budget when 0 is the only one): names, evaluations and checks.
        evaluations: the downstream evaluations, the first the main one.
        random_init: the recipe whose data and encoder the random-init row evaluates, or None.
        baseline: the row name the paired differences are taken to.
        stage_flags: (recipe name, budget) -> why its budget ends inside its method's warm-up.
        pretrain_seeds: pretrainings of each recipe at each budget (``by_budget`` holds them
            all, replica by replica); each evaluates the rows of every N-th seed.
    """

    budgets: list[int | None]
    by_budget: dict[int | None, list[Candidate]]
    candidates: list[Candidate]
    evaluations: list[Evaluation]
    random_init: Any
    baseline: str
    stage_flags: dict[tuple[str, int | None], str]
    pretrain_seeds: int = 1

    @property
    def sweep(self) -> bool:
        """Several budgets: each pretrains into its own folder and has its own report section."""
        return len(self.budgets) > 1

    @property
    def step_zero(self) -> bool:
        """Budget 0 asked: the random-init row is step 0."""
        return 0 in self.budgets

    @property
    def trained(self) -> list[int | None]:
        """The budgets that pretrain (all but 0)."""
        return [steps for steps in self.budgets if steps != 0]

    @property
    def pretrainings(self) -> list[tuple[int | None, Candidate]]:
        """(budget, recipe) of every pretraining, in run order: with snapshots, the long runs first."""
        order = sorted(self.trained, key=lambda steps: self.by_budget[steps][0].snapshot_of is not None)
        return [(steps, candidate) for steps in order for candidate in self.by_budget[steps]]

    @property
    def encoders(self) -> int:
        """Full grids of rows: one per recipe and budget (its pretrainings share the seeds), plus random init's."""
        return sum(1 for _, candidate in self.pretrainings if candidate.replica == 0) + (self.random_init is not None)


def plan_comparison(options: CompareOptions, evaluation: Evaluation | str | None) -> Plan:
    """Load and check every recipe, choose the evaluations and the baseline, check the budgets.

    Raises:
        GeoclError: a bad recipe file, two recipes with the same file stem or name,
            recipes that need different evaluations, an evaluation that cannot use its
            options, a method that cannot serve the evaluation, budget 0 with no recipe
            that pretrains, an unknown baseline, a missing benchmark dataset, a
            learning-rate warm-up longer than the budget.
    """
    budgets: list[int | None] = [*options.pretrain_steps] if options.pretrain_steps else [None]
    sweep = len(budgets) > 1
    # budget 0 is random init: the random-init row, never a pretraining (see geocl.experiments)
    step_zero = 0 in budgets
    trained = [steps for steps in budgets if steps != 0]
    replicas = range(options.pretrain_seeds)
    by_budget = {
        steps: _replicas(
            [load_candidate(path, options, steps, sweep, replica=k) for k in replicas for path in options.recipes]
        )
        for steps in trained
    }
    if options.snapshots:
        # one run per recipe, to the largest budget; the others are its snapshots (their
        # recipes, loaded at their own budget above, still say where each snapshot stands
        # against the method's warm-up)
        longest, shorter = trained[-1], [int(steps) for steps in trained[:-1] if steps is not None]
        by_budget[longest] = _replicas(
            [
                load_candidate(path, options, longest, sweep, shorter, replica=k)
                for k in replicas
                for path in options.recipes
            ]
        )
        for steps in shorter:
            for candidate, long_run in zip(by_budget[steps], by_budget[longest], strict=True):
                candidate.snapshot_of = long_run
    candidates = (
        [candidate for candidate in by_budget[trained[0]] if candidate.replica == 0]
        if trained
        else [load_candidate(path, options) for path in options.recipes]
    )
    check_unique_names(candidates)
    evaluations = choose_evaluations(candidates, options, evaluation)
    check_method_trainings(candidates, evaluations)
    random_init = random_init_recipe(candidates)
    if step_zero and random_init is None:
        raise GeoclError(
            "0 is random init, and no recipe pretrains an encoder: there is no step 0 to evaluate; leave 0 out",
            key="pretrain_steps",
        )
    baseline = choose_baseline(candidates, options, random_init is not None)
    prepare_benchmarks(candidates)
    stage_flags = check_budgets([(steps, candidate) for steps in trained for candidate in by_budget[steps]])
    return Plan(budgets, by_budget, candidates, evaluations, random_init, baseline, stage_flags, options.pretrain_seeds)


def _replicas(candidates: list[Candidate]) -> list[Candidate]:
    """The pretrainings to run: every replica of a method that pretrains, the first of one that does not
    (it trains at every row, with the row's seed: further replicas would be the same training)."""
    return [candidate for candidate in candidates if candidate.replica == 0 or candidate.pretrains]


def rows_served(candidate: Candidate, pretrain_seeds: int) -> tuple[int, int]:
    """``(k, n)``: the candidate evaluates the rows whose seed is ``k`` modulo ``n`` (every row: ``(0, 1)``)."""
    return (candidate.replica, pretrain_seeds) if candidate.pretrains else (0, 1)


def choose_evaluations(
    candidates: list[Candidate], options: CompareOptions, evaluation: Evaluation | str | None
) -> list[Evaluation]:
    """The evaluations of the comparison: one, or the finetune and frozen protocols with ``protocol: both``."""
    if evaluation is None and options.protocol == "both":
        return [_choose_evaluation(candidates, options, name) for name in ("finetune", "frozen")]
    return [_choose_evaluation(candidates, options, evaluation)]


def _choose_evaluation(
    candidates: list[Candidate], options: CompareOptions, evaluation: Evaluation | str | None
) -> Evaluation:
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


def _describe(evaluation: type[Evaluation]) -> str:
    """``knn-probe (kNN top-1, linear-probe top-1)``."""
    return f"{evaluation.name} ({', '.join(evaluation.label(column) for column in evaluation.metric_columns)})"


def check_method_trainings(candidates: list[Candidate], evaluations: list[Evaluation]) -> None:
    """Refuse, before any work, a recipe whose method pretrains nothing and cannot serve an evaluation, or
    whose keys cannot serve one the method trains itself (:meth:`~geocl.methods.base.PretrainMethod.trains_rows_of`)."""
    for candidate in candidates:
        cls = method_class_of(candidate.recipe)
        if cls is None:
            continue
        for each in evaluations:
            try:
                cls.trains_rows_of(each.name, candidate.recipe.method)
            except GeoclError as error:  # said with the recipe file, which the key alone does not name
                message = str(error).removeprefix(f"{error.key}: ")
                raise GeoclError(message, path=candidate.path, key=error.key) from None


def random_init_recipe(candidates: list[Candidate]) -> Any:
    """The recipe whose data and encoder the random-init row evaluates: the first whose method pretrains, or None.

    A recipe whose method pretrains nothing brings its own training to every row it
    names, so it cannot stand for "the evaluation from a random encoder".
    """
    for candidate in candidates:
        cls = method_class_of(candidate.recipe)
        if cls is None or cls.pretrains:
            return candidate.recipe
    return None


def choose_baseline(candidates: list[Candidate], options: Any, random_init: bool = True) -> str:
    """The recipe the paired differences are taken to: ``options.baseline`` or the first recipe."""
    names = [candidate.name for candidate in candidates] + ([RANDOM_INIT] if random_init else [])
    baseline = options.baseline or names[0]
    if baseline not in names:
        raise GeoclError(f"{baseline!r} is none of the compared recipes ({', '.join(names)})", key="baseline")
    return baseline


def prepare_benchmarks(candidates: list[Candidate]) -> None:
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


def thin_classes(test_set: TestSet, min_pixels: int) -> list[str]:
    """The classes with fewer than ``min_pixels`` labelled test pixels."""
    return [name for name, count in test_set.class_pixels.items() if count < min_pixels]


def state_test_sets(
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
            for name in thin_classes(test_set, min_pixels):
                log.warning(
                    "class %s has %d labelled test pixels (< %d): its IoU is flagged in results.csv and results.md",
                    name,
                    test_set.class_pixels[name],
                    min_pixels,
                )
        test_sets[each.name] = test_set
    return test_sets


def row_grids(
    evaluations: list[Evaluation], options: CompareOptions, recipe: Any, say: Callable[[str], None]
) -> dict[str, Grid]:
    """Evaluation name -> its grid: every distinct label subset of each fraction, with every seed ``0 .. seeds-1``."""
    fractions = [float(fraction) for fraction in options.label_fractions]
    return {
        each.name: [
            (subset, seed)
            for subset in distinct_subsets(each, each.subsets(fractions, options.subset_seeds), recipe, say)
            for seed in range(options.seeds)
        ]
        for each in evaluations
    }


def distinct_subsets(
    evaluation: Evaluation, subsets: list[Subset], recipe: Any, say: Callable[[str], None]
) -> list[Subset]:
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
            labels = (
                "keeps every label"
                if identity[1] == ("all labels",)
                else "draws the same labels with every subset seed"
            )
            say(
                f"label fraction {subset.label_fraction:g} {labels}: its {count} label subsets are one and run once "
                f"(subset seed {subset.subset_seed}); identical subsets are not independent pairs"
            )
    return list(kept.values())
