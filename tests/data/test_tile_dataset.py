"""Tests for geocl.data.tile_dataset.TileDataset."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from torch.utils.data import DataLoader

from geocl.data.tile_dataset import IGNORE_INDEX, TileDataset
from geocl.data.tiler import TilingOptions, tile_scene
from geocl.errors import GeoclError
from tests.conftest import RasterWriter, coordinate_image


@pytest.fixture
def tiles(tmp_path: Path, write_raster: RasterWriter) -> Path:
    image = coordinate_image(192, 256, bands=4)
    image[:, 150:, 200:] = 0  # nodata corner
    rows, cols = np.mgrid[0:192, 0:256]
    labels = np.where((rows // 40 + cols // 60) % 3 == 0, 7, np.where(cols < 100, 2, 5)).astype(np.uint8)
    labels[:10, :10] = 255  # the mask's own nodata
    scene = write_raster(tmp_path / "scene.tif", image, nodata=0)
    mask = write_raster(tmp_path / "mask.tif", labels, nodata=255)
    out = tmp_path / "tiles"
    tile_scene(
        scene,
        out,
        mask=mask,
        options=TilingOptions(size=64, stride=64, max_nodata=0.9, split_block=64, seed=1),
        progress=False,
    )
    return out


def test_samples_are_normalised_tiles_with_class_indices(tiles: Path) -> None:
    dataset = TileDataset(tiles, progress=False)
    index = gpd.read_file(tiles / "tiles.gpkg")
    assert len(dataset) == len(index)
    assert dataset.classes == [2, 5, 7]
    stats = dataset.metadata["band_stats"]
    mean = np.array(stats["mean"])[:, None, None]
    std = np.array(stats["std"])[:, None, None]
    for item in range(len(dataset)):
        sample = dataset[item]
        record = index.iloc[sample["index"]]
        with rasterio.open(tiles / record["path"]) as src:
            raw = src.read().astype(np.float64)
        with rasterio.open(tiles / record["mask_path"]) as src:
            labels = src.read(1)
        nodata = (raw == 0).all(axis=0)
        expected = np.where(nodata, 0.0, (raw - mean) / std)
        assert sample["image"].dtype == torch.float32 and sample["image"].shape == (4, 64, 64)
        np.testing.assert_allclose(sample["image"].numpy(), expected, rtol=1e-5, atol=1e-5)
        mask = sample["mask"].numpy()
        assert sample["mask"].dtype == torch.long
        lookup = {2: 0, 5: 1, 7: 2}
        for value, position in lookup.items():
            assert ((mask == position) == ((labels == value) & ~nodata)).all()
        assert ((mask == IGNORE_INDEX) == (nodata | (labels == 255))).all()
        assert np.allclose(sample["bounds"].numpy(), record.geometry.bounds)
        assert sample["crs"] == "EPSG:32633"


def test_splits_partition_the_tiles(tiles: Path) -> None:
    sizes = {split: len(TileDataset(tiles, split, progress=False)) for split in ("train", "val", "test")}
    assert all(size > 0 for size in sizes.values())
    assert sum(sizes.values()) == len(TileDataset(tiles, progress=False))
    with pytest.raises(GeoclError, match="unknown split"):
        TileDataset(tiles, "validation", progress=False)


def test_with_masks_gives_the_same_tiles_with_their_masks(
    tmp_path: Path, tiles: Path, write_raster: RasterWriter
) -> None:
    unlabelled = TileDataset(tiles, ["test", "train"], with_mask=False, progress=False)
    assert unlabelled.has_masks and unlabelled.splits == ("train", "test")  # the tile set's order
    assert "mask" not in unlabelled[0]
    unlabelled.rows = unlabelled.rows[::2]  # narrowed by a caller: kept
    labelled = unlabelled.with_masks()
    reference = TileDataset(tiles, ["train", "test"], with_mask=True, progress=False)
    assert len(labelled) == len(unlabelled) and labelled.with_mask
    for item in range(len(labelled)):
        got, want = labelled[item], reference[2 * item]
        assert got["index"] == unlabelled[item]["index"] == want["index"]
        assert torch.equal(got["image"], want["image"]) and torch.equal(got["mask"], want["mask"])

    plain = tmp_path / "plain"
    scene = write_raster(tmp_path / "scene.tif", coordinate_image(128, 128, bands=3))
    tile_scene(scene, plain, options=TilingOptions(size=64, stride=64, split_block=64, seed=1), progress=False)
    without = TileDataset(plain, progress=False)
    assert not without.has_masks and not without.with_mask
    with pytest.raises(GeoclError, match="no masks"):
        without.with_masks()


def test_dataloader_with_workers_and_pinned_memory_gives_the_same_batches(tiles: Path) -> None:
    dataset = TileDataset(tiles, "train", progress=False)
    direct = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    loader = DataLoader(dataset, batch_size=3, num_workers=2, pin_memory=False, persistent_workers=False)
    batches = list(loader)
    assert torch.equal(torch.cat([b["image"] for b in batches]), direct)
    assert batches[0]["bounds"].shape == (3, 4) and batches[0]["mask"].shape == (3, 64, 64)
    pinned = next(iter(DataLoader(dataset, batch_size=2, pin_memory=torch.cuda.is_available())))
    assert torch.equal(pinned["image"], direct[:2])


def test_cache_is_rebuilt_when_the_tile_set_changes(tiles: Path) -> None:
    first = TileDataset(tiles, progress=False)
    before = first[0]["image"].clone()
    path = tiles / first.index.iloc[0]["path"]
    with rasterio.open(path, "r+") as dst:  # edit a tile, as a re-tiling would...
        data = dst.read()
        data[data > 0] += 1
        dst.write(data)
    metadata = (tiles / "tiles.json").read_text()
    (tiles / "tiles.json").write_text(metadata + " ")  # ...which rewrites the index files
    second = TileDataset(tiles, progress=False)
    assert not torch.equal(second[0]["image"], before)
    assert len(list((tiles / "cache").iterdir())) == 1


def test_missing_or_unfinished_tile_set_is_a_clear_error(tmp_path: Path, tiles: Path) -> None:
    with pytest.raises(GeoclError, match="tiles.json missing"):
        TileDataset(tmp_path / "nowhere", progress=False)
    text = (tiles / "tiles.json").read_text().replace('"complete": true', '"complete": false')
    (tiles / "tiles.json").write_text(text)
    with pytest.raises(GeoclError, match="incomplete"):
        TileDataset(tiles, progress=False)
