"""Regions of interest read from any vector file geopandas can read."""

from __future__ import annotations

import os

import geopandas as gpd
import shapely
from pyproj import CRS as ProjCRS
from shapely.geometry.base import BaseGeometry

from geocl.errors import GeoclError, InvalidInputError


def read_roi(path: str | os.PathLike[str], crs: ProjCRS) -> BaseGeometry:
    """Read the union of a vector file's polygons, reprojected to ``crs``.

    Args:
        path: GeoPackage, GeoJSON, Shapefile, ... (anything ``geopandas.read_file`` reads).
        crs: the raster CRS to reproject to.

    Returns:
        A (Multi)Polygon in ``crs`` units.

    Raises:
        GeoclError: if the file cannot be read, holds no polygon or has no CRS.
    """
    try:
        frame = gpd.read_file(path)
    except Exception as error:  # pyogrio raises several unrelated types for unreadable input
        raise GeoclError(f"cannot read ROI vector file: {error}", path=path) from None
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    polygons = frame[frame.geometry.geom_type.isin(["Polygon", "MultiPolygon"])]
    if polygons.empty:
        raise InvalidInputError("ROI file holds no polygon", path=path)
    if polygons.crs is None:
        raise InvalidInputError("ROI file has no CRS", path=path)
    geometry = polygons.to_crs(crs).geometry.make_valid().union_all()
    return shapely.normalize(geometry)


def check_roi_overlaps(roi: BaseGeometry, footprint: BaseGeometry, path: str | os.PathLike[str]) -> BaseGeometry:
    """The part of the scene inside the ROI.

    Raises:
        GeoclError: if the ROI lies outside the scene.
    """
    inside = roi.intersection(footprint)
    if inside.is_empty or inside.area == 0:
        left, bottom, right, top = footprint.bounds
        raise InvalidInputError(
            f"ROI lies outside the scene (scene bounds {left:.1f}, {bottom:.1f}, {right:.1f}, {top:.1f})", path=path
        )
    return inside
