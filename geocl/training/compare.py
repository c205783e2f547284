"""``geocl compare``: pretrain several recipes, finetune each at several label fractions and seeds.

For every recipe (in the order given):

1. load it with the shared overrides plus ``out=<out>/pretrain/<recipe file stem>``;
2. pretrain it, or reuse the finished run in that folder (``metrics.json`` present and
   ``config.yaml`` equal to the resolved recipe); an interrupted run (``last.ckpt``
   but no ``metrics.json``) of the same recipe is resumed;
3. finetune a segmentation model from its encoder at every label fraction and seed
   (seeds ``0 .. seeds-1``) into ``<out>/finetune/<name>-f<fraction>-s<seed>``.

Then the same finetunes from a random encoder (row ``random-init``, method ``none``)
on the first recipe's tiles with its encoder architecture.

Output folder::

    results.csv   one row per (recipe, fraction, seed): recipe, method, label_fraction,
                  seed, miou, status ("ok" or "failed: <message>"), seconds, checkpoint
                  (the finetuned model); rewritten after every row
    results.md    mean ± std per recipe and fraction (see geocl.report.table)
    results.png   mIoU against label fraction
    pretrain/     one pretraining run folder per recipe
    finetune/     one finetuning run folder per row

Failures: an exception while pretraining marks all rows of that recipe failed; one
while finetuning marks that row failed; either way the other rows still run.
User errors in the arguments or in a recipe file are raised before any work starts,
since finding a typo after hours of pretraining helps nobody.

Natural images: when the recipes read an image folder or CIFAR batches
(``data.format`` ``image_folder`` or ``cifar``), step 3 is instead an evaluation of the
frozen encoder (kNN and linear-probe top-1 on the val split, see
:mod:`geocl.evaluation`) per seed into ``<out>/evaluate/<name>-s<seed>``; the label
fractions do not apply, ``results.csv`` has the columns :data:`NATURAL_COLUMNS` and
the table and plot show the two accuracies. The random-init row evaluates an encoder
initialised with each seed. Recipes of both kinds cannot be mixed in one comparison.

Resuming: rerunning the same command after a crash redoes only what is missing.
A finetune folder whose ``metrics.json`` holds an ``miou`` is read instead of rerun,
provided its encoder came from a pretraining that was itself reused (a recipe
pretrained afresh in this call has its finetunes redone: old ones would describe the
old encoder). Reuse goes by folder name, so changed finetuning options
(``CompareOptions.finetune``) need a new ``--out`` or the old folders deleted.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from geocl.errors import GeoclError
from geocl.io import atomic_path, atomic_write_text
from geocl.recipes import load_recipe, read_saved_recipe
from geocl.report.table import RANDOM_INIT, plot_results, results_markdown

log = logging.getLogger(__name__)

#: Columns of ``results.csv`` and of the frame :func:`run_compare` returns.
COLUMNS = ["recipe", "method", "label_fraction", "seed", "miou", "status", "seconds", "checkpoint"]
#: Columns of ``results.csv`` when the recipes train on natural images.
NATURAL_COLUMNS = ["recipe", "method", "seed", "knn_top1", "probe_top1", "status", "seconds", "checkpoint"]
#: Keyword arguments of the evaluation function that compare sets itself.
_OWN_EVALUATE_ARGS = (
    "checkpoint", "data", "format", "out", "encoder", "encoder_args", "seed", "image_size", "val_fraction",
)
#: Keyword arguments of the finetune function that compare sets itself.
_OWN_FINETUNE_ARGS = ("tiles", "encoder_checkpoint", "encoder", "label_fraction", "seed", "out")
#: Longest failure message kept in a status (a CSV cell, a table footnote).
_MAX_MESSAGE = 300


@dataclass
class CompareOptions:
    """What ``geocl compare`` runs.

    Attributes:
        recipes: recipe YAML files; their file stems name the pretraining folders and
            their ``name`` fields the table rows, so both must be unique.
        label_fractions: fractions of the labelled train tiles to finetune with, in (0, 1].
        seeds: finetuning seeds per fraction (seeds ``0 .. seeds-1``).
        out: the comparison folder.
        overrides: ``dotted.key=value`` applied to every recipe (``out`` is set by compare).
        finetune: extra keyword arguments of the finetune function (epochs, batch size...).
        evaluate: natural images: extra keyword arguments of the evaluation function
            (``k``, ``temperature``, ``probe_epochs``...).
    """

    recipes: list[Path]
    label_fractions: list[float]
    seeds: int
    out: Path
    overrides: list[str] = field(default_factory=list)
    finetune: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Candidate:
    """One recipe under comparison: its file, loaded recipe and table row name."""

    path: Path
    recipe: DictConfig

    @property
    def name(self) -> str:
        return str(self.recipe.name)


def run_compare(
    options: CompareOptions,
    *,
    pretrain_fn: Callable[..., Any] | None = None,
    finetune_fn: Callable[..., Any] | None = None,
    echo: Callable[[str], None] | None = print,
    evaluate_fn: Callable[..., Any] | None = None,
) -> pd.DataFrame:
    """Pretrain and finetune every recipe, then write results.csv, results.md and results.png.

    Args:
        options: see :class:`CompareOptions`.
        pretrain_fn: ``pretrain_fn(recipe) -> result`` with ``.checkpoint``; called with
            ``resume=True`` too when an interrupted run is continued. Default:
            :func:`geocl.training.pretrain.run_pretrain`.
        finetune_fn: ``finetune_fn(*, tiles, encoder_checkpoint, encoder, label_fraction,
            seed, out, **options.finetune) -> result`` with ``.miou`` and ``.checkpoint``;
            it writes ``out/metrics.json`` (with ``miou``) when done. Default:
            :func:`geocl.finetune.train.run_finetune`.
        echo: receives one progress line per row and, at the end, the markdown table;
            None for silence.
        evaluate_fn: natural images: ``evaluate_fn(checkpoint, data, format, *, out,
            encoder, encoder_args, seed, image_size, val_fraction, **options.evaluate) -> result`` with
            ``.knn_top1`` and ``.probe_top1``; it writes ``out/evaluation.json``.
            Default: :func:`geocl.evaluation.run_evaluation`.

    Returns:
        The rows of ``results.csv`` (columns :data:`COLUMNS`, or
        :data:`NATURAL_COLUMNS` for natural-image recipes).

    Raises:
        GeoclError: bad options or a bad recipe file (before anything runs).
    """
    say = echo or (lambda _text: None)
    fractions = _check_options(options)
    # Imported here, not at module level: both pull in Lightning (seconds), and the
    # finetune package may be absent from a partial install that only reads results.
    if pretrain_fn is None:
        from geocl.training.pretrain import run_pretrain as pretrain_fn

    out = Path(options.out)
    candidates = [_load(path, options) for path in options.recipes]
    _check_unique(candidates)
    if _natural(candidates):
        if evaluate_fn is None:
            from geocl.evaluation import run_evaluation as evaluate_fn
        return _compare_natural(candidates, options, pretrain_fn, evaluate_fn, say)
    if finetune_fn is None:
        from geocl.finetune.train import run_finetune as finetune_fn
    first = candidates[0].recipe
    if len({str(candidate.recipe.data.tiles) for candidate in candidates}) > 1:
        log.warning("recipes read different tile sets; %s finetunes on %s", RANDOM_INIT, first.data.tiles)

    rows: list[dict[str, Any]] = []
    total = (len(candidates) + 1) * len(fractions) * options.seeds

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        # Rewritten after every row so that a crash keeps what was finished.
        _write_csv(rows, out / "results.csv")
        result = f"mIoU {row['miou']:.3f}" if row["status"] == "ok" else row["status"]
        say(f"[{len(rows)}/{total}] {row['recipe']} f={row['label_fraction']:g} seed={row['seed']}: {result}")

    def finetune_all(name: str, method: str, tiles: str, encoder: str, checkpoint: Path | None, reuse: bool) -> None:
        for fraction, seed in _grid(fractions, options.seeds):
            run_out = out / "finetune" / f"{name}-f{fraction}-s{seed}"
            record(
                _finetune_row(
                    finetune_fn, options.finetune, name=name, method=method, tiles=tiles, encoder=encoder,
                    checkpoint=checkpoint, fraction=fraction, seed=seed, out=run_out, reuse=reuse,
                )
            )

    for candidate in candidates:
        recipe = candidate.recipe
        method = str(recipe.method.name)
        pretrained = _pretrain_or_failure(candidate, pretrain_fn, say)
        if isinstance(pretrained, str):
            for fraction, seed in _grid(fractions, options.seeds):
                record(_row(candidate.name, method, fraction, seed, status=pretrained))
            continue
        checkpoint, reused = pretrained
        finetune_all(candidate.name, method, str(recipe.data.tiles), str(recipe.encoder.name), checkpoint, reused)
    # No pretraining: its old finetunes are as valid as ever.
    finetune_all(RANDOM_INIT, "none", str(first.data.tiles), str(first.encoder.name), None, True)

    return _write_results(rows, COLUMNS, out, say)


# ------------------------------------------------------------------- checking


def _check_options(options: CompareOptions) -> list[float]:
    """Refuse bad options; return the label fractions without repeats, in the given order."""
    if not options.recipes:
        raise GeoclError("no recipes to compare", key="recipes")
    if isinstance(options.seeds, bool) or not isinstance(options.seeds, int) or options.seeds < 1:
        raise GeoclError(f"must be a whole number >= 1, got {options.seeds!r}", key="--seeds")
    if not options.label_fractions:
        raise GeoclError("no label fractions given", key="--label-fractions")
    fractions: list[float] = []
    for fraction in options.label_fractions:
        value = float(fraction)
        if not 0.0 < value <= 1.0:
            raise GeoclError(f"each must be in (0, 1], got {fraction}", key="--label-fractions")
        if value not in fractions:
            fractions.append(value)
    clash = sorted(set(options.finetune) & set(_OWN_FINETUNE_ARGS))
    if clash:
        raise GeoclError(
            f"finetune options must not set {', '.join(clash)}: compare sets them per row", key="finetune"
        )
    clash = sorted(set(options.evaluate) & set(_OWN_EVALUATE_ARGS))
    if clash:
        raise GeoclError(
            f"evaluation options must not set {', '.join(clash)}: compare sets them per row", key="evaluate"
        )
    return fractions


def _load(path: Path, options: CompareOptions) -> _Candidate:
    """Load one recipe with the shared overrides and compare's own ``out``."""
    path = Path(path)
    # Last, so it wins over an ``out=`` among the user's overrides: compare owns the layout.
    overrides = [*options.overrides, f"out={Path(options.out) / 'pretrain' / path.stem}"]
    try:
        recipe = load_recipe(path, overrides)
    except GeoclError as exc:
        # Loading needs the recipe's method registered. The built-in ones register on
        # importing geocl.methods, which pulls in Lightning (seconds); import it only
        # when a recipe names a method nobody registered yet, then try again.
        if exc.key != "method.name" or "geocl.methods" in sys.modules:
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
            raise GeoclError(f"name {name!r} names finetune folders and must not contain a slash", path=candidate.path)
        stems[stem], names[name] = candidate.path, candidate.path


