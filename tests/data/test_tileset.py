"""Tests for geocl.data.tileset: the folder checks, tile reuse, the index and tiles.json, shared by both writers."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from rasterio.crs import CRS

from geocl.data import tileset
from geocl.data.stats import RunningBandStats
from geocl.data.tileset import (
    METADATA_FILE,
    TileLayout,
    TileSetWriter,
    TileSpec,
    TilingSummary,
    check_tile_folder,
    read_metadata,
    start_metadata,
    stored_tile,
    write_index,
    write_metadata,
)
from geocl.errors import GeoclError

CRS_32633 = CRS.from_epsg(32633)
RES = (10.0, 10.0)
BOUNDS = (500_000.0, 5_099_360.0, 500_640.0, 5_100_000.0)  # one 64 px tile at 10 m
OPTIONS = {"size": 64, "split_fractions": (0.7, 0.15, 0.15)}
SOURCES = {"scene": ["/data/a.tif", "/data/b.tif"], "mask": []}


def _writer(out: Path, mask: bool = True) -> TileSetWriter:
    summary = TilingSummary(out=out, index=out / "tiles.gpkg")
    return TileSetWriter(
        summary,
        CRS_32633,
        RES,
        TileSpec(3, "uint16", 64),
        TileSpec(1, "uint8", 64) if mask else None,
        nodata=0,
        mask_nodata=255,
    )


def _pixels(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(1, 4000, (3, 64, 64), dtype=np.uint16), rng.integers(0, 4, (64, 64), dtype=np.uint8)


def test_a_written_tile_is_read_back_only_as_this_run_would_write_it(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    image, label = _pixels()
    assert writer.stored("r0000_c0000.tif", BOUNDS) is None
    writer.write("r0000_c0000.tif", BOUNDS, image, label)
    found = writer.stored("r0000_c0000.tif", BOUNDS)
    assert found is not None
    np.testing.assert_array_equal(found[0], image)
    np.testing.assert_array_equal(found[1], label)
    paths = writer.paths("r0000_c0000.tif")
    shifted = (BOUNDS[0] + 10, BOUNDS[1], BOUNDS[2] + 10, BOUNDS[3])  # one pixel off
    assert stored_tile(*paths, TileSpec(3, "uint16", 64), None, shifted, RES) is None
    assert stored_tile(*paths, TileSpec(3, "float32", 64), None, BOUNDS, RES) is None
    assert stored_tile(*paths, TileSpec(4, "uint16", 64), None, BOUNDS, RES) is None
    paths[1].write_bytes(paths[1].read_bytes()[:100])  # a cut mask: the tile is written again
    assert writer.stored("r0000_c0000.tif", BOUNDS) is None
    assert (writer.summary.written, writer.summary.replaced) == (1, 1)


def test_keep_counts_splits_rows_and_only_the_named_classes(tmp_path: Path) -> None:
    summary = TilingSummary(out=tmp_path, index=tmp_path / "tiles.gpkg")
    writer = TileSetWriter(summary, CRS_32633, RES, TileSpec(3, "uint16", 64), None, None, None, classes=[1, 2])
    writer.keep("train", {"path": "a"}, {1: 5, 2: 3, 7: 100})
    writer.keep("train", {"path": "b"}, {1: 1})
    writer.keep("test", {"path": "c"}, {2: 4})
    assert summary.splits == {"train": 2, "val": 0, "test": 1}
    assert summary.class_pixels == {"train": {1: 6, 2: 3}, "test": {2: 4}}
    assert [row["path"] for row in writer.rows] == ["a", "b", "c"]


def test_a_folder_with_tiles_but_no_metadata_is_refused(tmp_path: Path) -> None:
    check_tile_folder(tmp_path, OPTIONS, SOURCES)  # empty: fine
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "r0000_c0000.tif").write_bytes(b"x")
    with pytest.raises(GeoclError, match="holds tiles but no tiles.json") as error:
        check_tile_folder(tmp_path, OPTIONS, SOURCES, {"out": "data.tiles"})
    assert error.value.key == "data.tiles"


def test_a_changed_option_or_input_is_named_by_the_users_key(tmp_path: Path) -> None:
    start_metadata(tmp_path, OPTIONS, SOURCES)
    recorded = json.loads((tmp_path / METADATA_FILE).read_text())
    assert recorded == {
        "options": {"size": 64, "split_fractions": [0.7, 0.15, 0.15]},
        "sources": SOURCES,
        "complete": False,
    }
    (tmp_path / "tiles.gpkg").write_bytes(b"x")  # the folder now holds tiles
    check_tile_folder(tmp_path, OPTIONS, SOURCES)  # same options and inputs: goes on
    changed = {**OPTIONS, "split_fractions": (0.8, 0.1, 0.1)}
    with pytest.raises(GeoclError, match="was 0.7 0.15 0.15, now 0.8 0.1 0.1 for the tiles") as error:
        check_tile_folder(tmp_path, changed, SOURCES, {"split_fractions": "split"})
    assert error.value.key == "split"
    with pytest.raises(GeoclError, match="files differ: 1 file\\(s\\) no longer given, e.g. /data/b.tif") as error:
        check_tile_folder(tmp_path, OPTIONS, {"scene": ["/data/a.tif", "/data/c.tif"], "mask": []})
    assert error.value.key == "scene"
    with pytest.raises(GeoclError, match="was none, now /data/root"):  # an input that is one value, not files
        check_tile_folder(tmp_path, OPTIONS, {**SOURCES, "root": "/data/root"})


def test_start_metadata_keeps_a_record_of_the_same_run(tmp_path: Path) -> None:
    (tmp_path / METADATA_FILE).write_text(json.dumps({"options": OPTIONS, "sources": SOURCES, "complete": True}))
    start_metadata(tmp_path, OPTIONS, SOURCES)  # a rerun: the finished record stays until the end
    assert json.loads((tmp_path / METADATA_FILE).read_text())["complete"] is True
    start_metadata(tmp_path, {**OPTIONS, "size": 32}, SOURCES)
    assert json.loads((tmp_path / METADATA_FILE).read_text())["complete"] is False


def test_metadata_and_index_as_the_readers_expect(tmp_path: Path) -> None:
    with pytest.raises(GeoclError, match="tiles.json missing"):
        read_metadata(tmp_path)
    start_metadata(tmp_path, OPTIONS, SOURCES)
    with pytest.raises(GeoclError, match="incomplete"):
        read_metadata(tmp_path)
    summary = TilingSummary(out=tmp_path, index=tmp_path / "tiles.gpkg", classes=[1, 2])
    summary.splits["train"] = 1
    summary.class_pixels = {"train": {1: 10, 2: 0}}
    running = RunningBandStats(1)
    running.update(np.array([[1.0, 3.0]]))
    layout = TileLayout(crs=CRS_32633.to_wkt(), res=RES, bands=1, dtype="uint16", nodata=0, mask_nodata=None)
    write_metadata(
        tmp_path, OPTIONS, SOURCES, layout, summary, running.result(), class_names=["a", "b"], dataset={"name": "x"}
    )
    metadata = read_metadata(tmp_path)
    assert list(metadata) == [
        "format_version",
        "options",
        "sources",
        "complete",
        "crs",
        "res",
        "bands",
        "dtype",
        "nodata",
        "mask_nodata",
        "classes",
        "class_names",
        "splits",
        "class_pixels",
        "band_stats",
        "dataset",
    ]
    assert metadata["class_pixels"] == {"train": {"1": 10, "2": 0}} and metadata["res"] == [10.0, 10.0]
    assert metadata["band_stats"]["mean"] == [2.0] and metadata["band_stats"]["std"] == [1.0]
    rows = [{"path": "images/a.tif", "split": "train", "row": 0, "col": 0, "geometry": shapely.box(*BOUNDS)}]
    write_index(summary.index, rows, "EPSG:32633")
    first = summary.index.read_bytes()
    index = gpd.read_file(summary.index, layer=tileset.INDEX_LAYER)
    assert list(index["path"]) == ["images/a.tif"] and index.crs.to_epsg() == 32633
    write_index(summary.index, rows, "EPSG:32633")
    assert summary.index.read_bytes() == first  # no write time inside: the same rows give the same bytes


def test_summary_describes_what_the_run_did(tmp_path: Path) -> None:
    summary = TilingSummary(out=tmp_path, index=tmp_path / "tiles.gpkg", written=3, replaced=1)
    summary.warn_if_replaced()
    assert summary.warnings == [
        "1 tile(s) already there were unreadable or did not match this run and were written again"
    ]
    assert "written 3, already there 0" in summary.describe()
    assert asdict(summary)["splits"] == {"train": 0, "val": 0, "test": 0}
