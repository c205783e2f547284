"""Callbacks of a pretraining run: what a person looks at while and after it runs."""

from __future__ import annotations

from pathlib import Path

import lightning
from lightning.pytorch.loggers import CSVLogger

from geocl.report.curves import plot_loss_curve


class LossCurvePlot(lightning.Callback):
    """Redraw ``plots/loss.png`` from the CSV log after every epoch.

    Args:
        png: the PNG to write.
    """

    def __init__(self, png: Path) -> None:
        self.png = png

    def _draw(self, trainer: lightning.Trainer, module: lightning.LightningModule) -> None:
        csv = next((logger for logger in trainer.loggers if isinstance(logger, CSVLogger)), None)
        if trainer.is_global_zero and csv is not None:
            csv.save()
            plot_loss_curve(Path(csv.log_dir).parent, self.png, title=module.method_name)

    def on_train_epoch_end(self, trainer: lightning.Trainer, module: lightning.LightningModule) -> None:
        self._draw(trainer, module)

    def on_train_end(self, trainer: lightning.Trainer, module: lightning.LightningModule) -> None:
        self._draw(trainer, module)
