"""Gradient region maps as georeferenced rasters: one single-band GeoTIFF on its tile's grid.

A method that computes per-tile region maps (GraSS, arXiv 2306.15868) writes them with
:func:`write_region_map`; :class:`~geocl.sampling.geo_sampler.GradientRegionSampler`
reads them back to draw training boxes where the maps are high.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import rasterio
from pyproj import CRS as ProjCRS
from rasterio.crs import CRS
from rasterio.transform import Affine

from geocl.data.rasters import geotiff_profile
from geocl.io import atomic_path


def write_region_map(
    path: str | os.PathLike[str],
    heatmap: np.ndarray,
    *,
    transform: Affine,
    crs: CRS | ProjCRS | str,
    valid: np.ndarray | None = None,
) -> Path:
    """Write a region map as a single-band float32 GeoTIFF on its tile's grid.

    Args:
        path: the GeoTIFF to write (parent folders are created).
        heatmap: ``[H, W]`` map, one value per tile pixel (any units; the sampler uses
            ``max(value, 0)`` as weight).
        transform: the tile's pixel-to-map transform.
        crs: the tile's CRS (anything rasterio accepts: ``CRS``, pyproj CRS, ``"EPSG:..."``).
        valid: optional ``[H, W]`` bool mask; pixels where it is False (nodata in the
            tile) are written as NaN, the file's nodata value.

    Returns:
        ``path`` as a :class:`~pathlib.Path`. The write is atomic and deflate-compressed
        with the floating-point predictor.

    Raises:
        ValueError: if ``heatmap`` is not 2-D or ``valid`` has another shape.
    """
    heat = np.array(heatmap, dtype=np.float32)  # a copy: NaN is written into it
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be [H, W]; got shape {heat.shape}")
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != heat.shape:
            raise ValueError(f"valid mask shape {valid.shape} differs from heatmap shape {heat.shape}")
        heat[~valid] = np.nan
    profile = geotiff_profile(
        (1, *heat.shape),
        "float32",
        crs=CRS.from_user_input(crs),
        transform=transform,
        nodata=float("nan"),
        compress="deflate",
        predictor=3,
    )
    with atomic_path(path) as temp, rasterio.open(temp, "w", **profile) as dst:
        dst.write(heat[None])
    return Path(path)
