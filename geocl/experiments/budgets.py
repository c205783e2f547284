"""Step budgets (``pretrain_steps``) against warm-ups, and budget 0, the random-init row.

Before any work, a learning-rate warm-up longer than a recipe's budget is refused and a
budget that ends inside its method's own warm-up stage is flagged (see
:mod:`geocl.experiments`, Budgets); :func:`say_step_zero` says what budget 0 is.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sized
from typing import Any, cast

from geocl.errors import GeoclError
from geocl.experiments.candidates import Candidate, method_class_of
from geocl.recipes import recipe_to_dict
from geocl.report.table import RANDOM_INIT

__all__ = ["check_budgets", "say_step_zero"]


def check_budgets(candidates: list[tuple[int | None, Candidate]]) -> dict[tuple[str, int | None], str]:
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
        cls = method_class_of(recipe)
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
                message = (
                    str(error)
                    .removeprefix(f"{error.key}: ")
                    .replace(
                        "the run's budget",
                        "the pretraining budget" + (" (pretrain_steps)" if budget is not None else ""),
                    )
                )
                raise GeoclError(f"{error.key}: {message}", path=candidate.path, key=error.key) from None
        if stage is not None:
            text = _stage_flag(candidate, stage, epoch)
            if text is not None:
                flags[(candidate.name, budget)] = text
    return flags


def _stage_flag(candidate: Candidate, stage: Any, epoch: int | None) -> str | None:
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
        items = len(cast(Sized, train_dataset(recipe)))
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


def say_step_zero(candidates: list[Candidate], random_init: Any, trained: bool, say: Callable[[str], None]) -> set[str]:
    """Say what budget 0 is; the recipes whose curves start at the random-init row (their step 0).

    A recipe starts there when its method pretrains and its encoder section is the
    random-init row's: before its first step its encoder is that random encoder.
    """
    encoder = recipe_to_dict(random_init).get("encoder")
    name = (encoder or {}).get("name", "?") if isinstance(encoder, dict) else "?"
    if not trained:
        say(
            f"--pretrain-steps 0 alone: only the {RANDOM_INIT} rows run (step 0 is the never-trained encoder "
            f"{name}); no recipe is pretrained"
        )
        return set()
    say(
        f"step 0 is the {RANDOM_INIT} row (encoder {name}, never trained): evaluated once, the first point of "
        "every recipe's curve"
    )
    starting: set[str] = set()
    for candidate in candidates:
        cls = method_class_of(candidate.recipe)
        own = recipe_to_dict(candidate.recipe).get("encoder")
        if cls is not None and not cls.pretrains:
            say(f"  {candidate.name}: method {candidate.recipe.method.name} pretrains nothing; its curve has no step 0")
        elif own != encoder:
            other = own.get("name", "?") if isinstance(own, dict) else "?"
            say(
                f"  {candidate.name}: its encoder ({other}) is not {RANDOM_INIT}'s ({name}); "
                "its curve starts at its first budget, not at step 0"
            )
        else:
            starting.add(candidate.name)
    return starting
