"""Callbacks of a training run: what a person looks at while and after it runs."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning
import pandas as pd
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, convert_inf
from lightning.pytorch.loggers import CSVLogger

from geocl.models.checkpoints import snapshot_path
from geocl.report.curves import plot_loss_curve

log = logging.getLogger(__name__)


class Pace:
    """Says when at least ``every_s`` seconds have passed since it last said so (the first ask: at once)."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._last: float | None = None

    def due(self) -> bool:
        now = time.monotonic()
        if self._last is not None and now - self._last < self.every_s:
            return False
        self._last = now
        return True


class LossCurvePlot(lightning.Callback):
    """Redraw ``plots/loss.png`` from the CSV log after an epoch, at most every ``every_s`` seconds.

    The first epoch and the end of the run always draw it. The interval matters for
    small tile sets, whose epochs are a single step: a redraw takes ~0.1 s, as long
    as a step of a small CPU run.

    The plot is drawn from every ``logs/version_*/metrics.csv`` of the run. One that
    cannot be parsed (cut short by a full disk in an earlier start) does not stop the
    training: the plot is left as it was and a warning says why, once.

    Args:
        png: the PNG to write.
        every_s: least time between two redraws during training, seconds.
    """

    def __init__(self, png: Path, every_s: float = 30.0) -> None:
        self.png = png
        self._pace = Pace(every_s)
        self._warned = False

    def _draw(self, trainer: lightning.Trainer, module: lightning.LightningModule) -> None:
        csv = next((logger for logger in trainer.loggers if isinstance(logger, CSVLogger)), None)
        if trainer.is_global_zero and csv is not None:
            csv.save()
            logs = Path(csv.log_dir).parent
            try:
                plot_loss_curve(logs, self.png, title=str(module.method_name))
            except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
                if not self._warned:
                    log.warning("%s not redrawn: a CSV log under %s cannot be read (%s)", self.png, logs, exc)
                    self._warned = True

    def on_train_epoch_end(self, trainer: lightning.Trainer, module: lightning.LightningModule) -> None:
        if self._pace.due():
            self._draw(trainer, module)

    def on_train_end(self, trainer: lightning.Trainer, module: lightning.LightningModule) -> None:
        self._draw(trainer, module)


class PacedCheckpoint(ModelCheckpoint):
    """Lightning's epoch-end checkpoints, at most one every ``every_s`` seconds, and always the last epoch's.

    A small tile set makes one-step epochs; saving the whole training state (ResNet-18
    with AdamW: 138 MB, twice with ``last.ckpt``) after every step cost more than some
    steps. A resumed run starts from the newest checkpoint, so an interruption loses at
    most ``every_s`` seconds of training; where a run resumes is still an epoch's end,
    so it goes on exactly as an uninterrupted one.

    Args:
        every_s: least time between two saves, seconds (0: every epoch, as Lightning's).
        kwargs: :class:`~lightning.pytorch.callbacks.ModelCheckpoint`'s.
    """

    def __init__(self, *, every_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pace = Pace(every_s)

    def on_train_epoch_end(self, trainer: lightning.Trainer, module: lightning.LightningModule) -> None:
        # the last epoch is saved whatever the pace (evaluated first: `due` restarts the clock)
        if _ends_training(trainer) or self._pace.due():
            super().on_train_epoch_end(trainer, module)

    def on_train_end(self, trainer: lightning.Trainer, module: lightning.LightningModule) -> None:
        super().on_train_end(trainer, module)
        # a stop the epoch end could not foresee (a callback's should_stop, a time limit)
        if self._last_global_step_saved != trainer.global_step and trainer.global_step > 0:
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)


def _ends_training(trainer: lightning.Trainer) -> bool:
    """Whether the epoch ending now is the run's last (its step or epoch limit reached, or a stop asked)."""
    steps_done = trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step
    epochs_done = trainer.max_epochs is not None and 0 < trainer.max_epochs <= trainer.current_epoch + 1
    return bool(trainer.should_stop or steps_done or epochs_done)


