"""Region maps as GeoTIFFs on their tile's grid (geocl/sampling/region_rasters.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from geocl.sampling.region_rasters import write_region_map
from tests.conftest import RasterWriter, coordinate_image


def test_region_map_keeps_the_tile_grid_and_marks_invalid_pixels(tmp_path: Path, write_raster: RasterWriter) -> None:
    tile = write_raster(tmp_path / "tile.tif", coordinate_image(40, 56), crs="EPSG:32633", res=5.0)
    heat = np.random.default_rng(0).normal(size=(40, 56))
    valid = np.ones((40, 56), dtype=bool)
    valid[3:9, 10:30] = False
    with rasterio.open(tile) as src:
        out = write_region_map(tmp_path / "maps" / "tile.tif", heat, transform=src.transform, crs=src.crs, valid=valid)
        tile_transform, tile_crs = src.transform, src.crs
    assert out == tmp_path / "maps" / "tile.tif"
    with rasterio.open(out) as dst:
        assert dst.transform == tile_transform and dst.crs == tile_crs
        assert dst.count == 1 and dst.dtypes[0] == "float32"
        assert math.isnan(dst.nodata)
        assert dst.compression is not None and dst.compression.value.lower() == "deflate"
        back = dst.read(1)
    assert np.isnan(back[~valid]).all()
    np.testing.assert_array_equal(back[valid], heat.astype(np.float32)[valid])
    assert sorted(p.name for p in out.parent.iterdir()) == ["tile.tif"]  # no temporary left


def test_region_map_rejects_a_mask_of_another_shape(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_region_map(
            tmp_path / "m.tif",
            np.zeros((4, 4)),
            transform=from_origin(0, 0, 1, 1),
            crs="EPSG:32633",
            valid=np.ones((4, 5), dtype=bool),
        )
