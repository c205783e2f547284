"""``geocl finetune``: segmentation with few labels, judged by mIoU on the held-out split.

The encoder of an smp model starts from a pretrain checkpoint (any method) or from
random init; the model trains on a deterministic subset of the train tiles (a
fraction, drawn with the seed), stops early on val mIoU, and the best checkpoint is
evaluated on the test tiles, which lie in other spatial blocks than the train tiles.
Nodata pixels are ignored (``IGNORE_INDEX``) in the loss and in the metric.

Readings where the GraSS spec leaves the protocol open (A4): full finetuning by
default (``freeze_encoder`` trains the decoder only, as FALSE's config does);
random 128 px crops, flips and quarter turns of the labelled tiles for training.

One run a folder: ``out`` must not hold an earlier finetuning run (its ``metrics.json``
or a checkpoint), since a second run would put its model beside the old one
(``best-v1.ckpt``) and its figures over the old ones, and ``best.ckpt`` would no longer
be the model ``metrics.json`` describes. :func:`run_finetune` refuses such a folder
before any work, naming each option that differs from the run found there; for that,
``metrics.json`` records under ``options`` every option that determines the result,
the encoder checkpoint by its resolved path and the SHA-256 of its bytes (a path may hold
another pretraining since). ``geocl compare`` moves the folder of a run it must redo
aside first. ``metrics.json`` is strict JSON: a figure that is not a finite number is ``null``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader, RandomSampler, Subset

from geocl.data.tile_dataset import IGNORE_INDEX, TileDataset
from geocl.errors import GeoclError
from geocl.finetune.metrics import segmentation_metric, summarize_iou
from geocl.finetune.model import (  # SEGMENTER_KEY: imported from here by predict and compare
    SEGMENTER_KEY,
    build_segmenter,
    checkpoint_fingerprint,
    load_encoder_weights,
    load_pretrained_encoder,
    read_pretrain_checkpoint,
)
from geocl.io import atomic_write_text, check_output_folder
from geocl.training.callbacks import progress_callbacks
from geocl.training.checkpoint_io import AtomicCheckpointIO
from geocl.training.loggers import LoggerKind, check_logger, experiment_loggers, log_final_metrics


class SegmentationModule(lightning.LightningModule):
    """An smp segmenter trained with cross-entropy and validated by mIoU.

    Args:
        arch: ``unet`` or ``deeplabv3plus``.
        encoder: timm encoder name.
        in_chans: input bands.
        num_classes: classes.
        lr: AdamW learning rate.
        crop: side of random training crops (px).
        freeze_encoder: train the decoder only.
        meta: stored in checkpoints (classes, band statistics, ...).
    """

    def __init__(
        self, arch: str, encoder: str, in_chans: int, num_classes: int, lr: float = 1e-3,
        crop: int = 128, freeze_encoder: bool = False, meta: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # channels-last convolutions: about 10 % faster training steps of a Unet-ResNet-18
        # on 2 CPU cores (oneDNN's preferred layout), same results
        self.model = build_segmenter(arch, encoder, in_chans, num_classes).to(memory_format=torch.channels_last)
        self.criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
        self.val_metric = segmentation_metric(num_classes)
        self.test_metric = segmentation_metric(num_classes)
        self.meta = meta or {}

    def forward(self, images: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> logits ``[B, K, H, W]``."""
        return self.model(images.contiguous(memory_format=torch.channels_last))

    def _augment(self, images: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        size = self.hparams.crop
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
        if self.hparams.freeze_encoder:
            self.model.encoder.requires_grad_(False)
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=1e-4)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[SEGMENTER_KEY] = self.meta


