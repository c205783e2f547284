"""PNG maps of scenes and tile sets."""

from __future__ import annotations

import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from pyproj import CRS as ProjCRS

from geocl.data.rasters import read_decimated
from geocl.data.tileset import INDEX_FILE, INDEX_LAYER, read_metadata
from geocl.io import save_figure

SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}


def stretch(band: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """A band scaled to [0, 1] between its 2nd and 98th percentiles (of the valid pixels)."""
    values = band[valid] if valid is not None else band
    # Python floats keep the band's dtype (numpy's own scalars would promote float32 to float64)
    low, high = (float(value) for value in np.percentile(values, [2, 98])) if values.size else (0.0, 1.0)
    return np.clip((band - low) / max(high - low, 1e-9), 0, 1)


def quicklook(
    path: str | os.PathLike[str], max_side: int = 1024
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """A small display image of a raster, read decimated by GDAL (never at full size).

    Args:
        path: the raster.
        max_side: longest side of the result (px).

    Returns:
        ``[H, W, 3]`` float array in [0, 1] (bands 3, 2, 1 when there are >= 3, else
        band 1 as grey; 2-98 % stretch per band) and its extent (left, right, bottom, top).
    """
    with rasterio.open(path) as src:
        scale = max(src.width, src.height) / max_side
        shape = (max(1, round(src.height / max(scale, 1))), max(1, round(src.width / max(scale, 1))))
        bands = [3, 2, 1] if src.count >= 3 else [1, 1, 1]
    data, (left, bottom, right, top), nodata = read_decimated(path, bands, shape)
    data = data.astype(np.float32)  # a display image: float32 halves the preview's memory
    valid = ~np.all(data == (nodata if nodata is not None else np.nan), axis=0)
    rgb = np.zeros((*shape, 3), dtype=np.float32)
    for band in range(3):
        rgb[..., band] = stretch(data[band], valid)
    rgb[~valid] = 1.0
    return rgb, (left, right, bottom, top)


def plot_tile_index(tiles: str | os.PathLike[str], out_png: str | os.PathLike[str]) -> Path:
    """Draw a tile set's tiles, coloured by split, over a quicklook of its scene.

    Args:
        tiles: folder written by ``geocl tile``.
        out_png: the PNG to write.

    Returns:
        The PNG path.
    """
    metadata = read_metadata(tiles)
    index = gpd.read_file(Path(tiles) / INDEX_FILE, layer=INDEX_LAYER)
    # a bare Figure draws with the Agg canvas: no pyplot state, no backend switch
    figure = Figure(figsize=(8, 8))
    axes = figure.subplots()
    for scene_file in metadata["sources"]["scene"]:
        with rasterio.open(scene_file) as src:
            same_crs = src.crs is not None and ProjCRS.from_user_input(src.crs) == index.crs
        if same_crs:  # files in other CRSs are left out of the backdrop, not warped
            rgb, extent = quicklook(scene_file)
            axes.imshow(rgb, extent=extent)
    for split, colour in SPLIT_COLOURS.items():
        part = index[index["split"] == split]
        if not part.empty:
            part.boundary.plot(ax=axes, color=colour, linewidth=0.8)
    axes.legend(
        handles=[
            Patch(edgecolor=c, facecolor="none", label=f"{s} ({(index['split'] == s).sum()})")
            for s, c in SPLIT_COLOURS.items()
        ],
        loc="upper right",
    )
    axes.set_title(f"{len(index)} tiles of {metadata['options']['size']} px")
    axes.set_xlabel(f"x ({index.crs.axis_info[0].unit_name})")
    axes.set_ylabel(f"y ({index.crs.axis_info[1].unit_name})")
    figure.tight_layout()
    return save_figure(figure, out_png)