def _natural(candidates: list[_Candidate]) -> bool:
    """Whether the recipes train on natural images (refusing a mix with tile sets)."""
    natural = [candidate.recipe.data.format != "tiles" for candidate in candidates]
    if any(natural) and not all(natural):
        tiles = next(c.path for c, n in zip(candidates, natural, strict=True) if not n)
        images = next(c.path for c, n in zip(candidates, natural, strict=True) if n)
        raise GeoclError(
            f"recipes mix tile sets ({tiles}: mIoU) and natural images ({images}: top-1 accuracy); "
            "compare them separately",
            key="recipes",
        )
    return all(natural)


# ------------------------------------------------------------------ running


def _grid(fractions: list[float], seeds: int) -> Iterator[tuple[float, int]]:
    """(fraction, seed) in table order."""
    for fraction in fractions:
        for seed in range(seeds):
            yield fraction, seed


def _same_recipe(saved: Path, recipe: DictConfig) -> bool:
    """Whether ``saved`` (a run's config.yaml) holds ``recipe`` (keys added since: defaults)."""
    return read_saved_recipe(saved) == OmegaConf.to_container(recipe, resolve=True)


def _pretrained(recipe: DictConfig, pretrain_fn: Callable[..., Any]) -> tuple[Path, bool]:
    """(encoder checkpoint, whether a finished run was reused) for one recipe."""
    out = Path(recipe.out)
    last = out / "checkpoints" / "last.ckpt"
    saved = out / "config.yaml"
    same = saved.exists() and _same_recipe(saved, recipe)
    started = (out / "metrics.json").exists() or last.exists()
    if started and not same:
        # Said here because run_pretrain's own refusal would point at --resume, which
        # compare does not have.
        raise GeoclError(
            "holds a pretraining run of a different recipe (config.yaml differs); "
            "delete the folder or compare into another --out",
            path=out,
        )
    if (out / "metrics.json").exists():
        if not last.exists():
            raise GeoclError("finished pretraining run has no checkpoints/last.ckpt", path=out)
        return last, True
    result = pretrain_fn(recipe, resume=True) if last.exists() else pretrain_fn(recipe)
    return Path(result.checkpoint), False