def finetune_trainer(
    out: Path,
    *,
    max_epochs: int,
    val_every: int,
    accelerator: str,
    monitor: str | None = "val/miou",
    patience: int | None = None,
    progress: bool = True,
    log_every_n_steps: int = 5,
    logger: LoggerKind = "csv",
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
) -> lightning.Trainer:
    """The Lightning trainer of every finetuning run (tiles, slices, volumes, semi-supervised).

    Args:
        out: the run folder: ``checkpoints/best.ckpt``, the CSV log under ``logs/`` and
            the other logger's files (:mod:`geocl.training.loggers`).
        max_epochs: training epochs.
        val_every: validate every this many epochs (at least once, at the end).
        accelerator: Lightning accelerator.
        monitor: the validation score (higher is better) that picks ``best.ckpt``; None
            when the run does not validate (no checkpoint is written by the trainer).
        patience: stop after this many validations without improvement; None never stops.
        progress: show geocl's progress bar.
        log_every_n_steps: log interval, in optimizer steps.
        logger: the logger beside CSV: ``csv`` (none), ``tensorboard`` or ``mlflow``
            (:func:`geocl.training.loggers.experiment_loggers`; under ``geocl compare`` the
            row's recipe decides).
        params: the run's parameters for that logger (e.g. its options).
        tags: the run's tags for that logger (``geocl.run`` defaults to ``finetune``).

    Returns:
        The trainer; ``trainer.checkpoint_callback`` holds ``best`` when ``monitor`` is set.
        Its checkpoints are written atomically and read back with ``weights_only=True``
        (:class:`~geocl.training.checkpoint_io.AtomicCheckpointIO`).
    """
    callbacks = progress_callbacks(progress)
    if monitor is not None:
        callbacks.append(
            ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor=monitor, mode="max", save_top_k=1)
        )
        if patience is not None:
            callbacks.append(EarlyStopping(monitor=monitor, mode="max", patience=patience))
    return lightning.Trainer(
        default_root_dir=out, max_epochs=max_epochs, accelerator=accelerator, devices=1,
        check_val_every_n_epoch=max(1, min(val_every, max_epochs)),
        logger=experiment_loggers(out, logger, params=params, tags={"geocl.run": "finetune", **dict(tags or {})}),
        callbacks=callbacks, enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
        log_every_n_steps=log_every_n_steps, enable_checkpointing=monitor is not None,
        plugins=[AtomicCheckpointIO(resumable=False)],
    )


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


#: What marks a folder as holding a finetuning run (besides ``checkpoints/*.ckpt``).
RESULT_FILE = "metrics.json"
#: Where ``metrics.json`` records every option that determines a run's result (see :func:`check_finetune_folder`).
OPTIONS_KEY = "options"
#: The SHA-256 of the encoder checkpoint's bytes, recorded with the options: the same path may
#: hold another pretraining since.
FINGERPRINT_KEY = "encoder_checkpoint_sha256"
#: Options named in words in the refusal (their keys read badly there).
_SHOWN_NAMES = {"encoder_checkpoint": "encoder checkpoint", FINGERPRINT_KEY: "encoder checkpoint content"}
#: A key the run found there did not record.
_UNRECORDED = object()


def check_finetune_folder(out: str | Path, options: dict[str, Any] | None = None) -> Path:
    """Make sure ``out`` can take a new finetuning run, before any work (created when missing).

    Args:
        out: the run folder (the ``out`` option).
        options: the new run's options (e.g. ``label_fraction``, ``seed``, ``encoder``
            or ``encoder_checkpoint``, ``arch``, ``lr``), to say which of them differ from
            the run found there. An ``encoder_checkpoint`` is compared by its resolved path
            and by the SHA-256 of its content; ``encoder`` without ``encoder_checkpoint``
            means a random init, which differs from a run that started from a checkpoint.

    Raises:
        GeoclError: ``out`` (key ``out``) is a file or not writable, or holds a
            finetuning run: ``metrics.json`` or any ``checkpoints/*.ckpt``, finished
            or not. Its files are left untouched. The message names each option that
            differs (``lr 0.001 (now 0.01)``), or each one the old run did not record;
            it says "the same options" only when every option given was recorded and is equal.
    """
    out = check_output_folder(out, key="out")
    held = [RESULT_FILE] if (out / RESULT_FILE).exists() else []
    held += sorted(path.relative_to(out).as_posix() for path in (out / "checkpoints").glob("*.ckpt"))
    if not held:
        return out
    differs = _differing_options(out / RESULT_FILE, options or {})
    raise GeoclError(
        f"holds a finetuning run ({', '.join(held)}){differs}; a new run there would mix its model and "
        "figures with the old ones: choose another out, or delete the folder to redo the run",
        path=out,
        key="out",
    )


