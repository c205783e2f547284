"""Tests for geocl.transforms.augment: multi-band batch augmentations on kornia."""

from __future__ import annotations

import time
from typing import Any

import kornia.augmentation
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from geocl.errors import GeoclError
from geocl.transforms import (
    MultiBandViewAugmentation,
    RandomBandBrightnessContrast,
    RandomRot90,
    TwoViews,
    blur_kernel_size,
    photometric_only,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

#: Every random op off: the pipeline is a plain resize of the whole tile.
NO_OPS: dict[str, Any] = {
    "scale": (1.0, 1.0),
    "ratio": (1.0, 1.0),
    "hflip_p": 0.0,
    "vflip_p": 0.0,
    "rot90_p": 0.0,
    "jitter_p": 0.0,
    "blur_p": 0.0,
    "noise_p": 0.0,
}


def _batch(b: int = 4, c: int = 4, side: int = 32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, side, side, generator=gen)


# --- the full pipeline ------------------------------------------------------------------


@pytest.mark.parametrize("bands", [1, 3, 4, 13])
@pytest.mark.parametrize("device", DEVICES)
def test_view_shape_dtype_device_any_band_count(bands: int, device: str) -> None:
    aug = MultiBandViewAugmentation(24).to(device)
    images = _batch(c=bands, side=40).to(device)
    views = aug(images)
    assert views.shape == (4, bands, 24, 24)
    assert views.dtype == images.dtype
    assert views.device == images.device
    assert torch.isfinite(views).all()


def test_view_of_a_non_square_tile_is_square() -> None:
    views = MultiBandViewAugmentation(24, rot90_p=1.0)(_batch(side=48)[..., :30])
    assert views.shape == (4, 4, 24, 24)


def test_view_keeps_float64() -> None:
    # every op on, so each must keep the dtype
    aug = MultiBandViewAugmentation(16, hflip_p=1, vflip_p=1, rot90_p=1, jitter_p=1, blur_p=1, noise_p=1)
    views = aug(_batch(side=20).double())
    assert views.dtype == torch.float64
    assert views.shape == (4, 4, 16, 16)


def test_view_rejects_non_batched_input() -> None:
    with pytest.raises(ValueError, match="B, C, H, W"):
        MultiBandViewAugmentation(16)(torch.randn(4, 20, 20))


def test_seeded_call_is_reproducible() -> None:
    aug = MultiBandViewAugmentation(16)
    images = _batch(b=8)
    torch.manual_seed(3)
    first = aug(images)
    torch.manual_seed(3)
    second = aug(images)
    torch.manual_seed(4)
    other = aug(images)
    assert torch.equal(first, second)
    assert not torch.allclose(first, other)


def test_full_crop_is_the_resized_tile() -> None:
    images = _batch(side=48)
    views = MultiBandViewAugmentation(32, **NO_OPS)(images)
    expected = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(views, expected, atol=1e-5, rtol=1e-5)


def test_crop_takes_a_window_of_the_tile() -> None:
    # A ramp makes every pixel unique, so the view's first pixel tells where the window sits.
    side, view = 64, 32
    ramp = torch.arange(side * side, dtype=torch.float32).view(1, 1, side, side)
    images = ramp.expand(16, 2, side, side).contiguous()
    params = {**NO_OPS, "scale": (0.25, 0.25)}  # a 32 x 32 window resized to 32: no interpolation
    torch.manual_seed(0)
    views = MultiBandViewAugmentation(view, **params)(images)
    origins = set()
    for i in range(images.shape[0]):
        start = int(views[i, 0, 0, 0].item())
        row, col = divmod(start, side)
        assert torch.equal(views[i], images[i, :, row : row + view, col : col + view])
        origins.add((row, col))
    assert len(origins) > 1, "every sample got the same window"


def test_blur_kernel_scales_with_view_size() -> None:
    assert [blur_kernel_size(s) for s in (8, 32, 96, 128, 224)] == [3, 3, 9, 13, 23]
    aug = MultiBandViewAugmentation(96)
    blur = [m for m in aug.photometric.children() if type(m).__name__ == "RandomGaussianBlur"]
    assert len(blur) == 1
    assert blur[0].flags["kernel_size"] == (9, 9)


def test_disabled_ops_are_left_out() -> None:
    aug = MultiBandViewAugmentation(16, **NO_OPS)
    assert [type(m).__name__ for m in aug.geometric.children()] == ["RandomResizedCrop"]
    assert list(aug.photometric.children()) == []


# --- RandomRot90 ------------------------------------------------------------------------


def test_rot90_is_exact_torch_rot90_of_the_drawn_k() -> None:
    images = _batch(b=64, c=3, side=8)
    rot = RandomRot90(p=1.0)
    torch.manual_seed(0)
    out = rot(images)
    k = rot._params["k"]
    assert k.shape == (64,)
    assert set(k.tolist()) == {0, 1, 2, 3}
    for i in range(images.shape[0]):
        assert torch.equal(out[i], torch.rot90(images[i], int(k[i]), dims=(-2, -1)))


def test_rot90_gate_leaves_skipped_samples_unchanged() -> None:
    images = _batch(b=64, c=2, side=6)
    rot = RandomRot90(p=0.5)
    torch.manual_seed(1)
    out = rot(images)
    applied = rot._params["batch_prob"] > 0.5
    assert 0 < int(applied.sum()) < 64
    for i in range(images.shape[0]):
        k = int(rot._params["k"][i]) if applied[i] else 0
        assert torch.equal(out[i], torch.rot90(images[i], k, dims=(-2, -1)))


def test_rot90_p0_is_identity() -> None:
    images = _batch(b=16)
    assert torch.equal(RandomRot90(p=0.0)(images), images)


def test_rot90_matrix_maps_pixels_where_they_go() -> None:
    side = 7
    images = torch.zeros(32, 1, side, side)
    images[:, 0, 1, 5] = 1.0  # (x, y) = (5, 1)
    rot = RandomRot90(p=1.0)
    torch.manual_seed(2)
    out = rot(images)
    src = torch.tensor([5.0, 1.0, 1.0])
    for i in range(images.shape[0]):
        x, y, _ = rot.transform_matrix[i] @ src
        flat = int(out[i, 0].argmax())
        assert (round(float(y)), round(float(x))) == divmod(flat, side)


def test_rot90_rejects_non_square() -> None:
    with pytest.raises(ValueError, match="square"):
        RandomRot90(p=1.0)(torch.randn(2, 3, 8, 6))


# --- per-band brightness / contrast -----------------------------------------------------


def test_brightness_only_shifts_each_band_by_a_constant_within_range() -> None:
    images = _batch(b=8, c=5)
    # through the pipeline: jitter always on, contrast 0, blur and noise off, no geometry
    aug = MultiBandViewAugmentation(32, **{**NO_OPS, "jitter_p": 1.0}, brightness=0.3, contrast=0.0)
    out = photometric_only(aug)(images)
    shift = out - images
    per_band = shift.mean(dim=(-2, -1))
    assert shift.std(dim=(-2, -1)).max() < 1e-5  # constant over pixels
    assert per_band.abs().max() <= 0.3 + 1e-6
    assert per_band.abs().max() > 0.01
    assert (per_band.std(dim=1) > 1e-4).all()  # bands moved differently


def test_contrast_only_scales_band_std_and_keeps_its_mean() -> None:
    images = _batch(b=8, c=6)
    jitter = RandomBandBrightnessContrast(brightness=0.0, contrast=0.5, p=1.0)
    out = jitter(images)
    torch.testing.assert_close(out.mean(dim=(-2, -1)), images.mean(dim=(-2, -1)), atol=1e-5, rtol=0)
    ratio = out.std(dim=(-2, -1)) / images.std(dim=(-2, -1))
    assert ratio.min() >= 0.5 - 1e-5 and ratio.max() <= 1.5 + 1e-5
    torch.testing.assert_close(ratio, jitter._params["contrast_factor"], atol=1e-5, rtol=1e-5)
    assert (ratio.std(dim=1) > 1e-3).all()  # each band its own factor


def test_same_for_all_bands_shares_factor_and_shift() -> None:
    images = _batch(b=8, c=6)
    jitter = RandomBandBrightnessContrast(brightness=0.4, contrast=0.4, same_for_all_bands=True, p=1.0)
    out = jitter(images)
    ratio = out.std(dim=(-2, -1)) / images.std(dim=(-2, -1))
    shift = out.mean(dim=(-2, -1)) - images.mean(dim=(-2, -1))
    assert (ratio.std(dim=1) < 1e-5).all()
    assert (shift.std(dim=1) < 1e-5).all()
    assert ratio[:, 0].std() > 1e-3  # still random across samples


@pytest.mark.parametrize("kwargs", [{"brightness": -0.1}, {"contrast": 1.2}, {"contrast": -0.1}, {"p": 1.5}])
def test_jitter_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RandomBandBrightnessContrast(**kwargs)


# --- photometric_only -------------------------------------------------------------------


def test_photometric_only_keeps_geometry() -> None:
    # The tile is the view size and the crop is the whole tile, so only flips and
    # rotations could move the bright pixel in the full augmentation.
    images = torch.zeros(16, 4, 40, 40)
    images[:, :, 11, 27] = 1000.0
    everything_on = {"hflip_p": 1.0, "vflip_p": 1.0, "rot90_p": 1.0, "jitter_p": 1.0, "blur_p": 1.0, "noise_p": 1.0}
    aug = MultiBandViewAugmentation(40, scale=(1.0, 1.0), ratio=(1.0, 1.0), **everything_on)
    torch.manual_seed(0)
    out = photometric_only(aug)(images)
    assert out.shape == images.shape
    assert not torch.equal(out, images)
    assert (out.flatten(2).argmax(dim=-1) == 11 * 40 + 27).all()
    # the full augmentation, by contrast, moves it (unless flips and k=2 cancel out)
    moved = aug(images).flatten(2).argmax(dim=-1)
    assert (moved != 11 * 40 + 27).any()


def test_photometric_only_on_a_non_square_tile_larger_than_the_view() -> None:
    images = _batch(b=4, c=3, side=48)[..., :36]
    photo = photometric_only(MultiBandViewAugmentation(16, jitter_p=1.0, blur_p=1.0, noise_p=1.0))
    out = photo(images)
    assert out.shape == images.shape
    assert torch.isfinite(out).all()


def test_photometric_only_is_an_independent_copy_without_geometric_ops() -> None:
    aug = MultiBandViewAugmentation(16, jitter_p=1.0)
    photo = photometric_only(aug)
    assert photo is not aug.photometric
    assert not any(isinstance(m, kornia.augmentation.GeometricAugmentationBase2D) for m in photo.modules())
    assert any(isinstance(m, RandomBandBrightnessContrast) for m in photo.modules())
    aug(_batch(side=20))
    jitter = next(m for m in aug.photometric.modules() if isinstance(m, RandomBandBrightnessContrast))
    recorded = jitter._params["contrast_factor"].clone()
    photo(_batch(b=2, side=20))
    assert torch.equal(jitter._params["contrast_factor"], recorded)


# --- TwoViews ---------------------------------------------------------------------------


def test_two_views_are_independent_draws_and_reproducible() -> None:
    images = _batch(b=8, side=40)
    two = TwoViews(MultiBandViewAugmentation(24))
    torch.manual_seed(0)
    view_a, view_b = two(images)
    assert view_a.shape == view_b.shape == (8, 4, 24, 24)
    assert not torch.allclose(view_a, view_b)
    torch.manual_seed(0)
    again_a, again_b = two(images)
    assert torch.equal(view_a, again_a) and torch.equal(view_b, again_b)


def test_two_views_pair_views_of_the_same_image() -> None:
    # With no random op the two views of image i must both be image i resized.
    images = _batch(b=6, side=32)
    view_a, view_b = TwoViews(MultiBandViewAugmentation(16, **NO_OPS))(images)
    torch.testing.assert_close(view_a, view_b)
    expected = F.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(view_a, expected, atol=1e-5, rtol=1e-5)


def test_two_views_with_asymmetric_second_augmentation() -> None:
    images = _batch(b=4, side=32)
    view_a, view_b = TwoViews(MultiBandViewAugmentation(16), MultiBandViewAugmentation(8))(images)
    assert view_a.shape[-1] == 16 and view_b.shape[-1] == 8


# --- from_config ------------------------------------------------------------------------


def test_from_config_builds_and_round_trips() -> None:
    section = OmegaConf.create({"scale": [0.2, 1.0], "hflip_p": 0.25, "noise_std": 0.1})
    aug = MultiBandViewAugmentation.from_config(32, section)
    assert aug.size == 32
    assert aug.hparams["scale"] == [0.2, 1.0]
    assert aug.hparams["hflip_p"] == 0.25
    rebuilt = MultiBandViewAugmentation.from_config(32, aug.hparams)
    assert rebuilt.hparams == aug.hparams
    assert MultiBandViewAugmentation.from_config(32, {}).hparams == MultiBandViewAugmentation(32).hparams


def test_from_config_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(GeoclError) as info:
        MultiBandViewAugmentation.from_config(32, {"hflip_prob": 0.5})
    assert info.value.key == "augment.hflip_prob"
    assert "hflip_prob" in str(info.value)
    assert "did you mean 'augment.hflip_p'" in str(info.value)


def test_from_config_rejects_size_in_the_section() -> None:
    with pytest.raises(GeoclError) as info:
        MultiBandViewAugmentation.from_config(32, {"size": 64})
    assert info.value.key == "augment.size"
    assert "set by the method" in str(info.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("hflip_p", 1.5),
        ("noise_p", -0.1),
        ("rot90_p", True),
        ("jitter_p", "often"),
        ("scale", [0.5, 0.2]),
        ("scale", [0.0, 1.0]),
        ("scale", [0.5, 1.2]),
        ("scale", 0.5),
        ("ratio", [0.0, 1.0]),
        ("ratio", [1.0]),
        ("brightness", -0.1),
        ("brightness", float("nan")),
        ("contrast", 1.5),
        ("blur_sigma", [0.0, 2.0]),
        ("noise_std", -1.0),
    ],
)
def test_from_config_rejects_bad_values(name: str, value: Any) -> None:
    with pytest.raises(GeoclError) as info:
        MultiBandViewAugmentation.from_config(32, {name: value})
    assert info.value.key == f"augment.{name}"


