"""``geocl pretrain``: run a recipe with Lightning into one output folder.

The training images are a tile set (``data.format: tiles``) or natural images (an
image folder or CIFAR batches, see :mod:`geocl.data.natural`); every method trains on
either, except GraSS's geo sampling and region maps, which need georeferenced tiles.

Output folder (``recipe.out``)::

    config.yaml        the resolved recipe
    checkpoints/       one checkpoint per epoch (latest kept) and last.ckpt
    logs/version_*/    Lightning CSV logs (one version per start or resume)
    plots/             loss.png, GraSS region overlays
    maps/              GraSS region maps as GeoTIFF (same grid as their tiles; tile sets only)
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
from omegaconf import DictConfig, OmegaConf

from geocl.data.natural import CifarDataset, ImageFolderDataset, open_natural_dataset
from geocl.data.tile_dataset import TileDataset
from geocl.errors import GeoclError
from geocl.io import atomic_write_text
from geocl.methods import method_class
from geocl.recipes import read_saved_recipe, save_recipe
from geocl.training.callbacks import LossCurvePlot, RegionMapWriter
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


def _check_run_folder(recipe: DictConfig, out: Path, resume: bool) -> Path | None:
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
            now = OmegaConf.to_container(recipe, resolve=True)
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


def train_dataset(recipe: DictConfig) -> TileDataset | CifarDataset | ImageFolderDataset:
    """The images a recipe trains on, as its ``data.format`` says.

    Tile sets give :class:`TileDataset`; ``image_folder`` and ``cifar`` give the
    natural-image datasets of :mod:`geocl.data.natural` (same batch contract, statistics
    of their train split).

    Raises:
        GeoclError: for a missing or unreadable data folder, or GraSS geo sampling
            asked of natural images (it draws regions from georeferenced tiles).
    """
    config = recipe.data
    if config.format == "tiles":
        return TileDataset(config.tiles, config.split, with_mask=False)
    method = recipe.method
    if method.name == "grass" and method.get("stage2_sampling") == "geo":
        raise GeoclError(
            f"stage2_sampling 'geo' draws regions from georeferenced tiles; data.format {config.format} "
            "has none: use stage2_sampling 'online'",
            key="method.stage2_sampling",
        )
    return open_natural_dataset(
        config.format, config.path, config.split, image_size=config.image_size, val_fraction=config.val_fraction
    )


def _reload_every_epoch(data: PretrainData) -> bool:
    """Whether the train loader must be rebuilt every epoch.

    ``PretrainData.reloads_every_epoch`` decides where it exists (so that any method
    whose loader changes between epochs, GraSS geo sampling or SPPS, can say so);
    otherwise only GraSS geo sampling does.
    """
    reload = getattr(data, "reloads_every_epoch", None)
    return bool(data.geo_sampling if reload is None else reload)


def build_trainer(
    recipe: DictConfig, out: Path, callbacks: list[lightning.Callback], reload_data_every_epoch: bool = False
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


def run_pretrain(recipe: DictConfig, *, resume: bool = False) -> PretrainResult:
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
    model = method_class(recipe.method.name)(recipe, images.band_count, images.metadata["band_stats"])
    data = PretrainData(recipe, images, out)
    callbacks: list[lightning.Callback] = [LossCurvePlot(out / "plots" / "loss.png")]
    if recipe.method.name == "grass" and isinstance(images, TileDataset):
        # Region maps are georeferenced rasters on the tiles' grids; natural images have none.
        callbacks.append(RegionMapWriter(images, out, count=recipe.method.map_tiles))
    trainer = build_trainer(recipe, out, callbacks, reload_data_every_epoch=_reload_every_epoch(data))
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


