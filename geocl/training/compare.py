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
first recipe's data with its encoder architecture, initialised with each seed.

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
    finetune/     (or evaluate/) one run folder per row

Failures: an exception while pretraining marks all rows of that recipe failed; one
while evaluating marks that row failed, as does a metric that is not a finite number;
either way the other rows still run. User errors are raised before any work starts,
since finding a typo after hours of pretraining helps nobody: bad options when
:class:`~geocl.recipes.options.CompareOptions` is built, then a bad recipe file, two
recipes with the same file stem or name, recipes that need different evaluations
(tile sets and natural images: compare them separately) and evaluation options an
evaluation cannot use.

The outcome: :func:`run_compare` returns every row, failed ones included;
:func:`describe_failures` turns the failed rows into the one line a command shows
before it exits non-zero (the reasons are in ``results.md``).

Resuming: rerunning the same command after a crash redoes only what is missing.
A run folder whose result file (``metrics.json``, ``evaluation.json``) holds every
metric is read instead of rerun, provided its encoder came from a pretraining that was
itself reused (a recipe pretrained afresh in this call has its runs redone: old ones
would describe the old encoder). Reuse goes by folder name, so changed finetuning or
evaluation options (``CompareOptions.finetune``, ``.evaluate``) need a new ``out``
or the old folders deleted.

Runs redone are never mixed with the old ones: a run folder that is not reused but
holds files (the runs of a recipe pretrained afresh, a run interrupted before its
result file) is first moved aside to ``<folder>.stale-<n>`` (the smallest free
``n``), which a line of the progress output says. Nothing is deleted: the old model
and figures stay there until the user removes them. (``geocl finetune`` itself
refuses a folder that holds a run; compare decides for its own folders.)
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
from geocl.io import atomic_path, atomic_write_text
from geocl.recipes import load_recipe, read_saved_recipe, recipe_to_dict
from geocl.recipes.options import CompareOptions
from geocl.report.environment import describe_environment, environment_line
from geocl.report.paired import paired_markdown, paired_summary, plot_paired
from geocl.report.table import RANDOM_INIT, plot_results, results_markdown

__all__ = ["CompareOptions", "describe_failures", "results_columns", "run_compare"]

log = logging.getLogger(__name__)

#: Longest failure message kept in a status (a CSV cell, a table footnote).
_MAX_MESSAGE = 300


