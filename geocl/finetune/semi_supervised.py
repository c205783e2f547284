"""Semi-supervised FBA-Net / FBA-Net+ on a tile set, on the downstream skeleton.

FBA (Chung et al., MILLanD @ MICCAI 2023, arXiv 2306.15189) trains the segmenter from
few labels plus unlabelled items on labelled-first batches; the Lightning module and its
loss are :class:`~geocl.finetune.semi_supervised_module.SemiSupervisedSegmenter`. A run is
the downstream skeleton's (:func:`geocl.finetune.downstream.run_downstream`: one run a
folder, seeding, splits, the label subset, the budget, ``metrics.json``); this module
brings its parts:

* :class:`FBAOptions`: FBA's settings, the recipe's ``method`` keys of
  :class:`geocl.methods.fba.FBA` (one typed object for the tile and the volume training);
* :class:`FBAFactory`: the network (a U-Net on the encoder in 2D, the released V-Net in
  3D), its encoder started from a pretrain checkpoint of any method or random init, the
  consistency ramp a share of the budget (:data:`RAMP_END`), also for
  :mod:`geocl.finetune.medical_semi_supervised`;
* :class:`SemiSupervisedTiles`: the tile set's splits (those of
  :class:`~geocl.finetune.train.TileSplits`: the labelled subset is the one ``geocl
  finetune`` draws for the same fraction and seed), plus every other train tile without
  its mask as the unlabelled part; test mIoU of decoder 1 (the decoder the released test
  script of github.com/cys1102/FBA-Net scores).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Unpack

import lightning
import numpy as np
from torch.utils.data import DataLoader, Subset

from geocl.data.tile_dataset import TileDataset
from geocl.finetune.downstream import (
    BudgetArguments,
    DataDescription,
    DownstreamOptions,
    Scores,
    budget_from,
    run_downstream,
)
from geocl.finetune.model import load_pretrained_encoder
from geocl.finetune.semi_supervised_config import SemiSupervisedConfig, Variant
from geocl.finetune.semi_supervised_data import semi_supervised_loaders
from geocl.finetune.semi_supervised_module import SemiSupervisedSegmenter
from geocl.finetune.train import FinetuneResult, TileSplits
from geocl.losses.fba import ContrastMode
from geocl.models.checkpoints import read_pretrain_checkpoint

__all__ = [
    "RAMP_END",
    "FBAFactory",
    "FBAOptions",
    "LabelBudget",
    "SemiSupervisedSegmenter",  # the module lives in geocl.finetune.semi_supervised_module (docs link it here)
    "SemiSupervisedTiles",
    "run_semi_supervised",
]

#: Share of the training budget after which the released consistency ramp is complete (6000 of 15000).
RAMP_END = 0.4
#: What a label fraction of volumes is of: the train cases, or the train and val cases together (the paper's 80).
LabelBudget = Literal["train", "train-and-val"]


@dataclass(frozen=True, kw_only=True)
class FBAOptions:
    """FBA's settings of a downstream run: the recipe's ``method`` keys of :class:`geocl.methods.fba.FBA`.

    Attributes:
        supervised_only: the supervised baseline on the same labels (no unlabelled items,
            no consistency, no contrast).
        decoders: 1 (FBA-Net) or 3 (FBA-Net+).
        labelled_bs: labelled items at the front of each batch (at most the labelled
            items, and the batch).
        contrast_mode: ``pooled-map`` (any input size) or ``code`` (fixes the input to the crop).
        contrast_weight, embedding_dim, pooled_grid, consistency, consistency_rampup,
            temperature, detach_targets, dice_weight, ce_weight, variant, contrast_balance:
            see :class:`~geocl.finetune.semi_supervised_module.SemiSupervisedConfig`.
        rampup_iterations: steps per ramp unit; None: the ramp ends at :data:`RAMP_END`
            of the budget, as released (6000 of 15000 iterations: 150 a unit), so a
            short budget still reaches the full consistency weight.
        decoder_channels: 2D U-Net decoder widths (default smp.Unet's 256..16).
        label_budget: volumes: ``train`` or ``train-and-val``
            (:func:`~geocl.finetune.medical_semi_supervised.label_budget_split`).
        spatial_dims: volumes: 2 (slices, U-Net) or 3 (patches, V-Net); tiles are 2D.
        patch_size: 3D training patch and sliding window (voxels a side, multiples of
            ``2**(depth-1)``; released LA: 112 x 112 x 80); required in 3D.
        width, depth, dropout: the 3D V-Net's.
    """

    supervised_only: bool = False
    decoders: int = 3
    labelled_bs: int = 4
    contrast_mode: ContrastMode = "pooled-map"
    contrast_weight: float = 1.0
    embedding_dim: int = 128
    pooled_grid: int | None = None
    consistency: float = 1.0
    consistency_rampup: float = 40.0
    rampup_iterations: int | None = None
    temperature: float = 0.1
    detach_targets: bool = False
    dice_weight: float | None = None
    ce_weight: float = 0.0
    decoder_channels: Sequence[int] | None = None
    variant: Variant = "stable"
    contrast_balance: float | None = None
    label_budget: LabelBudget = "train"
    spatial_dims: Literal[2, 3] = 2
    patch_size: Sequence[int] | None = None
    width: int = 16
    depth: int = 5
    dropout: float = 0.5

    @classmethod
    def from_method(cls, params: Any) -> FBAOptions:
        """The options of a recipe's ``method`` section (its fields of these names; others are ignored)."""
        values = {
            item.name: getattr(params, item.name) for item in dataclasses.fields(cls) if hasattr(params, item.name)
        }
        for name in ("decoder_channels", "patch_size"):
            if values.get(name) is not None:
                values[name] = [int(side) for side in values[name]]
        return cls(**values)

    def rampup(self, steps: int) -> int:
        """Steps per ramp unit for a budget of ``steps``: ``rampup_iterations``, or the ramp ending at :data:`RAMP_END`."""
        if self.rampup_iterations is not None:
            return self.rampup_iterations
        return max(1, round(RAMP_END * steps / max(self.consistency_rampup, 1.0)))


@dataclass(frozen=True, kw_only=True)
class FBAFactory:
    """The network of a semi-supervised downstream training (a :class:`~geocl.finetune.downstream.ModuleFactory`).

    A :class:`~geocl.finetune.semi_supervised_module.SemiSupervisedSegmenter` of
    ``fba.spatial_dims`` for the data's bands and classes, with what the data adapter sets
    (:attr:`~geocl.finetune.downstream.DataDescription.network`: ``labelled_bs``,
    ``patch_size``, ``val_per_case``, ``dice_include_background``); the 2D encoder starts
    from a geocl pretrain checkpoint (any method; it brings its encoder name) or random init.

    Attributes:
        fba: FBA's settings.
        encoder: 2D encoder for random init (a checkpoint brings its own).
        encoder_checkpoint: a geocl pretrain checkpoint, or None.
        optimizer: ``adamw`` or ``sgd`` (released: momentum 0.9, constant lr).
        lr: learning rate.
        monitor: ``val/miou`` (tiles) or ``val/dice`` (volumes, per case).
        volumes: ``metrics.json`` also says ``spatial_dims``, ``label_budget`` and how val was scored.
    """

    fba: FBAOptions
    encoder: str = "resnet18"
    encoder_checkpoint: str | Path | None = None
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 1e-3
    monitor: str = "val/miou"
    volumes: bool = False
    log_every_n_steps: int = field(default=1, init=False)

    def identity(self) -> dict[str, Any]:
        """The options of the network that a run found in the folder is compared by."""
        start = self.encoder_checkpoint
        return {
            **({"spatial_dims": self.fba.spatial_dims} if self.volumes else {}),
            **({"encoder_checkpoint": start} if start is not None else {"encoder": self.encoder}),
        }

    def build(self, data: DataDescription, options: DownstreamOptions) -> SemiSupervisedSegmenter:
        """The module for ``data`` (bands and classes from ``data.meta``), its encoder loaded."""
        fba, start, spatial_dims = self.fba, self.encoder_checkpoint, self.fba.spatial_dims
        pretrained = read_pretrain_checkpoint(start) if start is not None else None
        encoder = pretrained["meta"]["encoder"] if pretrained is not None else self.encoder
        meta: dict[str, Any] = {
            "arch": f"fba-{'unet' if spatial_dims == 2 else 'vnet'}",
            **data.meta,
            "encoder": encoder if spatial_dims == 2 else None,
            "encoder_checkpoint": str(start) if start else None,
        }
        budget = options.budget
        shared = {name: getattr(fba, name) for name in _SHARED}
        config = SemiSupervisedConfig(
            **shared,
            rampup_iterations=fba.rampup(budget.max_epochs * budget.steps_per_epoch),
            encoder=encoder,
            optimizer=self.optimizer,
            lr=self.lr,
            **data.network,
        )
        in_chans = int(data.meta["in_chans"])
        module = SemiSupervisedSegmenter(spatial_dims, in_chans, len(data.meta["classes"]), config, meta=meta)
        if pretrained is not None and start is not None:
            load_pretrained_encoder(module.network, start, in_chans, loaded=pretrained)
            meta["pretrain_method"] = pretrained["meta"]["method"]
        return module

    def record(self, module: lightning.LightningModule) -> dict[str, Any]:
        """``supervised_only``, ``decoders`` (volumes: ``spatial_dims``, ``label_budget``, ``val_scored``),
        ``encoder``, ``encoder_checkpoint``, ``arch``."""
        assert isinstance(module, SemiSupervisedSegmenter)
        volumes = {
            "spatial_dims": self.fba.spatial_dims,
            "label_budget": self.fba.label_budget,
            "val_scored": "per case",
        }
        return {
            "supervised_only": self.fba.supervised_only,
            "decoders": self.fba.decoders,
            **(volumes if self.volumes else {}),
            "encoder": module.meta["encoder"],
            "encoder_checkpoint": module.meta["encoder_checkpoint"],
            "arch": module.meta["arch"],
        }


#: FBA settings that go to the module's config as they are.
_SHARED = (
    "decoders",
    "supervised_only",
    "dice_weight",
    "ce_weight",
    "consistency",
    "consistency_rampup",
    "temperature",
    "detach_targets",
    "contrast_weight",
    "contrast_mode",
    "embedding_dim",
    "pooled_grid",
    "width",
    "depth",
    "dropout",
    "decoder_channels",
    "variant",
    "contrast_balance",
)


class SemiSupervisedTiles(TileSplits):
    """A tile set's splits for FBA (a :class:`~geocl.finetune.downstream.DownstreamData`).

    The labelled train tiles are :class:`~geocl.finetune.train.TileSplits`' (the subset of
    ``geocl finetune``); the unlabelled part is every other train tile, read without its
    mask; none with ``supervised_only`` (the baseline's steps take ``labelled_bs``
    labelled tiles alone). Validation by val mIoU over all val tiles; the test scores
    decoder 1 (mIoU, per-class IoU, Dice).

    Args:
        tiles: a tile set with masks.
        fba: FBA's settings.
        crop: training crop side (px).
    """

    def __init__(self, tiles: str | Path, fba: FBAOptions, crop: int) -> None:
        super().__init__(tiles)
        self.fba = fba
        self.crop = crop

    def setup(self, options: DownstreamOptions) -> DataDescription:
        """The splits and the labelled subset (:meth:`TileSplits.setup`), and the unlabelled train tiles."""
        described = super().setup(options)
        self.rest = np.setdiff1d(np.arange(len(self.train)), self.subset)
        self.semi = not self.fba.supervised_only and len(self.rest) > 0
        described.record["unlabelled_tiles"] = len(self.rest) if self.semi else 0
        described.network = {
            "labelled_bs": min(self.fba.labelled_bs, len(self.subset)),
            "patch_size": (self.crop, self.crop),
            "dice_include_background": len(self.train.classes) > 2,
        }
        return described

    def loaders(self, module: lightning.LightningModule, options: DownstreamOptions) -> tuple[DataLoader, DataLoader]:
        """Labelled-first batches (:func:`~geocl.finetune.semi_supervised_data.semi_supervised_loaders`); val tiles."""
        assert isinstance(module, SemiSupervisedSegmenter)
        budget = options.budget
        labelled_bs = module.config.labelled_bs
        unlabelled = None
        if self.semi:
            unlabelled = Subset(TileDataset(self.tiles, "train", with_mask=False, progress=False), self.rest.tolist())
            budget = dataclasses.replace(budget, batch_size=min(budget.batch_size, labelled_bs + len(self.rest)))
        labelled = Subset(self.train, self.subset.tolist())
        train, val = semi_supervised_loaders(module.config, 2, labelled, unlabelled, self.val, budget, options.seed)
        assert val is not None
        return train, val

    def score(
        self, trainer: lightning.Trainer, module: lightning.LightningModule, checkpoint: Path, out: Path
    ) -> Scores:
        """Decoder 1's test mIoU, per-class IoU and Dice (:meth:`TileSplits.score`)."""
        scored = super().score(trainer, module, checkpoint, out)
        tested = scored.record
        record = {"miou": tested["miou"], "iou": tested["iou"], "dice": tested["dice"]}
        return Scores(record, {**scored.logged, "test/dice": tested["dice"]})


def run_semi_supervised(
    *,
    tiles: str | Path,
    out: str | Path,
    encoder_checkpoint: str | Path | None = None,
    encoder: str = "resnet18",
    label_fraction: float = 0.05,
    seed: int = 0,
    subset_seed: int | None = None,
    fba: FBAOptions | None = None,
    optimizer: Literal["sgd", "adamw"] = "adamw",
    lr: float = 1e-3,
    crop: int = 128,
    **budget: Unpack[BudgetArguments],
) -> FinetuneResult:
    """FBA on a tile set: the labelled fraction of the train tiles plus the rest of them unlabelled; test mIoU.

    ``fba.supervised_only`` trains the same network on the labelled tiles alone
    (``labelled_bs`` a step): the baseline of a paired comparison. Validation by val
    mIoU, early stopping, the best checkpoint tested on the test tiles (decoder 1);
    ``out/metrics.json`` as ``geocl finetune`` writes it (without the options record),
    plus ``supervised_only``, ``decoders``, ``unlabelled_tiles`` and ``dice``.

    Args:
        tiles: a tile set with masks.
        out: run folder (must not hold a finetuning run).
        encoder_checkpoint: a geocl pretrain checkpoint for the shared encoder, or None.
        encoder: encoder for random init (a checkpoint brings its own).
        label_fraction, seed, subset_seed: as :func:`~geocl.finetune.train.run_finetune`.
        fba: FBA's settings (:class:`FBAOptions`; None: its defaults).
        optimizer, lr: AdamW 1e-3 by default (as ``geocl finetune``; the released SGD 0.01 is for volumes).
        crop: training crop side (px).
        **budget: the keywords of :class:`~geocl.finetune.downstream.TrainingBudget`
            (``max_epochs`` ... ``logger``); ``batch_size`` is the whole labelled-first batch.

    Returns:
        A :class:`~geocl.finetune.train.FinetuneResult` (test mIoU of decoder 1).

    Raises:
        GeoclError: as :func:`~geocl.finetune.train.run_finetune`.
        TypeError: an unknown keyword argument.
    """
    fba = fba or FBAOptions()
    factory = FBAFactory(fba=fba, encoder=encoder, encoder_checkpoint=encoder_checkpoint, optimizer=optimizer, lr=lr)
    options = DownstreamOptions(
        out=out,
        label_fraction=label_fraction,
        seed=seed,
        subset_seed=subset_seed,
        budget=budget_from(budget),
        # compared with a run found in out by what metrics.json holds at its top level (no options record)
        identity={"label_fraction": label_fraction, "seed": seed, "subset_seed": subset_seed, **factory.identity()},
        record_options=False,
    )
    done = run_downstream(factory, SemiSupervisedTiles(tiles, fba, crop), options)
    return FinetuneResult(
        miou=done.record["miou"],
        iou=done.record["iou"],
        val_miou=done.best_score,
        checkpoint=done.checkpoint,
        out=done.out,
        train_tiles=done.record["train_tiles"],
    )
