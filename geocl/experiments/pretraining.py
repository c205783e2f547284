"""The pretraining of each recipe: run it, resume it, or reuse the finished run in its folder.

A recipe pretrains into ``<out>/pretrain/<file stem>``. A finished run there
(``metrics.json`` and ``last.ckpt``) of the same recipe (its ``config.yaml`` equal but
for :data:`~geocl.experiments.records.UNTRAINED_KEYS`) is reused; an interrupted one
(checkpoints, no ``metrics.json``) is resumed; a run of another recipe is refused. A
recipe whose method pretrains nothing is only recorded there (:func:`record_recipe`).
See :mod:`geocl.experiments`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from geocl.errors import GeoclError
from geocl.experiments.candidates import Candidate, method_class_of
from geocl.experiments.failures import failure_status
from geocl.experiments.process import raise_if_terminated
from geocl.experiments.records import differing_keys, trained_part
from geocl.methods import read_saved_recipe
from geocl.models.checkpoints import snapshot_path
from geocl.recipes import recipe_to_dict, save_recipe

__all__ = ["pretrain_or_reuse", "pretrain_candidate", "record_recipe", "snapshot_checkpoint"]


def pretrain_or_reuse(recipe: Any, pretrain_fn: Callable[..., Any]) -> tuple[Path, bool]:
    """Pretrain ``recipe`` into its ``out``, resume its interrupted run there, or reuse its finished one.

    Returns:
        (encoder checkpoint, whether a finished run was reused).

    Raises:
        GeoclError: the folder holds a run of a different recipe, or a finished run
            whose checkpoints are gone.
    """
    from geocl.training.pretrain import holds_checkpoints  # Lightning: only when a recipe runs

    out = Path(recipe.out)
    last = out / "checkpoints" / "last.ckpt"
    saved = out / "config.yaml"
    before = read_saved_recipe(saved) if saved.exists() else None
    now = recipe_to_dict(recipe)
    interrupted = holds_checkpoints(out)  # last.ckpt, or epoch checkpoints a crash left alone
    started = (out / "metrics.json").exists() or interrupted
    if started and trained_part(before) != trained_part(now):
        # Said here because run_pretrain's own refusal would point at --resume, which
        # compare does not have.
        if before is None:
            why = "its config.yaml is missing or no longer a valid recipe"
        else:
            why = f"config.yaml differs in {', '.join(differing_keys(trained_part(before), trained_part(now)))}"
        raise GeoclError(
            f"holds a pretraining run of a different recipe ({why}); delete the folder or compare into another out",
            path=out,
        )
    if (out / "metrics.json").exists() and last.exists():
        return last, True
    if (out / "metrics.json").exists() and not interrupted:
        raise GeoclError("finished pretraining run has no checkpoint left; delete the folder to redo it", path=out)
    # a finished run whose last.ckpt a kill left missing is repaired by a resume (from its epoch checkpoint)
    result = pretrain_fn(recipe, resume=True) if interrupted else pretrain_fn(recipe)
    return Path(result.checkpoint), False


def record_recipe(recipe: Any) -> bool:
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
        if before is not None and trained_part(before) == trained_part(now):
            return True
        why = (
            "its config.yaml is no longer a valid recipe"
            if before is None
            else (f"config.yaml differs in {', '.join(differing_keys(trained_part(before), trained_part(now)))}")
        )
        raise GeoclError(
            f"holds a run of a different recipe ({why}); delete the folder or compare into another out", path=out
        )
    if out.is_dir() and any(out.iterdir()):
        raise GeoclError("holds files but no config.yaml; delete the folder or compare into another out", path=out)
    save_recipe(recipe, saved)
    return False


def pretrain_candidate(
    candidate: Candidate, pretrain_fn: Callable[..., Any], say: Callable[[str], None]
) -> tuple[Path | None, bool] | str:
    """Pretrain (or reuse, or record) one recipe: (checkpoint, reused), or the failure status of its rows.

    A recipe whose method pretrains nothing has no checkpoint (None): its rows train the
    method's own downstream training (see :mod:`geocl.experiments`). An interruption
    (:mod:`geocl.experiments.process`) is raised, never a failure.
    """
    recipe = candidate.recipe
    cls = method_class_of(recipe)
    if cls is not None and not cls.pretrains:
        say(f"{candidate.name}: method {recipe.method.name} pretrains nothing; it trains at every row")
        try:
            return None, record_recipe(recipe)
        except Exception as exc:  # one recipe's failure must not stop the others
            raise_if_terminated()
            return failure_status(exc, f"recording {candidate.name}")
    try:
        say(f"pretraining {candidate.name} ({candidate.path}) into {recipe.out}")
        checkpoint, reused = pretrain_or_reuse(recipe, pretrain_fn)
    except Exception as exc:  # one recipe's failure must not stop the others
        raise_if_terminated()
        return failure_status(exc, f"pretraining {candidate.name}")
    if reused:
        say(f"  reusing the finished run in {recipe.out}")
    return checkpoint, reused


def snapshot_checkpoint(
    long_run: Candidate, outcome: tuple[Path | None, bool] | str, steps: int
) -> tuple[Path, bool] | str:
    """The snapshot at ``steps`` of ``long_run`` (``--snapshots``): (checkpoint, reused), or the failure status of its rows.

    Args:
        long_run: the recipe trained to the sweep's largest budget.
        outcome: what :func:`pretrain_candidate` gave for it (a failure is passed on).
        steps: the shorter budget.
    """
    if isinstance(outcome, str):
        return outcome
    path = snapshot_path(Path(long_run.recipe.out) / "snapshots", steps)
    if not path.is_file():
        return f"failed: {path} is missing (the {long_run.recipe.trainer.max_steps}-step run kept no snapshot there)"
    return path, outcome[1]