def results_columns(evaluation: Evaluation | type[Evaluation]) -> list[str]:
    """Columns of ``results.csv`` (and of the frame :func:`run_compare` returns) for an evaluation."""
    return [
        "recipe", "method", "evaluation", "label_fraction", "subset_seed", "seed", *evaluation.metric_columns,
        "status", "seconds", "checkpoint", *evaluation.extra_columns,
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
    candidates = [_load(path, options) for path in options.recipes]
    _check_unique(candidates)
    chosen = _choose(candidates, options, evaluation)
    fractions = [float(fraction) for fraction in options.label_fractions]
    grid = [(subset, seed) for subset in chosen.subsets(fractions, options.subset_seeds) for seed in range(options.seeds)]
    baseline = _baseline(candidates, options)
    if options.deterministic:
        _use_deterministic_algorithms()
    # Imported here, not at module level: it pulls in Lightning (seconds), which a
    # partial install that only reads results may lack.
    if pretrain_fn is None:
        from geocl.training.pretrain import run_pretrain as pretrain_fn

    first = candidates[0].recipe
    if len({chosen.labelled_data(candidate.recipe) for candidate in candidates}) > 1:
        log.warning("recipes read different data; %s is evaluated on %s", RANDOM_INIT, chosen.labelled_data(first))
    rows: list[dict[str, Any]] = []
    total = (len(candidates) + 1) * len(grid)

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        # Rewritten after every row so that a crash keeps what was finished.
        _write_csv(rows, out / "results.csv", results_columns(chosen))
        if row["status"] == "ok":
            result = ", ".join(f"{chosen.label(column)} {row[column]:.3f}" for column in chosen.metric_columns)
        else:
            result = row["status"]
        say(f"[{len(rows)}/{total}] {row['recipe']} f={row['label_fraction']:g} seed={row['seed']}: {result}")

    def evaluate_all(name: str, method: str, recipe: Any, checkpoint: Path | None, reuse: bool) -> None:
        for subset, seed in grid:
            record(_evaluate_row(chosen, out, name, method, recipe, checkpoint, subset, seed, reuse, say))

    for candidate in candidates:
        method = str(candidate.recipe.method.name)
        pretrained = _pretrain_or_failure(candidate, pretrain_fn, say)
        if isinstance(pretrained, str):
            for subset, seed in grid:
                record(_row(chosen, candidate.name, method, subset, seed, status=pretrained))
            continue
        checkpoint, reused = pretrained
        evaluate_all(candidate.name, method, candidate.recipe, checkpoint, reused)
    # No pretraining: its old runs are as valid as ever.
    evaluate_all(RANDOM_INIT, "none", first, None, True)

    _write_pretraining(candidates, out)
    return _write_results(rows, chosen, out, say, baseline, options.deterministic)


# ------------------------------------------------------------------- checking


def _load(path: Path, options: CompareOptions) -> _Candidate:
    """Load one recipe with the shared overrides and compare's own ``out``."""
    path = Path(path)
    # Last, so it wins over an ``out=`` among the user's overrides: compare owns the layout.
    overrides = [*options.overrides, f"out={Path(options.out) / 'pretrain' / path.stem}"]
    if options.pretrain_steps is not None:
        # one budget for every recipe: the same optimizer steps, whatever their epoch lengths
        overrides += [f"trainer.max_steps={options.pretrain_steps}", "trainer.max_epochs=-1"]
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


def _describe(evaluation: type[Evaluation]) -> str:
    """``knn-probe (kNN top-1, linear-probe top-1)``."""
    return f"{evaluation.name} ({', '.join(evaluation.label(column) for column in evaluation.metric_columns)})"


# ------------------------------------------------------------------ running


def _differing_keys(before: Any, now: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain-data recipes (``seed``, ``method.temperature``)."""
    if isinstance(before, dict) and isinstance(now, dict):
        keys = [*before, *(key for key in now if key not in before)]
        return [name for key in keys for name in _differing_keys(before.get(key), now.get(key), f"{prefix}{key}.")]
    return [] if before == now else [prefix.rstrip(".") or "the recipe"]


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
    if started and before != now:
        # Said here because run_pretrain's own refusal would point at --resume, which
        # compare does not have.
        if before is None:
            why = "its config.yaml is missing or no longer a valid recipe"
        else:
            why = f"config.yaml differs in {', '.join(_differing_keys(before, now))}"
        raise GeoclError(
            f"holds a pretraining run of a different recipe ({why}); "
            "delete the folder or compare into another out",
            path=out,
        )
    if (out / "metrics.json").exists():
        if not last.exists():
            raise GeoclError("finished pretraining run has no checkpoints/last.ckpt", path=out)
        return last, True
    result = pretrain_fn(recipe, resume=True) if interrupted else pretrain_fn(recipe)
    return Path(result.checkpoint), False


def _pretrain_or_failure(
    candidate: _Candidate, pretrain_fn: Callable[..., Any], say: Callable[[str], None]
) -> tuple[Path, bool] | str:
    """(checkpoint, reused) of a recipe's pretraining, or the failure status of its rows."""
    recipe = candidate.recipe
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
) -> dict[str, Any]:
    """One run (or its earlier result) as a results row; exceptions become a failed row.

    A run folder that is not reused but holds files is moved aside first (see the module
    docstring), so the new run starts in an empty folder.
    """
    out = root / evaluation.run_folder(name, subset, seed)
    finished = evaluation.read_finished(out) if reuse else None
    if finished is not None:
        seconds = math.nan if finished.seconds is None else finished.seconds
        return _row(
            evaluation, name, method, subset, seed, metrics=finished.metrics, seconds=seconds,
            checkpoint=finished.checkpoint, extra=finished.extra,
        )
    start = time.perf_counter()
    try:
        stale = _set_aside(out)
        if stale is not None:
            why = "it left no complete result" if reuse else "its encoder was pretrained again"
            say(f"  {out} held an earlier run ({why}); moved it to {stale.name}")
        measured = evaluation.run(checkpoint, recipe=recipe, subset=subset, seed=seed, out=out)
        metrics = {column: float(measured.metrics[column]) for column in evaluation.metric_columns}
    except Exception as exc:  # noqa: BLE001 - one row's failure must not stop the others
        return _row(evaluation, name, method, subset, seed, status=_failure(exc, f"{evaluation.doing} {out.name}"))
    seconds = time.perf_counter() - start
    bad = [f"{evaluation.label(column)} is {value}" for column, value in metrics.items() if not math.isfinite(value)]
    if bad:
        return _row(evaluation, name, method, subset, seed, status=f"failed: {', '.join(bad)}", seconds=seconds)
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
        "recipe": name, "method": method, "evaluation": evaluation.name, "label_fraction": subset.label_fraction,
        # the seed that drew the labelled subset: runs of two recipes pair up on it
        "subset_seed": seed if subset.subset_seed is None else subset.subset_seed, "seed": seed, **{column: metrics.get(column, math.nan) for column in evaluation.metric_columns},
        "status": status, "seconds": round(seconds, 1), "checkpoint": checkpoint,
        **{column: extra.get(column) for column in evaluation.extra_columns},
    }


