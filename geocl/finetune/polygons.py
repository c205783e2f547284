"""Polygons of a classified raster: 4-connected regions of one value, written to a GeoPackage."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import rasterio

from geocl.data.rasters import bounded_memory
from geocl.io import atomic_path

#: GeoPackage layer of the prediction polygons.
POLYGON_LAYER = "prediction"


def write_polygons(prediction: Path, final: str | os.PathLike[str]) -> Path:
    """Vectorise a classified raster (4-connected regions of one value) into a GeoPackage.

    The raster is read whole (``height x width`` values), so this suits scenes up to
    some 10^8 px, not continent-sized mosaics.

    Args:
        prediction: the single-band classified GeoTIFF; its nodata pixels are left out.
        final: the GeoPackage to write (atomic), layer :data:`POLYGON_LAYER`: one row per
            polygon, column ``class_value``, the raster's CRS.

    Returns:
        ``final`` as a :class:`~pathlib.Path`.
    """
    import geopandas as gpd
    from rasterio.features import shapes
    from shapely.geometry import shape

    with bounded_memory(), rasterio.open(prediction) as src:
        classes = src.read(1)
        valid = classes != src.nodata
        records = [
            (int(value), shape(geometry))
            for geometry, value in shapes(classes, mask=valid, connectivity=4, transform=src.transform)
        ]
        crs = src.crs
    frame = gpd.GeoDataFrame(
        {"class_value": np.asarray([value for value, _ in records], dtype=np.int64)},
        geometry=[geometry for _, geometry in records],
        crs=crs,
    )
    final = Path(final)
    with atomic_path(final) as temp:
        frame.to_file(temp, driver="GPKG", layer=POLYGON_LAYER)
    return final
