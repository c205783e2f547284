"""Whole-scene prediction: output grid, colour table, class values, column blocks, COG,
probabilities, polygons, errors."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
from rasterio.features import shapes
from rio_cogeo.cogeo import cog_validate
from shapely.ops import unary_union

from geocl.data.normalize import BandNormalizer
from geocl.errors import GeoclError
from geocl.finetune.polygons import POLYGON_LAYER, write_polygons
from geocl.finetune.predict import PROBABILITY_SCALE, predict_scene, probabilities_path
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
        argmax_model(),
        scene,
        tmp_path / "out" / "pred.tif",
        normalizer=IDENTITY,
        class_values=CLASS_VALUES,
        window=32,
        overlap=8,
        progress=False,
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
        zip(CLASS_VALUES, [(31, 119, 180), (255, 127, 14), (44, 160, 44)], strict=False)  # tab10
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
        argmax_model(),
        scene,
        tmp_path / "pred.tif",
        normalizer=IDENTITY,
        class_values=CLASS_VALUES,
        window=32,
        overlap=8,
        batch_size=3,
        progress=False,
    )
    # window origins 0, 24, 43 (rows) and 0, 24, 29 (columns): rows 24-31 and 43-55 lie
    # in two windows, the last row/column of windows is moved back onto the edge
    assert window_origins(height, 32, 24) == [0, 24, 43]
    pixels = [
        (0, 0),
        (0, width - 1),
        (height - 1, 0),
        (height - 1, width - 1),
        (27, 30),
        (31, 24),
        (24, 55),
        (50, 28),
        (44, 60),
        (37, 13),
    ]
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
        constant,
        scene,
        tmp_path / "pred.tif",
        normalizer=IDENTITY,
        class_values=CLASS_VALUES,
        window=16,
        overlap=6,
        progress=False,
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
        argmax_model(),
        scene,
        tmp_path / "pred.tif",
        normalizer=IDENTITY,
        class_values=CLASS_VALUES,
        window=64,
        overlap=16,
        progress=False,
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
        argmax_model(),
        scene,
        tmp_path / "pred.tif",
        normalizer=IDENTITY,
        class_values=CLASS_VALUES,
        window=16,
        overlap=4,
        polygons=tmp_path / "vec" / "pred.gpkg",
        progress=False,
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
        model,
        scene,
        tmp_path / "pred.tif",
        normalizer=IDENTITY,
        class_values=[100, 300, 1000],
        class_colours=[(1, 2, 3), (4, 5, 6), (7, 8, 9)],
        window=16,
        overlap=4,
        progress=False,
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
        ({"block": 300}, "block"),
        ({"block": 0}, "block"),
        ({"probabilities": "float32"}, "probabilities"),
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
    mismatched = write_raster(folder / "b.tif", class_scene(20, 20)[1][:2])
    for bad, words in (
        (text, "not a readable raster"),
        (no_crs, "no CRS"),
        (two_bands, "2 bands"),
        (folder, "inconsistent band counts"),
        (tmp_path / "missing.tif", "not found"),
    ):
        with pytest.raises(GeoclError, match=words) as error:
            predict_scene(argmax_model(), bad, tmp_path / "pred.tif", **kwargs)
        assert error.value.path == str(mismatched if bad == folder else bad)
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
        threshold,
        scene,
        tmp_path / "pred.tif",
        normalizer=normalizer,
        class_values=[0, 1],
        window=256,
        overlap=64,
        polygons=tmp_path / "pred.gpkg",
        progress=False,
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


def context_model(classes: int = 4, seed: int = 0) -> torch.nn.Module:
    """A small conv net that looks at 5 x 5 px of context (so window edges and blocks matter)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(8, classes, 3, padding=1)
    )


NOISE = BandNormalizer([500.0, 500.0, 500.0], [300.0, 300.0, 300.0], nodata=0)


def noise_scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    data = np.random.default_rng(seed).integers(1, 1000, (3, height, width)).astype(np.uint16)
    data[:, :20, :30] = 0  # a nodata corner
    return data


