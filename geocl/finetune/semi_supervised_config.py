"""The settings of the FBA-Net / FBA-Net+ module, as one typed object.

:class:`SemiSupervisedConfig` is what
:class:`~geocl.finetune.semi_supervised_module.SemiSupervisedSegmenter` is built from (its
defaults are the released 3D code's, FBA-Net, Chung et al., arXiv 2306.15189); the
trainings on the downstream skeleton fill it from FBA's recipe keys and the data
(:class:`geocl.finetune.semi_supervised.FBAFactory`). A checkpoint holds it as plain data
(``dataclasses.asdict``) under the module's hyperparameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from geocl.data.tile_dataset import IGNORE_INDEX
from geocl.losses.fba import ContrastMode

__all__ = ["CONTRAST_BALANCE", "SemiSupervisedConfig", "Variant"]

#: FBA's two presets: geocl's working one and the released code's (module docstring).
Variant = Literal["stable", "released"]
#: ``stable``: the contrast's gradient on the logits at the first step, as a share of the supervised term's.
CONTRAST_BALANCE = 0.1


@dataclass(frozen=True, kw_only=True)
class SemiSupervisedConfig:
    """The settings of a :class:`SemiSupervisedSegmenter` (defaults: the released 3D code's).

    Attributes:
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
        variant: ``"stable"`` (geocl's) or ``"released"`` (the released code's; module docstring).
        contrast_balance: ``stable`` only: the contrast's gradient norm on the logits at
            the first step, as a share of the supervised term's (None:
            :data:`CONTRAST_BALANCE`; 0: the fixed ``contrast_weight``).
        val_per_case: validation items are whole cases (3D: ``[1, X, Y, Z]`` volumes; 2D:
            ``[S, 1, H, W]`` stacks of a case's slices,
            :class:`~geocl.finetune.semi_supervised_data.CaseSlices`), scored by
            :func:`~geocl.finetune.semi_supervised_data.case_dice` and averaged over
            cases, as the test scores them; otherwise (tiles) from confusion counts over
            the whole set, as the tile test does.
    """

    decoders: int = 3
    labelled_bs: int = 2
    supervised_only: bool = False
    dice_weight: float | None = None
    ce_weight: float = 0.0
    dice_include_background: bool = False
    consistency: float = 1.0
    consistency_rampup: float = 40.0
    rampup_iterations: int = 150
    temperature: float = 0.1
    detach_targets: bool = False
    contrast_weight: float = 1.0
    contrast_mode: ContrastMode = "code"
    embedding_dim: int = 128
    pooled_grid: int | None = None
    patch_size: Sequence[int] | None = None
    width: int = 16
    depth: int = 5
    dropout: float = 0.5
    encoder: str = "resnet18"
    encoder_depth: int = 5
    decoder_channels: Sequence[int] | None = None
    encoder_args: dict[str, Any] | None = None
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    augment: bool = True
    ignore_index: int = IGNORE_INDEX
    variant: Variant = "stable"
    contrast_balance: float | None = None
    val_per_case: bool = False

    def network_options(self, spatial_dims: int) -> dict[str, Any]:
        """The keyword arguments of :func:`~geocl.models.fba_nets.build_fba_network` (V-Net in 3D, U-Net in 2D)."""
        if spatial_dims == 3:
            return {"width": self.width, "depth": self.depth, "dropout": self.dropout}
        return {
            "encoder": self.encoder,
            "encoder_depth": self.encoder_depth,
            "decoder_channels": self.decoder_channels,
            "encoder_args": self.encoder_args,
        }