def _resolved(path: str | Path | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def recorded_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options of a run as ``metrics.json`` records them under :data:`OPTIONS_KEY`.

    Paths resolved, ``subset_seed`` None replaced by the seed, a random init recorded as
    ``encoder_checkpoint: None``, and an encoder checkpoint's content as its SHA-256
    (:data:`FINGERPRINT_KEY`). :func:`check_finetune_folder` compares the new run's
    options in this form with those recorded.
    """
    compared = dict(options)
    if compared.get("subset_seed") is None and "seed" in compared:
        compared["subset_seed"] = compared["seed"]  # None: the subset is drawn with the seed
    if "encoder_checkpoint" not in compared and "encoder" in compared:
        compared["encoder_checkpoint"] = None  # a random init
    if compared.get("encoder_checkpoint") is not None:
        compared[FINGERPRINT_KEY] = checkpoint_fingerprint(compared["encoder_checkpoint"])
        compared.pop("encoder", None)  # a checkpoint brings its own
    for key in ("encoder_checkpoint", "tiles"):
        if compared.get(key) is not None:
            compared[key] = _resolved(compared[key])
    return compared


def _recorded(before: dict[str, Any], key: str) -> Any:
    """An option of the run found in the folder: from its options record, else the top level."""
    options = before.get(OPTIONS_KEY)
    if isinstance(options, dict) and key in options:
        return options[key]
    if key not in before:
        return _UNRECORDED
    value = before[key]
    # runs that recorded only the top level wrote the encoder checkpoint as it was given
    return _resolved(value) if key in ("encoder_checkpoint", "tiles") and isinstance(value, str) else value


def _shown(key: str, value: Any) -> str:
    if key == "encoder_checkpoint" and value is None:
        return "none (random init)"
    if key == FINGERPRINT_KEY and isinstance(value, str):
        return f"sha256 {value[:12]}"
    return str(value)


def _same(old: Any, new: Any) -> bool:
    """Equal as recorded in JSON (``1`` and ``1.0`` alike, but ``True`` not ``1``)."""
    if isinstance(old, bool) or isinstance(new, bool):
        return old is new
    return bool(old == new)


def _differing_options(metrics: Path, options: dict[str, Any]) -> str:
    """``" made with other options: seed 0 (now 1)"``, ``" made with the same options"`` or ``""``."""
    try:
        before = json.loads(metrics.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    if not isinstance(before, dict) or not options:
        return ""
    now = recorded_options(options)
    changed, unrecorded = [], []
    for key, value in now.items():
        old = _recorded(before, key)
        name = _SHOWN_NAMES.get(key, key)
        if old is _UNRECORDED:
            unrecorded.append(name)
        elif not _same(old, value):
            changed.append(f"{name} {_shown(key, old)} (now {_shown(key, value)})")
    if changed:
        return f" made with other options: {', '.join(changed)}"
    if unrecorded:
        return f" made with the same recorded options; it does not record {', '.join(unrecorded)}"
    return " made with the same options"


def _strict_json(value: Any) -> Any:
    """``value`` with every float that is not finite (NaN, inf) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(item) for item in value]
    return value


def write_result(out: Path, record: dict[str, Any]) -> None:
    """Write a finished run's :data:`RESULT_FILE` atomically, last: strict JSON (NaN and inf as null).

    Every downstream training writes its result through here, so ``geocl compare`` reads
    one format and a file that exists marks a finished run.
    """
    atomic_write_text(out / RESULT_FILE, json.dumps(_strict_json(record), indent=1, allow_nan=False))


