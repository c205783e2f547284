"""FBA-Net / FBA-Net+ as a method: semi-supervised segmentation, trained at every label subset.

FBA (Chung et al., MILLanD @ MICCAI 2023, arXiv 2306.15189) pretrains no
encoder: it *is* a way of training the segmenter from few labels plus unlabelled data,
on labelled-first batches. So this method sets ``pretrains = False`` and hands each
evaluation it serves a training of its own (:meth:`FBA.downstream_training`); ``geocl
compare`` then skips pretraining for it and trains it once per row (label fraction,
label subset, seed), exactly where other methods finetune their pretrained encoder, and
``geocl pretrain`` refuses it in one line. Its parts:

* network: :func:`~geocl.models.fba_nets.build_fba_network`, one shared encoder and
  ``decoders`` decoders (1: FBA-Net; 3: FBA-Net+, decoders differing only in upsampling);
* loss (:class:`~geocl.finetune.semi_supervised.SemiSupervisedSegmenter`), with ``z_d``
  decoder d's logits, ``p_d = softmax(z_d)`` and L the labelled items::

      loss = lambda * sum_d Dice(p_d[L], y) + ce_weight * sum_d CE(z_d[L], y)
           + w(t) * sum_{i != j} MSE(p_i, sharpen(p_j, T))          (FBA-Net+; all items)
           + contrast_weight * sum_d C_d(z_d)                      (label free; all items)

  ``C_d`` the foreground/background contrast (:class:`~geocl.losses.fba.FBContrastLoss`),
  ``w(t)`` the sigmoid ramp of ``consistency`` over ``consistency_rampup`` units of
  ``rampup_iterations`` steps;
* batches: ``labelled_bs`` labelled items first, then unlabelled ones
  (:mod:`geocl.sampling.labelled_first`); the unlabelled part of a tile set is every
  train tile outside the labelled subset, without its mask.

``supervised_only: true`` (with ``decoders: 1``) is the baseline on the same labels: the
same network and Dice loss on the labelled items alone, the unlabelled ones never
forwarded. Recipes ``recipes/fba.yaml`` and ``recipes/fba-supervised.yaml`` pair the two
in one comparison (rows pair by label fraction, label subset and seed);
``recipes/fba-released.yaml`` adds the ``released`` preset beside them.

Remote-sensing tiles (``data.format: tiles``, evaluation ``finetune``): a 2D U-Net on
the recipe's encoder, the ``pooled-map`` contrast (tiles of any size; the spec's
adaptation), AdamW at the comparison's learning rate and the comparison's budget (its
``finetune`` options: epochs, steps, batch, crop) for every row alike. The test score is
decoder 1's mIoU (spec ambiguity 6). ``init_checkpoint`` starts the shared encoder from
a pretraining of any method.

Medical volumes (``data.format: nifti``, evaluation ``dice``): the labelled train cases
are the label fraction of them (by case), the other train cases unlabelled;
``spatial_dims: 2`` trains the U-Net on slices (``recipes/medical/fba2d.yaml``),
``spatial_dims: 3`` the released V-Net on ``patch_size`` patches with sliding-window
prediction (``recipes/medical/fba3d.yaml``); test volumes are scored per case (Dice,
Jaccard, 95HD, ASD) by :func:`~geocl.finetune.medical_semi_supervised.run_medical_semi_supervised`.

Two presets (``variant``; :mod:`geocl.finetune.semi_supervised` has the details):

* ``stable`` (default): geocl's working FBA. The contrast's projection has no bias path
  (one bias-free projection for every region view, :class:`~geocl.losses.fba.FBContrastLoss`),
  its weight is set at the first step from the two terms' gradient norms on the logits
  (at most a tenth of the supervised term's) and ramps up with the consistency's ramp;
  the consistency targets are sharpened over the classes (the released formula for two
  classes); the Dice is MONAI's soft Dice.
* ``released``: the released code's losses: its 2D Dice (``1 - I / (sum s^2 + sum t^2)``,
  mean over all classes), its contrast projections (free biases: the binary term
  collapses to its clamp floor within a step or two, the multi-class term swamps the
  Dice) at the fixed ``contrast_weight``, per-channel sharpening.

The label-free counterpart that pretrains an encoder (``geocl pretrain``) is
:mod:`geocl.methods.fba_pretrain`.

Readings of the spec's ambiguities are those of :mod:`geocl.losses.fba` and
:mod:`geocl.finetune.semi_supervised` (code over paper text; targets not detached;
lambda per variant: 0.5 for 3D FBA-Net+, else 1.0; CE off, as released).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from geocl.errors import GeoclError
from geocl.methods.base import PretrainMethod
from geocl.methods.registry import register_method

#: ``method`` keys that go to :class:`~geocl.finetune.semi_supervised.SemiSupervisedSegmenter` as they are.
SEGMENTER_KEYS = (
    "embedding_dim",
    "pooled_grid",
    "temperature",
    "detach_targets",
    "dice_weight",
    "ce_weight",
    "variant",
    "contrast_balance",
)


@register_method("fba")
class FBA(PretrainMethod):
    """FBA-Net (``decoders: 1``) / FBA-Net+ (``decoders: 3``), semi-supervised (module docstring).

    Not a pretraining: building it as one raises (``geocl pretrain`` says how to run it);
    its constructor arguments are the recipe's ``method`` keys.

    Args:
        encoder, in_chans, **common: see :class:`~geocl.methods.base.PretrainMethod`.
        decoders: 1 (FBA-Net) or 3 (FBA-Net+).
        supervised_only: the supervised baseline on the same labels (no unlabelled items,
            no consistency, no contrast).
        labelled_bs: labelled items at the front of each batch (the comparison's
            ``batch_size`` is the whole batch; the baseline steps on ``labelled_bs`` items).
        contrast_mode: ``pooled-map`` (any input size) or ``code`` (the released full-map
            projection; fixes the input to the training crop).
        contrast_weight: weight of the contrast terms (0: none, no heads).
        embedding_dim: contrast embedding size (released: 128).
        pooled_grid: pooled-map grid side; None: 32 in 2D, 16 in 3D.
        consistency: maximum weight of the mutual consistency (FBA-Net+).
        consistency_rampup: ramp length in units (released: 40).
        rampup_iterations: steps per ramp unit; None: the ramp ends at 40 % of the budget
            (as released: 6000 of 15000 iterations).
        temperature: sharpening temperature T (released: 0.1).
        detach_targets: stop gradients through the sharpened targets (released: no).
        dice_weight: lambda; None: 0.5 for 3D FBA-Net+, else 1.0.
        ce_weight: weight of cross-entropy on the labelled items (released: 0).
        decoder_channels: 2D U-Net decoder widths, one per encoder level; None: smp's.
        init_checkpoint: a pretrain checkpoint of any method to start the shared encoder
            from ("" = random init of the recipe's encoder).
        variant: ``stable`` (geocl's working preset) or ``released`` (module docstring).
        contrast_balance: ``stable``: the contrast's share of the supervised term's gradient
            norm on the logits at the first step (None: 0.1; 0: the fixed ``contrast_weight``).
        label_budget: volumes: what the label fraction is of: ``train`` (the train cases)
            or ``train-and-val`` (the paper's: its 80 training cases are geocl's train and
            val cases; see :func:`~geocl.finetune.medical_semi_supervised.run_medical_semi_supervised`).
        spatial_dims: 2 (tiles, slices: U-Net) or 3 (volumes: V-Net).
        patch_size: 3D training patch and sliding window, voxels a side (multiples of
            ``2**(depth-1)``; released LA: 112 x 112 x 80); required in 3D.
        width, depth, dropout: the 3D V-Net's base width, levels and Dropout3d rate.
    """

    pretrains = False
    usage = (
        "FBA is semi-supervised segmentation, trained at every label subset of a comparison; run it with "
        "`geocl compare recipes/fba.yaml recipes/fba-supervised.yaml --baseline fba-supervised` "
        "(volumes: recipes/medical/fba3d.yaml)"
    )

    def __init__(
        self,
        encoder: str = "resnet18",
        in_chans: int = 3,
        *,
        decoders: Literal[1, 3] = 3,
        supervised_only: bool = False,
        labelled_bs: Annotated[int, Field(ge=1)] = 4,
        contrast_mode: Literal["code", "pooled-map"] = "pooled-map",
        contrast_weight: Annotated[float, Field(ge=0)] = 1.0,
        embedding_dim: Annotated[int, Field(ge=1)] = 128,
        pooled_grid: Annotated[int, Field(ge=1)] | None = None,
        consistency: Annotated[float, Field(ge=0)] = 1.0,
        consistency_rampup: Annotated[float, Field(gt=0)] = 40.0,
        rampup_iterations: Annotated[int, Field(ge=1)] | None = None,
        temperature: Annotated[float, Field(gt=0, le=1)] = 0.1,
        detach_targets: bool = False,
        dice_weight: Annotated[float, Field(ge=0)] | None = None,
        ce_weight: Annotated[float, Field(ge=0)] = 0.0,
        decoder_channels: list[Annotated[int, Field(ge=1)]] | None = None,
        init_checkpoint: str = "",
        variant: Literal["stable", "released"] = "stable",
        contrast_balance: Annotated[float, Field(ge=0)] | None = None,
        label_budget: Literal["train", "train-and-val"] = "train",
        spatial_dims: Literal[2, 3] = 2,
        patch_size: list[Annotated[int, Field(ge=1)]] | None = None,
        width: Annotated[int, Field(ge=1)] = 16,
        depth: Annotated[int, Field(ge=2, le=6)] = 5,
        dropout: Annotated[float, Field(ge=0, lt=1)] = 0.5,
        **common: Any,
    ) -> None:
        super().__init__(encoder, in_chans, **common)  # raises: FBA is no pretraining (check_pretraining)

    @classmethod
    def downstream_training(cls, evaluation: str, params: Any) -> Callable[..., Any] | None:
        """FBA's training for the rows of ``finetune`` (tile sets) and ``dice`` (NIfTI volumes); None for others.

        Raises:
            GeoclError: ``spatial_dims: 3`` on tiles (the 3D keys are not read in 2D); 3D
                volumes without ``patch_size``.
        """
        if evaluation == "finetune":
            if params.spatial_dims != 2:
                raise GeoclError("tiles are 2D: set it to 2 (3 is for volumes)", key="method.spatial_dims")
            return functools.partial(train_on_tiles, params=params)
        if evaluation == "dice":
            if params.spatial_dims == 3 and params.patch_size is None:
                raise GeoclError(
                    "3D FBA trains on patches: set it, e.g. [112, 112, 80] (the released left-atrium patch)",
                    key="method.patch_size",
                )
            return functools.partial(train_on_volumes, params=params)
        return None


def semi_supervised_arguments(params: Any) -> dict[str, Any]:
    """The :func:`~geocl.finetune.semi_supervised.run_semi_supervised` arguments of a recipe's ``method`` section."""
    return {
        "supervised_only": bool(params.supervised_only),
        "decoders": int(params.decoders),
        "labelled_bs": int(params.labelled_bs),
        "contrast_mode": str(params.contrast_mode),
        "contrast_weight": float(params.contrast_weight),
        "consistency": float(params.consistency),
        "consistency_rampup": float(params.consistency_rampup),
        "rampup_iterations": params.rampup_iterations,
        "decoder_channels": None if params.decoder_channels is None else [int(c) for c in params.decoder_channels],
        "segmenter_options": {key: getattr(params, key) for key in SEGMENTER_KEYS},
    }


def train_on_tiles(*, params: Any, encoder_checkpoint: str | Path | None = None, **arguments: Any) -> Any:
    """One FBA row on a tile set: :func:`~geocl.finetune.semi_supervised.run_semi_supervised` with the recipe's keys.

    Args:
        params: the recipe's ``method`` section.
        encoder_checkpoint: the row's encoder (None for a method that does not pretrain);
            falls back to ``params.init_checkpoint``.
        **arguments: the finetune interface of :func:`geocl.finetune.train.run_finetune`
            (tiles, encoder, label_fraction, seed, subset_seed, out and the budget).

    Returns:
        A :class:`~geocl.finetune.train.FinetuneResult` (test mIoU of decoder 1).
    """
    from geocl.finetune.semi_supervised import run_semi_supervised  # Lightning: only when a row runs

    if encoder_checkpoint is None and params.init_checkpoint:
        encoder_checkpoint = Path(params.init_checkpoint)
    return run_semi_supervised(encoder_checkpoint=encoder_checkpoint, **semi_supervised_arguments(params), **arguments)


def train_on_volumes(*, params: Any, encoder_checkpoint: str | Path | None = None, **arguments: Any) -> Any:
    """One FBA row on a NIfTI data folder: :func:`~geocl.finetune.medical_semi_supervised.run_medical_semi_supervised`.

    Args:
        params: the recipe's ``method`` section (``spatial_dims`` 2: slices; 3: patches).
        encoder_checkpoint: the row's encoder, or ``params.init_checkpoint`` (2D only).
        **arguments: the finetune interface of :func:`geocl.finetune.medical.run_medical_finetune`
            (data, encoder, label_fraction, seed, subset_seed, out, spacing, slice_axis,
            intensity, image_size, val_fraction and the budget).

    Returns:
        A :class:`~geocl.finetune.medical.MedicalFinetuneResult` (means over the test cases).
    """
    from geocl.finetune.medical_semi_supervised import run_medical_semi_supervised  # Lightning, MONAI

    if encoder_checkpoint is None and params.init_checkpoint:
        encoder_checkpoint = Path(params.init_checkpoint)
    volume = {
        "spatial_dims": int(params.spatial_dims),
        "label_budget": str(params.label_budget),
        "patch_size": None if params.patch_size is None else [int(side) for side in params.patch_size],
        "width": int(params.width),
        "depth": int(params.depth),
        "dropout": float(params.dropout),
    }
    return run_medical_semi_supervised(
        encoder_checkpoint=encoder_checkpoint, **semi_supervised_arguments(params), **volume, **arguments
    )


__all__ = ["FBA", "semi_supervised_arguments", "train_on_tiles", "train_on_volumes"]
