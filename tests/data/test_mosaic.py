"""Several GeoTIFFs read as one raster: the grid, exact reads of tiles of one scene, gaps, files and folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.windows import Window

from geocl.data.mosaic import SceneMosaic, open_scene, scene_files
from geocl.errors import GeoclError
from tests.conftest import coordinate_image

ORIGIN = (500_000.0, 5_100_000.0)
RES = 2.5


def write_quarters(  # type: ignore[no-untyped-def]
    folder: Path, write_raster, data: np.ndarray, cut: tuple[int, int], skip: int | None = None
) -> list[Path]:
    """The scene ``data`` cut at (row, col) into four files on its own pixel grid (``skip``: leave one out)."""
    row, col = cut
    parts = [(0, 0), (0, col), (row, 0), (row, col)]
    ends = [(row, col), (row, None), (None, col), (None, None)]
    files = []
    for index, ((top, left), (bottom, right)) in enumerate(zip(parts, ends, strict=False)):
        if index == skip:
            continue
        piece = data[:, top:bottom, left:right]
        origin = (ORIGIN[0] + left * RES, ORIGIN[1] - top * RES)
        files.append(write_raster(folder / f"part{index}.tif", piece, origin=origin, res=RES, nodata=0))
    return files


def test_tiles_of_a_scene_read_back_as_the_scene(tmp_path: Path, write_raster) -> None:
    data = coordinate_image(70, 91)
    whole = write_raster(tmp_path / "whole.tif", data, origin=ORIGIN, res=RES, nodata=0)
    files = write_quarters(tmp_path / "parts", write_raster, data, (33, 40))
    with open_scene(files) as mosaic, rasterio.open(whole) as src:
        assert isinstance(mosaic, SceneMosaic)
        assert (mosaic.height, mosaic.width, mosaic.count) == (70, 91, 3)
        assert mosaic.transform == src.transform and mosaic.crs == src.crs
        assert mosaic.nodata == 0
        np.testing.assert_array_equal(mosaic.read(window=Window(0, 0, 91, 70)), data)
        # a window across all four files, at an odd offset
        np.testing.assert_array_equal(mosaic.read(window=Window(13, 7, 50, 41)), data[:, 7:48, 13:63])
        small = mosaic.read_decimated((35, 45), [3, 2, 1])
        assert small.shape == (3, 35, 45)
        # row + 1 in band 1, col + 1 in band 2: the decimated read samples the whole scene in order
        # (a preview: each file is decimated on its own, so samples shift by a pixel at the seams)
        assert np.abs(small[2, :, 0] - (np.arange(35) * 2 + 1)).max() <= 3
        assert np.abs(small[1, 0, :-1] - (np.arange(44) * 91 / 45 + 1)).max() <= 3


def test_a_gap_in_the_mosaic_reads_as_nodata(tmp_path: Path, write_raster) -> None:
    data = coordinate_image(40, 50)
    files = write_quarters(tmp_path / "parts", write_raster, data, (20, 25), skip=3)  # no bottom-right quarter
    with open_scene(files) as mosaic:
        assert (mosaic.height, mosaic.width) == (40, 50)
        read = mosaic.read(window=Window(0, 0, 50, 40))
        assert (read[:, 20:, 25:] == 0).all()
        np.testing.assert_array_equal(read[:, :20], data[:, :20])
        assert (mosaic.read(window=Window(30, 25, 10, 10)) == 0).all()  # no file at all there


def test_one_file_is_read_with_rasterio(tmp_path: Path, write_raster) -> None:
    path = write_raster(tmp_path / "one.tif", coordinate_image(10, 12))
    with open_scene([path]) as src:
        assert isinstance(src, rasterio.io.DatasetReader) and src.shape == (10, 12)


def test_scene_files_from_files_and_folders(tmp_path: Path, write_raster) -> None:
    a = write_raster(tmp_path / "f" / "b.tif", coordinate_image(4, 4))
    b = write_raster(tmp_path / "f" / "a.tif", coordinate_image(4, 4))
    c = write_raster(tmp_path / "c.tif", coordinate_image(4, 4))
    assert scene_files(tmp_path / "f") == [b, a]  # a folder: sorted
    assert scene_files([c, tmp_path / "f", a]) == [c, b, a]  # given order, each once
    with pytest.raises(GeoclError, match="not found"):
        scene_files([c, tmp_path / "missing.tif"])
    with pytest.raises(GeoclError, match="no scene given"):
        scene_files([])


def two_crs(tmp_path: Path, write_raster) -> tuple[Path, Path, np.ndarray]:  # type: ignore[no-untyped-def]
    """a.tif in UTM 33N (a hole of nodata at its east edge) and b.tif in UTM 34N over that edge."""
    a = coordinate_image(60, 70)
    a[:, 10:20, 62:70] = 0
    first = write_raster(tmp_path / "a.tif", a, origin=(699_000.0, 5_100_000.0), res=10.0, nodata=0)
    x, y = Transformer.from_crs("EPSG:32633", "EPSG:32634", always_xy=True).transform(
        699_000.0 + 500, 5_100_000.0 + 155
    )
    b = coordinate_image(50, 50) + 1000
    second = write_raster(tmp_path / "b.tif", b, crs="EPSG:32634", origin=(x, y), res=10.0, nodata=0)
    return first, second, a


def test_files_in_two_crs_are_read_on_the_first_files_grid(tmp_path: Path, write_raster) -> None:
    first, second, a = two_crs(tmp_path, write_raster)
    with open_scene([first, second]) as mosaic:
        assert mosaic.crs == "EPSG:32633" and mosaic.res == (10.0, 10.0)
        col, row = ~mosaic.transform @ (699_000.0, 5_100_000.0)
        assert (col, row) == (round(col), round(row)) and row > 0  # b reaches above a: the grid grew by whole pixels
        col, row = round(col), round(row)
        read = mosaic.read(window=Window(col, row, 70, 60))
        valid = ~(a == 0).all(axis=0)
        np.testing.assert_array_equal(read[:, valid], a[:, valid])  # a's pixels as they are, winning the overlap
        assert (read[:, 10:20, 62:70] > 1000).any()  # its hole is filled from b where b lies
        assert mosaic.notes == (
            "b.tif is resampled from EPSG:32634 to EPSG:32633 onto the pixel grid of a.tif (10 x 10 m pixels), "
            "nearest neighbour",
            f"a.tif and b.tif overlap (about {mosaic.notes[1].split('about ')[1].split(' px')[0]} px): a.tif's "
            "pixels are kept there, b.tif fills only its nodata",
        )
        everything = mosaic.read(window=Window(0, 0, mosaic.width, mosaic.height))
        from_b = everything[0] > 1000
        assert from_b.sum() > 1000 and set(np.unique(everything[0][from_b])) <= set(
            range(1001, 1051)
        )  # nearest: b's values
    with open_scene([second, first]) as mosaic:  # the order given decides
        assert mosaic.crs == "EPSG:32634"
        assert mosaic.notes[0].startswith(
            "a.tif is resampled from EPSG:32633 to EPSG:32634 onto the pixel grid of b.tif"
        )


def test_a_file_off_the_grid_or_at_another_pixel_size_is_named(tmp_path: Path, write_raster) -> None:
    first = write_raster(tmp_path / "a.tif", coordinate_image(20, 20), origin=ORIGIN, res=RES, nodata=0)
    finer = write_raster(tmp_path / "fine.tif", coordinate_image(20, 20), origin=(ORIGIN[0] + 50, ORIGIN[1]), res=1.25)
    shifted = write_raster(
        tmp_path / "shift.tif", coordinate_image(20, 20), origin=(ORIGIN[0] + 50.75, ORIGIN[1]), res=RES
    )
    tile = write_raster(tmp_path / "tile.tif", coordinate_image(20, 20), origin=(ORIGIN[0] + 50, ORIGIN[1]), res=RES)
    with open_scene([first, finer, shifted, tile]) as mosaic:
        assert mosaic.notes == (
            "fine.tif is resampled from 1.25 x 1.25 m pixels onto the pixel grid of a.tif (2.5 x 2.5 m pixels), "
            "nearest neighbour",
            "shift.tif is resampled onto the pixel grid of a.tif (2.5 x 2.5 m pixels), off which its pixels lie by "
            "+0.30, +0.00 px, nearest neighbour",
            "fine.tif and shift.tif overlap (about 97 px): fine.tif's pixels are kept there, shift.tif fills only "
            "its nodata",
            "fine.tif and tile.tif overlap (about 100 px): fine.tif's pixels are kept there, tile.tif fills only "
            "its nodata",
            "shift.tif and tile.tif overlap (about 394 px): shift.tif's pixels are kept there, tile.tif fills only "
            "its nodata",
        )
