"""Whole-scene prediction: output grid, colour table, class values, polygons, errors."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from shapely.ops import unary_union

from geocl.data.normalize import BandNormalizer
from geocl.errors import GeoclError
from geocl.finetune.polygons import POLYGON_LAYER
from geocl.finetune.predict import predict_scene
from geocl.finetune.sliding_window import window_origins

CLASS_VALUES = [3, 7, 9]  # raster values of class indices 0, 1, 2
IDENTITY = BandNormalizer([0.0, 0.0, 0.0], [1.0, 1.0, 1.0], nodata=0)


def argmax_model(bands: int = 3, classes: int = 3) -> torch.nn.Conv2d:
    """A per-pixel "model": logits = the first ``classes`` bands (a fixed 1x1 conv)."""
    conv = torch.nn.Conv2d(bands, classes, kernel_size=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :classes, 0, 0] = torch.eye(classes)
    return conv


def class_scene(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A known class map and a 3-band uint16 scene whose per-pixel argmax is that map."""
    rows, cols = np.mgrid[0:height, 0:width]
    classes = (rows // 7 + cols // 5) % 3
    bands = 1 + 10 * (classes[None] == np.arange(3)[:, None, None])
    return classes, bands.astype(np.uint16)


def test_output_grid_nodata_and_colour_table(tmp_path: Path, write_raster) -> None:
    classes, data = class_scene(70, 90)
    data[:, :12, :20] = 0  # a nodata corner
    data[:, 40, 50] = 0  # and one nodata pixel inside
    data[0, 41, 50] = 0  # not nodata: only one band holds 0
    scene = write_raster(tmp_path / "scene.tif", data, nodata=0)
    result = predict_scene(
        argmax_model(), scene, tmp_path / "out" / "pred.tif", normalizer=IDENTITY, class_values=CLASS_VALUES,
        window=32, overlap=8, progress=False,
    )
    with rasterio.open(scene) as src, rasterio.open(result.path) as out:
        assert out.crs == src.crs
        assert out.transform == src.transform
        assert (out.height, out.width) == (src.height, src.width) == result.shape
        assert out.dtypes[0] == "uint8" and out.nodata == 255
        assert out.compression is not None
        predicted = out.read(1)
        colour_table = out.colormap(1)
    nodata = (data == 0).all(axis=0)
    assert (predicted[nodata] == 255).all()
    assert (predicted[~nodata] != 255).all()
    assert set(np.unique(predicted[~nodata])) == set(CLASS_VALUES)
    assert colour_table[255][3] == 0  # nodata transparent
    assert {v: colour_table[v][:3] for v in CLASS_VALUES} == dict(
        zip(CLASS_VALUES, [(31, 119, 180), (255, 127, 14), (44, 160, 44)])  # tab10
    )
    assert result.png == tmp_path / "out" / "pred.png"
    assert result.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.polygons is None and result.classes == tuple(CLASS_VALUES)
    assert sorted(p.name for p in result.path.parent.iterdir()) == ["pred.png", "pred.tif"]  # no temp left


def test_class_at_map_coordinates(tmp_path: Path, write_raster) -> None:
    height, width = 75, 61
    classes, data = class_scene(height, width)
    scene = write_raster(tmp_path / "scene.tif", data, origin=(300_000.0, 4_000_000.0), res=2.5)
    result = predict_scene(
        argmax_model(), scene, tmp_path / "pred.tif", normalizer=IDENTITY, class_values=CLASS_VALUES,
        window=32, overlap=8, batch_size=3, progress=False,
    )
    # window origins 0, 24, 43 (rows) and 0, 24, 29 (columns): rows 24-31 and 43-55 lie
    # in two windows, the last row/column of windows is moved back onto the edge
    assert window_origins(height, 32, 24) == [0, 24, 43]
    pixels = [(0, 0), (0, width - 1), (height - 1, 0), (height - 1, width - 1), (27, 30), (31, 24),
              (24, 55), (50, 28), (44, 60), (37, 13)]
    with rasterio.open(result.path) as out:
        points = [out.xy(row, col) for row, col in pixels]  # map coordinates of pixel centres
        sampled = [int(v[0]) for v in out.sample(points)]
        assert [out.index(x, y) for x, y in points] == pixels
    assert sampled == [CLASS_VALUES[classes[row, col]] for row, col in pixels]
    with rasterio.open(result.path) as out:
        assert (out.read(1) == np.asarray(CLASS_VALUES)[classes]).all()


def test_constant_model_gives_a_constant_map(tmp_path: Path, write_raster) -> None:
    data = np.random.default_rng(0).integers(1, 1000, (3, 90, 70)).astype(np.uint16)
    data[:, 60:, 50:] = 0
    scene = write_raster(tmp_path / "scene.tif", data, nodata=0)

    def constant(images: torch.Tensor) -> torch.Tensor:
        # negative logits: a pixel that no window reached would read 0 and become class 0
        logits = torch.tensor([-3.0, -1.0, -2.0]).view(1, 3, 1, 1)
        return logits.expand(images.shape[0], 3, *images.shape[-2:])

    result = predict_scene(
        constant, scene, tmp_path / "pred.tif", normalizer=IDENTITY, class_values=CLASS_VALUES,
        window=16, overlap=6, progress=False,
    )
    with rasterio.open(result.path) as out:
        predicted = out.read(1)
    valid = ~(data == 0).all(axis=0)
    assert (predicted[valid] == 7).all()
    assert (predicted[~valid] == 255).all()


def test_scene_smaller_than_a_window(tmp_path: Path, write_raster) -> None:
    classes, data = class_scene(20, 30)
    scene = write_raster(tmp_path / "scene.tif", data)
    result = predict_scene(
        argmax_model(), scene, tmp_path / "pred.tif", normalizer=IDENTITY, class_values=CLASS_VALUES,
        window=64, overlap=16, progress=False,
    )
    with rasterio.open(result.path) as out:
        assert out.shape == (20, 30)
        assert (out.read(1) == np.asarray(CLASS_VALUES)[classes]).all()


def test_polygons_cover_the_class_pixels(tmp_path: Path, write_raster) -> None:
    classes, data = class_scene(50, 40)
    data[:, :5, :] = 0  # nodata rows: no polygon there
    res = 2.0
    scene = write_raster(tmp_path / "scene.tif", data, nodata=0, res=res, crs="EPSG:32617")
    result = predict_scene(
        argmax_model(), scene, tmp_path / "pred.tif", normalizer=IDENTITY, class_values=CLASS_VALUES,
        window=16, overlap=4, polygons=tmp_path / "vec" / "pred.gpkg", progress=False,
    )
    assert result.polygons == tmp_path / "vec" / "pred.gpkg"
    frame = gpd.read_file(result.polygons, layer=POLYGON_LAYER)
    assert frame.crs.to_epsg() == 32617
    assert set(frame["class_value"]) == set(CLASS_VALUES)
    valid = ~(data == 0).all(axis=0)
    for index, value in enumerate(CLASS_VALUES):
        area = unary_union(frame.geometry[frame["class_value"] == value].to_list()).area
        assert area == pytest.approx(((classes == index) & valid).sum() * res * res)
    assert unary_union(frame.geometry.to_list()).area == pytest.approx(valid.sum() * res * res)


def test_class_values_above_255_give_uint16(tmp_path: Path, write_raster) -> None:
    classes, data = class_scene(20, 20)
    scene = write_raster(tmp_path / "scene.tif", data)
    model = argmax_model()
    model.train()
    result = predict_scene(
        model, scene, tmp_path / "pred.tif", normalizer=IDENTITY, class_values=[100, 300, 1000],
        class_colours=[(1, 2, 3), (4, 5, 6), (7, 8, 9)], window=16, overlap=4, progress=False,
    )
    assert model.training  # the caller's mode is restored
    with rasterio.open(result.path) as out:
        assert out.dtypes[0] == "uint16"
        assert (out.read(1) == np.asarray([100, 300, 1000])[classes]).all()
        assert out.colormap(1)[300] == (4, 5, 6, 255)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"window": 8, "overlap": 2}, "window"),
        ({"window": 32, "overlap": 32}, "overlap"),
        ({"window": 32, "overlap": 40}, "overlap"),
        ({"class_values": [0, 1, 255]}, "nodata"),
        ({"class_values": [0, 1, 1]}, "class_values"),
        ({"class_values": [0, 1]}, "class_values"),  # the model returns 3 classes
        ({"class_colours": [(0, 0, 0)]}, "class_colours"),
    ],
)
def test_bad_options_name_the_option(tmp_path: Path, write_raster, options: dict, key: str) -> None:
    scene = write_raster(tmp_path / "scene.tif", class_scene(20, 20)[1])
    kwargs = {"normalizer": IDENTITY, "class_values": CLASS_VALUES, "window": 16, "overlap": 4, "progress": False}
    with pytest.raises(GeoclError) as error:
        predict_scene(argmax_model(), scene, tmp_path / "pred.tif", **{**kwargs, **options})
    assert error.value.key == key
    assert not (tmp_path / "pred.tif").exists()