class StepSnapshots(lightning.Callback):
    """Keep the whole training state at chosen optimizer steps: ``<folder>/step<N>.ckpt``.

    A budget sweep reads its shorter budgets from these snapshots of one long run
    instead of training a run per budget. A snapshot is a point on that run's curve:
    its learning rate followed the long run's schedule, not one that ends at N.
    Snapshots live apart from ``checkpoints/`` so that a resume never starts from one.

    Args:
        folder: where the snapshots go (the run's ``snapshots/``).
        steps: optimizer steps to keep; a snapshot already on disk is not rewritten
            (a resumed run passes those steps again).
    """

    def __init__(self, folder: Path, steps: list[int]) -> None:
        self.folder = Path(folder)
        self.steps = set(steps)
        self._kept: set[int] = set()

    def on_train_start(self, trainer: lightning.Trainer, module: lightning.LightningModule) -> None:
        # decided once, before any rank writes: every rank must call save_checkpoint (it
        # ends in a barrier), so none may skip a step because another rank's file appeared
        self._kept = {step for step in self.steps if snapshot_path(self.folder, step).exists()}

    def on_train_batch_end(self, trainer: lightning.Trainer, module: lightning.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step in self.steps and step not in self._kept:
            # every rank calls it: the strategy gathers the state, rank 0 writes it
            trainer.save_checkpoint(snapshot_path(self.folder, step))
            self._kept.add(step)


class EpochLoss(lightning.Callback):
    """The mean training loss of the last completed epoch, kept in every checkpoint.

    It is read at each epoch's end before :class:`~lightning.pytorch.callbacks.ModelCheckpoint`
    writes (Lightning calls the callbacks that monitor nothing first), so the checkpoint of
    an epoch holds that epoch's loss, and a resumed run gets it back with the rest of the
    callback states. A run resumed from the checkpoint of its last epoch (one killed
    between writing ``epochNNN.ckpt`` and ``last.ckpt``) trains nothing and logs no
    loss: this is where its final loss comes from.

    Args:
        metric: the logged epoch value (``train/loss`` logged ``on_epoch`` becomes ``train/loss_epoch``).

    Attributes:
        loss: the last epoch's mean loss, None before the first epoch ends.
        epoch: that epoch (0-based).
        global_step: optimizer steps done at its end.
    """

    def __init__(self, metric: str = "train/loss_epoch") -> None:
        self.metric = metric
        self.loss: float | None = None
        self.epoch: int | None = None
        self.global_step: int | None = None

    def on_train_epoch_end(self, trainer: lightning.Trainer, module: lightning.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.metric)
        if value is not None:
            self.loss, self.epoch, self.global_step = float(value), trainer.current_epoch, trainer.global_step

    def state_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "epoch": self.epoch, "global_step": self.global_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        loss, epoch, step = (state_dict.get(key) for key in ("loss", "epoch", "global_step"))
        self.loss = float(loss) if isinstance(loss, (int, float)) else None
        self.epoch = epoch if isinstance(epoch, int) else None
        self.global_step = step if isinstance(step, int) else None


class TrainingProgressBar(TQDMProgressBar):
    """geocl's bar for a training run: one bar per epoch with the loss and the scores.

    Lightning's default bar adds a bar per validation pass and one for the test pass, and
    shows its logger's version (``v_num``) and each logged value under its full name, a
    value logged per step and per epoch twice (``train/loss_step``, ``train/loss_epoch``).
    This one draws no validation or test bars and shows ``loss`` (the last step's) and
    the other values without the ``train/`` prefix; the validation score keeps its name
    (``val/miou``). Epochs are counted from 1 and out of the budget (``epoch 3/15``),
    where Lightning writes ``Epoch 2`` (and ``Training`` before the first). A callback
    with a ``progress_fields()`` method adds what it returns (the representation
    monitor's ``probe=0.41 (init 0.38)``, :mod:`geocl.training.monitor`).
    """

    @property
    def train_description(self) -> str:
        trainer = self.trainer
        epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
        current = trainer.current_epoch + 1
        return f"epoch {current}/{epochs}" if epochs else f"epoch {current}"

    def on_train_epoch_start(self, trainer: lightning.Trainer, *args: Any) -> None:
        # Lightning's version draws the bar once as "Epoch N" first; one bar serves every epoch
        bar = self.train_progress_bar
        bar.set_description(self.train_description, refresh=False)
        bar.initial = 0
        bar.reset(total=convert_inf(self.total_train_batches))

    def init_validation_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)

    def init_test_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)

    def get_metrics(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> dict[str, Any]:
        logged = super().get_metrics(trainer, pl_module)
        shown: dict[str, Any] = {}
        for name, value in logged.items():
            if name == "v_num" or (name.endswith("_epoch") and name.removesuffix("_epoch") + "_step" in logged):
                continue
            shown[name.removeprefix("train/").removesuffix("_step")] = value
        for callback in trainer_callbacks(trainer):
            fields = getattr(callback, "progress_fields", None)
            if callable(fields):
                shown.update(fields())
        return shown


def progress_callbacks(progress: bool) -> list[lightning.Callback]:
    """The callbacks that draw a run's progress: geocl's bar, or none."""
    return [TrainingProgressBar()] if progress else []


def trainer_callbacks(trainer: lightning.Trainer) -> list[lightning.Callback]:
    """The callbacks of a trainer (Lightning sets the attribute in its constructor, out of the type checker's sight)."""
    return list(getattr(trainer, "callbacks", []))
