"""GraSS gradient region maps of whole tiles, written as georeferenced rasters and PNGs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.crs import CRS

from geocl.data.tile_dataset import TileDataset
from geocl.report.maps import stretch
from geocl.sampling.geo_sampler import plot_region_overlay, write_region_map
from geocl.sampling.regions import select_box


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
    ratio = float(model.recipe.method.threshold_ratio)
    pngs = []
    for item, path in zip(items, paths, strict=False):
        with rasterio.open(path) as src:
            heatmap = src.read(1)
        box = select_box(np.nan_to_num(heatmap, nan=float(np.nanmin(heatmap))), ratio)
        png = plots_folder / f"regions_{path.stem}.png"
        plot_region_overlay(png, tile_rgb(tiles[item]["image"]), heatmap, [box] if box is not None else [])
        pngs.append(png)
    return pngs
