"""``geocl finetune``: segmentation with few labels, judged by mIoU on the held-out split.

The encoder of an smp model starts from a pretrain checkpoint (any method), from
pretrained weights or from random init; the model trains on a deterministic subset of
the train tiles (a fraction, drawn with the seed), stops early on val mIoU, and the best
checkpoint is evaluated on the test tiles, which lie in other spatial blocks than the
train tiles. Nodata pixels are ignored (``IGNORE_INDEX``) in the loss and in the metric.

Choices where GraSS (arXiv 2306.15868) leaves the protocol open (its released code,
github.com/GeoX-Lab/GraSS, is pretraining only): full finetuning by default
(``freeze_encoder`` trains the decoder only, as the MMSegmentation configs of the same
authors' FALSE, github.com/GeoX-Lab/FALSE, do); random 128 px crops, flips and quarter
turns of the labelled tiles for training.

The run is the downstream skeleton's (:func:`geocl.finetune.downstream.run_downstream`:
one run a folder, ``metrics.json`` with the options that determine the result); this
module brings its two parts for tiles: the segmenter (:class:`SegmenterFactory`, also
the one of :mod:`geocl.finetune.medical`) and the tile set's splits (:class:`TileSplits`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Unpack, runtime_checkable

import lightning
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, RandomSampler, Subset

from geocl.data.tile_dataset import IGNORE_INDEX, TileDataset
from geocl.errors import GeoclError
from geocl.finetune.downstream import (
    BudgetArguments,
    DataDescription,
    DownstreamOptions,
    Scores,
    budget_from,
    run_downstream,
)
from geocl.finetune.linear_probe import probe_stages as checked_stages
from geocl.finetune.metrics import segmentation_metric, summarize_iou
from geocl.finetune.model import build_segmenter, load_encoder_weights, load_pretrained_encoder
from geocl.models.checkpoints import SEGMENTER_KEY, pretrained_encoder_args, read_pretrain_checkpoint
from geocl.models.encoders import is_vision_transformer


class SegmentationModule(lightning.LightningModule):
    """An smp segmenter trained with cross-entropy and validated by mIoU.

    Args:
        arch: ``unet``, ``deeplabv3plus``, ``dpt`` (ViT encoders) or ``linear`` (the dense linear probe).
        encoder: timm encoder name.
        in_chans: input bands.
        num_classes: classes.
        lr: AdamW learning rate.
        crop: side of random training crops (px).
        freeze_encoder: train the decoder only.
        meta: stored in checkpoints (classes, band statistics, ...).
        encoder_args: timm arguments of a CNN encoder (a pretrain checkpoint's
            ``encoder.args``, e.g. ``output_stride``), so the encoder computes what it was
            pretrained to compute; a ViT's are set when its weights load.
        probe_stages: ``linear`` only: the encoder stages the probe reads (1-5; None: every
            one). Kept with the other arguments in the checkpoint, so that
            :func:`geocl.finetune.inference.load_segmenter` rebuilds the same probe.
    """

    def __init__(
        self,
        arch: str,
        encoder: str,
        in_chans: int,
        num_classes: int,
        lr: float = 1e-3,
        crop: int = 128,
        freeze_encoder: bool = False,
        meta: dict[str, Any] | None = None,
        encoder_args: dict[str, Any] | None = None,
        probe_stages: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # channels-last convolutions: about 10 % faster training steps of a Unet-ResNet-18
        # on 2 CPU cores (oneDNN's preferred layout), same results
        self.model = build_segmenter(arch, encoder, in_chans, num_classes, encoder_args, probe_stages).to(
            memory_format=torch.channels_last
        )
        self.criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
        self.val_metric = segmentation_metric(num_classes)
        self.test_metric = segmentation_metric(num_classes)
        self.meta = meta or {}
        self.lr, self.crop, self.freeze_encoder = lr, crop, freeze_encoder

    def forward(self, images: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> logits ``[B, K, H, W]``."""
        return self.model(images.contiguous(memory_format=torch.channels_last))

    def _augment(self, images: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        size = self.crop
        height, width = images.shape[-2:]
        if size < min(height, width):
            top = int(torch.randint(0, height - size + 1, ()))
            left = int(torch.randint(0, width - size + 1, ()))
            images = images[..., top : top + size, left : left + size]
            masks = masks[..., top : top + size, left : left + size]
        turns = int(torch.randint(0, 4, ()))
        images, masks = torch.rot90(images, turns, (-2, -1)), torch.rot90(masks, turns, (-2, -1))
        if bool(torch.randint(0, 2, ())):
            images, masks = images.flip(-1), masks.flip(-1)
        return images.contiguous(), masks.contiguous()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        images, masks = self._augment(batch["image"], batch["mask"])
        loss = self.criterion(self(images), masks)
        if not torch.isfinite(loss):
            raise GeoclError(f"finetuning loss became {loss.item()} at step {self.global_step}", key="lr")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.val_metric.update(self(batch["image"]).argmax(1), batch["mask"])

    def on_validation_epoch_end(self) -> None:
        self.log("val/miou", summarize_iou(self.val_metric.compute())["miou"], prog_bar=True)
        self.val_metric.reset()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.test_metric.update(self(batch["image"]).argmax(1), batch["mask"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.freeze_encoder:
            self.model.encoder.requires_grad_(False)
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=1e-4)

    def test_scores(self) -> dict[str, Any]:
        """After ``trainer.test``: ``{"miou": float, "iou": [float a class]}`` over every test pixel (NaN: class absent)."""
        summary = summarize_iou(self.test_metric.compute())
        return {"miou": summary["miou"], "iou": summary["iou"]}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[SEGMENTER_KEY] = self.meta


@dataclass(frozen=True, kw_only=True)
class SegmenterFactory:
    """The network of a supervised downstream training: a :class:`SegmentationModule`, and how its encoder starts.

    A :class:`~geocl.finetune.downstream.ModuleFactory`: the encoder starts from a geocl
    pretrain checkpoint (any method; it brings its encoder name), from starting weights
    (:mod:`geocl.models.weights`) or from random init. The checkpoint's metadata is the
    data's (:class:`~geocl.finetune.downstream.DataDescription`) plus ``arch``,
    ``encoder``, ``encoder_checkpoint`` and, as they apply, ``pretrain_method``,
    ``starting_weights`` and (``linear``) the ``probe_stages`` read, which ``metrics.json``
    records too.

    Attributes:
        arch: ``unet``, ``deeplabv3plus``, ``dpt`` (ViT encoders) or ``linear`` (the
            frozen dense linear probe).
        encoder: encoder name for random init or starting weights (a checkpoint brings its own).
        encoder_checkpoint: a geocl pretrain checkpoint, or None.
        encoder_weights: without a checkpoint, the weights ``encoder`` starts from ('' =
            random init); None where the training offers no starting weights (then
            ``metrics.json`` does not name them).
        lr: AdamW learning rate.
        crop: side of the random training crops (px).
        freeze_encoder: train the decoder only.
        probe_stages: ``linear`` only: the encoder stages the dense linear probe reads, 1
            (stem, output stride 2) to 5 (deepest, stride 32); None: every stage.
        monitor: val mIoU picks the best checkpoint.
        log_every_n_steps: the trainer's logging interval.

    Raises:
        GeoclError: both an encoder checkpoint and encoder weights (key ``encoder_weights``);
            ``probe_stages`` with another ``arch`` than ``linear``, or a stage the encoder
            does not have (key ``probe_stages``).
    """

    arch: str = "unet"
    encoder: str = "resnet18"
    encoder_checkpoint: str | Path | None = None
    encoder_weights: str | None = None
    lr: float = 1e-3
    crop: int = 128
    freeze_encoder: bool = False
    probe_stages: Sequence[int] | None = None
    monitor: str = field(default="val/miou", init=False)
    log_every_n_steps: int = field(default=5, init=False)

    def __post_init__(self) -> None:
        if self.encoder_weights and self.encoder_checkpoint is not None:
            raise GeoclError("give an encoder checkpoint or encoder weights, not both", key="encoder_weights")
        if self.probe_stages is not None and self.arch != "linear":
            raise GeoclError(
                f"applies to the dense linear probe only (arch linear), not to {self.arch}", key="probe_stages"
            )
        if self.arch == "linear":  # checked before any work; every stage when None
            object.__setattr__(self, "probe_stages", checked_stages(self.probe_stages))

    def identity(self) -> dict[str, Any]:
        """The network's options that determine a result: ``arch``, how the encoder starts and the probe's stages."""
        start = self.encoder_checkpoint
        return {
            "arch": self.arch,
            **({"encoder_checkpoint": start} if start is not None else {"encoder": self.encoder}),
            **({"encoder_weights": self.encoder_weights} if self.encoder_weights else {}),
            **self._stages_read(),
        }

    def _stages_read(self) -> dict[str, list[int]]:
        """``{"probe_stages": [...]}`` for the dense linear probe (every stage it reads), else {}."""
        return {} if self.probe_stages is None else {"probe_stages": list(self.probe_stages)}

    def build(self, data: DataDescription, options: DownstreamOptions) -> SegmentationModule:
        """The segmenter for ``data`` (bands and classes from ``data.meta``), its encoder loaded."""
        in_chans = int(data.meta["in_chans"])
        start = self.encoder_checkpoint
        meta: dict[str, Any] = {
            "arch": self.arch,
            **self._stages_read(),
            **data.meta,
            "encoder_checkpoint": str(start) if start else None,
        }
        pretrained = read_pretrain_checkpoint(start) if start is not None else None
        encoder = pretrained["meta"]["encoder"] if pretrained is not None else self.encoder
        meta["encoder"] = encoder
        # a CNN pretrained with timm arguments (e.g. output_stride: 16) is rebuilt with them:
        # its weights would load into the plain encoder too, and compute something else
        cnn_args = None
        if pretrained is not None and not is_vision_transformer(encoder):
            cnn_args = pretrained_encoder_args(pretrained["meta"]) or None
        module = SegmentationModule(
            self.arch,
            encoder,
            in_chans,
            len(meta["classes"]),
            lr=self.lr,
            crop=self.crop,
            freeze_encoder=self.freeze_encoder,
            meta=meta,
            encoder_args=cnn_args,
            probe_stages=self._stages_read().get("probe_stages"),  # a list: checkpoints keep plain data
        )
        if pretrained is not None:
            load_pretrained_encoder(module.model, start, in_chans, loaded=pretrained)  # type: ignore[arg-type]
            meta["pretrain_method"] = pretrained["meta"].get("method")
        if self.encoder_weights:
            meta["starting_weights"] = load_encoder_weights(module.model, self.encoder_weights, encoder, in_chans)
        return module

    def record(self, module: lightning.LightningModule) -> dict[str, Any]:
        """``encoder`` (the checkpoint's, when one is given), ``encoder_checkpoint``, ``arch``, ``encoder_weights``
        and (``linear``) ``probe_stages``."""
        assert isinstance(module, SegmentationModule)
        meta = module.meta
        weights = {} if self.encoder_weights is None else {"encoder_weights": self.encoder_weights or None}
        return {
            "encoder": meta["encoder"],
            "encoder_checkpoint": meta["encoder_checkpoint"],
            "arch": self.arch,
            **weights,
            **self._stages_read(),
        }


def label_subset(count: int, fraction: float, seed: int) -> np.ndarray:
    """Deterministic subset of ``count`` train tiles of the given fraction (at least one)."""
    if not 0.0 < fraction <= 1.0:
        raise GeoclError(f"must be in (0, 1], got {fraction}", key="label_fraction")
    keep = max(1, math.ceil(fraction * count))
    return np.sort(np.random.default_rng(seed).permutation(count)[:keep])


@runtime_checkable
class KeepsTestScores(Protocol):
    """A module that keeps its test figures: ``{"miou": float, "iou": [float a class], ...}`` after ``trainer.test``."""

    def test_scores(self) -> dict[str, Any]: ...


class TileSplits:
    """The data of a downstream training on a tile set: its train, val and test tiles with masks.

    A :class:`~geocl.finetune.downstream.DownstreamData`: the labelled tiles are
    :func:`label_subset`'s, drawn with replacement (``steps_per_epoch * batch_size`` a
    epoch, with the training seed); val and test tiles lie in other spatial blocks.

    Args:
        tiles: a tile set with masks (``geocl tile --mask``).
    """

    def __init__(self, tiles: str | Path) -> None:
        self.tiles = tiles

    def setup(self, options: DownstreamOptions) -> DataDescription:
        """Read the three splits; draw the labelled train tiles.

        Raises:
            GeoclError: no val or test tiles; a bad ``label_fraction``; a bad tile set.
        """
        self.budget = options.budget
        self.train = TileDataset(self.tiles, "train", with_mask=True, progress=options.budget.progress)
        self.val = TileDataset(self.tiles, "val", with_mask=True, progress=False)
        self.test = TileDataset(self.tiles, "test", with_mask=True, progress=False)
        if len(self.val) == 0 or len(self.test) == 0:
            raise GeoclError("tile set has no val or test tiles; tile with more split blocks", path=self.tiles)
        self.subset = label_subset(len(self.train), options.label_fraction, options.drawn_with)
        meta = {
            "in_chans": self.train.band_count,
            "classes": self.train.classes,
            "band_stats": self.train.metadata["band_stats"],
            "nodata": self.train.metadata["nodata"],
            "tile_size": self.train.tile_size,
        }
        return DataDescription(meta, {"train_tiles": len(self.subset)})

    def loaders(self, module: lightning.LightningModule, options: DownstreamOptions) -> tuple[DataLoader, DataLoader]:
        """Labelled train tiles drawn with replacement; every val tile."""
        budget = options.budget
        labelled = Subset(self.train, self.subset.tolist())
        sampler = RandomSampler(
            labelled, replacement=True, num_samples=budget.draws, generator=torch.Generator().manual_seed(options.seed)
        )
        return (
            DataLoader(labelled, batch_size=budget.batch_size, sampler=sampler, num_workers=budget.num_workers),
            DataLoader(self.val, batch_size=budget.batch_size, num_workers=budget.num_workers),
        )

    def score(
        self, trainer: lightning.Trainer, module: lightning.LightningModule, checkpoint: Path, out: Path
    ) -> Scores:
        """mIoU and per-class IoU of ``checkpoint`` on the test tiles (``module.test_scores()`` after ``trainer.test``)."""
        test = DataLoader(self.test, batch_size=self.budget.batch_size, num_workers=self.budget.num_workers)
        if not isinstance(module, KeepsTestScores):
            raise TypeError(f"{type(module).__name__} has no test_scores(): it cannot be scored on tiles")
        trainer.test(module, test, ckpt_path=str(checkpoint), verbose=False, weights_only=True)
        scores = module.test_scores()
        logged = {
            "test/miou": scores["miou"],
            **{f"test/iou_{name}": value for name, value in zip(self.train.classes, scores["iou"], strict=True)},
        }
        return Scores(scores, logged)


@dataclass
class FinetuneResult:
    """What a finetuning run produced.

    Attributes:
        miou: mean IoU on the test tiles (best checkpoint).
        iou: per-class IoU (NaN for a class absent from truth and prediction).
        val_miou: best val mIoU.
        checkpoint: the best checkpoint.
        out: the run folder.
        train_tiles: labelled tiles used.
    """

    miou: float
    iou: list[float]
    val_miou: float
    checkpoint: Path
    out: Path
    train_tiles: int


def run_finetune(
    *,
    tiles: str | Path,
    out: str | Path,
    encoder_checkpoint: str | Path | None = None,
    encoder: str = "resnet18",
    encoder_weights: str = "",
    arch: str = "unet",
    label_fraction: float = 0.05,
    seed: int = 0,
    subset_seed: int | None = None,
    lr: float = 1e-3,
    crop: int = 128,
    freeze_encoder: bool = False,
    probe_stages: Sequence[int] | None = None,
    **budget: Unpack[BudgetArguments],
) -> FinetuneResult:
    """Finetune a segmenter on a fraction of the labelled train tiles; mIoU on the test tiles.

    Args:
        tiles: a tile set with masks (``geocl tile --mask``).
        out: run folder (checkpoints/, logs/, metrics.json).
        encoder_checkpoint: a geocl pretrain checkpoint, or None for random init.
        encoder: encoder name for random init (a checkpoint brings its own).
        encoder_weights: without a checkpoint, the weights ``encoder`` starts from: a
            TorchGeo weights name, a timm pretrained tag or a file, read offline and
            fitted to the band count (:mod:`geocl.models.weights`); '' = random init.
        arch: ``unet`` (default), ``deeplabv3plus``, ``dpt`` (ViT encoders) or ``linear``.
        label_fraction: fraction of the train tiles with labels.
        seed: seed of the init and the training order (and of the subset, unless
            ``subset_seed`` is given).
        subset_seed: seed of the labelled subset alone, so that several training seeds
            can share one subset (paired comparisons); None: ``seed``.
        lr: AdamW learning rate.
        crop: training crop side (px).
        freeze_encoder: train the decoder only.
        probe_stages: ``arch`` ``linear`` only: the encoder stages the dense linear probe
            reads, 1 (stem, output stride 2) to 5 (deepest, stride 32); None: every stage.
            ``metrics.json`` and the checkpoint record the stages a probe read.
        **budget: ``max_epochs``, ``steps_per_epoch``, ``val_every``, ``patience``,
            ``batch_size``, ``num_workers``, ``accelerator``, ``progress``, ``logger``: see
            :class:`~geocl.finetune.downstream.TrainingBudget` (defaults 15, 10, 3, 3, 8, 0,
            ``auto``, True, ``csv``). With ``logger`` tensorboard or mlflow, the options go
            to it under ``finetune.`` as params, and the test mIoU and per-class IoU at the end.

    Returns:
        A :class:`FinetuneResult`; ``out/metrics.json`` holds the same figures (strict
        JSON: ``null`` for a figure that is not a number, e.g. a class absent from the
        test tiles) and, under ``options``, every option that determines them.

    Raises:
        GeoclError: ``out`` already holds a finetuning run (see
            :func:`~geocl.finetune.downstream.check_finetune_folder`), or is no writable
            folder; a tile set without val or test tiles; a bad ``label_fraction``;
            both an encoder checkpoint and weights; ``probe_stages`` with another
            ``arch`` than ``linear``, or a stage out of 1-5; a loss that is not finite.
        TypeError: an unknown keyword argument.
    """
    settings = budget_from(budget)
    factory = SegmenterFactory(
        arch=arch,
        encoder=encoder,
        encoder_checkpoint=encoder_checkpoint,
        encoder_weights=encoder_weights,
        lr=lr,
        crop=crop,
        freeze_encoder=freeze_encoder,
        probe_stages=probe_stages,
    )
    # everything that determines the result: a folder holding a run made otherwise is named with each difference
    identity = {
        "tiles": tiles,
        "label_fraction": label_fraction,
        "seed": seed,
        "subset_seed": seed if subset_seed is None else subset_seed,
        **factory.identity(),
        **settings.trained(),
        "lr": lr,
        "crop": crop,
        "freeze_encoder": freeze_encoder,
    }
    options = DownstreamOptions(
        out=out, label_fraction=label_fraction, seed=seed, subset_seed=subset_seed, budget=settings, identity=identity
    )
    done = run_downstream(factory, TileSplits(tiles), options)
    return FinetuneResult(
        miou=done.record["miou"],
        iou=done.record["iou"],
        val_miou=done.best_score,
        checkpoint=done.checkpoint,
        out=done.out,
        train_tiles=done.record["train_tiles"],
    )
