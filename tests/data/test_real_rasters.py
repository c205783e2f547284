"""The data layer on real rasters from ../shared/data (skipped where that folder is absent)."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.windows import from_bounds

from geocl.data.stats import valid_pixels
from geocl.data.tiler import TilingOptions, tile_scene
from geocl.errors import GeoclError


def _source_under(src: rasterio.DatasetReader, tile: rasterio.DatasetReader) -> np.ndarray:
    """The source pixels on the tile's footprint; edge tiles reach past the scene, filled with 0."""
    window = from_bounds(*tile.bounds, src.transform).round_offsets().round_lengths()
    return src.read(window=window, boundless=True, fill_value=0)


def test_rotated_nodata_border_tiles_stay_under_the_limit(tmp_path: Path, shared_data: Path) -> None:
    scene = shared_data / "RGB.byte.tif"
    out = tmp_path / "tiles"
    summary = tile_scene(
        scene, out, options=TilingOptions(size=64, stride=64, max_nodata=0.2, split_block=256), progress=False
    )
    index = gpd.read_file(out / "tiles.gpkg")
    assert summary.skipped_nodata > 0 and len(index) > 0
    with rasterio.open(scene) as src:
        for record in index.itertuples():
            with rasterio.open(out / record.path) as tile:
                data = tile.read()
                expected = _source_under(src, tile)
            assert 1 - valid_pixels(data, 0).mean() <= 0.2
            assert np.array_equal(data, expected)


def test_folder_mixing_band_counts_and_crs_is_refused(tmp_path: Path, shared_data: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("RGB.byte.tif", "naip_2020.tif"):  # links, not copies
        (folder / name).symlink_to(shared_data / name)
    with pytest.raises(GeoclError, match="inconsistent band counts") as error:
        tile_scene(folder, tmp_path / "tiles", progress=False)
    assert "naip_2020.tif" in str(error.value) and "RGB.byte.tif" in str(error.value)


def test_spacenet_scene_tiles_with_its_building_mask(tmp_path: Path, shared_data: Path) -> None:
    image = shared_data / "spacenet_atlanta_pan.tif"
    mask = shared_data / "spacenet_atlanta_buildings.tif"
    out = tmp_path / "tiles"
    options = TilingOptions(size=128, stride=128, max_nodata=0.5, split_block=256)
    summary = tile_scene(image, out, mask=mask, options=options, progress=False)
    assert summary.classes == [0, 1]
    index = gpd.read_file(out / "tiles.gpkg")
    assert index["class_1"].sum() > 0
    with rasterio.open(mask) as src:
        for record in index.itertuples():
            with rasterio.open(out / record.mask_path) as tile:
                assert np.array_equal(tile.read(), _source_under(src, tile))
