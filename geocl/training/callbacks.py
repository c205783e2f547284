"""Callbacks of a training run: what a person looks at while and after it runs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning
import pandas as pd
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, convert_inf
from lightning.pytorch.loggers import CSVLogger

from geocl.report.curves import plot_loss_curve

log = logging.getLogger(__name__)


class LossCurvePlot(lightning.Callback):
    """Redraw ``plots/loss.png`` from the CSV log after every epoch.

    The plot is drawn from every ``logs/version_*/metrics.csv`` of the run. One that
    cannot be parsed (cut short by a full disk in an earlier start) does not stop the
    training: the plot is left as it was and a warning says why, once.

    Args:
        png: the PNG to write.
    """

    def __init__(self, png: Path) -> None:
        self.png = png
        self._warned = False

    def _draw(self, trainer: lightning.Trainer, module: lightning.LightningModule) -> None:
        csv = next((logger for logger in trainer.loggers if isinstance(logger, CSVLogger)), None)
        if trainer.is_global_zero and csv is not None:
            csv.save()
            logs = Path(csv.log_dir).parent
            try:
                plot_loss_curve(logs, self.png, title=module.method_name)
            except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
                if not self._warned:
                    log.warning("%s not redrawn: a CSV log under %s cannot be read (%s)", self.png, logs, exc)
                    self._warned = True

    def on_train_epoch_end(self, trainer: lightning.Trainer, module: lightning.LightningModule) -> None:
        self._draw(trainer, module)

    def on_train_end(self, trainer: lightning.Trainer, module: lightning.LightningModule) -> None:
        self._draw(trainer, module)


class TrainingProgressBar(TQDMProgressBar):
    """geocl's bar for a training run: one bar per epoch with the loss and the scores.

    Lightning's default bar adds a bar per validation pass and one for the test pass, and
    shows its logger's version (``v_num``) and each logged value under its full name, a
    value logged per step and per epoch twice (``train/loss_step``, ``train/loss_epoch``).
    This one draws no validation or test bars and shows ``loss`` (the last step's) and
    the other values without the ``train/`` prefix; the validation score keeps its name
    (``val/miou``). Epochs are counted from 1 and out of the budget (``epoch 3/15``),
    where Lightning writes ``Epoch 2`` (and ``Training`` before the first).
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
        return shown


def progress_callbacks(progress: bool) -> list[lightning.Callback]:
    """The callbacks that draw a run's progress: geocl's bar, or none."""
    return [TrainingProgressBar()] if progress else []
