"""Callbacks of a pretraining run: what a person looks at while and after it runs."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning
import pandas as pd
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
