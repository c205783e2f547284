"""``geocl pretrain``: run a recipe with Lightning into one output folder.

The training images are a tile set (``data.format: tiles``) or natural images (an
image folder or CIFAR batches, see :mod:`geocl.data.natural`). The loop knows no
method: what a method needs beyond the images in a seeded order (its own loader,
callbacks, a refusal of unsuitable data) it supplies through its hooks
(:class:`~geocl.methods.base.PretrainMethod`).

Output folder (``recipe.out``)::

    config.yaml        the resolved recipe
    checkpoints/       one checkpoint per epoch (latest kept) and last.ckpt
    logs/version_*/    Lightning CSV logs (one version per start or resume)
    plots/             loss.png, and the method's own pictures
    maps/              the method's georeferenced outputs (same grid as their tiles; tile sets only)
    metrics.json       final loss, steps, time

``resume=True`` continues from ``checkpoints/last.ckpt`` with Lightning's stored
optimizer, scheduler and loop state; the sampler order and the augmentations are
functions of (seed, epoch) and (seed, step), so the resumed run draws what the
uninterrupted one would have.
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import Dataset

from geocl.data.natural import open_natural_dataset
from geocl.data.tile_dataset import TileDataset
from geocl.errors import GeoclError
from geocl.io import atomic_write_text
from geocl.methods import build_method
from geocl.recipes import Recipe, read_saved_recipe, recipe_to_dict, save_recipe
from geocl.training.callbacks import LossCurvePlot
from geocl.training.data import PretrainData

#: Keys a resumed run may change (to extend or shorten training).
RESUMABLE_CHANGES = ("trainer",)


@dataclass
class PretrainResult:
    """What a pretraining run produced.

    Attributes:
        out: the run folder.
        checkpoint: the final checkpoint (``last.ckpt``).
        global_step: optimizer steps done in total.
        final_loss: mean training loss of the last epoch.
        seconds: wall time of this invocation.
        is_global_zero: whether this process is the main one (DDP runs one process per device).
    """

    out: Path
    checkpoint: Path
    global_step: int
    final_loss: float
    seconds: float
    is_global_zero: bool = True


def _check_run_folder(recipe: Recipe, out: Path, resume: bool) -> Path | None:
    """Refuse to mix runs in one folder; return the checkpoint to resume from."""
    saved = out / "config.yaml"
    last = out / "checkpoints" / "last.ckpt"
    if resume:
        if not last.exists():
            raise GeoclError("nothing to resume: no checkpoints/last.ckpt here", path=out)
        if saved.exists():
            before = read_saved_recipe(saved)
            if before is None:
                raise GeoclError("the saved recipe of the run is no longer valid; start a new run", path=saved)
            now = recipe_to_dict(recipe)
            for key in set(before) | set(now):
                if key not in RESUMABLE_CHANGES and before.get(key) != now.get(key):
                    raise GeoclError(
                        f"recipe differs from the run being resumed in {key!r} (see {saved})", key=key
                    )
        return last
    if last.exists():
        raise GeoclError("folder holds an earlier run; pass --resume to continue it or choose another out", path=out)
    return None


def _loggers(out: Path) -> list[Any]:
    """CSV logs always; TensorBoard logs too where the tensorboard package is installed."""
    loggers: list[Any] = [CSVLogger(out, name="logs")]
    if importlib.util.find_spec("tensorboard") is not None:
        loggers.append(TensorBoardLogger(out, name="tensorboard"))
    return loggers


def train_dataset(recipe: Recipe) -> Dataset[dict[str, Any]]:
    """The images a recipe trains on, as its ``data.format`` says.

    Tile sets give :class:`TileDataset`; ``image_folder`` and ``cifar`` give the
    natural-image datasets of :mod:`geocl.data.natural` (same batch contract, statistics
    of their train split).

    Raises:
        GeoclError: for a missing or unreadable data folder.
    """
    config = recipe.data
    if config.format == "tiles":
        return TileDataset(config.tiles, config.split, with_mask=False)
    return open_natural_dataset(
        config.format, config.path, config.split, image_size=config.image_size, val_fraction=config.val_fraction
    )


def build_trainer(
    recipe: Recipe, out: Path, callbacks: list[lightning.Callback], reload_data_every_epoch: bool = False
) -> lightning.Trainer:
    """A Lightning trainer for a recipe's ``trainer`` section."""
    config = recipe.trainer
    checkpoints = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="epoch{epoch:03d}",
        auto_insert_metric_name=False,
        every_n_epochs=1,
        save_top_k=1,
        save_last=True,
    )
    return lightning.Trainer(
        default_root_dir=out,
        max_epochs=config.max_epochs,
        max_steps=config.max_steps,
        devices=config.devices,
        accelerator=config.accelerator,
        strategy=config.strategy,
        precision=config.precision,
        log_every_n_steps=config.log_every_n_steps,
        limit_train_batches=config.limit_train_batches,
        gradient_clip_val=config.gradient_clip_val or None,
        logger=_loggers(out),
        callbacks=[checkpoints, LearningRateMonitor(logging_interval="step"), *callbacks],
        use_distributed_sampler=False,  # PretrainData shards with its own seeded sampler
        enable_model_summary=False,
        num_sanity_val_steps=0,
        reload_dataloaders_every_n_epochs=1 if reload_data_every_epoch else 0,
    )


def run_pretrain(recipe: Recipe, *, resume: bool = False) -> PretrainResult:
    """Pretrain an encoder as the recipe says.

    Args:
        recipe: a validated recipe (:func:`geocl.recipes.load_recipe`).
        resume: continue the run in ``recipe.out`` from its last checkpoint.

    Returns:
        A :class:`PretrainResult`.

    Raises:
        GeoclError: for bad data, a run-folder clash, or a NaN loss.
    """
    start = time.perf_counter()
    out = Path(recipe.out)
    ckpt_path = _check_run_folder(recipe, out, resume)
    out.mkdir(parents=True, exist_ok=True)
    save_recipe(recipe, out / "config.yaml")
    lightning.seed_everything(int(recipe.seed), workers=True, verbose=False)

    images = train_dataset(recipe)
    model = build_method(recipe, images.band_count, images.metadata["band_stats"])
    model.check_train_data(images)
    data = PretrainData(
        images, out, batch_size=recipe.data.batch_size, num_workers=recipe.data.num_workers, seed=recipe.seed
    )
    callbacks: list[lightning.Callback] = [LossCurvePlot(out / "plots" / "loss.png")]
    trainer = build_trainer(recipe, out, callbacks, reload_data_every_epoch=model.reloads_data_every_epoch)
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)

    loss = trainer.callback_metrics.get("train/loss_epoch")
    result = PretrainResult(
        out=out,
        checkpoint=out / "checkpoints" / "last.ckpt",
        global_step=trainer.global_step,
        final_loss=float(loss) if loss is not None else float("nan"),
        seconds=time.perf_counter() - start,
        is_global_zero=trainer.is_global_zero,
    )
    if trainer.is_global_zero:
        metrics: dict[str, Any] = {
            "method": recipe.method.name,
            "global_step": result.global_step,
            "epochs": trainer.current_epoch,
            "final_loss": result.final_loss,
            "seconds": round(result.seconds, 1),
            "checkpoint": str(result.checkpoint),
            "device": str(model.device),
        }
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1))
    return result


