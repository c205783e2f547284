"""One skeleton for every downstream training: a data adapter, a module factory and one set of options.

Every downstream training of geocl is the same run; what differs is the data and the
network:

1. the run folder is checked before any work: one run a folder (:func:`check_finetune_folder`);
2. the data adapter reads and checks every split, and draws the labelled subset, before
   any training (:meth:`DownstreamData.setup`): a damaged file is named before the first
   step, not after the last;
3. everything is seeded (``lightning.seed_everything(seed, workers=True)``);
4. the module factory builds the Lightning module from what the data holds (bands,
   classes, band statistics...: :meth:`ModuleFactory.build`);
5. the adapter gives the train and val loaders for that module and the budget
   (:meth:`DownstreamData.loaders`);
6. Lightning trains (:func:`finetune_trainer`: validation every ``val_every`` epochs,
   the best checkpoint by the factory's ``monitor``, early stopping after ``patience``
   validations without gain);
7. the adapter scores the best checkpoint on the test split (:meth:`DownstreamData.score`:
   test tiles, or whole test volumes case by case);
8. ``metrics.json`` is written last, atomically, in strict JSON (:func:`write_result`):
   the scores, the best validation score, the data's and the model's description, the
   checkpoint and the seconds, and (``record_options``) the options that determine the
   result with the encoder checkpoint's SHA-256 (:data:`OPTIONS_KEY`), which the next
   run in that folder is compared with.

The trainings on it: :func:`geocl.finetune.train.run_finetune` (tiles),
:func:`geocl.finetune.medical.run_medical_finetune` (NIfTI slices) and the semi-supervised
FBA ones, :func:`geocl.finetune.semi_supervised.run_semi_supervised` (tiles) and
:func:`geocl.finetune.medical_semi_supervised.run_medical_semi_supervised` (NIfTI slices
or patches): their adapters give a labelled-first loader of labelled and unlabelled items
for the module's ``labelled_bs`` and a val set (per case for volumes), their factory
(:class:`geocl.finetune.semi_supervised.FBAFactory`) builds the one- or three-decoder
network whose consistency ramp is a share of the budget (``max_epochs * steps_per_epoch``)
and monitors ``val/miou`` or ``val/dice``, and their test scoring reads decoder 1.

One run a folder: ``out`` must not hold an earlier finetuning run (its ``metrics.json``
or a checkpoint), since a second run would put its model beside the old one
(``best-v1.ckpt``) and its figures over the old ones, and ``best.ckpt`` would no longer
be the model ``metrics.json`` describes. Such a folder is refused before any work, naming
each option that differs from the run found there; for that, ``metrics.json`` records
under ``options`` every option that determines the result, the encoder checkpoint by its
resolved path and the SHA-256 of its bytes (a path may hold another pretraining since).
``geocl compare`` moves the folder of a run it must redo aside first. ``metrics.json``
is strict JSON: a figure that is not a finite number is ``null``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol, TypedDict

import lightning
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader

from geocl.finetune.run_folder import (
    FINGERPRINT_KEY,
    OPTIONS_KEY,
    RESULT_FILE,
    check_finetune_folder,
    recorded_options,
    write_result,
)
from geocl.training.callbacks import progress_callbacks
from geocl.training.checkpoint_io import AtomicCheckpointIO
from geocl.training.loggers import LoggerKind, check_logger, experiment_loggers, log_final_metrics

__all__ = [
    "FINGERPRINT_KEY",
    "OPTIONS_KEY",
    "RESULT_FILE",
    "BudgetArguments",
    "DataDescription",
    "DownstreamData",
    "DownstreamOptions",
    "DownstreamOutcome",
    "ModuleFactory",
    "Scores",
    "TrainingBudget",
    "check_finetune_folder",
    "finetune_trainer",
    "recorded_options",
    "run_downstream",
    "write_result",
]


# ----------------------------------------------------------------------- options


@dataclass(frozen=True, kw_only=True)
class TrainingBudget:
    """How long, in what batches and where a downstream training runs.

    The fields of :class:`geocl.recipes.options.FinetuneOptions` of the same names (the
    CLI and ``geocl compare`` validate them there), plus the experiment logger of
    :class:`~geocl.recipes.options.FinetuneCommand`.

    Attributes:
        max_epochs: epochs of ``steps_per_epoch`` optimizer steps (training items are
            drawn with replacement, so every label fraction gets the same number of steps).
        steps_per_epoch: optimizer steps per epoch.
        val_every: epochs between validations; when it exceeds ``max_epochs`` the one
            validation runs after the last epoch (a run is always validated).
        patience: validations without gain of the monitored score before stopping.
        batch_size: items (tiles, slices, patches) per step.
        num_workers: DataLoader worker processes.
        accelerator: Lightning accelerator.
        progress: show geocl's progress bars.
        logger: the experiment logger beside the CSV log: ``csv``, ``tensorboard`` or
            ``mlflow`` (:mod:`geocl.training.loggers`; under ``geocl compare`` the row's
            recipe decides instead).
    """

    max_epochs: int = 15
    steps_per_epoch: int = 10
    val_every: int = 3
    patience: int = 3
    batch_size: int = 8
    num_workers: int = 0
    accelerator: str = "auto"
    progress: bool = True
    logger: LoggerKind = "csv"

    @property
    def draws(self) -> int:
        """Training items drawn per epoch: ``steps_per_epoch * batch_size``."""
        return self.steps_per_epoch * self.batch_size

    def trained(self) -> dict[str, Any]:
        """The fields that change what a run trains (not where, how fast or how it is shown)."""
        return {
            "max_epochs": self.max_epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "val_every": self.val_every,
            "patience": self.patience,
            "batch_size": self.batch_size,
        }


class BudgetArguments(TypedDict, total=False):
    """:class:`TrainingBudget` as keyword arguments (``**budget: Unpack[BudgetArguments]``)."""

    max_epochs: int
    steps_per_epoch: int
    val_every: int
    patience: int
    batch_size: int
    num_workers: int
    accelerator: str
    progress: bool
    logger: LoggerKind


def budget_from(arguments: Mapping[str, Any]) -> TrainingBudget:
    """A :class:`TrainingBudget` from keyword arguments; an unknown one is a ``TypeError``, as for a function."""
    known = {item.name for item in fields(TrainingBudget)}
    unknown = sorted(set(arguments) - known)
    if unknown:
        raise TypeError(f"unexpected keyword argument{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}")
    return TrainingBudget(**arguments)


@dataclass(frozen=True, kw_only=True)
class DownstreamOptions:
    """Everything of a downstream run that is neither its data nor its network.

    Attributes:
        out: the run folder (``checkpoints/``, ``logs/``, ``metrics.json``, ...).
        label_fraction: share of the labelled train items (tiles, cases) that keep their
            labels, in (0, 1]; the adapter draws them.
        seed: seed of the init and the training order (and of the subset, unless
            ``subset_seed`` is given).
        subset_seed: seed of the labelled subset alone, so that several training seeds
            share one subset (paired comparisons); None: ``seed``.
        budget: epochs, steps, batches, devices, progress and logger.
        identity: the options that determine the result (data, network, budget), as the
            caller names them: compared with a run found in ``out``
            (:func:`check_finetune_folder`) and given to the experiment logger.
        record_options: also record ``identity`` under :data:`OPTIONS_KEY` in
            ``metrics.json`` (paths resolved, the encoder checkpoint's SHA-256).
    """

    out: str | Path
    label_fraction: float
    seed: int = 0
    subset_seed: int | None = None
    budget: TrainingBudget = field(default_factory=TrainingBudget)
    identity: Mapping[str, Any] = field(default_factory=dict)
    record_options: bool = True

    @property
    def drawn_with(self) -> int:
        """The seed of the labelled subset: ``subset_seed``, else ``seed``."""
        return self.seed if self.subset_seed is None else self.subset_seed


# ----------------------------------------------------------------- the two parts


@dataclass
class DataDescription:
    """What a data adapter read (:meth:`DownstreamData.setup`).

    Attributes:
        meta: what the model's checkpoint needs of the data to be used alone: ``in_chans``,
            ``classes``, ``band_stats``, ``nodata``, ``tile_size`` and, for volumes, how
            they were read (``medical``).
        record: what ``metrics.json`` says of the data used (``train_tiles``,
            ``labelled_cases``, ``test_cases``...).
        reading: what ``metrics.json`` says of how the data was read (a volume's
            ``spacing``), after the network.
        network: what the network takes from the data without storing it as data: a
            semi-supervised run's ``labelled_bs`` (at most the labelled items),
            ``patch_size`` (the crop, at most the slice side), ``val_per_case``...
    """

    meta: dict[str, Any]
    record: dict[str, Any]
    reading: dict[str, Any] = field(default_factory=dict)
    network: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scores:
    """A test scoring (:meth:`DownstreamData.score`).

    Attributes:
        record: the figures as ``metrics.json`` holds them, first (``miou`` and ``iou``,
            or the means of ``dice``, ``jaccard``, ``hd95``, ``asd``).
        logged: the figures for the experiment logger (``test/miou``...), numbers only.
        cases: per-case figures where the test set is scored case by case, else empty.
    """

    record: dict[str, Any]
    logged: dict[str, float]
    cases: list[dict[str, Any]] = field(default_factory=list)


class DownstreamData(Protocol):
    """The data side of a downstream training: tiles, NIfTI slices, NIfTI patches.

    An adapter is made with its own settings (the tile set; the data folder, spacing,
    slice axis...) and does the reading; the skeleton calls it in this order.
    """

    def setup(self, options: DownstreamOptions) -> DataDescription:
        """Read and check every split, and draw the labelled subset, before any training.

        Called after the folder check and before seeding: it must not draw from the
        global random generators (the subset is drawn with its own, from
        ``options.drawn_with``).

        Raises:
            GeoclError: bad data (no val or test items, a damaged file...) or a bad
                ``label_fraction``, naming the file or key.
        """
        ...

    def loaders(
        self, module: lightning.LightningModule, options: DownstreamOptions
    ) -> tuple[DataLoader, DataLoader | None]:
        """The train loader (``options.budget.draws`` items an epoch, drawn with ``options.seed``) and
        the val loader (None: no validation, the last weights are kept)."""
        ...

    def score(
        self, trainer: lightning.Trainer, module: lightning.LightningModule, checkpoint: Path, out: Path
    ) -> Scores:
        """Score ``checkpoint`` (the best one) on the test split; files it writes go under ``out``."""
        ...


class ModuleFactory(Protocol):
    """The network side of a downstream training: which Lightning module, and how it starts.

    Attributes:
        monitor: the logged validation score, higher is better, that picks the best
            checkpoint and stops early (``val/miou``, ``val/dice``); ``metrics.json``
            holds its best value as ``val_<name>``.
        log_every_n_steps: the trainer's logging interval, in optimizer steps.
    """

    @property
    def monitor(self) -> str: ...

    @property
    def log_every_n_steps(self) -> int: ...

    def build(self, data: DataDescription, options: DownstreamOptions) -> lightning.LightningModule:
        """The module to train, its encoder loaded (called once everything is seeded)."""
        ...

    def record(self, module: lightning.LightningModule) -> dict[str, Any]:
        """What ``metrics.json`` says of the network trained (``encoder``, ``encoder_checkpoint``, ``arch``...)."""
        ...


@dataclass
class DownstreamOutcome:
    """What :func:`run_downstream` produced.

    Attributes:
        out: the run folder.
        checkpoint: the best checkpoint (``last.ckpt`` when nothing was validated).
        best_score: best value of the factory's ``monitor`` (NaN when not validated).
        scores: the test scoring.
        data: what the adapter read.
        module: the trained module (the last weights, or the best after a test run).
        record: what ``metrics.json`` holds.
    """

    out: Path
    checkpoint: Path
    best_score: float
    scores: Scores
    data: DataDescription
    module: lightning.LightningModule
    record: dict[str, Any]


# ----------------------------------------------------------------- the skeleton


def run_downstream(factory: ModuleFactory, data: DownstreamData, options: DownstreamOptions) -> DownstreamOutcome:
    """Run one downstream training (the steps of the module docstring) and write its ``metrics.json``.

    Args:
        factory: the network: builds the module, names the monitored score.
        data: the data: splits, loaders, test scoring.
        options: the run folder, the label fraction, seeds, budget and identity.

    Returns:
        A :class:`DownstreamOutcome`.

    Raises:
        GeoclError: the logger's package is missing; ``out`` holds a finetuning run or
            cannot be written (:func:`check_finetune_folder`); what the adapter and
            factory raise (bad data, a checkpoint for another band count...); a loss
            that is not finite.
    """
    start = time.perf_counter()
    budget = options.budget
    check_logger(budget.logger, key="logger")
    out = check_finetune_folder(options.out, dict(options.identity))
    recorded = recorded_options(dict(options.identity))  # paths resolved, the checkpoint's content fingerprinted
    described = data.setup(options)
    lightning.seed_everything(options.seed, workers=True, verbose=False)
    module = factory.build(described, options)
    train, val = data.loaders(module, options)
    trainer = finetune_trainer(
        out,
        max_epochs=budget.max_epochs,
        val_every=budget.val_every,
        accelerator=budget.accelerator,
        monitor=factory.monitor if val is not None else None,
        patience=budget.patience,
        progress=budget.progress,
        log_every_n_steps=factory.log_every_n_steps,
        logger=budget.logger,
        params={f"finetune.{key}": value for key, value in recorded.items()},
    )
    trainer.fit(module, train, val)
    checkpoint, best_score = best_checkpoint(trainer, out)
    scores = data.score(trainer, module, checkpoint, out)
    log_final_metrics(trainer.loggers, scores.logged, step=trainer.global_step)
    name = factory.monitor.split("/")[-1]
    record = {
        **scores.record,
        f"val_{name}": best_score,
        "classes": described.meta["classes"],
        "label_fraction": options.label_fraction,
        "seed": options.seed,
        "subset_seed": options.drawn_with,
        **described.record,
        **factory.record(module),
        **described.reading,
        "checkpoint": str(checkpoint),
        "seconds": round(time.perf_counter() - start, 1),
        **({OPTIONS_KEY: recorded} if options.record_options else {}),
    }
    # strict JSON (allow_nan=False): a class absent from the test set is null, not NaN
    write_result(out, record)
    return DownstreamOutcome(out, checkpoint, best_score, scores, described, module, record)


def best_checkpoint(trainer: lightning.Trainer, out: Path) -> tuple[Path, float]:
    """The best checkpoint of a finished fit and its monitored score.

    Without one (nothing validated, or no score), the last weights are saved as
    ``out/checkpoints/last.ckpt`` (unless already there) and the score is NaN.
    """
    best = trainer.checkpoint_callback
    found = best.best_model_path if isinstance(best, ModelCheckpoint) else ""
    checkpoint = Path(found) if found else out / "checkpoints" / "last.ckpt"
    if not checkpoint.exists():
        trainer.save_checkpoint(checkpoint)
    score = best.best_model_score if isinstance(best, ModelCheckpoint) else None
    return checkpoint, float(score) if score is not None else math.nan


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
        default_root_dir=out,
        max_epochs=max_epochs,
        accelerator=accelerator,
        devices=1,
        check_val_every_n_epoch=max(1, min(val_every, max_epochs)),
        logger=experiment_loggers(out, logger, params=params, tags={"geocl.run": "finetune", **dict(tags or {})}),
        callbacks=callbacks,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=log_every_n_steps,
        enable_checkpointing=monitor is not None,
        plugins=[AtomicCheckpointIO(resumable=False)],
    )