def test_bad_scenes_name_the_file(tmp_path: Path, write_raster) -> None:
    kwargs = {"normalizer": IDENTITY, "class_values": CLASS_VALUES, "window": 16, "overlap": 4, "progress": False}
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    no_crs = write_raster(tmp_path / "nocrs.tif", class_scene(20, 20)[1], crs=None)
    two_bands = write_raster(tmp_path / "two.tif", class_scene(20, 20)[1][:2])
    folder = tmp_path / "mosaic"
    write_raster(folder / "a.tif", class_scene(20, 20)[1])
    write_raster(folder / "b.tif", class_scene(20, 20)[1])
    for bad, words in ((text, "not a readable raster"), (no_crs, "no CRS"), (two_bands, "2 bands"),
                       (folder, "one GeoTIFF"), (tmp_path / "missing.tif", "not found")):
        with pytest.raises(GeoclError, match=words) as error:
            predict_scene(argmax_model(), bad, tmp_path / "pred.tif", **kwargs)
        assert error.value.path == str(bad)
    assert not (tmp_path / "pred.tif").exists()


def test_real_panchromatic_scene(tmp_path: Path, shared_data: Path) -> None:
    scene = shared_data / "spacenet_atlanta_pan.tif"
    with rasterio.open(scene) as src:
        raw = src.read(1)
        grid = (src.crs, src.transform, src.shape)
        bounds = src.bounds
    valid = raw != 0
    mean, std = float(raw[valid].mean()), float(raw[valid].std())
    normalizer = BandNormalizer([mean], [std], nodata=0)

    def threshold(images: torch.Tensor) -> torch.Tensor:
        # class 1 where the pixel is brighter than the scene mean
        return torch.cat([-images, images], dim=1)

    result = predict_scene(
        threshold, scene, tmp_path / "pred.tif", normalizer=normalizer, class_values=[0, 1],
        window=256, overlap=64, polygons=tmp_path / "pred.gpkg", progress=False,
    )
    with rasterio.open(result.path) as out:
        assert (out.crs, out.transform, out.shape) == grid
        predicted = out.read(1)
    expected = np.where(raw > mean, 1, 0)
    expected[~valid] = 255
    # a pixel exactly at the mean would be a tie; none differs otherwise
    assert (predicted == expected)[raw != round(mean)].all()
    frame = gpd.read_file(result.polygons)
    assert frame.crs.to_epsg() == grid[0].to_epsg() == 32616
    left, bottom, right, top = frame.total_bounds
    assert left >= bounds.left and right <= bounds.right and bottom >= bounds.bottom and top <= bounds.top
    assert frame.geometry.area.sum() == pytest.approx(valid.sum() * 0.25)
