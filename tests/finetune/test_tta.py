"""D4 test-time augmentation: the group, the average against a naive numpy loop, equivariant models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from geocl.finetune.predict import predict_scene
from geocl.finetune.tta import D4Average, d4_apply, d4_invert, d4_transforms
from tests.finetune.test_predict import NOISE, context_model, noise_scene


def test_the_eight_transforms_are_distinct_and_invertible() -> None:
    image = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)  # no symmetry
    views = [d4_apply(image, transform) for transform in d4_transforms()]
    assert len(views) == 8
    assert len({tuple(view.flatten().tolist()) for view in views}) == 8
    assert torch.equal(views[0], image)  # the identity first
    for transform, view in zip(d4_transforms(), views, strict=False):
        assert torch.equal(d4_invert(view, transform), image)
    # the same 8 as numpy's flips and quarter turns (counter-clockwise, in the last two axes)
    reference = {
        tuple(np.rot90(m, k, axes=(-2, -1)).flatten().tolist())
        for m in (image.numpy(), image.numpy()[..., ::-1])
        for k in range(4)
    }
    assert {tuple(view.flatten().tolist()) for view in views} == reference


def test_average_equals_a_naive_loop_over_flips_and_rotations() -> None:
    model = context_model(classes=3, seed=4)
    images = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 3, 12, 12)).astype(np.float32))
    with torch.no_grad():
        averaged = D4Average(model)(images).numpy()
        # numpy reference: each view's logits turned and flipped back, then the plain mean
        total = np.zeros((2, 3, 12, 12))
        for flip in (False, True):
            for turns in range(4):
                view = images.numpy()[..., ::-1] if flip else images.numpy()
                view = np.ascontiguousarray(np.rot90(view, turns, axes=(-2, -1)))
                logits = model(torch.from_numpy(view)).numpy()
                back = np.rot90(logits, -turns, axes=(-2, -1))
                total += back[..., ::-1] if flip else back
    np.testing.assert_allclose(averaged, total / 8, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # and it is not the plain prediction: the test could fail
        assert np.abs(averaged - model(images).numpy()).max() > 1e-3


def test_non_square_windows_are_refused() -> None:
    with pytest.raises(ValueError, match="square"):
        D4Average(lambda x: x)(torch.zeros(1, 1, 4, 6))


def symmetric_model(seed: int = 0) -> torch.nn.Module:
    """A conv net equivariant under D4: every kernel averaged over the 8 flips and rotations."""
    model = context_model(classes=4, seed=seed)
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, torch.nn.Conv2d):
                kernel = layer.weight.clone()
                layer.weight.copy_(sum(d4_apply(kernel, t) for t in d4_transforms()) / 8)
    return model


def test_tta_of_an_equivariant_model_is_its_plain_prediction(tmp_path: Path, write_raster) -> None:
    data = noise_scene(70, 90)
    scene = write_raster(tmp_path / "scene.tif", data, nodata=0)
    common = {
        "normalizer": NOISE,
        "class_values": [0, 1, 2, 3],
        "window": 32,
        "overlap": 8,
        "probabilities": "float16",
        "cog": False,
        "progress": False,
    }

    def outputs(model: torch.nn.Module, name: str, tta: bool) -> tuple[np.ndarray, np.ndarray]:
        result = predict_scene(model, scene, tmp_path / f"{name}.tif", tta=tta, **common)
        with rasterio.open(result.path) as labels, rasterio.open(result.probabilities) as scores:
            return labels.read(1), scores.read().astype(np.float32)

    equivariant = symmetric_model()
    plain_labels, plain_scores = outputs(equivariant, "plain", False)
    tta_labels, tta_scores = outputs(equivariant, "tta", True)
    valid = ~np.isnan(plain_scores[0])
    np.testing.assert_allclose(tta_scores[:, valid], plain_scores[:, valid], atol=1e-3)
    assert (tta_labels == plain_labels).all()
    # a model that is not equivariant is changed by TTA (so the comparison above can fail)
    skewed_plain = outputs(context_model(seed=2), "skewed_plain", False)[1]
    skewed_tta = outputs(context_model(seed=2), "skewed_tta", True)[1]
    assert np.abs(skewed_tta[:, valid] - skewed_plain[:, valid]).max() > 0.05
