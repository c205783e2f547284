"""FBA-Net / FBA-Net+ as a method: semi-supervised segmentation, trained at every label subset.

FBA (Chung et al., MILLanD @ MICCAI 2023, arXiv 2306.15189) pretrains no
encoder: it *is* a way of training the segmenter from few labels plus unlabelled data,
on labelled-first batches. So this method sets ``pretrains = False`` and serves the
``finetune`` (tiles) and ``dice`` (volumes) evaluations with a training of its own
(:attr:`FBA.serves`; :meth:`FBA.check_downstream` checks the keys for each); ``geocl compare`` then skips
pretraining for it and trains it once per row (label fraction, label subset, seed),
exactly where other methods finetune their pretrained encoder, and ``geocl pretrain``
refuses it in one line. This module holds the recipe keys and their checks only: the
trainings are downstream trainings, in ``geocl.finetune``
(:mod:`geocl.finetune.semi_supervised`, :mod:`geocl.finetune.medical_semi_supervised`),
declared for this method by name in :mod:`geocl.finetune.method_trainings`, which the
evaluations consult (methods import nothing above them). Its parts:

* network: :func:`~geocl.models.fba_nets.build_fba_network`, one shared encoder and
  ``decoders`` decoders (1: FBA-Net; 3: FBA-Net+, decoders differing only in upsampling);
* loss (:class:`~geocl.finetune.semi_supervised_module.SemiSupervisedSegmenter`), with ``z_d``
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
the recipe's encoder, the ``pooled-map`` contrast (tiles of any size; geocl's
adaptation, :mod:`geocl.losses.fba`), AdamW at the comparison's learning rate and the
comparison's budget (its ``finetune`` options: epochs, steps, batch, crop) for every row
alike. The test score is decoder 1's mIoU (the decoder the released test script scores).
``init_checkpoint`` starts the shared encoder from a pretraining of any method.

Medical volumes (``data.format: nifti``, evaluation ``dice``): the labelled train cases
are the label fraction of them (by case), the other train cases unlabelled;
``spatial_dims: 2`` trains the U-Net on slices (``recipes/medical/fba2d.yaml``),
``spatial_dims: 3`` the released V-Net on ``patch_size`` patches with sliding-window
prediction (``recipes/medical/fba3d.yaml``); test volumes are scored per case (Dice,
Jaccard, 95HD, ASD) by :func:`~geocl.finetune.medical_semi_supervised.run_medical_semi_supervised`.

Two presets (``variant``; :mod:`geocl.finetune.semi_supervised_module` has the details):

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

Where paper and code leave a choice open, geocl follows the released code
(github.com/cys1102/FBA-Net), as :mod:`geocl.losses.fba` and
:mod:`geocl.finetune.semi_supervised_module` detail: the contrast projects the map, not
pooled features; consistency targets are not detached; lambda per variant, 0.5 for 3D
FBA-Net+, else 1.0; CE off.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from geocl.errors import GeoclError
from geocl.methods.base import PretrainMethod
from geocl.methods.registry import register_method


class FBANetwork(PretrainMethod):
    """The recipe keys of FBA's segmenter: decoders, how the encoder starts, the 3D V-Net (not a method of its own).

    :class:`FBA` adds the keys of its loss and batches; the recipe's ``method`` section
    holds both (a method's keys are read along its class chain,
    :func:`~geocl.methods.base.parameters_model`).

    Args:
        encoder, in_chans, **common: see :class:`~geocl.methods.base.PretrainMethod`.
        decoders: 1 (FBA-Net) or 3 (FBA-Net+).
        decoder_channels: 2D U-Net decoder widths, one per encoder level; None: smp's.
        init_checkpoint: a pretrain checkpoint of any method to start the shared encoder
            from ("" = random init of the recipe's encoder).
        spatial_dims: 2 (tiles, slices: U-Net) or 3 (volumes: V-Net).
        patch_size: 3D training patch and sliding window, voxels a side (multiples of
            ``2**(depth-1)``; released LA: 112 x 112 x 80); required in 3D.
        width, depth, dropout: the 3D V-Net's base width, levels and Dropout3d rate.
    """

    pretrains = False

    def __init__(
        self,
        encoder: str = "resnet18",
        in_chans: int = 3,
        *,
        decoders: Literal[1, 3] = 3,
        decoder_channels: list[Annotated[int, Field(ge=1)]] | None = None,
        init_checkpoint: str = "",
        spatial_dims: Literal[2, 3] = 2,
        patch_size: list[Annotated[int, Field(ge=1)]] | None = None,
        width: Annotated[int, Field(ge=1)] = 16,
        depth: Annotated[int, Field(ge=2, le=6)] = 5,
        dropout: Annotated[float, Field(ge=0, lt=1)] = 0.5,
        **common: Any,
    ) -> None:
        super().__init__(encoder, in_chans, **common)  # raises: FBA is no pretraining (check_pretraining)


@register_method("fba")
class FBA(FBANetwork):
    """FBA-Net (``decoders: 1``) / FBA-Net+ (``decoders: 3``), semi-supervised (module docstring).

    Not a pretraining: building it as one raises (``geocl pretrain`` says how to run it);
    its constructor arguments, with :class:`FBANetwork`'s, are the recipe's ``method`` keys.

    Args:
        encoder, in_chans, **common: see :class:`~geocl.methods.base.PretrainMethod` (and
            :class:`FBANetwork` for the segmenter's keys).
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
        variant: ``stable`` (geocl's working preset) or ``released`` (module docstring).
        contrast_balance: ``stable``: the contrast's share of the supervised term's gradient
            norm on the logits at the first step (None: 0.1; 0: the fixed ``contrast_weight``).
        label_budget: volumes: what the label fraction is of: ``train`` (the train cases)
            or ``train-and-val`` (the paper's: its 80 training cases are geocl's train and
            val cases; see :func:`~geocl.finetune.medical_semi_supervised.label_budget_split`).
    """

    usage = (
        "FBA is semi-supervised segmentation, trained at every label subset of a comparison; run it with "
        "`geocl compare recipes/fba.yaml recipes/fba-supervised.yaml --baseline fba-supervised` "
        "(volumes: recipes/medical/fba3d.yaml)"
    )
    #: The evaluations whose rows FBA trains itself (the trainings: geocl/finetune/method_trainings.py).
    serves: ClassVar[tuple[str, ...]] = ("finetune", "dice")

    def __init__(
        self,
        encoder: str = "resnet18",
        in_chans: int = 3,
        *,
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
        variant: Literal["stable", "released"] = "stable",
        contrast_balance: Annotated[float, Field(ge=0)] | None = None,
        label_budget: Literal["train", "train-and-val"] = "train",
        **common: Any,
    ) -> None:
        super().__init__(encoder, in_chans, **common)  # raises: FBA is no pretraining (check_pretraining)

    @classmethod
    def check_downstream(cls, evaluation: str, params: Any) -> None:
        """Refuse keys that cannot serve ``evaluation`` (one of :attr:`serves`), before any work.

        Raises:
            GeoclError: ``spatial_dims: 3`` on tiles (the 3D keys are not read in 2D); 3D
                volumes without ``patch_size``.
        """
        if evaluation == "finetune" and params.spatial_dims != 2:
            raise GeoclError("tiles are 2D: set it to 2 (3 is for volumes)", key="method.spatial_dims")
        if evaluation == "dice" and params.spatial_dims == 3 and params.patch_size is None:
            raise GeoclError(
                "3D FBA trains on patches: set it, e.g. [112, 112, 80] (the released left-atrium patch)",
                key="method.patch_size",
            )


__all__ = ["FBA", "FBANetwork"]