@pytest.mark.parametrize("size", [4, 7, 16.0, "96"])
def test_bad_size_is_a_user_error(size: Any) -> None:
    with pytest.raises(GeoclError) as info:
        MultiBandViewAugmentation(size)
    assert info.value.key == "augment.size"


# --- speed (reported, not asserted) -----------------------------------------------------


def test_speed_sanity_cpu() -> None:
    aug = MultiBandViewAugmentation(96)
    images = torch.randn(32, 4, 128, 128)
    aug(images)  # warm-up
    start = time.perf_counter()
    views = aug(images)
    elapsed = time.perf_counter() - start
    print(f"\nMultiBandViewAugmentation [32, 4, 128, 128] -> 96 px on CPU: {elapsed * 1000:.1f} ms/call")
    assert views.shape == (32, 4, 96, 96)


def test_crop_scale_mismatch_speaks_when_the_views_change_the_tiles_resolution() -> None:
    from geocl.transforms.augment import crop_scale_mismatch

    # 256-px tiles, 96-px views, [0.2, 1.0]: crop sides 114.5-256 px, i.e. 1.19-2.67x smaller
    said = crop_scale_mismatch(256, 96, (0.2, 1.0))
    assert said is not None
    assert "augment.scale [0.2, 1]" in said and "shrink objects 1.2-2.7x" in said
    # (96/256)^2 = 0.140625: 0.4x and 3.5x of it
    assert "[0.06, 0.49]" in said
    # the same range on 128-px tiles (0.6-1.3x), and [0.05, 0.5] on 256-px tiles (0.6-1.9x), keep it
    assert crop_scale_mismatch(128, 96, (0.2, 1.0)) is None
    assert crop_scale_mismatch(256, 96, (0.05, 0.5)) is None
    # tiny crops blown up: enlarge
    enlarged = crop_scale_mismatch(128, 96, (0.01, 0.05))
    assert enlarged is not None and "enlarge objects 0.1-0.3x" in enlarged
