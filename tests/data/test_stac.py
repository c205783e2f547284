"""STAC items as scenes (geocl/data/stac.py): assets stacked in the asked order, items mosaicked,
served by a real HTTP server process; one line naming the item, asset and URL when one is missing."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from geocl.cli import main
from geocl.data.mosaic import open_scene, scene_files
from geocl.data.rasters import find_rasters, inspect_rasters
from geocl.data.stac import StacRaster, is_stac, read_items, stac_rasters
from geocl.data.synthetic import make_scene
from geocl.errors import GeoclError
from tests.data.cog import BAND_KEYS, item_collection, write_cog
from tests.http_server import Server, serve

#: The asked order, and the scene band (1-based) each key holds.
ASKED = ("B04", "B03", "B02", "B08")
SCENE_BAND = {key: number for number, key in enumerate(BAND_KEYS, start=1)}


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 256 px 4-band synthetic scene (blue, green, red, NIR)."""
    return make_scene(tmp_path_factory.mktemp("scene"), size=256, seed=2).image


@pytest.fixture(scope="module")
def catalog(scene: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two items side by side on the scene's grid (columns 0-127 and 128-255), relative asset hrefs;
    beside them ``broken.json``: item-0 with B08 refused (403) and B03 missing (404)."""
    root = tmp_path_factory.mktemp("stac")
    document = item_collection(scene, root, [(0, 128), (128, 128)])
    data = json.loads(document.read_text())
    (root / "private").mkdir()
    (root / "private" / "B08.tif").write_bytes((root / "item-0" / "B08.tif").read_bytes())
    data["features"][0]["assets"]["B08"]["href"] = "./private/B08.tif"
    data["features"][0]["assets"]["B03"]["href"] = "./item-0/gone.tif"
    (root / "broken.json").write_text(json.dumps(data))
    return document


@pytest.fixture(scope="module")
def server(catalog: Path) -> Iterator[Server]:
    with serve(catalog.parent) as running:
        yield running


def test_local_document_stacks_the_asked_assets_in_order(scene: Path, catalog: Path) -> None:
    rasters = stac_rasters(catalog, ["B08", "B02"])
    assert [r.name for r in rasters] == ["item-0", "item-1"] and is_stac(catalog)
    with rasterio.open(scene) as src:
        expected = src.read([4, 1], window=Window(128, 0, 128, 256))
    with rasterio.open(rasters[1]) as stacked:
        assert stacked.descriptions == ("B08", "B02") and stacked.count == 2
        assert stacked.transform == rasterio.open(scene).window_transform(Window(128, 0, 128, 256))
        assert np.array_equal(stacked.read(), expected)
    assert str(rasters[0]).endswith("items.json#item-0[B08,B02]")
    # pickled into another process (Dask), the raster writes its VRT there again
    again = pickle.loads(pickle.dumps(rasters[1]))
    assert again == rasters[1]
    with rasterio.open(again) as stacked:
        assert np.array_equal(stacked.read(), expected)


def test_items_on_one_grid_are_one_mosaic(scene: Path, catalog: Path) -> None:
    files = scene_files(catalog, ASKED)
    assert all(isinstance(f, StacRaster) for f in files) and len(files) == 2
    with rasterio.open(scene) as src:
        expected = src.read([SCENE_BAND[key] for key in ASKED])
    with open_scene(files) as mosaic:  # what geocl predict reads
        assert (mosaic.width, mosaic.height, mosaic.count) == (256, 256, 4) and mosaic.notes == ()
        assert np.array_equal(mosaic.read(window=Window(0, 0, 256, 256)), expected)


def test_an_asset_of_another_pixel_size_is_resampled_onto_the_first(tmp_path: Path) -> None:
    fine = np.arange(64 * 64, dtype="uint16").reshape(1, 64, 64) + 1
    coarse = (np.arange(32 * 32, dtype="uint8").reshape(1, 32, 32) + 1) * 3
    crs = "EPSG:32633"
    write_cog(fine, tmp_path / "B04.tif", crs=crs, transform=from_origin(500_000, 5_100_000, 10, 10), block=32)
    write_cog(coarse, tmp_path / "B05.tif", crs=crs, transform=from_origin(500_000, 5_100_000, 20, 20), block=16)
    item = pystac.Item("tile", None, None, pystac.utils.str_to_datetime("2024-06-01T00:00:00Z"), {})
    for key in ("B04", "B05"):
        item.add_asset(key, pystac.Asset(f"./{key}.tif", roles=["data"], media_type=pystac.MediaType.COG))
    (tmp_path / "item.json").write_text(json.dumps(item.to_dict(transform_hrefs=False)))
    (raster,) = find_rasters(tmp_path / "item.json", assets=["B04", "B05"])
    with rasterio.open(raster) as stacked:
        data = stacked.read()
    # nearest neighbour onto the 10 m grid, by hand: each 20 m pixel covers 2 x 2 pixels
    assert data.dtype == np.uint16 and data.shape == (2, 64, 64)
    assert np.array_equal(data[0], fine[0])
    assert np.array_equal(data[1], np.repeat(np.repeat(coarse[0], 2, axis=0), 2, axis=1))


def test_catalog_items_are_found_in_its_children(scene: Path, catalog: Path, tmp_path: Path) -> None:
    collection = pystac.ItemCollection.from_file(str(catalog))
    root = pystac.Catalog("root", "a catalog with a child")
    child = pystac.Catalog("child", "holds the items")
    root.add_child(child)
    for item in collection:
        item.assets = {
            key: pystac.Asset(str(catalog.parent / item.id / f"{key}.tif"), roles=["data"]) for key in BAND_KEYS
        }
        child.add_item(item)
    root.normalize_hrefs(str(tmp_path / "catalog"))
    root.save(pystac.CatalogType.SELF_CONTAINED)
    items = read_items(tmp_path / "catalog" / "catalog.json")
    assert [item.id for item in items] == ["item-0", "item-1"]
    infos = inspect_rasters(scene_files(tmp_path / "catalog" / "catalog.json", ["B04"]))
    assert [info.count for info in infos] == [1, 1]


def test_tile_from_an_item_collection_over_http(server: Server, scene: Path, catalog: Path, tmp_path: Path) -> None:
    url = f"{server.url}/items.json"
    common = ["--size", "64", "--split-block", "128", "--quiet"]
    assert main(["tile", str(scene), "--out", str(tmp_path / "local"), *common]) == 0
    server.reset()
    assert main(["tile", url, "--assets", *ASKED, "--out", str(tmp_path / "stac"), *common]) == 0
    served = server.stats()["bytes"]
    names = sorted(p.name for p in (tmp_path / "local" / "images").glob("*.tif"))
    assert len(names) >= 12 and names == sorted(p.name for p in (tmp_path / "stac" / "images").glob("*.tif"))
    order = [SCENE_BAND[key] for key in ASKED]
    for name in names:
        with (
            rasterio.open(tmp_path / "local" / "images" / name) as a,
            rasterio.open(tmp_path / "stac" / "images" / name) as b,
        ):
            assert b.count == 4 and b.bounds == a.bounds and b.crs == a.crs
            assert np.array_equal(b.read(), a.read(order)), name  # red, green, blue, NIR
    # every asset read, none more than once (these 45 kB files are a few of GDAL's range
    # requests long: test_remote.py shows a larger COG read in part)
    for item in ("item-0", "item-1"):
        for key in BAND_KEYS:
            size = (catalog.parent / item / f"{key}.tif").stat().st_size
            assert 0 < served[f"/{item}/{key}.tif"] <= size
    recorded = json.loads((tmp_path / "stac" / "tiles.json").read_text())
    assert recorded["sources"]["scene"] == [f"{url}#item-0[B04,B03,B02,B08]", f"{url}#item-1[B04,B03,B02,B08]"]
    assert recorded["options"]["assets"] == list(ASKED)


@pytest.mark.parametrize(
    ("document", "assets", "expected"),
    [
        (
            "items.json",
            ["B04", "B99"],
            "{url}/items.json: item item-0, asset B99: not in the item (it has B02, B03, B04, B08)",
        ),
        ("broken.json", ["B04", "B08"], "{url}/private/B08.tif: item item-0, asset B08: access denied (HTTP 403)"),
        ("broken.json", ["B03"], "{url}/item-0/gone.tif: item item-0, asset B03: not found (HTTP 404)"),
        ("nothing.json", ["B04"], "{url}/nothing.json: STAC document not found (HTTP 404)"),
        ("items.json", [], "{url}/items.json: item item-0 has 4 raster assets (B02, B03, B04, B08): pick and order"),
    ],
)
def test_a_missing_or_refused_asset_is_one_line(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str], document: str, assets: list[str], expected: str
) -> None:
    out = tmp_path / "tiles"
    argv = ["tile", f"{server.url}/{document}", "--out", str(out), "--size", "64", "--quiet"]
    assert main(argv + (["--assets", *assets] if assets else [])) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("geocl tile: error: " + expected.format(url=server.url)), captured.err
    assert not out.exists()


def test_unreachable_document_and_bad_documents(tmp_path: Path) -> None:
    with pytest.raises(GeoclError, match=r"unreachable") as info:
        read_items("http://127.0.0.1:9/items.json")
    assert isinstance(info.value, ConnectionError)
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(GeoclError, match="is not a STAC document"):
        read_items(tmp_path / "bad.json")
    with pytest.raises(GeoclError, match="STAC document not found"):
        read_items(tmp_path / "none.json")
    with pytest.raises(GeoclError, match=r"not s3://"):
        read_items("s3://bucket/items.json")


@pytest.mark.slow
def test_predict_from_an_item_collection_over_http(
    tiny_tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``geocl predict`` of two STAC items over HTTP writes the local scene's prediction (finetunes: slow)."""
    from geocl.data.tileset import read_metadata
    from geocl.finetune.train import run_finetune

    checkpoint = run_finetune(
        tiles=tiny_tiles,
        out=tmp_path / "run",
        encoder="test_resnet",
        label_fraction=0.2,
        seed=0,
        max_epochs=1,
        steps_per_epoch=2,
        val_every=1,
        batch_size=4,
        crop=32,
        progress=False,
    ).checkpoint
    source = Path(read_metadata(tiny_tiles)["sources"]["scene"][0])
    with rasterio.open(source) as src:  # 96 x 128 px of the training scene, on its grid
        window = Window(200, 100, 128, 96)
        crop = write_cog(
            src.read(window=window),
            tmp_path / "crop.tif",
            crs=src.crs,
            transform=src.window_transform(window),
            nodata=src.nodata,
            block=32,
        )
    document = item_collection(crop, tmp_path / "stac", [(0, 64), (64, 64)])
    small = ["--window", "64", "--overlap", "16", "--block", "256"]
    assert main(["predict", str(checkpoint), str(crop), "--out", str(tmp_path / "local.tif"), *small]) == 0
    with serve(document.parent) as server:
        url = f"{server.url}/items.json"
        status = main(
            ["predict", str(checkpoint), url, "--assets", *BAND_KEYS, "--out", str(tmp_path / "stac.tif"), *small]
        )
    out = capsys.readouterr().out
    assert status == 0, out
    assert f"mosaic of 2 files on the grid of the first, {url}#item-0[B02,B03,B04,B08]" in out
    with rasterio.open(tmp_path / "local.tif") as a, rasterio.open(tmp_path / "stac.tif") as b:
        assert b.transform == a.transform and b.crs == a.crs
        assert np.array_equal(b.read(), a.read())