def _use_deterministic_algorithms() -> None:
    """torch's deterministic algorithms for every run of this process (slower; an op without
    a deterministic version fails with a message naming it)."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
    torch.use_deterministic_algorithms(True)


def _write_pretraining(candidates: list[_Candidate], out: Path) -> None:
    """``pretraining.csv``: each recipe's budget as spent (steps, samples seen, wall time, final loss)."""
    rows = []
    for candidate in candidates:
        metrics_file = Path(candidate.recipe.out) / "metrics.json"
        try:
            metrics = json.loads(metrics_file.read_text())
        except (OSError, ValueError):
            metrics = {}
        rows.append({
            "recipe": candidate.name, "method": str(candidate.recipe.method.name),
            **{key: metrics.get(key) for key in ("global_step", "samples_seen", "seconds", "final_loss")},
        })
    with atomic_path(out / "pretraining.csv") as temp:
        pd.DataFrame(rows).to_csv(temp, index=False)


def _baseline(candidates: list[_Candidate], options: Any) -> str:
    """The recipe the paired differences are taken to: ``options.baseline`` or the first recipe."""
    names = [candidate.name for candidate in candidates]
    baseline = options.baseline or names[0]
    if baseline not in [*names, RANDOM_INIT]:
        raise GeoclError(f"{baseline!r} is none of the compared recipes ({', '.join(names)}, {RANDOM_INIT})", key="baseline")
    return baseline


def _write_results(
    rows: list[dict[str, Any]], evaluation: Evaluation, out: Path, say: Callable[[str], None], baseline: str,
    deterministic: bool = False,
) -> pd.DataFrame:
    """results.csv, results.md and results.png of the finished rows; the table is echoed.

    results.md holds the mean ± std table and, under it, the paired table: each
    recipe's mean with its interval and its paired difference to ``baseline``
    (:mod:`geocl.report.paired`).
    """
    columns = results_columns(evaluation)
    results = pd.DataFrame(rows, columns=columns)
    _write_csv(rows, out / "results.csv", columns)
    metric = evaluation.primary()
    paired = paired_summary(results, metric, baseline)
    environment = describe_environment(deterministic=deterministic)
    atomic_write_text(out / "environment.json", json.dumps(environment, indent=1))
    table = (
        results_markdown(results, evaluation) + "\n" + paired_markdown(paired, evaluation.label(metric), baseline)
        + "\n" + environment_line(environment) + "\n"
    )
    plot_paired(paired, out / "results_paired.png", evaluation.label(metric), baseline)
    atomic_write_text(out / "results.md", table)
    plot_results(results, out / "results.png", evaluation)
    files = ", ".join(str(out / name) for name in ("results.csv", "results.md", "results.png", "results_paired.png"))
    say(f"\n{table}\nresults: {files}")
    return results


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
