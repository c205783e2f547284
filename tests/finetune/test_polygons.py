"""Polygons of a classified raster (geocl/finetune/polygons.py)."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest

from geocl.finetune.polygons import POLYGON_LAYER, write_polygons
from tests.conftest import RasterWriter


def test_one_polygon_per_4_connected_region_and_no_nodata(tmp_path: Path, write_raster: RasterWriter) -> None:
    classes = np.full((6, 8), 1, dtype=np.uint8)
    classes[:, 4:] = 2
    classes[0, 0] = 255  # nodata: no polygon
    classes[3, 3] = 2  # 4-connected to the class-2 half: part of its polygon
    classes[5, 0] = 2  # only touches class 1: a polygon of its own
    raster = write_raster(tmp_path / "pred.tif", classes, nodata=255, res=2.0, crs="EPSG:32617")
    out = write_polygons(raster, tmp_path / "vec" / "pred.gpkg")
    assert out == tmp_path / "vec" / "pred.gpkg"
    frame = gpd.read_file(out, layer=POLYGON_LAYER)
    assert frame.crs.to_epsg() == 32617
    assert sorted(frame["class_value"].tolist()) == [1, 2, 2]
    for value in (1, 2):
        area = frame.geometry[frame["class_value"] == value].area.sum()
        assert area == pytest.approx((classes == value).sum() * 4.0)  # 2 m pixels
    assert sorted(p.name for p in out.parent.iterdir()) == ["pred.gpkg"]  # no temporary left
