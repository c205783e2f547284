"""The FBA-Net / FBA-Net+ Lightning module: semi-supervised segmentation on labelled-first batches (2D and 3D).

:class:`SemiSupervisedSegmenter` trains a :class:`~geocl.models.fba_nets.MultiDecoderSegmenter`
(1 decoder: FBA-Net; 3 decoders: FBA-Net+) on batches whose first ``labelled_bs`` items
carry masks (:mod:`geocl.sampling.labelled_first`). With ``z_d`` the logits of decoder
d, ``p_d = softmax(z_d)`` and L the labelled items (FBA-Net, Chung et al., arXiv 2306.15189,
as released)::

    loss = lambda * sum_d Dice(p_d[L], y) + ce_weight * sum_d CE(z_d[L], y)
         + w(t) * sum_{i != j} MSE(p_i, sharpen(p_j))            (all items; FBA-Net+ only)
         + contrast_weight * sum_d C_d(z_d)                     (all items; label free)

* Dice (``stable``): MONAI's soft Dice ``1 - 2I / (sum p + sum t)`` summed over the labelled
  sub-batch (``batch=True``), eps 1e-8, foreground classes only unless
  ``dice_include_background`` (for 2 classes: the released 3D ``Binary_dice_loss``
  exactly); ignore-index pixels count nowhere. ``released`` in 2D: the released 2D
  ``DiceLoss``, ``mean_k [1 - I_k / (sum s_k^2 + sum t_k^2)]`` over all classes
  (:func:`~geocl.losses.fba.released_dice_loss`); in 3D the binary Dice above (what the 3D code uses).
* ``lambda`` (``dice_weight``): 0.5 for 3D FBA-Net+, 1.0 for 3D FBA-Net and for 2D, the
  values of the released training scripts (``code/train_fba_plus.py``, ``code/train_fba.py``,
  ``code/train_2d.py``). CE is computed but not added in the released code, hence
  ``ce_weight = 0`` by default.
* ``w(t)``: :func:`~geocl.losses.fba.consistency_weight` of the 1-based iteration (the
  released loop increments its counter before reading the weight).
* ``C_d``: :class:`~geocl.losses.fba.FBContrastLoss`, one per decoder (own weights).

Two presets (``variant``), chosen for what they do on geocl's data (measured in docs/methods/fba.md):

* ``released``: the losses of the released code: its contrast projections (free biases),
  ``contrast_weight`` fixed (1), per-channel sharpening, its 2D Dice. Its binary contrast
  reaches the clamp floor within a step or two whatever the predictions (the biases carry
  it; no gradient afterwards), and its multi-class contrast starts near ``-log 5e-4`` per
  push pair with a gradient on the logits two orders of magnitude above the Dice's: on
  RS tiles at 5 % labels it ends far below supervised-only.
* ``stable`` (default): (1) the contrast's projection is shared by all region views and
  has no bias (:class:`~geocl.losses.fba.FBContrastLoss`): the bias-only solution is gone,
  a uniform map is the term's worst case; (2) its weight is
  ``contrast_weight * scale * r(t)``: ``scale`` set once, at the first step, so that its
  gradient norm on the logits is :data:`CONTRAST_BALANCE` (a tenth) of the supervised
  term's (never above 1), and ``r(t)`` the consistency's sigmoid ramp; (3) the
  consistency targets are sharpened over the classes
  (:func:`~geocl.losses.fba.sharpen_classes`; the released formula for two classes, a
  distribution for more, where per-channel sharpening sends every channel of an
  uncertain pixel to 0). Why these among the candidates (reasoned from the measured
  gradient ratios and the toy-batch checks of ``tests/finetune/test_semi_supervised.py``,
  not from a paired run of each candidate): a ramp alone ends at the released weight,
  where the 2D term's gradient is ~100x the Dice's; per-class normalisation is already
  in the released multi-class term (``/ C(C-1)``) and does not touch the ``1 / (1 - cos)``
  growth near cosine 1 that makes the gradient large; a weight from the gradient norms
  sets the ratio for binary and multi-class, 2D and 3D alike, without a per-dataset
  value; removing the bias path is what stops the collapse (a small weight only slows
  it). Both are kept: the first against swamping, the second against collapse.

Its settings are one typed object (:class:`SemiSupervisedConfig`); the trainings that build
it from a tile set or NIfTI volumes are :func:`geocl.finetune.semi_supervised.run_semi_supervised`
and :func:`geocl.finetune.medical_semi_supervised.run_medical_semi_supervised`.

``supervised_only=True`` is the supervised baseline on the same labels: the unlabelled
items are not even forwarded (their BatchNorm statistics would be a use of them), and
neither consistency nor contrast is computed (no contrast heads are built).

Augmentation (per item, training only): a random crop (or pad: image 0, mask
``ignore_index``) to ``patch_size`` when given, then :func:`~geocl.finetune.semi_supervised_data.rot_flip`: the released
``RandomRotFlip``, a random quarter turn in the axial X-Y plane of ``[C, X, Y, Z]`` volume
patches (:mod:`geocl.data.medical.nifti`'s layout) and a flip of X or Y, never of the
slice axis Z; D4 on ``[C, H, W]`` tiles and slices.

Inference uses decoder 1, as the released test script does (it scores decoder 1's output
alone, and the released README's numbers come from that path); the mean of all decoders'
probabilities is logged beside it. 3D volumes larger than ``patch_size`` are predicted by
MONAI's sliding window (foreground softmax averaged over overlaps); 2D images whole.

Validation scores the val set as the test scores the test set, so the checkpoint is chosen
by what the test measures: tiles by mIoU from confusion counts over all val tiles (the tile
test's rule); volumes (``val_per_case``) by one Dice per case, averaged over cases
(:func:`~geocl.finetune.semi_supervised_data.case_dice`; 2D: over the stack of the case's slices,
:class:`~geocl.finetune.semi_supervised_data.CaseSlices`).

Metrics (tile validation and test), from confusion counts over all pixels of the set:
``dice`` (decoder 1; mean over the foreground classes of ``2 TP / (2 TP + FP + FN)``,
classes absent from reference and prediction left out), ``dice_mean_decoders`` (the
same for the decoders' mean probabilities) and ``miou`` (geocl's IoU rule,
:mod:`geocl.finetune.metrics`). Per-case medical Dice lives in the medical
evaluation, not here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import lightning
import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.losses import DiceLoss
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchmetrics.classification import MulticlassJaccardIndex

from geocl.errors import GeoclError
from geocl.finetune.downstream import TrainingBudget, finetune_trainer
from geocl.finetune.metrics import segmentation_metric, summarize_iou
from geocl.finetune.semi_supervised_config import CONTRAST_BALANCE, SemiSupervisedConfig, Variant
from geocl.finetune.semi_supervised_data import case_dice, check_patch, random_crop, rot_flip, semi_supervised_loaders
from geocl.losses.fba import FBContrastLoss, consistency_weight, mutual_consistency, released_dice_loss, sigmoid_rampup
from geocl.models.fba_nets import build_fba_network

__all__ = [
    "CONTRAST_BALANCE",
    "SEMI_SUPERVISED_KEY",
    "SemiSupervisedConfig",
    "SemiSupervisedSegmenter",
    "Variant",
    "fit_semi_supervised",
]

#: Checkpoint key of the module's metadata (classes, band statistics...).
SEMI_SUPERVISED_KEY = "geocl_semi_supervised"
#: Slices a per-case 2D validation predicts at once.
SLICE_CHUNK = 16


class SemiSupervisedSegmenter(lightning.LightningModule):
    """FBA-Net (``decoders=1``) / FBA-Net+ (``decoders=3``) trained on labelled-first batches.

    Args:
        spatial_dims: 2 (U-Net on an smp encoder) or 3 (V-Net).
        in_chans: input channels.
        num_classes: classes (2: binary fg/bg contrast; more: per-class contrast).
        config: the network, loss, optimizer and batch settings (:class:`SemiSupervisedConfig`;
            a mapping of its fields, as a checkpoint's hyperparameters hold it, is read into one).
        meta: stored in checkpoints under :data:`SEMI_SUPERVISED_KEY`.

    Attributes:
        config: the settings.
        network: the segmenter; ``network.encoder`` is the shared encoder.
        contrast: one :class:`FBContrastLoss` per decoder (empty without contrast).
        contrast_scale, contrast_scale_set: ``stable``: the contrast's measured scale and
            whether it is measured (buffers, kept in checkpoints).

    Raises:
        GeoclError: ``contrast_mode="code"`` without ``patch_size``, a ``patch_size`` of
            the wrong length or (3D) not a multiple of the V-Net's ``2**(depth-1)``; an
            unknown ``variant``.
    """

    contrast_scale: Tensor
    contrast_scale_set: Tensor

    def __init__(
        self,
        spatial_dims: Literal[2, 3],
        in_chans: int,
        num_classes: int,
        config: SemiSupervisedConfig | Mapping[str, Any] | None = None,
        *,
        meta: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        config = config if isinstance(config, SemiSupervisedConfig) else SemiSupervisedConfig(**dict(config or {}))
        # plain data in the checkpoint (read back with weights_only=True); load_from_checkpoint passes it back
        self.save_hyperparameters(
            {"spatial_dims": spatial_dims, "in_chans": in_chans, "num_classes": num_classes, "config": asdict(config)}
        )
        self.config = config
        self.spatial_dims = int(spatial_dims)
        self.num_classes = int(num_classes)
        self.meta = meta or {}
        self.patch_size = check_patch(config.patch_size, spatial_dims, config.depth)
        if config.variant not in ("stable", "released"):
            raise GeoclError(f"unknown FBA variant {config.variant!r}; choose stable or released", key="method.variant")
        self.network = build_fba_network(
            spatial_dims, in_chans, num_classes, config.decoders, **config.network_options(spatial_dims)
        )
        variant_weight = 0.5 if spatial_dims == 3 and config.decoders == 3 else 1.0
        self.dice_weight = float(config.dice_weight if config.dice_weight is not None else variant_weight)
        self.dice = DiceLoss(
            include_background=config.dice_include_background,
            to_onehot_y=True,
            batch=True,
            smooth_nr=1e-8,
            smooth_dr=1e-8,
            ignore_index=config.ignore_index,
        )
        self.contrast = self._contrast_heads()
        self.released_dice = config.variant == "released" and spatial_dims == 2
        balance = CONTRAST_BALANCE if config.contrast_balance is None else float(config.contrast_balance)
        self.contrast_balance = balance if config.variant == "stable" else 0.0
        #: the contrast's scale from the first step's gradient norms (1 until measured, or without balancing)
        self.register_buffer("contrast_scale", torch.ones(()))
        self.register_buffer("contrast_scale_set", torch.zeros((), dtype=torch.bool))
        self._val_cases: dict[str, list[float]] = {"first": [], "mean": []}
        #: the last validation / test figures: ``{"val": {"dice", "dice_mean_decoders", "miou", "iou"}, "test": ...}``
        self.results: dict[str, dict[str, Any]] = {}
        # set-wide confusion counts of decoder 1 ("first") and of the decoders' mean probabilities ("mean")
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_{output}": segmentation_metric(num_classes, config.ignore_index)
                for stage in ("val", "test")
                for output in ("first", "mean")
            }
        )

    def _contrast_heads(self) -> nn.ModuleList:
        """One :class:`FBContrastLoss` per decoder; none for the supervised baseline or a zero weight."""
        config = self.config
        heads = nn.ModuleList()
        if config.supervised_only or config.contrast_weight <= 0:
            return heads
        if config.contrast_mode == "code" and self.patch_size is None:
            raise GeoclError(
                "contrast mode 'code' projects a map of fixed size: set patch_size, or use contrast_mode 'pooled-map'",
                key="patch_size",
            )
        heads.extend(
            FBContrastLoss(
                self.num_classes,
                self.spatial_dims,
                config.embedding_dim,
                config.contrast_mode,
                input_size=self.patch_size,
                grid=config.pooled_grid,
                variant=config.variant,
            )
            for _ in range(config.decoders)
        )
        return heads

    @property
    def contrast_heads(self) -> list[FBContrastLoss]:
        """The contrast heads, one per decoder (``contrast``, typed)."""
        return [head for head in self.contrast if isinstance(head, FBContrastLoss)]

    def metric(self, name: str) -> MulticlassJaccardIndex:
        """The set-wide IoU counts ``{val,test}_{first,mean}`` (``metrics``, typed)."""
        metric = self.metrics[name]
        assert isinstance(metric, MulticlassJaccardIndex)
        return metric

    @property
    def encoder(self) -> nn.Module:
        """The shared encoder (the attribute geocl reads encoders from)."""
        return self.network.encoder

    def forward(self, images: Tensor) -> list[Tensor]:
        """``[B, C, *S]`` -> each decoder's logits ``[B, K, *S]``."""
        return self.network(images)

    # --- training -----------------------------------------------------------------

    def augment_item(self, image: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Crop/pad to ``patch_size``, then (with ``augment``) :func:`rot_flip` in the in-plane axes."""
        if self.patch_size is not None:
            image, mask = random_crop(image, mask, self.patch_size, self.config.ignore_index)
        if self.config.augment:
            image, mask = rot_flip(image, mask)
        return image.contiguous(), None if mask is None else mask.contiguous()

    def split_batch(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Augmented images (all items; labelled only when ``supervised_only``) and the labelled masks."""
        labelled = int(self.config.labelled_bs)
        images, masks = batch["image"], batch.get("mask")
        if masks is None or len(masks) < labelled or len(images) < labelled:
            raise ValueError(
                f"a labelled-first batch needs at least {labelled} labelled items (masks), got "
                f"{0 if masks is None else len(masks)} masks for {len(images)} images"
            )
        self._check_mask_values(masks[:labelled])
        count = labelled if self.config.supervised_only else len(images)
        pairs = [self.augment_item(images[i], masks[i] if i < labelled else None) for i in range(count)]
        labelled_masks = [mask for _, mask in pairs[:labelled] if mask is not None]  # every labelled item has one
        return torch.stack([image for image, _ in pairs]), torch.stack(labelled_masks)

    def _check_mask_values(self, masks: Tensor) -> None:
        valid = masks[masks != self.config.ignore_index]
        if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= self.num_classes):
            raise GeoclError(
                f"mask values must be class indices 0..{self.num_classes - 1} or {self.config.ignore_index} "
                f"(ignored), got {int(valid.min())}..{int(valid.max())}",
                key="mask",
            )

    def supervised_loss(self, logits: Sequence[Tensor], masks: Tensor) -> Tensor:
        """``lambda * sum_d Dice(p_d[L], y) + ce_weight * sum_d CE(z_d[L], y)`` on the labelled items."""
        labelled = len(masks)
        targets = masks.unsqueeze(1)
        total = logits[0].new_zeros(())
        for z in logits:
            probabilities = torch.softmax(z[:labelled], dim=1)
            if self.released_dice:
                dice = released_dice_loss(probabilities, masks, self.config.ignore_index)
            else:
                dice = self.dice(probabilities, targets)
            total = total + self.dice_weight * dice
            if self.config.ce_weight > 0 and bool((masks != self.config.ignore_index).any()):
                total = total + self.config.ce_weight * F.cross_entropy(
                    z[:labelled], masks, ignore_index=self.config.ignore_index
                )
        return total

    def consistency_weight_at(self, step: int) -> float:
        """``w(t)`` at the 1-based iteration ``step + 1``."""
        params = self.config
        return consistency_weight(step + 1, params.consistency, params.consistency_rampup, params.rampup_iterations)

    def contrast_weight_at(self, step: int) -> float:
        """The contrast's weight at 0-based ``step``.

        ``released``: ``contrast_weight``. ``stable``: ``contrast_weight * scale * r(t)``,
        ``scale`` measured at the first step (:meth:`balance_contrast`) and ``r(t)`` the
        consistency's sigmoid ramp (the contrast grows as the predictions it contrasts
        become meaningful, as the consistency does).
        """
        weight = float(self.config.contrast_weight)
        if self.config.variant == "released":
            return weight
        if self.contrast_balance > 0 and not bool(self.contrast_scale_set):
            return 0.0  # not measured yet: no batch with foreground so far
        params = self.config
        ramp = sigmoid_rampup((step + 1) // max(1, params.rampup_iterations), params.consistency_rampup)
        return weight * float(self.contrast_scale) * ramp

    def balance_contrast(self, logits: Sequence[Tensor], supervised: Tensor, contrast: Tensor, masks: Tensor) -> None:
        """``stable``: set the contrast's scale once, from the two terms' gradient norms on the logits.

        ``scale = min(1, balance * |d supervised / dz| / |contrast_weight * d contrast / dz|)``,
        ``z`` all decoders' logits of the first training batch whose labelled items hold
        foreground (a class other than 0): the contrast starts with at most ``balance`` of
        the supervised term's pull on the prediction, whatever the class count,
        dimensionality or size of the term (released 2D: 158-945x the Dice's). A batch of
        background alone is skipped: the foreground Dice has next to no gradient there, and
        would switch the contrast off for the whole run; until a batch is measured the
        contrast's weight is 0. Kept in the checkpoint (a buffer), so a resumed run does
        not measure again.
        """
        if self.contrast_balance <= 0 or bool(self.contrast_scale_set) or not contrast.requires_grad:
            return
        valid = masks[masks != self.config.ignore_index]
        if not bool((valid > 0).any()):
            return
        supervised_grad = torch.autograd.grad(supervised, logits, retain_graph=True, allow_unused=True)
        contrast_grad = torch.autograd.grad(contrast, logits, retain_graph=True, allow_unused=True)

        def norm(grads: Sequence[Tensor | None]) -> float:
            return math.sqrt(sum(float((g.detach() ** 2).sum()) for g in grads if g is not None))

        pull, push = norm(supervised_grad), norm(contrast_grad) * float(self.config.contrast_weight)
        scale = 1.0 if push == 0 else min(1.0, self.contrast_balance * pull / push)
        self.contrast_scale.fill_(scale)
        self.contrast_scale_set.fill_(True)

    def losses(self, images: Tensor, masks: Tensor, step: int) -> dict[str, Tensor]:
        """Every term of the loss for prepared images (labelled first) and the labelled masks."""
        logits = self.network(images)
        terms = {"supervised": self.supervised_loss(logits, masks)}
        zero = terms["supervised"].new_zeros(())
        terms["consistency"], terms["contrast"], weight, contrast_weight = zero, zero, 0.0, 0.0
        if not self.config.supervised_only:
            if len(logits) > 1:
                weight = self.consistency_weight_at(step)
                probabilities = [torch.softmax(z, dim=1) for z in logits]
                terms["consistency"] = mutual_consistency(
                    probabilities,
                    self.config.temperature,
                    self.config.detach_targets,
                    sharpening="channel" if self.config.variant == "released" else "classes",
                )
            if len(self.contrast):
                terms["contrast"] = sum((head(z) for head, z in zip(self.contrast, logits, strict=True)), zero)
                if self.training and torch.is_grad_enabled():
                    self.balance_contrast(logits, terms["supervised"], terms["contrast"], masks)
                contrast_weight = self.contrast_weight_at(step)
                # the floor of every decoder's term: where the released binary term collapses
                terms["contrast_floor"] = torch.tensor(sum(head.floor() for head in self.contrast_heads))
        terms["consistency_weight"] = torch.tensor(weight)
        terms["contrast_weight"] = torch.tensor(contrast_weight)
        terms["loss"] = terms["supervised"] + weight * terms["consistency"] + contrast_weight * terms["contrast"]
        return terms

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        images, masks = self.split_batch(batch)
        terms = self.losses(images, masks, self.global_step)
        loss = terms["loss"]
        if not torch.isfinite(loss):
            raise GeoclError(f"semi-supervised loss became {loss.item()} at step {self.global_step}", key="lr")
        for name, value in terms.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=len(images))
        return loss

    # --- inference and metrics ----------------------------------------------------

    def predict_probabilities(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Softmax of decoder 1 and the mean softmax of all decoders, each ``[B, K, *S]``.

        3D volumes larger than ``patch_size``: MONAI sliding window (half overlap, plain
        average of overlapping windows); otherwise one pass.
        """
        classes = self.num_classes

        def predictor(x: Tensor) -> Tensor:
            probabilities = [torch.softmax(z, dim=1) for z in self.network(x)]
            return torch.cat([probabilities[0], torch.stack(probabilities).mean(0)], dim=1)

        window = self.patch_size
        if self.spatial_dims == 3 and window is not None and tuple(images.shape[2:]) != window:
            windowed = sliding_window_inference(images, window, 4, predictor, overlap=0.5, mode="constant")
            both = windowed if isinstance(windowed, Tensor) else torch.as_tensor(windowed[0])  # one output: a tensor
        else:
            both = predictor(images)
        return both[:, :classes], both[:, classes:]

    def _update_metrics(self, stage: str, batch: dict[str, Any]) -> None:
        if stage == "val" and self.config.val_per_case:
            self._update_case_metrics(batch)
            return
        first, mean = self.predict_probabilities(batch["image"])
        self.metric(f"{stage}_first").update(first.argmax(1), batch["mask"])
        self.metric(f"{stage}_mean").update(mean.argmax(1), batch["mask"])

    def _update_case_metrics(self, batch: dict[str, Any]) -> None:
        """Per-case Dice of each case of a batch of whole cases (``val_per_case``)."""
        classes, ignore = int(self.num_classes), int(self.config.ignore_index)
        for image, mask in zip(batch["image"], batch["mask"], strict=True):
            if self.spatial_dims == 2:  # [S, C, H, W]: the case's slices, a chunk at a time
                parts = [
                    self.predict_probabilities(image[i : i + SLICE_CHUNK]) for i in range(0, len(image), SLICE_CHUNK)
                ]
                first, mean = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
            else:  # [C, X, Y, Z]
                first, mean = (p[0] for p in self.predict_probabilities(image[None]))
            axis = 1 if self.spatial_dims == 2 else 0  # the class axis of [S, K, H, W] / [K, X, Y, Z]
            self._val_cases["first"].append(case_dice(first.argmax(axis), mask, classes, ignore))
            self._val_cases["mean"].append(case_dice(mean.argmax(axis), mask, classes, ignore))

    def _log_case_metrics(self) -> None:
        first, mean = (float(np.mean(self._val_cases[name])) for name in ("first", "mean"))
        self._val_cases = {"first": [], "mean": []}
        self.log("val/dice", first, prog_bar=True)
        self.log("val/dice_mean_decoders", mean)
        self.results["val"] = {"dice": first, "dice_mean_decoders": mean, "per_case": True}

    def _log_metrics(self, stage: str) -> None:
        first, mean = self.metric(f"{stage}_first"), self.metric(f"{stage}_mean")
        iou_first, iou_mean = first.compute(), mean.compute()
        first.reset()
        mean.reset()
        summary = summarize_iou(iou_first)
        results: dict[str, Any] = {
            # from the same set-wide counts: Dice = 2 TP / (2 TP + FP + FN) = 2 IoU / (1 + IoU)
            "dice": self.foreground_mean(2 * iou_first / (1 + iou_first)),
            "dice_mean_decoders": self.foreground_mean(2 * iou_mean / (1 + iou_mean)),
            "miou": summary["miou"],
            "iou": summary["iou"],
        }
        for name in ("dice", "dice_mean_decoders", "miou"):
            self.log(f"{stage}/{name}", results[name], prog_bar=name != "dice_mean_decoders")
        self.results[stage] = results

    def foreground_mean(self, per_class: Tensor) -> float:
        """Mean of per-class scores over the foreground classes (all with ``dice_include_background``).

        A class absent from reference and prediction of the whole set (NaN) is left out,
        as in :mod:`geocl.finetune.metrics`.
        """
        scores = per_class if self.config.dice_include_background else per_class[1:]
        return float(scores.nanmean())

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._update_metrics("val", batch)

    def on_validation_epoch_end(self) -> None:
        if self.config.val_per_case:
            if self._val_cases["first"]:
                self._log_case_metrics()
            return
        self._log_metrics("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._update_metrics("test", batch)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = self.config
        if params.optimizer == "adamw":
            return torch.optim.AdamW(self.parameters(), lr=params.lr, weight_decay=params.weight_decay)
        # constant lr, as released (cys1102/FBA-Net has no decay; MC-Net+-style trainings often decay)
        return torch.optim.SGD(
            self.parameters(), lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay
        )

    def test_scores(self) -> dict[str, Any]:
        """The last test's figures of decoder 1: ``dice``, ``dice_mean_decoders``, ``miou``, ``iou`` (one a class)."""
        return self.results["test"]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[SEMI_SUPERVISED_KEY] = self.meta


def fit_semi_supervised(
    module: SemiSupervisedSegmenter,
    labelled: Dataset[dict[str, Any]],
    unlabelled: Dataset[dict[str, Any]] | None,
    *,
    out: str | Path,
    budget: TrainingBudget,
    val: Dataset[dict[str, Any]] | None = None,
    monitor: str = "val/dice",
    seed: int = 0,
) -> lightning.Trainer:
    """Train a ready module on ready datasets: labelled-first loaders and the finetune trainer.

    What a run of :mod:`geocl.finetune.semi_supervised` does between its set-up and its test,
    without a run folder's rules or a ``metrics.json``: for a module built by hand.

    Args:
        module: the module.
        labelled, unlabelled, val, budget, seed: as
            :func:`~geocl.finetune.semi_supervised_data.semi_supervised_loaders`.
        out: folder of ``checkpoints/best.ckpt`` (by ``monitor`` on ``val``) and ``logs/``.
        monitor: logged validation score (higher is better): ``val/dice`` or ``val/miou``.

    Returns:
        The trainer (``trainer.checkpoint_callback.best_model_path`` when validated; without
        ``val`` the last weights are saved as ``checkpoints/last.ckpt``).
    """
    out = Path(out)
    train_loader, val_loader = semi_supervised_loaders(
        module.config, module.spatial_dims, labelled, unlabelled, val, budget, seed
    )
    trainer = finetune_trainer(
        out,
        max_epochs=budget.max_epochs,
        val_every=budget.val_every,
        accelerator=budget.accelerator,
        monitor=monitor if val is not None else None,
        patience=budget.patience,
        progress=budget.progress,
        log_every_n_steps=1,
        logger=budget.logger,
    )
    trainer.fit(module, train_loader, val_loader)
    if val is None:
        trainer.save_checkpoint(out / "checkpoints" / "last.ckpt")
    return trainer