def _finished(path: Path, numbers: tuple[str, ...]) -> dict[str, Any] | None:
    """The JSON metrics a finished run wrote to ``path``, or None when it holds no such ``numbers`` (run it again)."""
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
        for name in numbers:
            float(metrics[name])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return metrics


def _finetune_row(
    finetune_fn: Callable[..., Any],
    extra: dict[str, Any],
    *,
    name: str,
    method: str,
    tiles: str,
    encoder: str,
    checkpoint: Path | None,
    fraction: float,
    seed: int,
    out: Path,
    reuse: bool,
) -> dict[str, Any]:
    """One finetune (or its earlier result) as a results row; exceptions become a failed row."""
    finished = _finished(out / "metrics.json", ("miou",)) if reuse else None
    if finished is not None:
        return _row(
            name, method, fraction, seed, miou=float(finished["miou"]),
            seconds=float(finished.get("seconds", math.nan)), checkpoint=str(finished.get("checkpoint", "")),
        )
    start = time.perf_counter()
    try:
        result = finetune_fn(
            tiles=Path(tiles), encoder_checkpoint=checkpoint, encoder=encoder,
            label_fraction=fraction, seed=seed, out=out, **extra,
        )
        miou = float(result.miou)
    except Exception as exc:  # noqa: BLE001 - one row's failure must not stop the others
        return _row(name, method, fraction, seed, status=_failure(exc, f"finetuning {out.name}"))
    seconds = time.perf_counter() - start
    if not math.isfinite(miou):
        return _row(name, method, fraction, seed, status=f"failed: mIoU is {miou}", seconds=seconds)
    return _row(name, method, fraction, seed, miou=miou, seconds=seconds, checkpoint=str(result.checkpoint))


