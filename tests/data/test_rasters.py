"""Tests for geocl.data.rasters: the bounded GDAL cache and decimated preview reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.env import get_gdal_config
from rasterio.transform import from_origin

import geocl.data.rasters as rasters
from geocl.data.rasters import GDAL_CACHE_MB, bounded_memory, read_decimated
from geocl.errors import MissingInputError


def _write_tiled(path: Path, data: np.ndarray, *, overviews: list[int] | None = None) -> Path:
    count, height, width = data.shape
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": data.dtype.name,
        "crs": "EPSG:32633",
        "transform": from_origin(500_000, 5_100_000, 10, 10),
        "nodata": 0,
        "tiled": True,
        "blockxsize": 32,
        "blockysize": 32,
        "compress": "deflate",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if overviews:
            dst.build_overviews(overviews, Resampling.average)
    return path


@pytest.fixture
def noise(tmp_path: Path) -> Path:
    data = np.random.default_rng(0).integers(1, 60_000, size=(4, 203, 317), dtype=np.uint16)
    return _write_tiled(tmp_path / "noise.tif", data)


def test_bounded_memory_sets_the_gdal_cache_in_mebibytes_not_bytes() -> None:
    # rasterio passes GDAL_CACHEMAX to GDALSetCacheMax64 as is: a bare 16 would be 16 bytes
    with bounded_memory():
        assert get_gdal_config("GDAL_CACHEMAX") == GDAL_CACHE_MB * 2**20


@pytest.mark.parametrize("shape", [(50, 80), (203, 317), (17, 9), (1, 1), (101, 158)])
def test_decimated_read_picks_the_pixels_gdal_picks(noise: Path, shape: tuple[int, int]) -> None:
    with rasterio.open(noise) as src:  # GDAL's own nearest-neighbour decimation, the reference
        expected = src.read([3, 2, 1], out_shape=(3, *shape), resampling=Resampling.nearest)
        bounds, nodata = src.bounds, src.nodata
    data, got_bounds, got_nodata = read_decimated(noise, [3, 2, 1], shape)
    np.testing.assert_array_equal(data, expected)
    assert got_bounds == bounds and got_nodata == nodata
    single, _, _ = read_decimated(noise, 2, shape)
    np.testing.assert_array_equal(single, expected[1])


def test_strips_smaller_than_the_raster_give_the_same_preview(noise: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole, _, _ = read_decimated(noise, [1, 2, 3, 4], (40, 60))
    reads: list[int] = []
    original = rasterio.io.DatasetReader.read

    def counting_read(self, *args, **kwargs):
        reads.append(kwargs["window"].height)
        return original(self, *args, **kwargs)

    # one block row (32 rows) per strip: several strips, none taller than a block row
    monkeypatch.setattr(rasters, "PREVIEW_STRIP_BYTES", 1)
    monkeypatch.setattr(rasterio.io.DatasetReader, "read", counting_read)
    strips, _, _ = read_decimated(noise, [1, 2, 3, 4], (40, 60))
    np.testing.assert_array_equal(strips, whole)
    assert len(reads) == 7 and max(reads) <= 32  # ceil(203 / 32) block rows, each read once


def test_a_raster_with_overviews_is_previewed_from_the_coarsest_large_enough_one(tmp_path: Path) -> None:
    data = np.random.default_rng(1).integers(1, 60_000, size=(3, 256, 256), dtype=np.uint16)
    path = _write_tiled(tmp_path / "ovr.tif", data, overviews=[2, 4, 8])
    with rasterio.open(path, overview_level=1) as level:  # factor 4: 64 x 64, the coarsest >= 60 x 50
        expected = level.read([1, 2, 3], out_shape=(3, 50, 60), resampling=Resampling.nearest)
    preview, bounds, _ = read_decimated(path, [1, 2, 3], (50, 60))
    np.testing.assert_array_equal(preview, expected)
    with rasterio.open(path) as src:
        assert bounds == src.bounds  # the full raster's, not the overview's grid


def test_bounded_memory_tunes_malloc_only_inside_a_tuning_section(monkeypatch: pytest.MonkeyPatch) -> None:
    from geocl.data import malloc

    thresholds: list[int] = []
    monkeypatch.setattr(malloc, "_STATE", malloc._MallocState())
    monkeypatch.setattr(malloc, "_set_mmap_threshold", thresholds.append)
    with bounded_memory():  # library code alone: the process's malloc is left as it is
        pass
    assert thresholds == []
    with malloc.malloc_tuning(), bounded_memory():
        assert thresholds == [malloc.MMAP_THRESHOLD]
    assert thresholds == [malloc.MMAP_THRESHOLD, malloc.COMPUTE_MMAP_THRESHOLD]


def test_a_missing_scene_is_a_missing_input_error(tmp_path: Path) -> None:
    """Also a FileNotFoundError (as torchgeo's DatasetNotFoundError), with the message naming the path."""
    missing = tmp_path / "nowhere.tif"
    with pytest.raises(MissingInputError) as raised:
        rasters.find_rasters(missing)
    assert isinstance(raised.value, FileNotFoundError)
    assert str(raised.value) == f"{missing}: scene not found"
