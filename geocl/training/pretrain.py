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
uninterrupted one would have. Checkpoints are written atomically
(:mod:`geocl.training.checkpoint_io`); where ``last.ckpt`` is missing or unreadable
anyway (damaged, or written before that), the newest intact ``epochNNN.ckpt`` is
resumed instead and a warning says so.

What the user can fix stops the run with one :class:`GeoclError` line and leaves
every complete output as it was: a full disk or a folder that turned read-only
(naming the file and the last complete checkpoint), a recipe that differs from the
run being resumed (naming each key with its old and new value), data whose band
count changed under the run. A Ctrl-C surfaces as ``KeyboardInterrupt`` (Lightning
turns it into ``SystemExit(1)``), so the CLI can say to rerun with ``--resume``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import signal
import threading
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
from geocl.io import atomic_write_text, check_output_folder
from geocl.methods import build_method
from geocl.recipes import Recipe, read_saved_recipe, recipe_to_dict, save_recipe
from geocl.training.callbacks import LossCurvePlot, progress_callbacks
from geocl.training.checkpoint_io import (
    LAST_NAME,
    AtomicCheckpointIO,
    epoch_checkpoints,
    read_progress,
    remove_stale_temporaries,
    storage_error,
)
from geocl.training.data import PretrainData

#: Keys a resumed run may change (to extend or shorten training).
RESUMABLE_CHANGES = ("trainer",)
#: Differing keys named in one message before "and N more".
SHOWN_CHANGES = 3

log = logging.getLogger(__name__)


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
        resumed_from: the checkpoint a resumed run continued from (None for a new run).
    """

    out: Path
    checkpoint: Path
    global_step: int
    final_loss: float
    seconds: float
    is_global_zero: bool = True
    resumed_from: Path | None = None


@dataclass
class _Resume:
    """The checkpoint a resumed run continues from, and what it holds."""

    checkpoint: Path
    epoch: int
    global_step: int
    in_chans: int | None


#: A key one of two recipes lacks.
_UNSET = object()


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{dotted.key: value}``; lists and empty mappings stay values."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(_flat(value, dotted))
        else:
            flat[dotted] = value
    return flat


def _shown(value: Any) -> str:
    return "unset" if value is _UNSET else repr(value) if isinstance(value, str) else str(value)


def recipe_changes(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The keys outside :data:`RESUMABLE_CHANGES` whose values differ, as ``key was OLD, now NEW``."""
    old, new = _flat(before), _flat(now)
    keys = [key for key in dict.fromkeys([*old, *new]) if key.split(".")[0] not in RESUMABLE_CHANGES]
    return [
        f"{key} was {_shown(old.get(key, _UNSET))}, now {_shown(new.get(key, _UNSET))}"
        for key in keys
        if old.get(key, _UNSET) != new.get(key, _UNSET)
    ]


def _resume_checkpoint(out: Path) -> _Resume:
    """The newest intact checkpoint of the run in ``out``: ``last.ckpt``, else an ``epochNNN.ckpt``."""
    folder = out / "checkpoints"
    last = folder / LAST_NAME
    candidates = [path for path in [last, *epoch_checkpoints(folder)] if path.is_file()]
    if not candidates:
        raise GeoclError(f"nothing to resume: no checkpoints/{LAST_NAME} here", path=out)
    readable = {path: progress for path in candidates if (progress := read_progress(path)) is not None}
    if not readable:
        raise GeoclError(
            f"cannot resume: {' and '.join(path.name for path in candidates)} cannot be read (truncated or "
            "damaged) and no other checkpoint of the run is left; start a new run (another out, or remove this folder)",
            path=folder,
        )
    chosen = max(readable, key=lambda path: readable[path]["global_step"])  # last.ckpt first on a tie
    progress = readable[chosen]
    if chosen != last:
        why = "is missing" if not last.is_file() else "is truncated or damaged" if last not in readable else "is older"
        log.warning(
            "%s %s; resuming from %s (epoch %d, step %d), the newest intact checkpoint",
            last, why, chosen, progress["epoch"], progress["global_step"],
        )
    return _Resume(chosen, progress["epoch"], progress["global_step"], progress["in_chans"])


def holds_checkpoints(out: str | os.PathLike[str]) -> bool:
    """Whether ``out`` holds checkpoints of a run (``last.ckpt`` or an ``epochNNN.ckpt``): a
    new run there is refused, ``resume=True`` continues it."""
    folder = Path(out) / "checkpoints"
    return (folder / LAST_NAME).exists() or bool(epoch_checkpoints(folder))