def _row(
    name: str, method: str, fraction: float, seed: int, *, miou: float = math.nan, status: str = "ok",
    seconds: float = math.nan, checkpoint: str = "",
) -> dict[str, Any]:
    """A results row (see :data:`COLUMNS`)."""
    return {
        "recipe": name, "method": method, "label_fraction": fraction, "seed": seed, "miou": miou,
        "status": status, "seconds": round(seconds, 1), "checkpoint": checkpoint,
    }


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


def _write_results(rows: list[dict[str, Any]], columns: list[str], out: Path, say: Callable[[str], None]) -> pd.DataFrame:
    """results.csv, results.md and results.png of the finished rows; the table is echoed."""
    results = pd.DataFrame(rows, columns=columns)
    _write_csv(rows, out / "results.csv", columns)
    table = results_markdown(results)
    atomic_write_text(out / "results.md", table)
    plot_results(results, out / "results.png")
    say(f"\n{table}\nresults: {out / 'results.csv'}, {out / 'results.md'}, {out / 'results.png'}")
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


def _write_csv(rows: list[dict[str, Any]], path: Path, columns: list[str] = COLUMNS) -> None:
    """Write the rows so far as CSV, atomically."""
    with atomic_path(path) as temp:
        pd.DataFrame(rows, columns=columns).to_csv(temp, index=False)


# ------------------------------------------------------------------ natural images


