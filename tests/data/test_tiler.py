"""Tests for geocl.data.tiler: pixel exactness, index, ROI coverage, splits, resume."""

from __future__ import annotations

import errno
import hashlib
from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from pyproj import Transformer
from rasterio.transform import rowcol

import geocl.data.tileset as tileset
from geocl.data.stats import valid_pixels
from geocl.data.tiler import TilingOptions, tile_scene
from geocl.data.tileset import read_metadata
from geocl.errors import GeoclError, InvalidInputError, MissingInputError
from tests.conftest import RasterWriter, coordinate_image

ORIGIN = (500_000.0, 5_100_000.0)
RES = 10.0


@pytest.fixture
def scene(tmp_path: Path, write_raster: RasterWriter) -> Path:
    """300 x 260 px (W x H) scene whose pixels encode their own row and column."""
    data = coordinate_image(260, 300)
    data[:, :, :20] = 0  # a nodata strip on the left edge
    return write_raster(tmp_path / "scene.tif", data, nodata=0)


@pytest.fixture
def mask(tmp_path: Path, write_raster: RasterWriter) -> Path:
    rows, cols = np.mgrid[0:260, 0:300]
    labels = ((rows // 50 + cols // 70) % 4 + 1).astype(np.uint8)  # classes 1..4
    return write_raster(tmp_path / "mask.tif", labels)


def _index(out: Path) -> gpd.GeoDataFrame:
    return gpd.read_file(out / "tiles.gpkg", layer="tiles")


def test_tile_pixels_equal_source_pixels_at_same_map_coordinate(tmp_path: Path, scene: Path) -> None:
    out = tmp_path / "tiles"
    tile_scene(scene, out, options=TilingOptions(size=64, stride=64, max_nodata=1.0, split_block=128), progress=False)
    index = _index(out)
    with rasterio.open(scene) as src:
        source = src.read()
        source_transform = src.transform
    edge_rows, edge_cols = index["row"].max(), index["col"].max()
    checked = {"middle": 0, "edge": 0}
    for record in index.itertuples():
        with rasterio.open(out / record.path) as tile:
            data, transform = tile.read(), tile.transform
        kind = "edge" if record.row in (0, edge_rows) or record.col in (0, edge_cols) else "middle"
        for i, j in [(0, 0), (0, 63), (63, 0), (63, 63), (17, 41)]:
            x, y = transform @ (j + 0.5, i + 0.5)
            r, c = rowcol(source_transform, x, y)
            if 0 <= r < source.shape[1] and 0 <= c < source.shape[2]:
                assert np.array_equal(data[:, i, j], source[:, r, c]), (record.path, i, j)
            else:  # outside the scene: the tile holds nodata
                assert (data[:, i, j] == 0).all(), (record.path, i, j)
            checked[kind] += 1
    assert checked["middle"] > 0 and checked["edge"] > 0


def test_index_polygons_equal_tile_bounds_and_crs(tmp_path: Path, scene: Path) -> None:
    out = tmp_path / "tiles"
    tile_scene(scene, out, options=TilingOptions(size=64, stride=64, max_nodata=1.0, split_block=128), progress=False)
    index = _index(out)
    assert index.crs.to_epsg() == 32633
    for record in index.itertuples():
        with rasterio.open(out / record.path) as tile:
            assert tile.crs.to_epsg() == 32633
            assert tile.res == (RES, RES)
            assert tile.nodata == 0
            assert np.allclose(record.geometry.bounds, tuple(tile.bounds), atol=1e-6)
            assert record.geometry.equals(shapely.box(*tile.bounds))


def test_grid_tiles_cover_roi_given_in_another_crs(tmp_path: Path, scene: Path) -> None:
    left, top = ORIGIN
    roi_utm = shapely.Polygon(
        [(left + 400, top - 300), (left + 2500, top - 700), (left + 2200, top - 2400), (left + 700, top - 2000)]
    )
    roi_file = tmp_path / "roi.geojson"
    gpd.GeoDataFrame(geometry=[roi_utm], crs="EPSG:32633").to_crs("EPSG:4326").to_file(roi_file)
    out = tmp_path / "tiles"
    options = TilingOptions(size=32, stride=32, max_nodata=1.0, split_block=64, roi=str(roi_file))
    tile_scene(scene, out, options=options, progress=False)
    index = _index(out)
    covered = index.geometry.union_all()
    # the ROI went to WGS84 and back, so allow sub-millimetre reprojection noise
    assert roi_utm.difference(covered).area < 1e-3
    # and no tile lies wholly outside the ROI
    assert all(geometry.intersects(roi_utm) for geometry in index.geometry)
    assert len(index) < (260 // 32 + 1) * (300 // 32 + 1)


@pytest.mark.parametrize("stride", [64, 40])
def test_val_and_test_tiles_never_overlap_train_tiles(tmp_path: Path, scene: Path, stride: int) -> None:
    out = tmp_path / "tiles"
    options = TilingOptions(size=64, stride=stride, max_nodata=1.0, split_block=4 * stride, seed=3)
    summary = tile_scene(scene, out, options=options, progress=False)
    index = _index(out)
    assert set(index["split"]) == {"train", "val", "test"}
    train = index[index["split"] == "train"].geometry.union_all()
    for record in index[index["split"] != "train"].itertuples():
        assert record.geometry.intersection(train).area == 0, record.path
    if stride < 64:
        assert summary.dropped_overlap > 0


def test_tiles_above_nodata_limit_are_skipped(tmp_path: Path, scene: Path) -> None:
    out = tmp_path / "tiles"
    summary = tile_scene(
        scene, out, options=TilingOptions(size=64, stride=64, max_nodata=0.2, split_block=128), progress=False
    )
    index = _index(out)
    assert summary.skipped_nodata > 0
    for record in index.itertuples():
        with rasterio.open(out / record.path) as tile:
            fraction = 1 - valid_pixels(tile.read(), 0).mean()
        assert fraction <= 0.2
        assert record.nodata_fraction == pytest.approx(fraction)


def test_mask_tiles_match_source_mask_and_histograms(tmp_path: Path, scene: Path, mask: Path) -> None:
    out = tmp_path / "tiles"
    summary = tile_scene(
        scene,
        out,
        mask=mask,
        options=TilingOptions(size=64, stride=64, max_nodata=0.5, split_block=128),
        progress=False,
    )
    assert summary.classes == [1, 2, 3, 4]
    index = _index(out)
    with rasterio.open(mask) as src:
        labels, labels_transform = src.read(1), src.transform
    for record in index.itertuples():
        with rasterio.open(out / record.mask_path) as tile, rasterio.open(out / record.path) as image:
            tile_labels, valid = tile.read(1), valid_pixels(image.read(), 0)
            r0, c0 = rowcol(labels_transform, *(tile.transform @ (0.5, 0.5)))
        expected = labels[r0 : r0 + 64, c0 : c0 + 64]
        inside = tile_labels[: expected.shape[0], : expected.shape[1]]
        assert np.array_equal(inside, expected)
        histogram = [getattr(record, f"class_{value}") for value in (1, 2, 3, 4)]
        assert histogram == [int(((tile_labels == v) & valid).sum()) for v in (1, 2, 3, 4)]
    metadata = read_metadata(out)
    assert metadata["classes"] == [1, 2, 3, 4]
    assert metadata["band_stats"]["count"] > 0
    # pixels per class per split: the sums of the index rows' histograms of that split
    for split in ("train", "val", "test"):
        rows = index[index.split == split]
        expected = {str(v): int(rows[f"class_{v}"].sum()) for v in (1, 2, 3, 4)}
        assert metadata["class_pixels"][split] == expected
        assert summary.class_pixels[split] == {int(k): count for k, count in expected.items()}
    assert "test pixels per class" in summary.describe()


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*.tif"))
    }


def test_interrupted_tiling_resumes_to_the_same_files(
    tmp_path: Path, scene: Path, mask: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = TilingOptions(size=64, stride=48, max_nodata=0.5, split_block=96)
    clean = tmp_path / "clean"
    tile_scene(scene, clean, mask=mask, options=options, progress=False)

    resumed = tmp_path / "resumed"
    real_write = tileset._write_geotiff
    calls = {"n": 0}

    def failing_write(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] > 7:
            raise RuntimeError("injected failure")
        real_write(*args, **kwargs)

    monkeypatch.setattr(tileset, "_write_geotiff", failing_write)
    with pytest.raises(RuntimeError, match="injected"):
        tile_scene(scene, resumed, mask=mask, options=options, progress=False)
    partial = _hashes(resumed)
    assert 0 < len(partial) < len(_hashes(clean))
    assert not (resumed / "tiles.gpkg").exists()
    assert not list(resumed.rglob(".*tmp*")), "no temporary file left behind"

    monkeypatch.setattr(tileset, "_write_geotiff", real_write)
    summary = tile_scene(scene, resumed, mask=mask, options=options, progress=False)
    assert summary.reused == 3  # 7 writes = 3 complete tiles (mask + image) + 1 mask
    assert _hashes(resumed) == _hashes(clean)
    a, b = _index(resumed), _index(clean)
    assert a.drop(columns="geometry").equals(b.drop(columns="geometry"))
    assert a.geometry.equals(b.geometry)
    assert read_metadata(resumed) == read_metadata(clean) | {"sources": read_metadata(resumed)["sources"]}


def test_rerun_with_other_options_into_same_folder_is_refused(tmp_path: Path, scene: Path) -> None:
    out = tmp_path / "tiles"
    tile_scene(scene, out, options=TilingOptions(size=64, stride=64, max_nodata=1.0, split_block=128), progress=False)
    before = _hashes(out)
    with pytest.raises(GeoclError, match="was 64, now 32") as error:
        tile_scene(
            scene, out, options=TilingOptions(size=32, stride=32, max_nodata=1.0, split_block=128), progress=False
        )
    assert error.value.key == "size" and str(out) in str(error.value)
    assert _hashes(out) == before


def test_rerun_with_another_mask_names_the_mask(tmp_path: Path, scene: Path, mask: Path) -> None:
    out = tmp_path / "tiles"
    options = TilingOptions(size=64, stride=64, max_nodata=1.0, split_block=128)
    tile_scene(scene, out, options=options, progress=False)
    with pytest.raises(GeoclError, match=f"was none, now {mask.resolve()}") as error:
        tile_scene(scene, out, mask=mask, options=options, progress=False)
    assert error.value.key == "mask"


def test_options_of_a_run_that_wrote_no_tile_may_change(tmp_path: Path, write_raster: RasterWriter) -> None:
    """`raise --max-nodata`, as the error says, is not refused: no tile was written to mix up."""
    data = coordinate_image(128, 128)
    data[:, :, ::8] = 0  # every tile is 1/8 nodata
    striped = write_raster(tmp_path / "striped.tif", data, nodata=0)
    out = tmp_path / "tiles"
    with pytest.raises(GeoclError, match="no tile has at most 10% nodata"):
        tile_scene(
            striped, out, options=TilingOptions(size=64, stride=64, max_nodata=0.1, split_block=64), progress=False
        )
    assert (out / "tiles.json").exists() and not list(out.rglob("*.tif"))
    options = TilingOptions(size=64, stride=64, max_nodata=0.2, split_block=64)
    summary = tile_scene(striped, out, options=options, progress=False)
    assert summary.written == sum(summary.splits.values()) > 0


def test_reused_tiles_are_checked_and_bad_ones_rewritten(tmp_path: Path, scene: Path, mask: Path) -> None:
    options = TilingOptions(size=64, stride=64, max_nodata=0.5, split_block=128)
    clean = tmp_path / "clean"
    tile_scene(scene, clean, mask=mask, options=options, progress=False)
    out = tmp_path / "out"
    tile_scene(scene, out, mask=mask, options=options, progress=False)
    tiles = sorted((out / "images").glob("*.tif"))
    truncated, moved, wrong_mask, cut = tiles[0], tiles[1], out / "masks" / tiles[2].name, tiles[4]
    truncated.write_bytes(truncated.read_bytes()[:-50])  # header intact, the last pixels cut: reading fails
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # the georeferencing cut off too
    moved.write_bytes(tiles[3].read_bytes())  # readable, but another tile's footprint
    with rasterio.open(wrong_mask) as src:  # readable, right place, wrong dtype
        profile, data = src.profile, src.read()
    profile.update(dtype="float32")
    with rasterio.open(wrong_mask, "w", **profile) as dst:
        dst.write(data.astype("float32"))
    summary = tile_scene(scene, out, mask=mask, options=options, progress=False)
    assert (summary.replaced, summary.written) == (4, 4)
    assert summary.reused == sum(summary.splits.values()) - 4
    assert "4 tile(s) already there" in summary.describe()
    assert _hashes(out) == _hashes(clean)


def test_a_small_scene_warns_which_split_block_gives_every_split_tiles(
    tmp_path: Path, write_raster: RasterWriter
) -> None:
    small = write_raster(tmp_path / "small.tif", coordinate_image(128, 192), nodata=0)
    options = TilingOptions(size=32, stride=32, max_nodata=1.0, split_block=128)  # 4 x size, the CLI default
    summary = tile_scene(small, tmp_path / "a", options=options, progress=False)
    assert summary.splits["val"] == summary.splits["test"] == 0
    (warning,) = summary.warnings
    assert warning.startswith("no val and no test tiles: 2 split blocks of 128 px cover the tiled area")
    assert "--split-block 96" in warning and "warning: no val" in summary.describe()
    better = tile_scene(small, tmp_path / "b", options=replace(options, split_block=96), progress=False)
    assert min(better.splits.values()) > 0 and not better.warnings


def test_a_failed_write_names_the_file_and_the_rerun_resumes(
    tmp_path: Path, scene: Path, mask: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = TilingOptions(size=64, stride=64, max_nodata=0.5, split_block=128)
    clean = tmp_path / "clean"
    tile_scene(scene, clean, mask=mask, options=options, progress=False)
    out = tmp_path / "out"
    real_write = tileset._write_geotiff
    calls = {"n": 0}

    def disk_fills(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] > 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(*args, **kwargs)

    monkeypatch.setattr(tileset, "_write_geotiff", disk_fills)
    with pytest.raises(GeoclError, match="cannot write \\(No space left on device\\)") as error:
        tile_scene(scene, out, mask=mask, options=options, progress=False)
    assert error.value.path is not None and error.value.path.startswith(str(out / "masks"))
    monkeypatch.setattr(tileset, "_write_geotiff", real_write)
    tile_scene(scene, out, mask=mask, options=options, progress=False)
    assert _hashes(out) == _hashes(clean)


def test_tiles_from_files_in_two_crs_are_reprojected(tmp_path: Path, write_raster: RasterWriter) -> None:
    folder = tmp_path / "scene"
    write_raster(folder / "a.tif", coordinate_image(100, 100), nodata=0)
    # next to it, but in UTM 34N (the neighbouring zone), so TorchGeo must reproject it
    x, y = Transformer.from_crs("EPSG:32633", "EPSG:32634", always_xy=True).transform(ORIGIN[0] + 1000, ORIGIN[1])
    write_raster(folder / "b.tif", coordinate_image(100, 100), crs="EPSG:32634", origin=(x, y), nodata=0)
    out = tmp_path / "tiles"
    summary = tile_scene(
        folder, out, options=TilingOptions(size=32, stride=32, max_nodata=1.0, split_block=64), progress=False
    )
    index = _index(out)
    assert index.crs.to_epsg() == 32633
    assert sum(summary.splits.values()) == len(index) > 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (TilingOptions(size=4), "size: tile size must be >= 8 px, got 4"),
        (TilingOptions(split_fractions=(0.5, 0.5, 0.5)), "split: need 3 non-negative fractions summing to 1"),
    ],
)
def test_a_bad_tiling_option_is_an_invalid_input_error(options: TilingOptions, message: str) -> None:
    """Also a ValueError, naming the option."""
    with pytest.raises(InvalidInputError, match=message) as raised:
        options.validate()
    assert isinstance(raised.value, ValueError)


def test_reading_a_folder_without_a_tile_set_is_a_missing_input_error(tmp_path: Path) -> None:
    with pytest.raises(MissingInputError, match=r"no tile set here \(tiles.json missing\)") as raised:
        read_metadata(tmp_path)
    assert isinstance(raised.value, FileNotFoundError)
