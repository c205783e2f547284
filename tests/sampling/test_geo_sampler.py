"""GradientRegionSampler and box sums (geocl/sampling/geo_sampler.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.warp
from pyproj import CRS as ProjCRS
from rasterio.transform import from_origin
from torch.utils.data import DataLoader
from torchgeo.datasets import stack_samples

from geocl.data.scene import SceneImage
from geocl.errors import GeoclError
from geocl.sampling.geo_sampler import GradientRegionSampler, box_sums
from geocl.sampling.region_rasters import write_region_map
from tests.conftest import RasterWriter, coordinate_image

RES = 10.0
TOP = 5_100_000.0
#: Left edges of the two 64 x 64 px tiles, side by side.
LEFTS = (500_000.0, 500_640.0)


@pytest.fixture
def scene(tmp_path: Path, write_raster: RasterWriter) -> dict[str, Path]:
    """Two tiles (coordinate images) and their region maps.

    Map ``a``: a smooth bump with a NaN block (rows 0-19, cols 40-63, tile nodata).
    Map ``b``: left half 1.0, right half 0.1.
    """
    tiles, maps = tmp_path / "tiles", tmp_path / "maps"
    rows, cols = np.mgrid[0:64, 0:64]
    bump = np.exp(-((rows - 40.0) ** 2 + (cols - 20.0) ** 2) / (2 * 12.0**2))
    valid_a = ~((rows < 20) & (cols >= 40))
    halves = np.where(cols < 32, 1.0, 0.1)
    for name, left, heat, valid in (("a", LEFTS[0], bump, valid_a), ("b", LEFTS[1], halves, None)):
        tile = write_raster(tiles / f"{name}.tif", coordinate_image(64, 64), origin=(left, TOP), res=RES)
        with rasterio.open(tile) as src:
            write_region_map(maps / f"{name}.tif", heat, transform=src.transform, crs=src.crs, valid=valid)
    return {"tiles": tiles, "maps": maps, "a": maps / "a.tif", "b": maps / "b.tif"}


def read_map(path: Path) -> tuple[np.ndarray, rasterio.Affine]:
    with rasterio.open(path) as src:
        return src.read(1), src.transform


def window_of(box: tuple[slice, slice], transform: rasterio.Affine) -> tuple[float, float, float, float]:
    """(row0, row1, col0, col1) of a map-CRS box in a map's pixels (may be fractional)."""
    x, y = box
    col0, row0 = ~transform @ (x.start, y.stop)
    col1, row1 = ~transform @ (x.stop, y.start)
    return row0, row1, col0, col1


# --- box_sums -------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "stride"), [(1, 1), (5, 1), (5, 3), (16, 4), (23, 7), (40, 1)])
def test_box_sums_match_brute_force(size: int, stride: int) -> None:
    rng = np.random.default_rng(size * 10 + stride)
    floats = rng.normal(size=(31, 40))
    ints = rng.integers(0, 5, size=(31, 40))
    for values in (floats, ints, ints > 2):
        sums = box_sums(values, size, stride)
        rows, cols = range(0, 31 - size + 1, stride), range(0, 40 - size + 1, stride)
        assert sums.shape == (len(rows), len(cols))
        expected = np.array([[values[r : r + size, c : c + size].sum() for c in cols] for r in rows])
        expected = expected.reshape(sums.shape)
        np.testing.assert_allclose(sums, expected, rtol=0, atol=1e-9)


def test_box_sums_of_a_too_small_array_are_empty() -> None:
    assert box_sums(np.ones((4, 10)), 5).shape == (0, 6)


# --- GradientRegionSampler -------------------------------------------------------------


def test_boxes_lie_inside_a_map_and_its_valid_area(scene: dict[str, Path]) -> None:
    sampler = GradientRegionSampler(scene["maps"], size=16, length=400, generator=0)
    assert len(sampler) == 400
    maps = [read_map(scene["a"]), read_map(scene["b"])]
    hits = [0, 0]
    boxes = list(sampler)
    assert len(boxes) == 400
    for x, y in boxes:
        assert x.step == RES and y.step == RES
        assert x.stop - x.start == pytest.approx(16 * RES) and y.stop - y.start == pytest.approx(16 * RES)
        inside = []
        for k, (values, transform) in enumerate(maps):
            row0, row1, col0, col1 = window_of((x, y), transform)
            if row0 >= 0 and col0 >= 0 and row1 <= 64 and col1 <= 64:
                assert row0 == round(row0) and col0 == round(col0)  # on the map's pixel grid
                assert not np.isnan(values[round(row0) : round(row1), round(col0) : round(col1)]).any()
                inside.append(k)
        assert len(inside) == 1  # never straddles the two tiles
        hits[inside[0]] += 1
    assert min(hits) > 0


