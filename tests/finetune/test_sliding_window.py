"""Sliding-window logits: window grid, normalised blending, streaming in row bands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from geocl.data.normalize import BandNormalizer
from geocl.finetune.predict import predict_scene
from geocl.finetune.sliding_window import blend_weight, sliding_window_logits, window_origins


def test_blend_is_a_normalised_weighted_mean(tmp_path: Path, write_raster) -> None:
    height, width, window, overlap = 20, 50, 16, 6
    data = np.random.default_rng(1).integers(1, 500, (1, height, width)).astype(np.uint16)
    scene = write_raster(tmp_path / "scene.tif", data)
    normalizer = BandNormalizer([100.0], [50.0], nodata=0)

    # a per-pixel regression "model" (the normalised band): any weighting gives it back
    with rasterio.open(scene) as src:
        strips = list(
            sliding_window_logits(lambda x: x, src, normalizer, num_classes=1, window=window, overlap=overlap)
        )
    blended = np.concatenate([strip.logits for strip in strips], axis=1)[0]
    np.testing.assert_allclose(blended, (data[0] - 100.0) / 50.0, rtol=1e-5, atol=1e-5)

    # a model that outputs each pixel's column inside its window: where two windows
    # overlap the result is the weight-normalised mean of their two values
    def column_in_window(images: torch.Tensor) -> torch.Tensor:
        ramp = torch.arange(images.shape[-1], dtype=torch.float32)
        return ramp.expand(images.shape[0], 1, *images.shape[-2:]).clone()

    with rasterio.open(scene) as src:
        strips = list(
            sliding_window_logits(column_in_window, src, normalizer, num_classes=1, window=window, overlap=overlap)
        )
    blended = np.concatenate([strip.logits for strip in strips], axis=1)[0]
    weight = blend_weight(window)
    stride = window - overlap
    assert window_origins(width, window, stride)[:2] == [0, stride]
    row = 2  # inside the first row of windows only (row origins 0 and 4 overlap elsewhere)
    assert window_origins(height, window, stride) == [0, 4]
    for col in (0, 5, stride, stride + 3, window - 1):
        # rows 0..3 are covered by the window at row 0 only, so only column weights matter
        alone = col < stride
        expected = (
            col
            if alone
            else (
                (weight[row, col] * col + weight[row, col - stride] * (col - stride))
                / (weight[row, col] + weight[row, col - stride])
            )
        )
        assert blended[row, col] == pytest.approx(expected, abs=1e-4)
    # the blend weight is smooth, largest at the centre and never zero
    assert weight.min() > 0 and weight.argmax() == np.ravel_multi_index((7, 7), weight.shape)


def test_streaming_matches_a_single_window_reference(tmp_path: Path, write_raster) -> None:
    height, width = 300, 40
    data = np.random.default_rng(2).integers(1, 1000, (3, height, width)).astype(np.uint16)
    scene = write_raster(tmp_path / "scene.tif", data)
    normalizer = BandNormalizer([500.0, 400.0, 600.0], [300.0, 250.0, 280.0], nodata=0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.Tanh(), torch.nn.Conv2d(8, 4, 1))
    calls = []

    def counted(images: torch.Tensor) -> torch.Tensor:
        calls.append(images.shape[0])
        return model(images)

    # the first strip comes out before most windows are run: rows are streamed
    with rasterio.open(scene) as src:
        strips = sliding_window_logits(counted, src, normalizer, num_classes=4, window=32, overlap=8)
        first = next(strips)
        assert first.row == 0 and first.logits.shape == (4, 24, width)
        assert sum(calls) <= 2 * 2  # two row bands of two windows each
        rest = list(strips)
    assert [s.row for s in [first, *rest]] == window_origins(height, 32, 24)
    assert max(s.logits.shape[1] for s in rest) <= 32

    result = predict_scene(
        model,
        scene,
        tmp_path / "pred.tif",
        normalizer=normalizer,
        class_values=[0, 1, 2, 3],
        window=32,
        overlap=8,
        progress=False,
    )
    with torch.no_grad():  # reference: the whole scene as one window
        reference = model(torch.from_numpy(normalizer(data, None))[None]).argmax(1)[0].numpy()
    with rasterio.open(result.path) as out:
        assert (out.read(1) == reference).all()
