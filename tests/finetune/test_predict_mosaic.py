"""A scene given as several GeoTIFFs is predicted like the one GeoTIFF they were cut from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import torch

from geocl.data.normalize import BandNormalizer
from geocl.finetune.predict import predict_scene
from tests.data.test_mosaic import ORIGIN, RES, two_crs, write_quarters
from tests.finetune.test_predict import NOISE, context_model, noise_scene

COMMON = {
    "normalizer": NOISE,
    "class_values": [0, 1, 2, 3],
    "window": 32,
    "overlap": 8,
    "probabilities": "float16",
    "cog": False,
    "progress": False,
}


def read(result) -> tuple[np.ndarray, np.ndarray, rasterio.Affine]:  # type: ignore[no-untyped-def]
    with rasterio.open(result.path) as labels, rasterio.open(result.probabilities) as scores:
        return labels.read(1), scores.read(), labels.transform


def test_two_adjacent_geotiffs_predict_like_the_merged_scene(tmp_path: Path, write_raster) -> None:
    data = noise_scene(70, 91)
    merged = write_raster(tmp_path / "merged.tif", data, origin=ORIGIN, res=RES, nodata=0)
    left = write_raster(tmp_path / "left.tif", data[:, :, :40], origin=ORIGIN, res=RES, nodata=0)
    right_origin = (ORIGIN[0] + 40 * RES, ORIGIN[1])
    right = write_raster(tmp_path / "right.tif", data[:, :, 40:], origin=right_origin, res=RES, nodata=0)
    model = context_model()
    expected = predict_scene(model, merged, tmp_path / "out" / "merged.tif", **COMMON)
    mosaic = predict_scene(model, [left, right], tmp_path / "out" / "mosaic.tif", **COMMON)
    assert mosaic.shape == expected.shape == (70, 91) and mosaic.scenes == (left, right)
    labels, scores, transform = read(mosaic)
    want_labels, want_scores, want_transform = read(expected)
    assert transform == want_transform
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_array_equal(scores, want_scores)
    assert mosaic.png.exists()


def test_a_folder_of_quarters_with_a_gap(tmp_path: Path, write_raster) -> None:
    data = noise_scene(70, 91, seed=5)
    merged = write_raster(tmp_path / "merged.tif", data, origin=ORIGIN, res=RES, nodata=0)
    write_quarters(tmp_path / "parts", write_raster, data, (33, 40), skip=3)
    model = context_model()
    expected = predict_scene(model, merged, tmp_path / "merged_pred.tif", **COMMON)
    mosaic = predict_scene(model, tmp_path / "parts", tmp_path / "mosaic_pred.tif", block=256, **COMMON)
    labels, _, _ = read(mosaic)
    want_labels, _, _ = read(expected)
    missing = (data == 0).all(axis=0)
    missing[33:, 40:] = True  # the quarter left out
    np.testing.assert_array_equal(labels == 255, missing)
    # away from the gap (more than a window's reach) the prediction is the merged scene's
    np.testing.assert_array_equal(labels[:, :8], want_labels[:, :8])
    np.testing.assert_array_equal(labels[:1], want_labels[:1])


def test_a_mosaic_of_two_crs_keeps_the_first_scenes_prediction(tmp_path: Path, write_raster) -> None:
    # TorchGeo's grid lay 0.3 px off the first scene and every pixel was resampled: 81 % of the
    # labels of a per-pixel model matched the scene's own prediction (74 % in the case)
    first, second, a = two_crs(tmp_path, write_raster)
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 1)  # per pixel: nothing but the pixel decides its class
    common = {**COMMON, "normalizer": BandNormalizer([1000.0] * 3, [500.0] * 3, nodata=0)}
    alone = predict_scene(model, first, tmp_path / "alone.tif", **common)
    mosaic = predict_scene(model, [first, second], tmp_path / "mosaic.tif", **common)
    assert mosaic.notes[0].startswith("b.tif is resampled from EPSG:32634 to EPSG:32633 onto the pixel grid of a.tif")
    assert mosaic.notes[1].startswith("a.tif and b.tif overlap (about ")
    assert "  note: b.tif is resampled from EPSG:32634" in mosaic.describe()
    labels, scores, transform = read(mosaic)
    want_labels, want_scores, want_transform = read(alone)
    col, row = ~transform @ (want_transform.c, want_transform.f)
    assert (col, row) == (round(col), round(row)) and transform.a == want_transform.a
    inside = (slice(round(row), round(row) + 60), slice(round(col), round(col) + 70))
    scene_pixels = ~(a == 0).all(axis=0)  # where a has data it wins: byte for byte its own map
    np.testing.assert_array_equal(labels[inside][scene_pixels], want_labels[scene_pixels])
    # the same logits blended over other windows: equal up to float rounding (a float16 step)
    np.testing.assert_allclose(
        scores[(slice(None), *inside)][:, scene_pixels].astype(np.float32),
        want_scores[:, scene_pixels],
        atol=2**-11,  # one float16 step below 1 (the blend's sums may round either way)
    )
    # its nodata hole is predicted from b where b lies, and no more nodata than in a is left
    assert (labels[inside][~scene_pixels] != 255).any()
