"""The downstream trainings that a method brings in place of a pretraining, declared by method name.

A method that pretrains no encoder (``pretrains = False``, :mod:`geocl.methods.base`) is
itself a downstream training: FBA (:mod:`geocl.methods.fba`) is semi-supervised
segmentation, trained once per row of a comparison (label fraction, label subset, seed)
where other methods finetune their pretrained encoder. Its recipe keys and their checks
stay with the method; the trainings live here, with the other downstream trainings, in a
table keyed by the method's registry name and the evaluation's (:data:`METHOD_TRAININGS`),
so that the methods layer imports nothing of ``geocl.finetune``. The evaluation that
chooses a row's training (:func:`geocl.evaluation.segmentation.method_training`) asks the
method class first (it refuses what it cannot serve) and takes the function from here.

Each function has the keyword interface of the evaluation's own finetune function
(``finetune``: :func:`geocl.finetune.train.run_finetune`; ``dice``:
:func:`geocl.finetune.medical.run_medical_finetune`) without the architecture options,
plus ``params``, the recipe's ``method`` section.

This module imports no Lightning, smp or MONAI: the trainings import them when a row runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geocl.finetune.medical import MedicalFinetuneResult
    from geocl.finetune.semi_supervised import FBAOptions
    from geocl.finetune.train import FinetuneResult

__all__ = ["METHOD_TRAININGS", "declared_training", "train_fba_on_tiles", "train_fba_on_volumes"]


def _fba_options(params: Any) -> FBAOptions:
    from geocl.finetune.semi_supervised import FBAOptions  # Lightning: only when a row runs

    return FBAOptions.from_method(params)


def _start(params: Any, encoder_checkpoint: str | Path | None) -> str | Path | None:
    """The row's encoder, else the recipe's ``method.init_checkpoint`` ("" = random init)."""
    if encoder_checkpoint is None and params.init_checkpoint:
        return Path(params.init_checkpoint)
    return encoder_checkpoint


def train_fba_on_tiles(
    *, params: Any, encoder_checkpoint: str | Path | None = None, **arguments: Any
) -> FinetuneResult:
    """One FBA row on a tile set: :func:`~geocl.finetune.semi_supervised.run_semi_supervised` with the recipe's keys.

    Args:
        params: the recipe's ``method`` section (:class:`geocl.methods.fba.FBA`'s keys).
        encoder_checkpoint: the row's encoder (None for a method that does not pretrain);
            falls back to ``params.init_checkpoint``.
        **arguments: the finetune interface of :func:`geocl.finetune.train.run_finetune`
            (tiles, encoder, label_fraction, seed, subset_seed, out, lr, crop and the budget).

    Returns:
        A :class:`~geocl.finetune.train.FinetuneResult` (test mIoU of decoder 1).
    """
    from geocl.finetune import semi_supervised  # Lightning: only when a row runs

    start = _start(params, encoder_checkpoint)
    return semi_supervised.run_semi_supervised(encoder_checkpoint=start, fba=_fba_options(params), **arguments)


def train_fba_on_volumes(
    *, params: Any, encoder_checkpoint: str | Path | None = None, **arguments: Any
) -> MedicalFinetuneResult:
    """One FBA row on a NIfTI data folder: :func:`~geocl.finetune.medical_semi_supervised.run_medical_semi_supervised`.

    Args:
        params: the recipe's ``method`` section (``spatial_dims`` 2: slices; 3: patches).
        encoder_checkpoint: the row's encoder, or ``params.init_checkpoint`` (2D only).
        **arguments: the finetune interface of :func:`geocl.finetune.medical.run_medical_finetune`
            (data, encoder, label_fraction, seed, subset_seed, out, spacing, slice_axis,
            intensity, image_size, val_fraction, lr, crop and the budget).

    Returns:
        A :class:`~geocl.finetune.medical.MedicalFinetuneResult` (means over the test cases).
    """
    from geocl.finetune import medical_semi_supervised  # Lightning, MONAI: only when a row runs

    start = _start(params, encoder_checkpoint)
    return medical_semi_supervised.run_medical_semi_supervised(
        encoder_checkpoint=start, fba=_fba_options(params), **arguments
    )


#: Method name -> evaluation name -> the training of that evaluation's rows (``params=`` the ``method`` section).
METHOD_TRAININGS: dict[str, dict[str, Callable[..., Any]]] = {
    "fba": {"finetune": train_fba_on_tiles, "dice": train_fba_on_volumes}
}


def declared_training(method: str, evaluation: str, params: Any) -> Callable[..., Any] | None:
    """The training :data:`METHOD_TRAININGS` declares for ``method``'s rows of ``evaluation``, bound to
    ``params`` (the recipe's ``method`` section); None when it declares none."""
    training = METHOD_TRAININGS.get(method, {}).get(evaluation)
    return None if training is None else functools.partial(training, params=params)