def test_draws_follow_the_weights(scene: dict[str, Path]) -> None:
    """Left half 1.0, right half 0.1: boxes centred in the left half, at the expected rate.

    Expected rate from a brute-force weight of every candidate (stride 1); 2000 draws
    give a binomial standard error of about 0.009; the tolerance is 4 standard errors.
    """
    size, draws = 8, 2000
    values, transform = read_map(scene["b"])
    weights = box_sums(np.maximum(values, 0), size, 1)
    origins = np.arange(weights.shape[1])
    high = (origins + size / 2) < 32  # box centre left of the map's middle
    expected = weights[:, high].sum() / weights.sum()
    assert 0.6 < expected < 0.9

    sampler = GradientRegionSampler([scene["b"]], size=size, length=draws, stride=1, generator=123)
    middle = (transform @ (32, 0))[0]
    observed = np.mean([(x.start + x.stop) / 2 < middle for x, _ in sampler])
    tolerance = 4 * math.sqrt(expected * (1 - expected) / draws)
    assert abs(observed - expected) < tolerance
    assert observed > 0.5 + tolerance


def test_negative_values_weigh_nothing_and_a_zero_map_is_drawn_uniformly(tmp_path: Path) -> None:
    transform = from_origin(500_000.0, TOP, RES, RES)
    cols = np.mgrid[0:32, 0:64][1]
    signed = write_region_map(
        tmp_path / "signed.tif", np.where(cols < 32, -1.0, 1.0), transform=transform, crs="EPSG:32633"
    )
    sampler = GradientRegionSampler([signed], size=8, length=300, stride=1, generator=0)
    middle = 500_000.0 + 32 * RES
    assert all(x.stop > middle for x, _ in sampler)  # every box reaches the positive half

    zero = write_region_map(tmp_path / "zero.tif", np.zeros((32, 64)), transform=transform, crs="EPSG:32633")
    boxes = list(GradientRegionSampler([zero], size=8, length=300, stride=1, generator=0))
    left = np.mean([(x.start + x.stop) / 2 < middle for x, _ in boxes])
    assert 0.35 < left < 0.65  # uniform over 57 candidate columns: 28/57 = 0.49


def test_the_maps_nodata_value_is_invalid_too(tmp_path: Path, write_raster: RasterWriter) -> None:
    values = np.ones((32, 32), dtype=np.float32)
    values[:, 8:] = -9999.0
    path = write_raster(tmp_path / "m.tif", values, nodata=-9999.0)
    boxes = list(GradientRegionSampler([path], size=8, length=50, stride=1, generator=0))
    assert {(x.start, x.stop) for x, _ in boxes} == {(500_000.0, 500_080.0)}


def test_boxes_read_from_the_dataset_at_the_right_place(scene: dict[str, Path]) -> None:
    dataset = SceneImage(scene["tiles"])
    sampler = GradientRegionSampler(scene["maps"], size=16, length=30, crs=dataset.crs, generator=1)
    assert sampler.crs == dataset.crs
    for x, y in sampler:
        image = dataset[x, y]["image"]
        assert image.shape == (3, 16, 16)
        tile = 0 if x.start < LEFTS[1] else 1
        row0 = round((TOP - y.stop) / RES)
        col0 = round((x.start - LEFTS[tile]) / RES)
        # coordinate images: band 0 = row + 1, band 1 = col + 1 of the tile
        assert image[0, 0, 0] == row0 + 1 and image[1, 0, 0] == col0 + 1
        assert image[0, -1, -1] == row0 + 16 and image[1, -1, -1] == col0 + 16