def label_subset(count: int, fraction: float, seed: int) -> np.ndarray:
    """Deterministic subset of ``count`` train tiles of the given fraction (at least one)."""
    if not 0.0 < fraction <= 1.0:
        raise GeoclError(f"must be in (0, 1], got {fraction}", key="label_fraction")
    keep = max(1, math.ceil(fraction * count))
    return np.sort(np.random.default_rng(seed).permutation(count)[:keep])


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
    max_epochs: int = 15,
    steps_per_epoch: int = 10,
    val_every: int = 3,
    patience: int = 3,
    batch_size: int = 8,
    lr: float = 1e-3,
    crop: int = 128,
    freeze_encoder: bool = False,
    num_workers: int = 0,
    accelerator: str = "auto",
    progress: bool = True,
    logger: LoggerKind = "csv",
) -> FinetuneResult:
    """Finetune a segmenter on a fraction of the labelled train tiles; mIoU on the test tiles.

    Args:
        tiles: a tile set with masks (``geocl tile --mask``).
        out: run folder (checkpoints/, logs/, metrics.json).
        encoder_checkpoint: a geocl pretrain checkpoint, or None for random init.
        encoder_weights: without a checkpoint, the weights ``encoder`` starts from: a
            TorchGeo weights name, a timm pretrained tag or a file, read offline and
            fitted to the band count (:mod:`geocl.models.weights`); '' = random init.
        encoder: encoder name for random init (a checkpoint brings its own).
        arch: ``unet`` (default) or ``deeplabv3plus``.
        label_fraction: fraction of the train tiles with labels.
        seed: seed of the init and the training order (and of the subset, unless
            ``subset_seed`` is given).
        subset_seed: seed of the labelled subset alone, so that several training seeds
            can share one subset (paired comparisons); None: ``seed``.
        max_epochs: epochs of ``steps_per_epoch`` steps (the subset is drawn with
            replacement, so every fraction gets the same number of steps).
        steps_per_epoch: optimizer steps per epoch.
        val_every: epochs between validations; when it exceeds ``max_epochs`` the one
            validation runs after the last epoch (a run is always validated, so
            ``best.ckpt`` and ``val_miou`` exist).
        patience: validations without val-mIoU gain before stopping.
        batch_size: tiles per step.
        lr: AdamW learning rate.
        crop: training crop side (px).
        freeze_encoder: train the decoder only.
        num_workers: DataLoader workers.
        accelerator: Lightning accelerator.
        progress: show geocl's training progress bar.
        logger: the experiment logger beside the CSV log: ``csv``, ``tensorboard`` or
            ``mlflow`` (:mod:`geocl.training.loggers`: the options under ``finetune.`` as
            params, the test mIoU and per-class IoU logged at the end); under ``geocl
            compare`` the row's recipe decides instead.

    Returns:
        A :class:`FinetuneResult`; ``out/metrics.json`` holds the same figures (strict
        JSON: ``null`` for a figure that is not a number, e.g. a class absent from the
        test tiles).

    Raises:
        GeoclError: ``out`` already holds a finetuning run (see
            :func:`check_finetune_folder`), or is no writable folder; a tile set
            without val or test tiles; a bad ``label_fraction``; a loss that is not finite.
    """
    start = time.perf_counter()
    # everything that determines the result: a folder holding a run made otherwise is named with each difference
    options: dict[str, Any] = {
        "tiles": tiles, "label_fraction": label_fraction, "seed": seed,
        "subset_seed": seed if subset_seed is None else subset_seed, "arch": arch,
        **({"encoder_checkpoint": encoder_checkpoint} if encoder_checkpoint is not None else {"encoder": encoder}),
        **({"encoder_weights": encoder_weights} if encoder_weights else {}),
        "max_epochs": max_epochs, "steps_per_epoch": steps_per_epoch, "val_every": val_every, "patience": patience,
        "batch_size": batch_size, "lr": lr, "crop": crop, "freeze_encoder": freeze_encoder,
    }
    check_logger(logger, key="logger")
    if encoder_weights and encoder_checkpoint is not None:
        raise GeoclError("give an encoder checkpoint or encoder weights, not both", key="encoder_weights")
    out = check_finetune_folder(out, options)
    recorded = recorded_options(options)  # paths resolved, the checkpoint's content fingerprinted
    lightning.seed_everything(seed, workers=True, verbose=False)
    train_all = TileDataset(tiles, "train", with_mask=True, progress=progress)
    val = TileDataset(tiles, "val", with_mask=True, progress=False)
    test = TileDataset(tiles, "test", with_mask=True, progress=False)
    if len(val) == 0 or len(test) == 0:
        raise GeoclError("tile set has no val or test tiles; tile with more split blocks", path=tiles)
    subset = label_subset(len(train_all), label_fraction, seed if subset_seed is None else subset_seed)
    meta: dict[str, Any] = {
        "arch": arch,
        "in_chans": train_all.band_count,
        "classes": train_all.classes,
        "band_stats": train_all.metadata["band_stats"],
        "nodata": train_all.metadata["nodata"],
        "tile_size": train_all.tile_size,
        "encoder_checkpoint": str(encoder_checkpoint) if encoder_checkpoint else None,
    }
    pretrained = read_pretrain_checkpoint(encoder_checkpoint) if encoder_checkpoint is not None else None
    if pretrained is not None:
        encoder = pretrained["meta"]["encoder"]
    meta["encoder"] = encoder
    module = SegmentationModule(
        arch, encoder, train_all.band_count, len(train_all.classes), lr=lr, crop=crop,
        freeze_encoder=freeze_encoder, meta=meta,
    )
    if pretrained is not None:
        load_pretrained_encoder(module.model, encoder_checkpoint, train_all.band_count, loaded=pretrained)
        meta["pretrain_method"] = pretrained["meta"].get("method")
    if encoder_weights:
        meta["starting_weights"] = load_encoder_weights(module.model, encoder_weights, encoder, train_all.band_count)

    sampler = RandomSampler(
        Subset(train_all, subset.tolist()), replacement=True, num_samples=steps_per_epoch * batch_size,
        generator=torch.Generator().manual_seed(seed),
    )
    loaders = {
        "train": DataLoader(Subset(train_all, subset.tolist()), batch_size=batch_size, sampler=sampler, num_workers=num_workers),
        "val": DataLoader(val, batch_size=batch_size, num_workers=num_workers),
        "test": DataLoader(test, batch_size=batch_size, num_workers=num_workers),
    }
    trainer = finetune_trainer(
        out, max_epochs=max_epochs, val_every=val_every, accelerator=accelerator, patience=patience, progress=progress,
        logger=logger, params={f"finetune.{key}": value for key, value in recorded.items()},
    )
    best = trainer.checkpoint_callback
    assert isinstance(best, ModelCheckpoint)  # monitor is set
    trainer.fit(module, loaders["train"], loaders["val"])
    checkpoint = Path(best.best_model_path) if best.best_model_path else out / "checkpoints" / "last.ckpt"
    if not best.best_model_path:
        trainer.save_checkpoint(checkpoint)
    trainer.test(module, loaders["test"], ckpt_path=str(checkpoint), verbose=False, weights_only=True)
    summary = summarize_iou(module.test_metric.compute())
    log_final_metrics(trainer.loggers, {
        "test/miou": float(summary["miou"]),
        **{f"test/iou_{name}": float(value) for name, value in zip(train_all.classes, summary["iou"], strict=True)},
    }, step=trainer.global_step)
    result = FinetuneResult(
        miou=float(summary["miou"]),
        iou=[float(value) for value in summary["iou"]],
        val_miou=float(best.best_model_score) if best.best_model_score is not None else float("nan"),
        checkpoint=checkpoint,
        out=out,
        train_tiles=len(subset),
    )
    metrics = {
        "miou": result.miou, "iou": result.iou, "val_miou": result.val_miou, "classes": train_all.classes,
        "label_fraction": label_fraction, "seed": seed, "subset_seed": seed if subset_seed is None else subset_seed,
        "train_tiles": result.train_tiles,
        "encoder": encoder, "encoder_checkpoint": meta["encoder_checkpoint"], "arch": arch,
        "encoder_weights": encoder_weights or None,
        "checkpoint": str(checkpoint), "seconds": round(time.perf_counter() - start, 1),
        OPTIONS_KEY: recorded,
    }
    # strict JSON (allow_nan=False): a class absent from the test tiles is null, not NaN
    write_result(out, metrics)
    return result