def _compare_natural(
    candidates: list[_Candidate],
    options: CompareOptions,
    pretrain_fn: Callable[..., Any],
    evaluate_fn: Callable[..., Any],
    say: Callable[[str], None],
) -> pd.DataFrame:
    """The natural-image comparison: pretrain, then evaluate each encoder once per seed."""
    out = Path(options.out)
    first = candidates[0].recipe
    if len({(str(c.recipe.data.format), str(c.recipe.data.path)) for c in candidates}) > 1:
        log.warning("recipes read different data; %s is evaluated on %s", RANDOM_INIT, first.data.path)
    rows: list[dict[str, Any]] = []
    total = (len(candidates) + 1) * options.seeds

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        _write_csv(rows, out / "results.csv", NATURAL_COLUMNS)
        result = (
            f"kNN top-1 {row['knn_top1']:.3f}, linear-probe top-1 {row['probe_top1']:.3f}"
            if row["status"] == "ok" else row["status"]
        )
        say(f"[{len(rows)}/{total}] {row['recipe']} seed={row['seed']}: {result}")

    def evaluate_all(name: str, method: str, recipe: DictConfig, checkpoint: Path | None, reuse: bool) -> None:
        for seed in range(options.seeds):
            run_out = out / "evaluate" / f"{name}-s{seed}"
            record(_evaluate_row(evaluate_fn, options.evaluate, name, method, recipe, checkpoint, seed, run_out, reuse))

    for candidate in candidates:
        recipe = candidate.recipe
        method = str(recipe.method.name)
        pretrained = _pretrain_or_failure(candidate, pretrain_fn, say)
        if isinstance(pretrained, str):
            for seed in range(options.seeds):
                record(_natural_row(candidate.name, method, seed, status=pretrained))
            continue
        checkpoint, reused = pretrained
        evaluate_all(candidate.name, method, recipe, checkpoint, reused)
    evaluate_all(RANDOM_INIT, "none", first, None, True)

    return _write_results(rows, NATURAL_COLUMNS, out, say)


def _evaluate_row(
    evaluate_fn: Callable[..., Any],
    extra: dict[str, Any],
    name: str,
    method: str,
    recipe: DictConfig,
    checkpoint: Path | None,
    seed: int,
    out: Path,
    reuse: bool,
) -> dict[str, Any]:
    """One evaluation (or its earlier result) as a results row; exceptions become a failed row."""
    finished = _finished(out / "evaluation.json", ("knn_top1", "probe_top1")) if reuse else None
    if finished is not None:
        return _natural_row(
            name, method, seed, knn=float(finished["knn_top1"]), probe=float(finished["probe_top1"]),
            seconds=float(finished.get("seconds", math.nan)), checkpoint=str(finished.get("checkpoint", "")),
        )
    start = time.perf_counter()
    data = recipe.data
    try:
        result = evaluate_fn(
            checkpoint, data.path, str(data.format), out=out, encoder=str(recipe.encoder.name),
            encoder_args=_encoder_args(recipe), seed=seed, image_size=int(data.image_size),
            val_fraction=float(data.val_fraction), **extra,
        )
        knn, probe = float(result.knn_top1), float(result.probe_top1)
    except Exception as exc:  # noqa: BLE001 - one row's failure must not stop the others
        return _natural_row(name, method, seed, status=_failure(exc, f"evaluating {out.name}"))
    seconds = time.perf_counter() - start
    if not (math.isfinite(knn) and math.isfinite(probe)):
        return _natural_row(name, method, seed, status=f"failed: accuracy is {knn}, {probe}", seconds=seconds)
    return _natural_row(
        name, method, seed, knn=knn, probe=probe, seconds=seconds, checkpoint="" if checkpoint is None else str(checkpoint)
    )


def _encoder_args(recipe: DictConfig) -> dict[str, Any]:
    """The recipe's timm encoder arguments (``encoder.args``; none in older recipes)."""
    args = OmegaConf.select(recipe, "encoder.args", default=None)
    return dict(OmegaConf.to_container(args, resolve=True)) if args is not None else {}


def _natural_row(
    name: str, method: str, seed: int, *, knn: float = math.nan, probe: float = math.nan, status: str = "ok",
    seconds: float = math.nan, checkpoint: str = "",
) -> dict[str, Any]:
    """A natural-image results row (see :data:`NATURAL_COLUMNS`)."""
    return {
        "recipe": name, "method": method, "seed": seed, "knn_top1": knn, "probe_top1": probe,
        "status": status, "seconds": round(seconds, 1), "checkpoint": checkpoint,
    }