def test_boxes_in_another_crs_than_the_maps(scene: dict[str, Path]) -> None:
    """Maps in EPSG:32633, dataset reprojected to EPSG:3857: boxes come in 3857."""
    mercator = ProjCRS.from_epsg(3857)
    dataset = SceneImage(scene["tiles"], crs=mercator)
    in_maps = list(GradientRegionSampler(scene["maps"], size=16, length=40, generator=2))
    in_mercator = list(GradientRegionSampler(scene["maps"], size=16, length=40, crs=dataset.crs, generator=2))
    assert dataset.crs == mercator
    x_bounds, y_bounds = dataset.bounds[0], dataset.bounds[1]
    for (x, y), (mx, my) in zip(in_maps, in_mercator, strict=True):
        # the same draw, reprojected: its centre is the map box's centre in 3857 (within 1 m)
        (cx,), (cy,) = rasterio.warp.transform(
            "EPSG:32633", "EPSG:3857", [(x.start + x.stop) / 2], [(y.start + y.stop) / 2]
        )
        assert abs((mx.start + mx.stop) / 2 - cx) < 1.0 and abs((my.start + my.stop) / 2 - cy) < 1.0
        # densified reprojection may bulge past the dataset's (corner-reprojected) bounds
        # by a fraction of a pixel at the scene's edge
        assert x_bounds.start - mx.step <= mx.start < mx.stop <= x_bounds.stop + mx.step
        assert y_bounds.start - my.step <= my.start < my.stop <= y_bounds.stop + my.step
        assert dataset[mx, my]["image"].shape == (3, 16, 16)
    # every box reads the same shape, so a DataLoader can stack them into batches
    sampler = GradientRegionSampler(scene["maps"], size=16, length=8, crs=dataset.crs, generator=3)
    batches = list(DataLoader(dataset, batch_size=4, sampler=sampler, collate_fn=stack_samples))
    assert [tuple(batch["image"].shape) for batch in batches] == [(4, 3, 16, 16)] * 2


def test_same_seed_same_boxes(scene: dict[str, Path]) -> None:
    first = list(GradientRegionSampler(scene["maps"], size=8, length=50, generator=7))
    again = list(GradientRegionSampler(scene["maps"], size=8, length=50, generator=np.random.default_rng(7)))
    other = list(GradientRegionSampler(scene["maps"], size=8, length=50, generator=8))
    assert first == again
    assert first != other
    sampler = GradientRegionSampler(scene["maps"], size=8, length=50, generator=7)
    assert list(sampler) == first
    assert list(sampler) != first  # a new epoch draws new boxes


def test_default_stride_is_an_eighth_of_the_size(scene: dict[str, Path]) -> None:
    sampler = GradientRegionSampler(scene["maps"], size=16, length=200, generator=0)
    assert sampler.stride == 2
    for x, _ in sampler:
        col0 = (x.start - (LEFTS[0] if x.start < LEFTS[1] else LEFTS[1])) / RES
        assert col0 % 2 == 0


def test_a_folder_without_maps_is_a_user_error(tmp_path: Path) -> None:
    empty = tmp_path / "no-maps"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a raster")
    with pytest.raises(GeoclError) as error:
        GradientRegionSampler(empty, size=8, length=10)
    assert error.value.path == str(empty)
    with pytest.raises(GeoclError):
        GradientRegionSampler(tmp_path / "missing", size=8, length=10)


def test_maps_without_any_candidate_box_are_a_user_error(tmp_path: Path) -> None:
    transform = from_origin(500_000.0, TOP, RES, RES)
    folder = tmp_path / "maps"
    write_region_map(folder / "small.tif", np.ones((6, 6)), transform=transform, crs="EPSG:32633")
    holes = np.ones((32, 32))
    holes[::6, :] = np.nan  # no 8 x 8 window free of NaN
    write_region_map(folder / "holes.tif", holes, transform=transform, crs="EPSG:32633")
    with pytest.raises(GeoclError, match="no 8x8 px box") as error:
        GradientRegionSampler(folder, size=8, length=10)
    assert error.value.path == str(folder)
    assert len(list(GradientRegionSampler(folder, size=5, length=10))) == 10  # 5 px boxes fit


@pytest.mark.parametrize("arguments", [{"size": 0}, {"size": 8, "stride": 0}, {"size": 8, "length": -1}])
def test_bad_arguments_are_user_errors(scene: dict[str, Path], arguments: dict[str, int]) -> None:
    arguments = {"length": 10, **arguments}
    with pytest.raises(GeoclError):
        GradientRegionSampler(scene["maps"], **arguments)