def _check_run_folder(recipe: Recipe, out: Path, resume: bool) -> _Resume | None:
    """Refuse to mix runs in one folder; return the checkpoint to resume from."""
    saved = out / "config.yaml"
    if resume:
        found = _resume_checkpoint(out)
        if saved.exists():
            before = read_saved_recipe(saved)
            if before is None:
                raise GeoclError("the saved recipe of the run is no longer valid; start a new run", path=saved)
            changes = recipe_changes(before, recipe_to_dict(recipe))
            if changes:
                more = f"; and {len(changes) - SHOWN_CHANGES} more" if len(changes) > SHOWN_CHANGES else ""
                raise GeoclError(
                    f"cannot resume with a changed recipe: {'; '.join(changes[:SHOWN_CHANGES])}{more} "
                    f"(only {', '.join(k + '.*' for k in RESUMABLE_CHANGES)} may change on --resume; "
                    "put the values back, or start a new run in another out)",
                    path=saved,
                )
        return found
    if holds_checkpoints(out):
        raise GeoclError("folder holds an earlier run; pass --resume to continue it or choose another out", path=out)
    return None


def _check_resumed_data(recipe: Recipe, found: _Resume, band_count: int) -> None:
    """Refuse data whose band count is not the one the run being resumed was trained on."""
    if found.in_chans is None or int(found.in_chans) == band_count:
        return
    key = "data.tiles" if recipe.data.format == "tiles" else "data.path"
    where = recipe.data.tiles if recipe.data.format == "tiles" else recipe.data.path
    raise GeoclError(
        f"has {band_count} bands now, but the run being resumed ({found.checkpoint}) was trained on "
        f"{found.in_chans}; point {key} at the data it was trained on, or start a new run in another out",
        path=where, key=key,
    )


def _storage_failure(exc: OSError, out: Path, writer: AtomicCheckpointIO) -> GeoclError | None:
    """The one line for a storage error anywhere in a run (logs, plots, maps), else None.

    When an earlier error (a failed checkpoint write) is what set the run failing and
    this one came while Lightning wound down, the earlier one is the story.
    """
    cause: BaseException | None = exc.__context__
    while cause is not None:
        if isinstance(cause, GeoclError):
            return cause
        cause = cause.__context__
    return storage_error(exc, exc.filename, writer.last_complete, folder=out)


def _loggers(out: Path) -> list[Any]:
    """CSV logs always; TensorBoard logs too where the tensorboard package is installed."""
    loggers: list[Any] = [CSVLogger(out, name="logs")]
    if importlib.util.find_spec("tensorboard") is not None:
        loggers.append(TensorBoardLogger(out, name="tensorboard"))
    return loggers


def train_dataset(recipe: Recipe) -> Dataset[dict[str, Any]]:
    """The images a recipe trains on, as its ``data.format`` says.

    Tile sets give :class:`TileDataset` (a benchmark named by ``data.dataset`` is tiled
    into ``data.tiles`` first, see :func:`geocl.data.benchmarks.ensure_recipe_tiles`);
    ``image_folder`` and ``cifar`` give the natural-image datasets of
    :mod:`geocl.data.natural` (same batch contract, statistics of their train split);
    ``nifti`` gives the 2D slices of the split's cases
    (:func:`geocl.data.medical.nifti.open_slice_dataset`).

    Raises:
        GeoclError: for a missing or unreadable data folder.
    """
    config = recipe.data
    if config.format == "tiles":
        if config.dataset:  # a benchmark: its tile set is written on first use
            from geocl.data.benchmarks import ensure_recipe_tiles

            ensure_recipe_tiles(recipe)
        return TileDataset(config.tiles, config.split, with_mask=False)
    if config.format == "nifti":
        from geocl.data.medical.nifti import open_slice_dataset  # MONAI: only for medical recipes

        return open_slice_dataset(
            config.path, config.split, spacing=config.spacing, slice_axis=config.slice_axis,
            intensity=config.intensity, image_size=config.image_size, val_fraction=config.val_fraction,
        )
    return open_natural_dataset(
        config.format, config.path, config.split, image_size=config.image_size, val_fraction=config.val_fraction
    )


def build_trainer(
    recipe: Recipe,
    out: Path,
    callbacks: list[lightning.Callback],
    reload_data_every_epoch: bool = False,
    checkpoint_io: AtomicCheckpointIO | None = None,
    progress: bool = True,
) -> lightning.Trainer:
    """A Lightning trainer for a recipe's ``trainer`` section (``progress``: geocl's progress bar).

    Checkpoints go through ``checkpoint_io`` (a new :class:`AtomicCheckpointIO` if
    None): each file is complete or absent. A rerun of an epoch overwrites its file
    rather than adding ``-v1`` copies (``enable_version_counter=False``).
    """
    config = recipe.trainer
    checkpoints = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="epoch{epoch:03d}",
        auto_insert_metric_name=False,
        every_n_epochs=1,
        save_top_k=1,
        save_last=True,
        enable_version_counter=False,
    )
    return lightning.Trainer(
        default_root_dir=out,
        max_epochs=config.max_epochs,
        max_steps=config.max_steps,
        devices=config.devices,
        num_nodes=config.num_nodes,
        accelerator=config.accelerator,
        strategy=config.strategy,
        precision=config.precision,
        log_every_n_steps=config.log_every_n_steps,
        limit_train_batches=config.limit_train_batches,
        gradient_clip_val=config.gradient_clip_val or None,
        logger=_loggers(out),
        callbacks=[checkpoints, LearningRateMonitor(logging_interval="step"), *callbacks, *progress_callbacks(progress)],
        use_distributed_sampler=False,  # PretrainData shards with its own seeded sampler
        enable_model_summary=False,
        enable_progress_bar=progress,
        num_sanity_val_steps=0,
        reload_dataloaders_every_n_epochs=1 if reload_data_every_epoch else 0,
        plugins=[checkpoint_io or AtomicCheckpointIO()],
    )


