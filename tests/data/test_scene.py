"""Tests for geocl.data.scene and geocl.data.roi with TorchGeo samplers."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
import torch
from torchgeo.samplers import GriddedPatchSampler, RandomPatchSampler

from geocl.data.roi import read_roi
from geocl.data.scene import SceneImage, SceneMask, labelled_scene
from geocl.data.synthetic import URBAN_CLASS_NAMES, make_scene
from geocl.errors import GeoclError
from tests.conftest import RasterWriter, coordinate_image


@pytest.fixture
def pair(tmp_path: Path, write_raster: RasterWriter) -> tuple[Path, Path]:
    image = write_raster(tmp_path / "image.tif", coordinate_image(200, 200, bands=5), nodata=0)
    labels = (np.arange(200 * 200).reshape(200, 200) % 3).astype(np.uint8)
    mask = write_raster(tmp_path / "mask.tif", labels)
    return image, mask


def test_labelled_scene_samples_hold_image_and_mask_on_one_grid(pair: tuple[Path, Path]) -> None:
    image, mask = pair
    dataset = labelled_scene(SceneImage(image), SceneMask(mask))
    left, top = 500_000.0, 5_100_000.0
    sample = dataset[left + 100 : left + 420, top - 640 : top - 320]  # 32 x 32 px at 10 m
    assert sample["image"].shape == (5, 32, 32) and sample["image"].dtype == torch.float32
    assert sample["mask"].shape == (32, 32) and sample["mask"].dtype == torch.long
    # row 32, col 10 of the scene: band 0 = row + 1, band 1 = col + 1, label = (row*200+col) % 3
    assert sample["image"][0, 0, 0] == 33 and sample["image"][1, 0, 0] == 11
    assert sample["mask"][0, 0] == (32 * 200 + 10) % 3


def test_the_urban_synthetic_scene_samples_at_its_sub_metre_resolution(tmp_path: Path) -> None:
    files = make_scene(tmp_path, kind="urban", size=256, seed=0)
    dataset = labelled_scene(SceneImage(files.image), SceneMask(files.mask))
    assert dataset.res == (0.2, 0.2)
    boxes = list(RandomPatchSampler(dataset, size=128, length=3, generator=0))  # 128 px = 25.6 m
    for x, y in boxes:
        sample = dataset[x, y]
        assert sample["image"].shape == (4, 128, 128) and sample["mask"].shape == (128, 128)
        assert int(sample["mask"].max()) < len(URBAN_CLASS_NAMES)


def test_mask_must_have_one_band(tmp_path: Path, write_raster: RasterWriter) -> None:
    two = write_raster(tmp_path / "two.tif", np.ones((2, 32, 32), np.uint8))
    with pytest.raises(GeoclError, match="one band"):
        SceneMask(two)


def test_samplers_with_roi_from_vector_file_yield_readable_boxes_inside_roi(
    tmp_path: Path, pair: tuple[Path, Path]
) -> None:
    image, _ = pair
    dataset = SceneImage(image)
    left, top = 500_000.0, 5_100_000.0
    roi_utm = shapely.box(left + 300, top - 1500, left + 1700, top - 200)
    roi_file = tmp_path / "roi.gpkg"
    gpd.GeoDataFrame(geometry=[roi_utm], crs="EPSG:32633").to_crs("EPSG:3857").to_file(roi_file)
    roi = read_roi(roi_file, dataset.crs)
    assert roi.symmetric_difference(roi_utm).area < 1e-3

    random_sampler = RandomPatchSampler(dataset, size=16, length=50, roi=roi, generator=0)
    boxes = list(random_sampler)
    assert len(boxes) == 50
    for x, y in boxes:
        box = shapely.box(x.start, y.start, x.stop, y.stop)
        assert roi_utm.buffer(1e-6).contains(box)
        assert dataset[x, y]["image"].shape == (5, 16, 16)

    grid = list(GriddedPatchSampler(dataset, size=16, stride=16, roi=roi))
    covered = shapely.union_all([shapely.box(x.start, y.start, x.stop, y.stop) for x, y in grid])
    assert roi_utm.difference(covered).area < 1e-3


def test_unreadable_roi_file_is_named(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    image, _ = pair
    broken = tmp_path / "roi.geojson"
    broken.write_text("{not json")
    with pytest.raises(GeoclError) as error:
        read_roi(broken, SceneImage(image).crs)
    assert str(broken) in str(error.value)


def _grid_labels(dtype: str) -> np.ndarray:
    return (np.arange(64 * 64).reshape(64, 64) % 3).astype(dtype)


def test_a_float_mask_with_a_fraction_is_refused_naming_file_and_pixel(
    tmp_path: Path, write_raster: RasterWriter
) -> None:
    labels = _grid_labels("float32")
    labels[5, 7] = 1.5
    mask = write_raster(tmp_path / "mask.tif", labels)
    with pytest.raises(GeoclError) as error:
        SceneMask(mask)
    assert str(error.value) == (
        f"{mask}: a class mask needs integer class values, this one holds 1.5 (row 5, col 7); "
        "classify or round it, or mark such pixels as nodata"
    )


@pytest.mark.parametrize("bad", [np.inf, 2.0**40])
def test_a_float_mask_with_no_integer_class_is_refused(tmp_path: Path, write_raster: RasterWriter, bad: float) -> None:
    labels = _grid_labels("float64")
    labels[0, 0] = bad
    with pytest.raises(GeoclError, match="needs integer class values"):
        SceneMask(write_raster(tmp_path / "mask.tif", labels))


def test_a_fraction_in_any_file_of_a_mask_folder_is_found(tmp_path: Path, write_raster: RasterWriter) -> None:
    write_raster(tmp_path / "m" / "a.tif", _grid_labels("uint8"))
    labels = _grid_labels("float32")
    labels[-1, -1] = 0.25
    second = write_raster(tmp_path / "m" / "b.tif", labels, origin=(500_640.0, 5_100_000.0))
    with pytest.raises(GeoclError, match="holds 0.25 \\(row 63, col 63\\)") as error:
        SceneMask(tmp_path / "m")
    assert error.value.path == str(second)


def test_nan_pixels_of_a_float_mask_read_as_nodata(tmp_path: Path, write_raster: RasterWriter) -> None:
    labels = _grid_labels("float32")
    labels[:4] = np.nan
    mask = SceneMask(write_raster(tmp_path / "mask.tif", labels, nodata=float("nan")))
    assert (mask.class_dtype, mask.mask_nodata) == ("uint8", 255)
    left, top = 500_000.0, 5_100_000.0
    sample = mask[left : left + 640, top - 640 : top]
    assert sample["mask"].dtype == torch.long
    expected = torch.from_numpy(np.where(np.isnan(labels), 255, labels).astype(np.int64))
    assert torch.equal(sample["mask"], expected)


@pytest.mark.parametrize(
    ("values", "nodata", "expected"),
    [
        ((0, 300), -1.0, ("int16", -1)),  # a whole-number nodata is kept
        ((-5, 3), float("nan"), ("int16", 32767)),  # negative classes: a signed dtype, nodata above them
        ((0, 255), float("nan"), ("uint16", 65535)),  # 255 is a class: no room for nodata in uint8
        ((0, 9), -3.4e38, ("uint8", 255)),  # a float nodata that is no class number is replaced
        ((1, 4), None, ("uint8", None)),
    ],
)
def test_float_mask_classes_are_stored_in_the_smallest_integer_dtype(
    tmp_path: Path, write_raster: RasterWriter, values: tuple[int, int], nodata: float | None, expected: tuple
) -> None:
    labels = np.full((16, 16), values[0], np.float32)
    labels[0, 0] = values[1]
    if nodata is not None:
        labels[-1, -1] = nodata
    mask = SceneMask(write_raster(tmp_path / "mask.tif", labels, nodata=nodata))
    assert (mask.class_dtype, mask.mask_nodata) == expected
    sample = mask[500_000.0:500_160.0, 5_099_840.0:5_100_000.0]["mask"]
    assert sample[0, 0] == values[1] and sample[1, 1] == values[0]
    if nodata is not None:
        assert sample[-1, -1] == expected[1]


def test_an_integer_mask_is_read_as_it_is(pair: tuple[Path, Path]) -> None:
    _, mask = pair
    scene_mask = SceneMask(mask)
    assert (scene_mask.class_dtype, scene_mask.mask_nodata, scene_mask.dtype) == ("uint8", None, torch.long)


# ------------------------------------------------------- an unlabelled value (mask_nodata)


def test_a_given_unlabelled_value_becomes_the_nodata_of_an_integer_mask(pair: tuple[Path, Path]) -> None:
    _, mask = pair  # uint8 classes 0, 1, 2 and no nodata tag
    scene_mask = SceneMask(mask, nodata=0)
    assert (scene_mask.class_dtype, scene_mask.mask_nodata) == ("uint8", 0)
    left, top = 500_000.0, 5_100_000.0
    sample = scene_mask[left : left + 320, top - 320 : top]["mask"]  # 32 x 32 px, read as they are
    expected = torch.from_numpy((np.arange(200 * 200).reshape(200, 200) % 3)[:32, :32].astype(np.int64))
    assert torch.equal(sample, expected)


def test_the_files_own_nodata_still_reads_as_unlabelled(tmp_path: Path, write_raster: RasterWriter) -> None:
    labels = _grid_labels("uint8")  # classes 0..2
    labels[:2] = 255
    scene_mask = SceneMask(write_raster(tmp_path / "mask.tif", labels, nodata=255), nodata=0)
    assert scene_mask.mask_nodata == 0
    sample = scene_mask[500_000.0:500_640.0, 5_099_360.0:5_100_000.0]["mask"]
    assert (sample[:2] == 0).all()  # 255 (the tag) and 0 (given) both mean unlabelled
    assert torch.equal(sample[2:], torch.from_numpy(labels[2:].astype(np.int64)))


def test_where_the_mask_does_not_reach_reads_as_the_given_unlabelled_value(
    tmp_path: Path, write_raster: RasterWriter
) -> None:
    labels = np.full((16, 16), 2, np.uint8)  # covers the left half of a 32 px wide read
    mask = write_raster(tmp_path / "mask.tif", labels)
    wide = write_raster(tmp_path / "wide.tif", np.full((16, 32), 2, np.uint8))
    dataset = labelled_scene(SceneImage(wide), SceneMask(mask, nodata=7))
    sample = dataset[500_000.0:500_320.0, 5_099_840.0:5_100_000.0]["mask"]
    assert (sample[:, :16] == 2).all() and (sample[:, 16:] == 7).all()  # not class 0, GDAL's fill


def test_a_float_mask_with_a_given_unlabelled_value(tmp_path: Path, write_raster: RasterWriter) -> None:
    labels = _grid_labels("float32") + 1.0  # classes 1..3
    labels[0, :4] = 0.0
    labels[1, :4] = np.nan
    scene_mask = SceneMask(write_raster(tmp_path / "mask.tif", labels, nodata=float("nan")), nodata=0)
    assert (scene_mask.class_dtype, scene_mask.mask_nodata) == ("uint8", 0)
    sample = scene_mask[500_000.0:500_640.0, 5_099_360.0:5_100_000.0]["mask"]
    assert (sample[:2, :4] == 0).all() and (sample[2:] >= 1).all()


def test_an_unlabelled_value_outside_the_mask_dtype_is_refused(pair: tuple[Path, Path]) -> None:
    _, mask = pair
    with pytest.raises(GeoclError, match=r"unlabelled value 300 \(given by mask_nodata\).*uint8 \(0\.\.255\)") as error:
        SceneMask(mask, nodata=300)
    assert error.value.key == "mask_nodata" and error.value.path == str(mask)