def test_column_blocks_give_the_prediction_of_one_pass(tmp_path: Path, write_raster) -> None:
    """Blocks narrower than the scene change nothing: every window reaching a block is run and blended."""
    data = noise_scene(90, 600)
    scene = write_raster(tmp_path / "scene.tif", data, nodata=0)
    model = context_model()
    common = {
        "normalizer": NOISE,
        "class_values": [0, 1, 2, 3],
        "window": 48,
        "overlap": 12,
        "probabilities": "float16",
        "progress": False,
        "cog": False,
    }
    whole = predict_scene(model, scene, tmp_path / "whole.tif", block=1024, **common)
    blocks = predict_scene(model, scene, tmp_path / "blocks.tif", block=256, **common)
    # one pass: 3 rows x 17 columns of windows (origins 0, 36, ..., 540, 552); in blocks [0, 256),
    # [256, 512) and [512, 600) the windows at 216 and 252 (straddling 256) and at 468 and 504
    # (straddling 512) run twice
    assert whole.windows == 3 * 17
    assert blocks.windows == 3 * (17 + 4)
    with rasterio.open(whole.path) as a, rasterio.open(blocks.path) as b:
        assert (a.read(1) == b.read(1)).all()
    with rasterio.open(whole.probabilities) as a, rasterio.open(blocks.probabilities) as b:
        np.testing.assert_allclose(a.read().astype(np.float32), b.read().astype(np.float32), atol=1e-3)


def test_outputs_are_valid_cogs_with_overviews(tmp_path: Path, write_raster) -> None:
    data = noise_scene(600, 700)
    scene = write_raster(tmp_path / "scene.tif", data, nodata=0)
    result = predict_scene(
        context_model(),
        scene,
        tmp_path / "pred.tif",
        normalizer=NOISE,
        class_values=[3, 7, 9, 11],
        window=64,
        overlap=16,
        probabilities="uint8",
        block=256,
        progress=False,
    )
    assert result.probabilities == probabilities_path(tmp_path / "pred.tif") == tmp_path / "pred_probabilities.tif"
    for path in (result.path, result.probabilities):
        valid, errors, warnings = cog_validate(path, quiet=True)
        assert valid and not errors and not warnings, (path, errors, warnings)
    with rasterio.open(result.path) as out, rasterio.open(result.probabilities) as scores:
        assert out.overviews(1) == scores.overviews(1) == [2, 4]  # 700 px: down to less than a 256 px tile
        assert out.block_shapes == [(256, 256)] and out.compression.name == "deflate"
        assert out.nodata == 255 and out.colormap(1)[7][:3] == (255, 127, 14)  # colour table kept
        assert (out.crs, out.transform) == (scores.crs, scores.transform)
        assert scores.descriptions == ("class 3", "class 7", "class 9", "class 11")
        assert scores.scales == (pytest.approx(1 / PROBABILITY_SCALE),) * 4 and scores.nodata == 255
        # the overview of the classes holds class values only (mode, not an average)
        assert set(np.unique(out.read(1, out_shape=(300, 350)))) <= {3, 7, 9, 11, 255}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.png", "pred.tif", "pred_probabilities.tif", "scene.tif"]


@pytest.mark.parametrize("dtype", ["float16", "uint8"])
def test_probabilities_are_the_softmax_and_their_argmax_is_the_label(tmp_path: Path, write_raster, dtype: str) -> None:
    data = noise_scene(70, 90)
    scene = write_raster(tmp_path / "scene.tif", data, nodata=0)
    torch.manual_seed(1)
    pointwise = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.Tanh(), torch.nn.Conv2d(8, 4, 1))
    values = np.asarray([3, 7, 9, 11])
    result = predict_scene(
        pointwise,
        scene,
        tmp_path / "pred.tif",
        normalizer=NOISE,
        class_values=values,
        window=32,
        overlap=8,
        probabilities=dtype,
        progress=False,
    )
    with rasterio.open(result.path) as out, rasterio.open(result.probabilities) as scores:
        labels, stored = out.read(1), scores.read()
    valid = ~(data == 0).all(axis=0)
    # reference: a per-pixel model's blended logits are its own logits, so p = softmax(model(pixel))
    with torch.no_grad():
        expected = torch.softmax(pointwise(torch.from_numpy(NOISE(data, None))[None])[0], dim=0).numpy()
    if dtype == "float16":
        probabilities = stored.astype(np.float32)
        assert np.isnan(probabilities[:, ~valid]).all()
        np.testing.assert_allclose(probabilities[:, valid], expected[:, valid], atol=1e-3)
        assert np.abs(probabilities[:, valid].sum(axis=0) - 1).max() < 2e-3
        # the label's probability is the largest (float16 may round two of them to a tie)
        label_index = np.searchsorted(values, labels[valid])
        of_label = np.take_along_axis(probabilities[:, valid], label_index[None], 0)[0]
        assert (of_label == probabilities[:, valid].max(0)).all()
        strict = np.sort(probabilities[:, valid], axis=0)
        untied = strict[-1] > strict[-2]
        assert untied.mean() > 0.95 and (values[probabilities[:, valid].argmax(0)] == labels[valid])[untied].all()
    else:
        assert (stored[:, ~valid] == 255).all()
        np.testing.assert_array_equal(stored[:, valid], np.rint(expected[:, valid] * PROBABILITY_SCALE))
        sums = stored[:, valid].astype(int).sum(axis=0)
        assert np.abs(sums - PROBABILITY_SCALE).max() <= 2  # rounding of 4 values
    assert (labels[valid] == values[expected[:, valid].argmax(0)]).all()
    assert (labels[~valid] == 255).all()