def run_pretrain(recipe: Recipe, *, resume: bool = False, progress: bool = True) -> PretrainResult:
    """Pretrain an encoder as the recipe says.

    Args:
        recipe: a validated recipe (:func:`geocl.recipes.load_recipe`).
        resume: continue the run in ``recipe.out`` from its last checkpoint.
        progress: show the training progress bar (the final line is printed either way).

    Returns:
        A :class:`PretrainResult`.

    Raises:
        GeoclError: for bad data, a run-folder clash, a changed recipe or data on resume,
            a NaN loss, a full disk or a folder that is not writable.
        KeyboardInterrupt: on Ctrl-C (the last complete checkpoint stays).
    """
    start = time.perf_counter()
    from geocl.methods import method_class  # registered methods; imported with Lightning anyway

    method_class(str(recipe.method.name)).check_pretraining()  # before any file is written
    if resume and not Path(recipe.out).is_dir():
        raise GeoclError("nothing to resume: no such folder (given by out)", path=recipe.out, key="out")
    out = check_output_folder(recipe.out, key="out")
    found = _check_run_folder(recipe, out, resume)
    remove_stale_temporaries(out / "checkpoints")
    writer = AtomicCheckpointIO(resumed_from=found.checkpoint if found else None)
    try:
        trainer, model = _fit(recipe, out, found, writer, progress)
        return _finish(recipe, out, found, trainer, model, start)
    except OSError as exc:
        error = _storage_failure(exc, out, writer)
        if error is None:
            raise
        raise error from exc


def _fit(
    recipe: Recipe, out: Path, found: _Resume | None, writer: AtomicCheckpointIO, progress: bool = True
) -> tuple[lightning.Trainer, lightning.LightningModule]:
    save_recipe(recipe, out / "config.yaml")
    lightning.seed_everything(int(recipe.seed), workers=True, verbose=False)

    images = train_dataset(recipe)
    if found is not None:
        _check_resumed_data(recipe, found, images.band_count)
    model = build_method(recipe, images.band_count, images.metadata["band_stats"])
    model.check_train_data(images)
    data = PretrainData(
        images, out, batch_size=recipe.data.batch_size, num_workers=recipe.data.num_workers, seed=recipe.seed
    )
    callbacks: list[lightning.Callback] = [LossCurvePlot(out / "plots" / "loss.png")]
    trainer = build_trainer(
        recipe, out, callbacks, reload_data_every_epoch=model.reloads_data_every_epoch, checkpoint_io=writer,
        progress=progress,
    )
    main_thread = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        trainer.fit(model, datamodule=data, ckpt_path=found.checkpoint if found else None)
    except SystemExit as stop:
        # Lightning answers Ctrl-C by ignoring SIGINT and exiting 1; give the caller the
        # interrupt back (the CLI's "rerun with --resume", exit 130) and Ctrl-C with it
        if isinstance(stop.__context__, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        raise
    finally:
        if sigint is not None:
            signal.signal(signal.SIGINT, sigint)
    return trainer, model


def _read_metrics(path: Path) -> dict[str, Any] | None:
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) else None


def _finish(
    recipe: Recipe, out: Path, found: _Resume | None, trainer: lightning.Trainer, model: lightning.LightningModule,
    start: float,
) -> PretrainResult:
    loss = trainer.callback_metrics.get("train/loss_epoch")
    result = PretrainResult(
        out=out,
        checkpoint=out / "checkpoints" / "last.ckpt",
        global_step=trainer.global_step,
        final_loss=float(loss) if loss is not None else float("nan"),
        seconds=time.perf_counter() - start,
        is_global_zero=trainer.is_global_zero,
        resumed_from=found.checkpoint if found else None,
    )
    if found is not None and loss is None and trainer.global_step == found.global_step:
        # resuming a finished run trains nothing: its metrics.json stays the record
        previous = _read_metrics(out / "metrics.json")
        if previous is not None and previous.get("global_step") == trainer.global_step:
            loss_before = previous.get("final_loss")
            result.final_loss = float(loss_before) if isinstance(loss_before, (int, float)) else result.final_loss
            return result
    if trainer.is_global_zero:
        metrics: dict[str, Any] = {
            "method": recipe.method.name,
            "global_step": result.global_step,
            # images whose views trained the encoder (steps x batch x devices): the budget
            # to compare methods at, whatever their epoch lengths
            "samples_seen": result.global_step * recipe.data.batch_size * trainer.world_size,
            "epochs": trainer.current_epoch,
            "final_loss": result.final_loss if math.isfinite(result.final_loss) else None,  # strict JSON
            "seconds": round(result.seconds, 1),
            "checkpoint": str(result.checkpoint),
            "device": str(model.device),
        }
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1, allow_nan=False))
    return result


