"""GraSS at scene scale: region maps of whole tiles as georeferenced rasters and PNGs, and geo sampling.

With ``stage2_sampling: geo``, every stage-2 epoch first writes the gradient region
maps of all train tiles (``OUT/maps/epochNNN/``) with the current encoder, then draws
regions from them with :class:`~geocl.sampling.GradientRegionSampler` over the tile
mosaic (a TorchGeo dataset). At the end of training :class:`RegionMapWriter` writes the
maps of a few fixed tiles to ``maps/final/``, overlays to ``plots/`` and the mean box
area of every stage-2 epoch (``train/box_area`` in ``metrics.csv``) to
``plots/box_area.png``; on tiles with masks it also scores the final boxes' area and
purity against random boxes of the same size (``box_statistics.csv``, see
:mod:`geocl.methods.grass_boxes`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import pandas as pd
import rasterio
import torch
from lightning.pytorch.loggers import CSVLogger
from rasterio.crs import CRS
from torch.utils.data import DataLoader
from torchgeo.datasets import stack_samples

from geocl.data.normalize import BandNormalizer
from geocl.data.scene import SceneImage
from geocl.data.tile_dataset import TileDataset
from geocl.io import atomic_write_text
from geocl.methods.grass_boxes import COMPARED_RATIOS, box_statistics
from geocl.report.maps import stretch
from geocl.report.regions import plot_box_areas, plot_region_overlay
from geocl.sampling.geo_sampler import GradientRegionSampler
from geocl.sampling.region_rasters import write_region_map
from geocl.sampling.regions import select_box

#: Written at the end of a GraSS run on tiles with masks: its boxes' area and purity
#: (:func:`~geocl.methods.grass_boxes.box_statistics`) at the recipe's and stricter thresholds.
BOX_STATISTICS = "box_statistics.csv"


def write_tile_maps(
    model: Any, tiles: TileDataset, items: Iterable[int], folder: Path, batch_size: int = 16
) -> list[Path]:
    """Compute with ``model`` (a GraSS module) and write the region map of each tile.

    Args:
        model: the GraSS Lightning module (its :meth:`tile_region_maps`).
        tiles: the tile dataset.
        items: which samples of ``tiles``.
        folder: where ``<tile name>.tif`` maps go (same grid as the tile).
        batch_size: tiles per guide pass (negatives come from the same batch).

    Returns:
        The written files.
    """
    crs = CRS.from_wkt(tiles.metadata["crs"])
    items = list(items)
    written = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        if len(chunk) < 2 and start > 0:  # a contrastive loss needs a negative: borrow the previous tile
            chunk = items[start - 1 : start + 1]
        images = torch.stack([tiles[i]["image"] for i in chunk]).to(model.device)
        maps = model.tile_region_maps(images).cpu().numpy()
        for item, heatmap in zip(chunk, maps, strict=True):
            name = Path(tiles.index.iloc[int(tiles.rows[item])]["path"]).name
            path = folder / name
            write_region_map(path, heatmap, transform=tiles.tile_transform(item), crs=crs, valid=tiles.valid(item))
            if path not in written:
                written.append(path)
    return written


def tile_rgb(image: torch.Tensor) -> np.ndarray:
    """Display RGB of a normalised tile ``[C, H, W]``: bands 3, 2, 1 (or band 1), 2-98 % stretch."""
    bands = [2, 1, 0] if image.shape[0] >= 3 else [0, 0, 0]
    data = image[bands].numpy().astype(np.float64)
    return np.stack([stretch(band) for band in data], axis=-1)


def plot_tile_maps(
    model: Any, tiles: TileDataset, items: Sequence[int], maps_folder: Path, plots_folder: Path
) -> list[Path]:
    """Write GeoTIFF maps and PNG overlays (tile RGB, heat map, chosen box) for a few tiles."""
    paths = write_tile_maps(model, tiles, items, maps_folder)
    ratio = float(model.params.threshold_ratio)
    pngs = []
    for item, path in zip(items, paths, strict=False):
        with rasterio.open(path) as src:
            heatmap = src.read(1)
        box = select_box(np.nan_to_num(heatmap, nan=float(np.nanmin(heatmap))), ratio)
        png = plots_folder / f"regions_{path.stem}.png"
        plot_region_overlay(png, tile_rgb(tiles[item]["image"]), heatmap, [box] if box is not None else [])
        pngs.append(png)
    return pngs


def region_loader(model: Any, data: Any) -> DataLoader[Any]:
    """This epoch's loader of regions drawn from freshly written maps of every train tile.

    Args:
        model: the GraSS module (current encoder).
        data: the run's :class:`~geocl.training.data.PretrainData` over a :class:`TileDataset`.
    """
    trainer = data.trainer
    tiles: TileDataset = data.dataset
    epoch = trainer.current_epoch
    folder = data.out / "maps" / f"epoch{epoch:03d}"
    if trainer.is_global_zero:
        write_tile_maps(model, tiles, range(len(tiles)), folder)
    trainer.strategy.barrier("geocl-region-maps")
    params = model.params
    size = params.region_size or tiles.tile_size // 2
    normalizer = BandNormalizer.from_metadata(tiles.metadata)
    scene = SceneImage(tiles.root / "images", transforms=normalizer.sample_transform)
    world, rank = trainer.world_size, trainer.global_rank
    length = (params.regions_per_epoch or len(tiles)) // world
    sampler = GradientRegionSampler(
        folder, size=size, length=length, crs=scene.crs, generator=int(data.seed) * 1_000_003 + epoch * world + rank
    )
    return data.loader(scene, sampler, collate_fn=stack_samples)


class RegionMapWriter(lightning.Callback):
    """At the end of training, write GraSS region maps of a few fixed tiles and the box-area curve.

    On tiles with masks, also ``box_statistics.csv``: one row per map threshold (the
    recipe's and :data:`~geocl.methods.grass_boxes.COMPARED_RATIOS`) with the boxes' mean
    area and their purity beside that of random boxes of the same size.

    GeoTIFFs go to ``maps/final/`` (the tiles' grids), overlays to ``plots/`` and, when
    stage 2 ran, the mean box area per epoch to ``plots/box_area.png``. The maps are
    those of whole tiles (``tile_size`` px); training crops views of ``data.view_size``
    px, whose maps have fewer cells: the curve, not the overlays, shows the boxes that
    trained the encoder.

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
        if trainer.is_global_zero:
            self._plot_box_areas(trainer, module)
            self._write_box_statistics(module)
        if not trainer.is_global_zero or self.count <= 0:
            return
        items = list(range(min(max(self.count, 2), len(self.tiles))))
        self.pngs.extend(plot_tile_maps(module, self.tiles, items, self.out / "maps" / "final", self.out / "plots"))

    def _write_box_statistics(self, module: Any) -> None:
        """``box_statistics.csv``: area and purity of the boxes at the end (tiles with masks only)."""
        if not self.tiles.has_masks or len(self.tiles) < 2:
            return
        labelled = self.tiles.with_masks()
        ratios = sorted({*COMPARED_RATIOS, float(module.params.threshold_ratio)})
        rows = [dataclasses.asdict(row) for row in box_statistics(module, labelled, ratios)]
        for row in rows:
            row["cells"] = "x".join(map(str, row["cells"]))
        atomic_write_text(self.out / BOX_STATISTICS, pd.DataFrame(rows).to_csv(index=False, float_format="%.4f"))

    def _plot_box_areas(self, trainer: lightning.Trainer, module: Any) -> None:
        csv = next((logger for logger in trainer.loggers if isinstance(logger, CSVLogger)), None)
        if csv is None:
            return
        csv.save()  # the last epoch's values are still in the logger's buffer
        png = plot_box_areas(Path(csv.log_dir).parent, self.out / "plots" / "box_area.png", title=module.method_name)
        if png is not None:
            self.pngs.append(png)
