"""Callbacks of a pretraining run: what a person looks at while and after it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning
from lightning.pytorch.loggers import CSVLogger

from geocl.data.tile_dataset import TileDataset
from geocl.report.curves import plot_loss_curve
from geocl.training.region_maps import plot_tile_maps


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


class RegionMapWriter(lightning.Callback):
    """At the end of training, write GraSS region maps of a few fixed tiles.

    GeoTIFFs go to ``maps/final/`` (the tiles' grids) and overlays to ``plots/``.

    Args:
        tiles: the train tiles.
        out: the run folder.
        count: how many tiles (the first ones, so every run shows the same).
    """

    def __init__(self, tiles: TileDataset, out: Path, count: int = 4) -> None:
        self.tiles = tiles
        self.out = out
        self.count = count
        self.pngs: list[Path] = []

    def on_train_end(self, trainer: lightning.Trainer, module: Any) -> None:
        if not trainer.is_global_zero or self.count <= 0:
            return
        items = list(range(min(max(self.count, 2), len(self.tiles))))
        self.pngs = plot_tile_maps(module, self.tiles, items, self.out / "maps" / "final", self.out / "plots")
