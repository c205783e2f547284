"""Semi-supervised segmentation with FBA-Net / FBA-Net+ on labelled-first batches (2D and 3D).

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
  (:func:`released_dice_loss`); in 3D the binary Dice above (what the 3D code uses).
* ``lambda`` (``dice_weight``): 0.5 for 3D FBA-Net+, 1.0 for 3D FBA-Net and for 2D (spec
  ambiguity 7). CE is computed but not added in the released code, hence
  ``ce_weight = 0`` by default.
* ``w(t)``: :func:`~geocl.losses.fba.consistency_weight` of the 1-based iteration (the
  released loop increments its counter before reading the weight).
* ``C_d``: :class:`~geocl.losses.fba.FBContrastLoss`, one per decoder (own weights).

Two presets (``variant``), chosen for what they do on geocl's data (issue 23's measurements):

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

``supervised_only=True`` is the supervised baseline on the same labels: the unlabelled
items are not even forwarded (their BatchNorm statistics would be a use of them), and
neither consistency nor contrast is computed (no contrast heads are built).

Augmentation (per item, training only): a random crop (or pad: image 0, mask
``ignore_index``) to ``patch_size`` when given, then :func:`rot_flip`: the released
``RandomRotFlip``, a random quarter turn in the axial X-Y plane of ``[C, X, Y, Z]`` volume
patches (:mod:`geocl.data.medical.nifti`'s layout) and a flip of X or Y, never of the
slice axis Z; D4 on ``[C, H, W]`` tiles and slices.

Inference uses decoder 1 (spec ambiguity 6); the mean of all decoders' probabilities is
logged beside it. 3D volumes larger than ``patch_size`` are predicted by MONAI's
sliding window (foreground softmax averaged over overlaps); 2D images whole.

Validation scores the val set as the test scores the test set, so the checkpoint is chosen
by what the test measures: tiles by mIoU from confusion counts over all val tiles (the tile
test's rule); volumes (``val_per_case``) by one Dice per case, averaged over cases
(:func:`case_dice`; 2D: over the stack of the case's slices, :class:`CaseSlices`).

Metrics (tile validation and test), from confusion counts over all pixels of the set:
``dice`` (decoder 1; mean over the foreground classes of ``2 TP / (2 TP + FP + FN)``,
classes absent from reference and prediction left out), ``dice_mean_decoders`` (the
same for the decoders' mean probabilities) and ``miou`` (geocl's IoU rule,
:mod:`geocl.finetune.metrics`). Per-case medical Dice lives in the medical
evaluation, not here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning
import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.losses import DiceLoss
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from geocl.data.tile_dataset import IGNORE_INDEX, TileDataset
from geocl.errors import GeoclError
from geocl.finetune.metrics import segmentation_metric, summarize_iou
from geocl.finetune.model import load_pretrained_encoder, read_pretrain_checkpoint
from geocl.finetune.train import FinetuneResult, check_finetune_folder, finetune_trainer, label_subset, write_result
from geocl.losses.fba import ContrastMode, FBContrastLoss, consistency_weight, mutual_consistency, sigmoid_rampup
from geocl.models.fba_nets import build_fba_network
from geocl.sampling.labelled_first import labelled_first_loader

#: Share of the training budget after which the released consistency ramp is complete (6000 of 15000).
RAMP_END = 0.4
#: Checkpoint key of the module's metadata (classes, band statistics...).
SEMI_SUPERVISED_KEY = "geocl_semi_supervised"
#: FBA's two presets: geocl's working one and the released code's (module docstring).
Variant = Literal["stable", "released"]
#: ``stable``: the contrast's gradient on the logits at the first step, as a share of the supervised term's.
CONTRAST_BALANCE = 0.1
#: Slices a per-case 2D validation predicts at once.
SLICE_CHUNK = 16


def released_dice_loss(probabilities: Tensor, masks: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """The released 2D Dice (``DiceLoss`` of FBA-Net's ``code/utils/losses.py``): no factor 2, squares below.

    ``mean_k [1 - sum(s_k t_k) / (sum s_k^2 + sum t_k^2 + 1e-10)]`` over all classes k
    (background included), the sums over the whole batch. Pixels at ``ignore_index`` count
    nowhere (the released code has no ignore index; on masks without one it is the
    released formula exactly).

    Shape: probabilities ``[B, K, *S]``, masks ``[B, *S]`` (class indices) -> scalar.
    """
    classes = probabilities.shape[1]
    valid = (masks != ignore_index).unsqueeze(1).to(probabilities.dtype)
    target = F.one_hot(torch.where(masks == ignore_index, 0, masks), classes).movedim(-1, 1).to(probabilities.dtype)
    scores, target = probabilities * valid, target * valid
    dims = [0, *range(2, probabilities.dim())]
    intersection = (scores * target).sum(dims)
    union = (scores * scores).sum(dims) + (target * target).sum(dims) + 1e-10
    return (1 - intersection / union).mean()


def case_dice(prediction: Tensor, mask: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> float:
    """Dice of one case, the mean over its foreground classes, as the test scores a case.

    ``2 |P_k ∩ G_k| / (|P_k| + |G_k|)`` per class ``k >= 1`` over the pixels whose mask is
    not ``ignore_index``; 1 when class k is in neither, as
    :func:`geocl.finetune.volume_metrics.case_metrics` counts it.

    Shape: prediction and mask ``[*S]`` class indices (one case: a volume or its stack of slices).
    """
    valid = mask != ignore_index
    scores = []
    for k in range(1, num_classes):
        predicted, reference = (prediction == k) & valid, (mask == k) & valid
        total = int(predicted.sum()) + int(reference.sum())
        scores.append(1.0 if total == 0 else 2.0 * int((predicted & reference).sum()) / total)
    return float(np.mean(scores))


class CaseSlices(Dataset[dict[str, Any]]):
    """The slices of a slice dataset grouped by case: one item a case, for per-case validation.

    Args:
        slices: a dataset whose samples carry ``case`` (e.g.
            :class:`~geocl.data.medical.nifti.NiftiSliceDataset`), in case order.

    Samples: ``image`` ``[S, C, H, W]`` (the case's S slices), ``mask`` ``[S, H, W]``, ``case``.
    """

    def __init__(self, slices: Dataset[dict[str, Any]]) -> None:
        self.slices = slices
        self.groups: dict[str, list[int]] = {}
        index = getattr(slices, "index", None)
        volumes = getattr(slices, "volumes", None)
        for item in range(len(slices)):  # type: ignore[arg-type]
            case = (
                volumes[index[item][0]].case.id if index is not None and volumes is not None else slices[item]["case"]
            )
            self.groups.setdefault(str(case), []).append(item)
        self.cases = list(self.groups)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, item: int) -> dict[str, Any]:
        samples = [self.slices[i] for i in self.groups[self.cases[item]]]
        return {
            "image": torch.stack([s["image"] for s in samples]),
            "mask": torch.stack([s["mask"] for s in samples]),
            "case": self.cases[item],
        }


class SemiSupervisedSegmenter(lightning.LightningModule):
    """FBA-Net (``decoders=1``) / FBA-Net+ (``decoders=3``) trained on labelled-first batches.

    Args:
        spatial_dims: 2 (U-Net on an smp encoder) or 3 (V-Net).
        in_chans: input channels.
        num_classes: classes (2: binary fg/bg contrast; more: per-class contrast).
        decoders: 1 (FBA-Net) to 3 (FBA-Net+).
        labelled_bs: labelled items at the front of each batch (their masks: the first
            ``labelled_bs`` of ``batch["mask"]``).
        supervised_only: the supervised baseline (module docstring).
        dice_weight: lambda; None: 0.5 for 3D with 3 decoders, else 1.0.
        ce_weight: weight of cross-entropy on labelled items (released: 0).
        dice_include_background: Dice over all classes instead of the foreground ones.
        consistency: maximum consistency weight (released: 1.0).
        consistency_rampup: ramp length in units (released: 40).
        rampup_iterations: iterations per ramp unit (released: 150).
        temperature: sharpening temperature (released: 0.1).
        detach_targets: stop gradients through sharpened targets (released: no).
        contrast_weight: weight of the contrast terms (released: 1.0; 0 builds no heads).
        contrast_mode: ``"code"`` (needs ``patch_size``) or ``"pooled-map"``.
        embedding_dim: contrast embedding size (released: 128).
        pooled_grid: pooled-map grid side (default 32 in 2D, 16 in 3D).
        patch_size: training crop (spatial sides); also the sliding window in 3D.
        width, depth, dropout: 3D V-Net options (:func:`~geocl.models.fba_nets.fba_vnet`).
        encoder, encoder_depth, decoder_channels, encoder_args: 2D options
            (:func:`~geocl.models.fba_nets.fba_unet`).
        optimizer: ``"sgd"`` (released: momentum 0.9, constant lr 0.01, wd 1e-4) or ``"adamw"``.
        lr, momentum, weight_decay: optimizer settings.
        augment: random crops, quarter turns and flips in training.
        ignore_index: mask value of unlabelled pixels.
        meta: stored in checkpoints under :data:`SEMI_SUPERVISED_KEY`.
        variant: ``"stable"`` (geocl's) or ``"released"`` (the released code's; module docstring).
        contrast_balance: ``stable`` only: the contrast's gradient norm on the logits at
            the first step, as a share of the supervised term's (None:
            :data:`CONTRAST_BALANCE`; 0: the fixed ``contrast_weight``).
        val_per_case: validation items are whole cases (3D: ``[1, X, Y, Z]`` volumes; 2D:
            ``[S, 1, H, W]`` stacks of a case's slices, :class:`CaseSlices`), scored by
            :func:`case_dice` and averaged over cases, as the test scores them; otherwise
            (tiles) from confusion counts over the whole set, as the tile test does.

    Attributes:
        network: the segmenter; ``network.encoder`` is the shared encoder.
        contrast: one :class:`FBContrastLoss` per decoder (empty without contrast).

    Raises:
        GeoclError: ``contrast_mode="code"`` without ``patch_size``, a ``patch_size`` of
            the wrong length or (3D) not a multiple of the V-Net's ``2**(depth-1)``.
    """

    def __init__(
        self,
        spatial_dims: Literal[2, 3],
        in_chans: int,
        num_classes: int,
        *,
        decoders: int = 3,
        labelled_bs: int = 2,
        supervised_only: bool = False,
        dice_weight: float | None = None,
        ce_weight: float = 0.0,
        dice_include_background: bool = False,
        consistency: float = 1.0,
        consistency_rampup: float = 40.0,
        rampup_iterations: int = 150,
        temperature: float = 0.1,
        detach_targets: bool = False,
        contrast_weight: float = 1.0,
        contrast_mode: ContrastMode = "code",
        embedding_dim: int = 128,
        pooled_grid: int | None = None,
        patch_size: Sequence[int] | None = None,
        width: int = 16,
        depth: int = 5,
        dropout: float = 0.5,
        encoder: str = "resnet18",
        encoder_depth: int = 5,
        decoder_channels: Sequence[int] | None = None,
        encoder_args: dict[str, Any] | None = None,
        optimizer: Literal["sgd", "adamw"] = "sgd",
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        augment: bool = True,
        ignore_index: int = IGNORE_INDEX,
        meta: dict[str, Any] | None = None,
        variant: Variant = "stable",
        contrast_balance: float | None = None,
        val_per_case: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["meta"])
        self.meta = meta or {}
        self.patch_size = _check_patch(patch_size, spatial_dims, depth)
        if spatial_dims == 3:
            network_options: dict[str, Any] = {"width": width, "depth": depth, "dropout": dropout}
        else:
            network_options = {
                "encoder": encoder,
                "encoder_depth": encoder_depth,
                "decoder_channels": decoder_channels,
                "encoder_args": encoder_args,
            }
        self.network = build_fba_network(spatial_dims, in_chans, num_classes, decoders, **network_options)
        variant_weight = 0.5 if spatial_dims == 3 and decoders == 3 else 1.0
        self.dice_weight = float(dice_weight if dice_weight is not None else variant_weight)
        self.dice = DiceLoss(
            include_background=dice_include_background,
            to_onehot_y=True,
            batch=True,
            smooth_nr=1e-8,
            smooth_dr=1e-8,
            ignore_index=ignore_index,
        )
        self.contrast = nn.ModuleList()
        if not supervised_only and contrast_weight > 0:
            if contrast_mode == "code" and self.patch_size is None:
                raise GeoclError(
                    "contrast mode 'code' projects a map of fixed size: set patch_size, or use "
                    "contrast_mode 'pooled-map'",
                    key="patch_size",
                )
            self.contrast.extend(
                FBContrastLoss(
                    num_classes,
                    spatial_dims,
                    embedding_dim,
                    contrast_mode,
                    input_size=self.patch_size,
                    grid=pooled_grid,
                    variant=variant,
                )
                for _ in range(decoders)
            )
        if variant not in ("stable", "released"):
            raise GeoclError(f"unknown FBA variant {variant!r}; choose stable or released", key="method.variant")
        self.released_dice = variant == "released" and spatial_dims == 2
        balance = CONTRAST_BALANCE if contrast_balance is None else float(contrast_balance)
        self.contrast_balance = balance if variant == "stable" else 0.0
        #: the contrast's scale from the first step's gradient norms (1 until measured, or without balancing)
        self.register_buffer("contrast_scale", torch.ones(()))
        self.register_buffer("contrast_scale_set", torch.zeros((), dtype=torch.bool))
        self._val_cases: dict[str, list[float]] = {"first": [], "mean": []}
        #: the last validation / test figures: ``{"val": {"dice", "dice_mean_decoders", "miou", "iou"}, "test": ...}``
        self.results: dict[str, dict[str, Any]] = {}
        # set-wide confusion counts of decoder 1 ("first") and of the decoders' mean probabilities ("mean")
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_{output}": segmentation_metric(num_classes, ignore_index)
                for stage in ("val", "test")
                for output in ("first", "mean")
            }
        )

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
            image, mask = _random_crop(image, mask, self.patch_size, self.hparams.ignore_index)
        if self.hparams.augment:
            image, mask = rot_flip(image, mask)
        return image.contiguous(), None if mask is None else mask.contiguous()

    def split_batch(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Augmented images (all items; labelled only when ``supervised_only``) and the labelled masks."""
        labelled = int(self.hparams.labelled_bs)
        images, masks = batch["image"], batch.get("mask")
        if masks is None or len(masks) < labelled or len(images) < labelled:
            raise ValueError(
                f"a labelled-first batch needs at least {labelled} labelled items (masks), got "
                f"{0 if masks is None else len(masks)} masks for {len(images)} images"
            )
        self._check_mask_values(masks[:labelled])
        count = labelled if self.hparams.supervised_only else len(images)
        pairs = [self.augment_item(images[i], masks[i] if i < labelled else None) for i in range(count)]
        return torch.stack([image for image, _ in pairs]), torch.stack([mask for _, mask in pairs[:labelled]])

    def _check_mask_values(self, masks: Tensor) -> None:
        valid = masks[masks != self.hparams.ignore_index]
        if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= self.hparams.num_classes):
            raise GeoclError(
                f"mask values must be class indices 0..{self.hparams.num_classes - 1} or {self.hparams.ignore_index} "
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
                dice = released_dice_loss(probabilities, masks, self.hparams.ignore_index)
            else:
                dice = self.dice(probabilities, targets)
            total = total + self.dice_weight * dice
            if self.hparams.ce_weight > 0 and bool((masks != self.hparams.ignore_index).any()):
                total = total + self.hparams.ce_weight * F.cross_entropy(
                    z[:labelled], masks, ignore_index=self.hparams.ignore_index
                )
        return total

    def consistency_weight_at(self, step: int) -> float:
        """``w(t)`` at the 1-based iteration ``step + 1``."""
        params = self.hparams
        return consistency_weight(step + 1, params.consistency, params.consistency_rampup, params.rampup_iterations)

    def contrast_weight_at(self, step: int) -> float:
        """The contrast's weight at 0-based ``step``.

        ``released``: ``contrast_weight``. ``stable``: ``contrast_weight * scale * r(t)``,
        ``scale`` measured at the first step (:meth:`balance_contrast`) and ``r(t)`` the
        consistency's sigmoid ramp (the contrast grows as the predictions it contrasts
        become meaningful, as the consistency does).
        """
        weight = float(self.hparams.contrast_weight)
        if self.hparams.variant == "released":
            return weight
        if self.contrast_balance > 0 and not bool(self.contrast_scale_set):
            return 0.0  # not measured yet: no batch with foreground so far
        params = self.hparams
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
        valid = masks[masks != self.hparams.ignore_index]
        if not bool((valid > 0).any()):
            return
        supervised_grad = torch.autograd.grad(supervised, logits, retain_graph=True, allow_unused=True)
        contrast_grad = torch.autograd.grad(contrast, logits, retain_graph=True, allow_unused=True)

        def norm(grads: Sequence[Tensor | None]) -> float:
            return math.sqrt(sum(float((g.detach() ** 2).sum()) for g in grads if g is not None))

        pull, push = norm(supervised_grad), norm(contrast_grad) * float(self.hparams.contrast_weight)
        scale = 1.0 if push == 0 else min(1.0, self.contrast_balance * pull / push)
        self.contrast_scale.fill_(scale)
        self.contrast_scale_set.fill_(True)

    def losses(self, images: Tensor, masks: Tensor, step: int) -> dict[str, Tensor]:
        """Every term of the loss for prepared images (labelled first) and the labelled masks."""
        logits = self.network(images)
        terms = {"supervised": self.supervised_loss(logits, masks)}
        zero = terms["supervised"].new_zeros(())
        terms["consistency"], terms["contrast"], weight, contrast_weight = zero, zero, 0.0, 0.0
        if not self.hparams.supervised_only:
            if len(logits) > 1:
                weight = self.consistency_weight_at(step)
                probabilities = [torch.softmax(z, dim=1) for z in logits]
                terms["consistency"] = mutual_consistency(
                    probabilities,
                    self.hparams.temperature,
                    self.hparams.detach_targets,
                    sharpening="channel" if self.hparams.variant == "released" else "classes",
                )
            if len(self.contrast):
                terms["contrast"] = sum((head(z) for head, z in zip(self.contrast, logits, strict=True)), zero)
                if self.training and torch.is_grad_enabled():
                    self.balance_contrast(logits, terms["supervised"], terms["contrast"], masks)
                contrast_weight = self.contrast_weight_at(step)
                # the floor of every decoder's term: where the released binary term collapses
                terms["contrast_floor"] = torch.tensor(sum(head.floor() for head in self.contrast))
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
        classes = self.hparams.num_classes

        def predictor(x: Tensor) -> Tensor:
            probabilities = [torch.softmax(z, dim=1) for z in self.network(x)]
            return torch.cat([probabilities[0], torch.stack(probabilities).mean(0)], dim=1)

        window = self.patch_size
        if self.hparams.spatial_dims == 3 and window is not None and tuple(images.shape[2:]) != window:
            both = sliding_window_inference(images, window, 4, predictor, overlap=0.5, mode="constant")
        else:
            both = predictor(images)
        return both[:, :classes], both[:, classes:]

    def _update_metrics(self, stage: str, batch: dict[str, Any]) -> None:
        if stage == "val" and self.hparams.val_per_case:
            self._update_case_metrics(batch)
            return
        first, mean = self.predict_probabilities(batch["image"])
        self.metrics[f"{stage}_first"].update(first.argmax(1), batch["mask"])
        self.metrics[f"{stage}_mean"].update(mean.argmax(1), batch["mask"])

    def _update_case_metrics(self, batch: dict[str, Any]) -> None:
        """Per-case Dice of each case of a batch of whole cases (``val_per_case``)."""
        classes, ignore = int(self.hparams.num_classes), int(self.hparams.ignore_index)
        for image, mask in zip(batch["image"], batch["mask"], strict=True):
            if self.hparams.spatial_dims == 2:  # [S, C, H, W]: the case's slices, a chunk at a time
                parts = [
                    self.predict_probabilities(image[i : i + SLICE_CHUNK]) for i in range(0, len(image), SLICE_CHUNK)
                ]
                first, mean = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
            else:  # [C, X, Y, Z]
                first, mean = (p[0] for p in self.predict_probabilities(image[None]))
            axis = 1 if self.hparams.spatial_dims == 2 else 0  # the class axis of [S, K, H, W] / [K, X, Y, Z]
            self._val_cases["first"].append(case_dice(first.argmax(axis), mask, classes, ignore))
            self._val_cases["mean"].append(case_dice(mean.argmax(axis), mask, classes, ignore))

    def _log_case_metrics(self) -> None:
        first, mean = (float(np.mean(self._val_cases[name])) for name in ("first", "mean"))
        self._val_cases = {"first": [], "mean": []}
        self.log("val/dice", first, prog_bar=True)
        self.log("val/dice_mean_decoders", mean)
        self.results["val"] = {"dice": first, "dice_mean_decoders": mean, "per_case": True}

    def _log_metrics(self, stage: str) -> None:
        first, mean = self.metrics[f"{stage}_first"], self.metrics[f"{stage}_mean"]
        iou_first, iou_mean = first.compute(), mean.compute()
        first.reset()
        mean.reset()
        summary = summarize_iou(iou_first)
        results: dict[str, Any] = {
            # from the same set-wide counts: Dice = 2 TP / (2 TP + FP + FN) = 2 IoU / (1 + IoU)
            "dice": self.foreground_mean(2 * iou_first / (1 + iou_first)),
            "dice_mean_decoders": self.foreground_mean(2 * iou_mean / (1 + iou_mean)),
            "miou": float(summary["miou"]),
            "iou": [float(value) for value in summary["iou"]],
        }
        for name in ("dice", "dice_mean_decoders", "miou"):
            self.log(f"{stage}/{name}", results[name], prog_bar=name != "dice_mean_decoders")
        self.results[stage] = results

    def foreground_mean(self, per_class: Tensor) -> float:
        """Mean of per-class scores over the foreground classes (all with ``dice_include_background``).

        A class absent from reference and prediction of the whole set (NaN) is left out,
        as in :mod:`geocl.finetune.metrics`.
        """
        scores = per_class if self.hparams.dice_include_background else per_class[1:]
        return float(scores.nanmean())

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._update_metrics("val", batch)

    def on_validation_epoch_end(self) -> None:
        if self.hparams.val_per_case:
            if self._val_cases["first"]:
                self._log_case_metrics()
            return
        self._log_metrics("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._update_metrics("test", batch)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = self.hparams
        if params.optimizer == "adamw":
            return torch.optim.AdamW(self.parameters(), lr=params.lr, weight_decay=params.weight_decay)
        # constant lr, as released (spec ambiguity 8)
        return torch.optim.SGD(
            self.parameters(), lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[SEMI_SUPERVISED_KEY] = self.meta


def _check_patch(patch_size: Sequence[int] | None, spatial_dims: int, depth: int) -> tuple[int, ...] | None:
    if patch_size is None:
        return None
    patch = tuple(int(side) for side in patch_size)
    if len(patch) != spatial_dims or min(patch) < 1:
        raise GeoclError(f"needs {spatial_dims} positive sides, got {list(patch_size)}", key="patch_size")
    multiple = 2 ** (depth - 1)
    if spatial_dims == 3 and any(side % multiple for side in patch):
        raise GeoclError(
            f"V-Net of depth {depth} needs sides that are multiples of {multiple}, got {list(patch)}", key="patch_size"
        )
    return patch


def _random_crop(
    image: Tensor, mask: Tensor | None, size: tuple[int, ...], ignore_index: int
) -> tuple[Tensor, Tensor | None]:
    """A random window of ``size`` over the spatial axes; sides that are too short are padded first."""
    sides = image.shape[1:]
    short = [max(0, want - have) for want, have in zip(size, sides, strict=True)]
    if any(short):
        # F.pad counts from the last axis: (before, after) pairs, padding split around the item
        padding = [amount for gap in reversed(short) for amount in (gap // 2, gap - gap // 2)]
        image = F.pad(image, padding, value=0.0)
        mask = None if mask is None else F.pad(mask, padding, value=ignore_index)
    starts = [int(torch.randint(0, have - want + 1, ())) for want, have in zip(size, image.shape[1:], strict=True)]
    window = tuple(slice(start, start + want) for start, want in zip(starts, size, strict=True))
    return image[(slice(None), *window)], None if mask is None else mask[window]


def rot_flip(image: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """A random quarter turn in the in-plane axes, then a flip of one of them (released ``RandomRotFlip``).

    The in-plane axes are the first two spatial ones: X and Y of ``[C, X, Y, Z]`` volume
    patches (the axial plane of RAS volumes, :mod:`geocl.data.medical.nifti`; Z, the slice
    axis, is never turned nor flipped), H and W of ``[C, H, W]`` tiles and slices (D4).
    Released: ``np.rot90(image, k)``, k uniform in 0..3, over the axes (X, Y), then
    ``np.flip`` of axis X or Y. A plane that is not square turns by 0 or 2 quarters only
    (so the patch keeps its shape; our addition).

    Shape: image ``[C, *S]`` (S of 2 or 3 sides), mask ``[*S]`` or None -> the same.
    """
    spatial = image.dim() - 1
    first = -spatial  # X (3D) or H (2D)
    plane = (first, first + 1)
    square = image.shape[plane[0]] == image.shape[plane[1]]
    turns = int(torch.randint(0, 4, ())) if square else 2 * int(torch.randint(0, 2, ()))
    axis = first + int(torch.randint(0, 2, ()))
    image = torch.rot90(image, turns, plane).flip(axis)
    if mask is not None:  # axes counted from the end: the same for the mask
        mask = torch.rot90(mask, turns, plane).flip(axis)
    return image, mask


def fit_semi_supervised(
    module: SemiSupervisedSegmenter,
    labelled: torch.utils.data.Dataset[dict[str, Any]],
    unlabelled: torch.utils.data.Dataset[dict[str, Any]] | None,
    *,
    out: str | Path,
    batch_size: int = 4,
    val: torch.utils.data.Dataset[dict[str, Any]] | None = None,
    max_epochs: int = 1,
    steps_per_epoch: int | None = None,
    val_every: int = 1,
    patience: int | None = None,
    monitor: str = "val/dice",
    seed: int = 0,
    num_workers: int = 0,
    accelerator: str = "auto",
    progress: bool = False,
) -> lightning.Trainer:
    """Train ``module`` on labelled-first batches; keep the best checkpoint by ``monitor`` on ``val``.

    Args:
        module: the model.
        labelled: samples with ``image`` and ``mask``.
        unlabelled: samples with ``image``; None or unused with ``supervised_only``.
        out: folder of ``checkpoints/best.ckpt`` and ``logs/``.
        batch_size: items per step; with ``supervised_only`` a step takes
            ``module.hparams.labelled_bs`` labelled items alone.
        val: validation samples with masks (None: no validation, the last weights are
            saved as ``checkpoints/last.ckpt``).
        max_epochs: epochs.
        steps_per_epoch: batches per epoch; None: one pass over ``labelled``.
        val_every: epochs between validations.
        patience: validations without gain before stopping (None: never stop early).
        monitor: logged validation metric (higher is better): ``val/dice`` or ``val/miou``.
        seed: seed of the batch orders (the caller seeds the weights).
        num_workers: DataLoader workers.
        accelerator: Lightning accelerator.
        progress: show geocl's training progress bar.

    Returns:
        The trainer (``trainer.checkpoint_callback.best_model_path`` when validated).
    """
    out = Path(out)
    labelled_bs = int(module.hparams.labelled_bs)
    semi = not module.hparams.supervised_only and unlabelled is not None and len(unlabelled)  # type: ignore[arg-type]
    loader = labelled_first_loader(
        labelled,
        unlabelled if semi else None,
        batch_size=batch_size if semi else labelled_bs,
        labelled_bs=labelled_bs,
        num_batches=steps_per_epoch,
        seed=seed,
        num_workers=num_workers,
    )
    trainer = finetune_trainer(
        out,
        max_epochs=max_epochs,
        val_every=val_every,
        accelerator=accelerator,
        monitor=monitor if val is not None else None,
        patience=patience,
        progress=progress,
        log_every_n_steps=1,
    )
    # volumes and cases (per-case validation) may differ in size: one at a time; slices and tiles in batches
    val_batch = 1 if module.hparams.spatial_dims == 3 or module.hparams.val_per_case else batch_size
    val_loader = DataLoader(val, batch_size=val_batch, num_workers=num_workers) if val is not None else None
    trainer.fit(module, loader, val_loader)
    if val is None:
        trainer.save_checkpoint(out / "checkpoints" / "last.ckpt")
    return trainer


def run_semi_supervised(
    *,
    tiles: str | Path,
    out: str | Path,
    encoder_checkpoint: str | Path | None = None,
    encoder: str = "resnet18",
    label_fraction: float = 0.05,
    seed: int = 0,
    subset_seed: int | None = None,
    supervised_only: bool = False,
    decoders: int = 3,
    decoder_channels: Sequence[int] | None = None,
    batch_size: int = 8,
    labelled_bs: int = 4,
    max_epochs: int = 15,
    steps_per_epoch: int = 10,
    val_every: int = 3,
    patience: int = 3,
    optimizer: Literal["sgd", "adamw"] = "adamw",
    lr: float = 1e-3,
    crop: int = 128,
    contrast_mode: ContrastMode = "pooled-map",
    contrast_weight: float = 1.0,
    consistency: float = 1.0,
    consistency_rampup: float = 40.0,
    rampup_iterations: int | None = None,
    segmenter_options: Mapping[str, Any] | None = None,
    num_workers: int = 0,
    accelerator: str = "auto",
    progress: bool = True,
) -> FinetuneResult:
    """FBA on a tile set: the labelled fraction of the train tiles plus the rest of them unlabelled; test mIoU.

    The labelled subset is :func:`~geocl.finetune.train.label_subset`'s (the one ``geocl
    finetune`` draws for the same fraction and seed), the unlabelled part every other
    train tile without its mask. ``supervised_only`` trains the same network on the
    labelled tiles alone (``labelled_bs`` a step): the baseline of a paired comparison.
    Validation by val mIoU, early stopping, the best checkpoint tested on the test tiles
    (decoder 1); ``out/metrics.json`` as ``geocl finetune`` writes it, plus
    ``supervised_only``, ``decoders``, ``unlabelled_tiles`` and ``dice``.

    Args:
        tiles: a tile set with masks.
        out: run folder (must not hold a finetuning run).
        encoder_checkpoint: a geocl pretrain checkpoint for the shared encoder, or None.
        encoder: encoder for random init (a checkpoint brings its own).
        label_fraction, seed, subset_seed: as :func:`~geocl.finetune.train.run_finetune`.
        supervised_only: the baseline without unlabelled tiles.
        decoders: 1 (FBA-Net) or 3 (FBA-Net+).
        decoder_channels: U-Net decoder widths (default smp.Unet's 256..16).
        batch_size: items per semi-supervised step.
        labelled_bs: labelled items per step.
        max_epochs, steps_per_epoch, val_every, patience: the budget (as ``run_finetune``).
        optimizer, lr: AdamW 1e-3 by default (as ``geocl finetune``; the released SGD 0.01 is for volumes).
        crop: training crop side (px).
        contrast_mode: ``pooled-map`` by default (tiles of any size).
        contrast_weight, consistency, consistency_rampup: loss weights (see
            :class:`SemiSupervisedSegmenter`).
        rampup_iterations: iterations per ramp unit; None: the ramp ends at 40 % of
            the budget, as released (6000 of 15000 iterations: 150 a unit), so a short
            budget still reaches the full consistency weight.
        segmenter_options: further :class:`SemiSupervisedSegmenter` arguments
            (``embedding_dim``, ``pooled_grid``, ``temperature``, ``detach_targets``,
            ``dice_weight``, ``ce_weight``: the FBA recipe's ``method`` keys).
        num_workers, accelerator, progress: as ``run_finetune``.

    Raises:
        GeoclError: as :func:`~geocl.finetune.train.run_finetune`.
    """
    start = time.perf_counter()
    out = check_finetune_folder(
        out,
        {
            "label_fraction": label_fraction,
            "seed": seed,
            "subset_seed": subset_seed,
            **({"encoder_checkpoint": encoder_checkpoint} if encoder_checkpoint is not None else {"encoder": encoder}),
        },
    )
    lightning.seed_everything(seed, workers=True, verbose=False)
    train_all = TileDataset(tiles, "train", with_mask=True, progress=progress)
    val = TileDataset(tiles, "val", with_mask=True, progress=False)
    test = TileDataset(tiles, "test", with_mask=True, progress=False)
    if len(val) == 0 or len(test) == 0:
        raise GeoclError("tile set has no val or test tiles; tile with more split blocks", path=tiles)
    subset = label_subset(len(train_all), label_fraction, seed if subset_seed is None else subset_seed)
    rest = np.setdiff1d(np.arange(len(train_all)), subset)
    pretrained = read_pretrain_checkpoint(encoder_checkpoint) if encoder_checkpoint is not None else None
    if pretrained is not None:
        encoder = pretrained["meta"]["encoder"]
    meta: dict[str, Any] = {
        "arch": "fba-unet",
        "in_chans": train_all.band_count,
        "classes": train_all.classes,
        "band_stats": train_all.metadata["band_stats"],
        "nodata": train_all.metadata["nodata"],
        "tile_size": train_all.tile_size,
        "encoder": encoder,
        "encoder_checkpoint": str(encoder_checkpoint) if encoder_checkpoint else None,
    }
    labelled_bs = min(labelled_bs, len(subset))
    if rampup_iterations is None:
        rampup_iterations = max(1, round(RAMP_END * max_epochs * steps_per_epoch / max(consistency_rampup, 1.0)))
    semi = not supervised_only and len(rest) > 0
    module = SemiSupervisedSegmenter(
        2,
        train_all.band_count,
        len(train_all.classes),
        decoders=decoders,
        labelled_bs=labelled_bs,
        supervised_only=supervised_only,
        contrast_mode=contrast_mode,
        contrast_weight=contrast_weight,
        consistency=consistency,
        consistency_rampup=consistency_rampup,
        rampup_iterations=rampup_iterations,
        patch_size=(crop, crop),
        encoder=encoder,
        decoder_channels=decoder_channels,
        optimizer=optimizer,
        lr=lr,
        dice_include_background=len(train_all.classes) > 2,
        meta=meta,
        **dict(segmenter_options or {}),
    )
    if pretrained is not None:
        load_pretrained_encoder(module.network, encoder_checkpoint, train_all.band_count, loaded=pretrained)
        meta["pretrain_method"] = pretrained["meta"]["method"]
    unlabelled = Subset(TileDataset(tiles, "train", with_mask=False, progress=False), rest.tolist()) if semi else None
    trainer = fit_semi_supervised(
        module,
        Subset(train_all, subset.tolist()),
        unlabelled,
        out=out,
        batch_size=min(batch_size, labelled_bs + len(rest)) if semi else labelled_bs,
        val=val,
        max_epochs=max_epochs,
        steps_per_epoch=steps_per_epoch,
        val_every=val_every,
        patience=patience,
        monitor="val/miou",
        seed=seed,
        num_workers=num_workers,
        accelerator=accelerator,
        progress=progress,
    )
    best = trainer.checkpoint_callback
    checkpoint = out / "checkpoints" / "last.ckpt"
    if best is not None and best.best_model_path:
        checkpoint = Path(best.best_model_path)
    if not checkpoint.exists():
        trainer.save_checkpoint(checkpoint)
    trainer.test(
        module,
        DataLoader(test, batch_size=batch_size, num_workers=num_workers),
        ckpt_path=str(checkpoint),
        verbose=False,
    )
    tested = module.results["test"]
    val_miou = best.best_model_score if best is not None else None
    iou = tested["iou"]
    metrics = {
        "miou": tested["miou"],
        "iou": iou,
        "dice": tested["dice"],
        "val_miou": float(val_miou) if val_miou is not None else math.nan,
        "classes": train_all.classes,
        "label_fraction": label_fraction,
        "seed": seed,
        "subset_seed": seed if subset_seed is None else subset_seed,
        "train_tiles": len(subset),
        "unlabelled_tiles": len(rest) if semi else 0,
        "supervised_only": supervised_only,
        "decoders": decoders,
        "encoder": encoder,
        "encoder_checkpoint": meta["encoder_checkpoint"],
        "arch": "fba-unet",
        "checkpoint": str(checkpoint),
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_result(out, metrics)
    return FinetuneResult(
        miou=metrics["miou"],
        iou=iou,
        val_miou=metrics["val_miou"],
        checkpoint=checkpoint,
        out=out,
        train_tiles=len(subset),
    )