@pytest.mark.parametrize(("speckled", "block"), [(False, 16), (True, 16), (True, 48)])
def test_block_polygons_equal_whole_raster_polygons(tmp_path: Path, write_raster, speckled: bool, block: int) -> None:
    """Regions cut by block edges are merged back: one polygon per 4-connected region, holes included."""
    rng = np.random.default_rng(3)
    if speckled:  # regions of every shape, many crossing block edges and corners
        classes = (rng.random((77, 97)) < 0.5).astype(np.uint8)
    else:
        classes = np.kron(rng.integers(0, 3, (12, 15)), np.ones((5, 5), dtype=np.int64))[:57, :71].astype(np.uint8)
        classes[20:40, 20:40], classes[25:35, 25:35] = 2, 1  # a ring around an island, across block edges
    classes[rng.random(classes.shape) < 0.03] = 255  # nodata speckle
    raster = write_raster(tmp_path / "classes.tif", classes, nodata=255, res=2.0)
    frame = gpd.read_file(write_polygons(raster, tmp_path / "blocks.gpkg", block=block), layer=POLYGON_LAYER)
    with rasterio.open(raster) as src:
        reference = [
            (int(value), shapely.geometry.shape(geometry))
            for geometry, value in shapes(classes, mask=classes != 255, connectivity=4, transform=src.transform)
        ]
    assert len(frame) == len(reference) and frame.is_valid.all()
    assert (frame.geom_type == "Polygon").all()
    tree = shapely.STRtree(frame.geometry.values)
    for value, polygon in reference:
        (found,) = tree.query(polygon.representative_point(), predicate="within")
        assert frame["class_value"].iloc[found] == value
        assert frame.geometry.iloc[found].symmetric_difference(polygon).area == 0
    assert any(len(polygon.interiors) for _, polygon in reference)  # holes were tested


def test_no_region_gives_an_empty_layer(tmp_path: Path, write_raster) -> None:
    raster = write_raster(tmp_path / "empty.tif", np.full((20, 30), 255, dtype=np.uint8), nodata=255)
    frame = gpd.read_file(write_polygons(raster, tmp_path / "empty.gpkg", block=16), layer=POLYGON_LAYER)
    assert len(frame) == 0 and list(frame.columns) == ["class_value", "geometry"] and frame.crs.to_epsg() == 32633


def test_outputs_inside_a_scene_folder_are_refused(tmp_path: Path, write_raster) -> None:
    folder = tmp_path / "scene"
    write_raster(folder / "a.tif", class_scene(20, 20)[1])
    kwargs = {"normalizer": IDENTITY, "class_values": CLASS_VALUES, "window": 16, "overlap": 4, "progress": False}
    with pytest.raises(GeoclError, match="inside the scene folder") as error:
        predict_scene(argmax_model(), folder, folder / "pred.tif", **kwargs)
    assert error.value.key == "out"
    with pytest.raises(GeoclError, match="inside the scene folder") as error:
        predict_scene(argmax_model(), folder, tmp_path / "pred.tif", polygons=folder / "sub" / "p.gpkg", **kwargs)
    assert error.value.key == "polygons"
    taken = write_raster(tmp_path / "x_probabilities.tif", class_scene(20, 20)[1])
    with pytest.raises(GeoclError, match="probabilities .* would overwrite the scene"):
        predict_scene(argmax_model(), taken, tmp_path / "x.tif", probabilities="uint8", **kwargs)
    assert sorted(p.name for p in folder.iterdir()) == ["a.tif"]
