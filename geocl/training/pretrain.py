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
    tensorboard/       with trainer.logger tensorboard: TensorBoard events (one version per start)
    mlruns/            with trainer.logger mlflow and no MLFLOW_TRACKING_URI: the MLflow file store
                       (one run per start; see geocl.training.loggers)
    plots/             loss.png (with the representation monitor's curve), and the method's own pictures
    maps/              the method's georeferenced outputs (same grid as their tiles; tile sets only)
    box_statistics.csv GraSS on tiles with masks: its final boxes' area and purity (geocl.methods.grass_boxes)
    metrics.json       final loss, steps, time (and the monitor's time and scores)

Tile sets with labelled val tiles get the online representation monitor (recipe section
``monitor``, :mod:`geocl.training.monitor`): a kNN segmentation probe of the frozen
encoder at step 0, every ``monitor.every_n_steps`` steps and at the last step, logged,
plotted and shown on the bar; it leaves the training bit for bit as it was.

``resume=True`` continues from the newest intact checkpoint of the run, normally
``checkpoints/last.ckpt``, with Lightning's stored optimizer, scheduler and loop state;
the sampler order and the augmentations are functions of (seed, epoch) and (seed, step),
so the resumed run draws what the uninterrupted one would have. Checkpoints are written
atomically (:mod:`geocl.training.checkpoint_io`); where ``last.ckpt`` is missing, older
than another checkpoint (a SIGKILL between writing ``epochNNN.ckpt`` and ``last.ckpt``)
or unreadable (damaged, or written before that), the newest intact checkpoint is resumed
instead and a warning says so. Every run, resumed or not, ends with a ``last.ckpt`` that
is its newest checkpoint, and with its final loss: that of the epochs it trained, or,
when the resumed checkpoint was the run's last epoch and nothing was left to train, the
loss stored in that checkpoint (:class:`~geocl.training.callbacks.EpochLoss`), else the
one ``metrics.json`` or the CSV logs recorded. Checkpoints are read with
``weights_only=True`` (nothing in them is unpickled), Lightning's resume included.

What the user can fix stops the run with one :class:`GeoclError` line and leaves
every complete output as it was. A recipe that the data or the method refuses before
training writes nothing: ``config.yaml`` is saved once the method is built, and the
folders the run created are removed again. The other failures it names: a full disk
or a folder that turned read-only (naming the file and the last complete checkpoint),
a recipe that differs from the run being resumed (naming each key with its old and new
value), data whose band count changed under the run. A Ctrl-C surfaces as
``KeyboardInterrupt`` (Lightning turns it into ``SystemExit(1)``), so the CLI can say to
rerun with ``--resume``.
"""

from __future__ import annotations

import csv
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
from lightning.pytorch.callbacks import LearningRateMonitor
from torch.utils.data import Dataset

from geocl.data.natural import open_natural_dataset
from geocl.data.tile_dataset import TileDataset
from geocl.errors import GeoclError
from geocl.io import atomic_write_text, output_folder
from geocl.methods import PretrainMethod, build_method, read_saved_recipe
from geocl.models.checkpoints import snapshot_path
from geocl.recipes import Recipe, recipe_to_dict, save_recipe
from geocl.training.callbacks import (
    EpochLoss,
    LossCurvePlot,
    PacedCheckpoint,
    StepSnapshots,
    progress_callbacks,
    trainer_callbacks,
)
from geocl.training.checkpoint_io import (
    LAST_NAME,
    AtomicCheckpointIO,
    checkpoint_progress,
    remove_stale_temporaries,
    restore_last,
    run_checkpoints,
    storage_error,
)
from geocl.training.data import PretrainData
from geocl.training.loggers import check_logger, experiment_loggers, flat_keys
from geocl.training.monitor import RepresentationMonitor, build_monitor
from geocl.transforms.augment import crop_scale_mismatch

#: Keys a resumed run may change: ``trainer`` to extend or shorten training, ``monitor``
#: because it changes nothing the run trains.
RESUMABLE_CHANGES = ("trainer", "monitor")
#: Keys that never tell two runs apart: a run folder moved or copied is still the same run.
LOCATION_KEYS = ("out",)
#: Differing keys named in one message before "and N more".
SHOWN_CHANGES = 3

log = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    """What a pretraining run produced.

    Attributes:
        out: the run folder.
        checkpoint: the final checkpoint (``last.ckpt``, which exists when the run returns).
        global_step: optimizer steps done in total.
        final_loss: mean training loss of the last epoch (NaN only when no record of it is
            left: a run of an older geocl whose logs are gone).
        seconds: wall time of this invocation.
        is_global_zero: whether this process is the main one (DDP runs one process per device).
        resumed_from: the checkpoint a resumed run continued from (None for a new run).
        findings: lines for people on what the run's outputs show, from its method
            (:meth:`~geocl.methods.base.PretrainMethod.run_findings`); main process only.
    """

    out: Path
    checkpoint: Path
    global_step: int
    final_loss: float
    seconds: float
    is_global_zero: bool = True
    resumed_from: Path | None = None
    findings: tuple[str, ...] = ()


@dataclass
class _Resume:
    """The checkpoint a resumed run continues from, and what it holds."""

    checkpoint: Path
    epoch: int
    global_step: int
    in_chans: int | None


#: A key one of two recipes lacks.
_UNSET = object()


def _shown(value: Any) -> str:
    return "unset" if value is _UNSET else repr(value) if isinstance(value, str) else str(value)


def recipe_changes(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The keys outside :data:`RESUMABLE_CHANGES`, :data:`LOCATION_KEYS` that differ: ``key was OLD, now NEW``."""
    old, new = flat_keys(before), flat_keys(now)
    ignored = (*RESUMABLE_CHANGES, *LOCATION_KEYS)
    keys = [key for key in dict.fromkeys([*old, *new]) if key.split(".")[0] not in ignored]
    return [
        f"{key} was {_shown(old.get(key, _UNSET))}, now {_shown(new.get(key, _UNSET))}"
        for key in keys
        if old.get(key, _UNSET) != new.get(key, _UNSET)
    ]


def _resume_checkpoint(out: Path) -> _Resume:
    """The newest intact checkpoint of the run in ``out``, whatever its name (``last.ckpt`` on a tie)."""
    folder = out / "checkpoints"
    last = folder / LAST_NAME
    candidates = run_checkpoints(folder)
    if not candidates:
        raise GeoclError(f"nothing to resume: no checkpoints/{LAST_NAME} here", path=out)
    readable: dict[Path, dict[str, Any]] = {}
    unreadable: dict[Path, str] = {}
    for path in candidates:
        try:
            readable[path] = checkpoint_progress(path)
        except GeoclError as error:
            unreadable[path] = str(error).removeprefix(f"{path}: ")
    if not readable:
        why = "; ".join(f"{path.name} {reason}" for path, reason in unreadable.items())
        raise GeoclError(
            f"cannot resume: {why}; and no other checkpoint of the run is left; start a new run "
            "(another out, or remove this folder)",
            path=folder,
        )
    chosen = max(readable, key=lambda path: readable[path]["global_step"])  # the first of the order on a tie
    progress = readable[chosen]
    for path, reason in unreadable.items():
        if path != last:
            log.warning("%s %s; not resumed from", path, reason)
    if chosen != last:
        why = "is missing" if not last.is_file() else unreadable.get(last, "is older")
        log.warning(
            "%s %s; resuming from %s (epoch %d, step %d), the newest intact checkpoint",
            last,
            why,
            chosen,
            progress["epoch"],
            progress["global_step"],
        )
    return _Resume(chosen, progress["epoch"], progress["global_step"], progress["in_chans"])


def holds_checkpoints(out: str | os.PathLike[str]) -> bool:
    """Whether ``out`` holds checkpoints of a run (``last.ckpt``, an ``epochNNN.ckpt`` or any
    other ``*.ckpt``): a new run there is refused, ``resume=True`` continues it."""
    return bool(run_checkpoints(Path(out) / "checkpoints"))


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
        path=where,
        key=key,
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


def _loggers(recipe: Recipe, out: Path, resumed_from: Path | None = None) -> list[Any]:
    """The run's loggers (:mod:`geocl.training.loggers`): the CSV log, and ``trainer.logger``'s beside it.

    Params: the recipe flattened under ``recipe.``; tags: the run's recipe and method,
    and the checkpoint a resumed run continues from (each start is a run of its own, as
    each is a CSV version).
    """
    params = {f"recipe.{key}": value for key, value in flat_keys(recipe_to_dict(recipe)).items()}
    tags = {"geocl.run": "pretrain", "recipe": recipe.name, "method": recipe.method.name}
    if resumed_from is not None:
        tags["resumed_from"] = resumed_from.name
    return experiment_loggers(out, recipe.trainer.logger, params=params, tags=tags)


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
            config.path,
            config.split,
            spacing=config.spacing,
            slice_axis=config.slice_axis,
            intensity=config.intensity,
            image_size=config.image_size,
            val_fraction=config.val_fraction,
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
    resumed_from: Path | None = None,
) -> lightning.Trainer:
    """A Lightning trainer for a recipe's ``trainer`` section (``progress``: geocl's progress bar).

    Its loggers: the CSV log and the one ``trainer.logger`` names (:func:`_loggers`;
    ``resumed_from``: the checkpoint a resumed run continues from, a tag).

    Checkpoints go through ``checkpoint_io`` (a new :class:`AtomicCheckpointIO` if
    None): each file is complete or absent. A rerun of an epoch overwrites its file
    rather than adding ``-v1`` copies (``enable_version_counter=False``).
    """
    config = recipe.trainer
    checkpoints = PacedCheckpoint(
        every_s=config.checkpoint_every_s,
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
        logger=_loggers(recipe, out, resumed_from),
        callbacks=[
            checkpoints,
            LearningRateMonitor(logging_interval="step"),
            *callbacks,
            *progress_callbacks(progress),
        ],
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
        recipe: a validated recipe (:func:`geocl.methods.load_recipe`).
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
    check_logger(recipe.trainer.logger)  # its package installed
    if resume and not Path(recipe.out).is_dir():
        raise GeoclError("nothing to resume: no such folder (given by out)", path=recipe.out, key="out")
    with output_folder(recipe.out, key="out") as out:  # a refused recipe leaves no empty folder
        found = _check_run_folder(recipe, out, resume)
        remove_stale_temporaries(out / "checkpoints")
        writer = AtomicCheckpointIO(resumed_from=found.checkpoint if found else None)
        try:
            trainer, model = _fit(recipe, out, found, writer, progress)
            return _finish(recipe, out, found, trainer, model, writer, start)
        except OSError as exc:
            error = _storage_failure(exc, out, writer)
            if error is None:
                raise
            raise error from exc


def _fit(
    recipe: Recipe, out: Path, found: _Resume | None, writer: AtomicCheckpointIO, progress: bool = True
) -> tuple[lightning.Trainer, lightning.LightningModule]:
    lightning.seed_everything(int(recipe.seed), workers=True, verbose=False)

    images: Any = train_dataset(recipe)  # each kind of train data has band_count and metadata
    if isinstance(images, TileDataset):
        mismatch = crop_scale_mismatch(
            images.tile_size, recipe.data.view_size, (recipe.augment.scale[0], recipe.augment.scale[1])
        )
        if mismatch is not None:
            log.warning("%s", mismatch)
    if found is not None:
        _check_resumed_data(recipe, found, images.band_count)
    model = build_method(recipe, images.band_count, images.metadata["band_stats"])
    model.check_train_data(images)
    # only now, so that a recipe the data or the method refuses leaves no config.yaml behind
    save_recipe(recipe, out / "config.yaml")
    data = PretrainData(
        images, out, batch_size=recipe.data.batch_size, num_workers=recipe.data.num_workers, seed=recipe.seed
    )
    callbacks: list[lightning.Callback] = [LossCurvePlot(out / "plots" / "loss.png"), EpochLoss()]
    if recipe.trainer.snapshot_steps:
        callbacks.append(StepSnapshots(out / "snapshots", list(recipe.trainer.snapshot_steps)))
    monitor = build_monitor(recipe)
    if monitor is not None:
        if found is not None and hasattr(model, "encoder"):  # in case the checkpoint holds no reference
            monitor.remember_initial(model.encoder)
        callbacks.append(monitor)
    trainer = build_trainer(
        recipe,
        out,
        callbacks,
        reload_data_every_epoch=model.reloads_data_every_epoch,
        checkpoint_io=writer,
        progress=progress,
        resumed_from=found.checkpoint if found else None,
    )
    main_thread = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        # weights_only: what AtomicCheckpointIO.load_checkpoint does whatever is asked
        trainer.fit(model, datamodule=data, ckpt_path=found.checkpoint if found else None, weights_only=True)
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


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _logged_epoch_loss(out: Path, epoch: int) -> float | None:
    """``train/loss_epoch`` of ``epoch`` in the run's CSV logs (the latest start that logged it)."""
    found = None
    versions = sorted(
        (out / "logs").glob("version_*/metrics.csv"),
        key=lambda path: int(path.parent.name.removeprefix("version_")) if path.parent.name[8:].isdigit() else -1,
    )
    for path in versions:
        try:
            with open(path, newline="") as file:
                rows = list(csv.DictReader(file))
        except (OSError, csv.Error, UnicodeDecodeError):
            continue
        for row in rows:
            try:
                if float(row.get("epoch") or "nan") == epoch and row.get("train/loss_epoch"):
                    loss = _finite(float(row["train/loss_epoch"]))
                    found = loss if loss is not None else found
            except ValueError:
                continue
    return found


def _final_loss(out: Path, found: _Resume | None, trainer: lightning.Trainer, previous: dict[str, Any] | None) -> float:
    """The mean training loss of the run's last epoch, NaN when nothing recorded it.

    From the epochs this invocation trained, or, when a resumed run had nothing left to
    train, from the checkpoint it resumed from, the run's ``metrics.json`` or its logs.
    """
    record = next((callback for callback in trainer_callbacks(trainer) if isinstance(callback, EpochLoss)), None)
    if record is not None and record.loss is not None and record.global_step == trainer.global_step:
        return record.loss
    if previous is not None and previous.get("global_step") == trainer.global_step:
        loss = _finite(previous.get("final_loss"))
        if loss is not None:
            return loss
    if found is not None and trainer.global_step == found.global_step:
        loss = _logged_epoch_loss(out, found.epoch)
        if loss is not None:
            return loss
    if trainer.global_step > 0:
        log.warning(
            "the final loss of the run in %s is unknown: its checkpoint, metrics.json and logs keep no loss of "
            "epoch %d",
            out,
            trainer.current_epoch,
        )
    return float("nan")


def _finish(
    recipe: Recipe,
    out: Path,
    found: _Resume | None,
    trainer: lightning.Trainer,
    model: lightning.LightningModule,
    writer: AtomicCheckpointIO,
    start: float,
) -> PretrainResult:
    metrics_path = out / "metrics.json"
    previous = _read_metrics(metrics_path)
    result = PretrainResult(
        out=out,
        checkpoint=out / "checkpoints" / LAST_NAME,
        global_step=trainer.global_step,
        final_loss=_final_loss(out, found, trainer, previous),
        seconds=time.perf_counter() - start,
        is_global_zero=trainer.is_global_zero,
        resumed_from=found.checkpoint if found else None,
        findings=tuple(model.run_findings(out)) if trainer.is_global_zero and isinstance(model, PretrainMethod) else (),
    )
    if not trainer.is_global_zero:
        return result
    # a run resumed from its last epoch's checkpoint (killed before last.ckpt was written)
    # trained nothing and wrote nothing: last.ckpt becomes that checkpoint again
    if writer.last_complete is not None:
        writer.last_complete = restore_last(out / "checkpoints", writer.last_complete)
    if not result.checkpoint.is_file():  # a run that ends saves last.ckpt: a bug if not
        raise RuntimeError(f"the run in {out} ended without {result.checkpoint}")
    final_loss = result.final_loss if math.isfinite(result.final_loss) else None  # strict JSON
    if (
        found is not None
        and previous is not None
        and trainer.global_step == found.global_step
        and previous.get("global_step") == trainer.global_step
        and previous.get("final_loss") == final_loss
        and previous.get("checkpoint") == str(result.checkpoint)
    ):
        return result  # resuming a finished run trains nothing: its metrics.json stays the record
    metrics: dict[str, Any] = {
        "method": recipe.method.name,
        "global_step": result.global_step,
        # images whose views trained the encoder (steps x batch x devices): the budget
        # to compare methods at, whatever their epoch lengths
        "samples_seen": result.global_step * recipe.data.batch_size * trainer.world_size,
        "epochs": trainer.current_epoch,
        "final_loss": final_loss,
        "seconds": round(result.seconds, 1),
        "checkpoint": str(result.checkpoint),
        "device": str(model.device),
    }
    monitor = next(
        (callback for callback in trainer_callbacks(trainer) if isinstance(callback, RepresentationMonitor)), None
    )
    if monitor is not None:
        metrics.update(monitor.summary())
    snapshots = {
        str(step): str(path)
        for step in recipe.trainer.snapshot_steps
        if (path := snapshot_path(out / "snapshots", step)).is_file()
    }
    if snapshots:
        metrics["snapshots"] = snapshots
    unreached = [step for step in recipe.trainer.snapshot_steps if str(step) not in snapshots]
    if unreached:  # an epoch budget ended first (a step budget beyond them is refused with the recipe)
        log.warning(
            "trainer.snapshot_steps %s: the run ended at step %d, no snapshot written for them",
            unreached,
            result.global_step,
        )
    box_area = trainer.callback_metrics.get("train/box_area")  # GraSS: the last stage-2 epoch's mean box
    if box_area is not None:
        metrics["box_area"] = round(float(box_area), 4)
    atomic_write_text(metrics_path, json.dumps(metrics, indent=1, allow_nan=False))
    return result
