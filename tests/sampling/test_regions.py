"""GraSS map -> box -> crop (geocl/sampling/regions.py), checked against specs/grass.md."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss
from scipy import ndimage
from torch import Tensor, nn

from geocl.sampling.regions import (
    box_purity,
    crop_and_resize,
    gradient_maps,
    move_boxes,
    select_box,
    select_boxes,
    upsample_maps,
)

VIEW = (224, 224)


def smooth_maps(count: int, seed: int) -> np.ndarray:
    """Random 7x7 maps upsampled to 224 px, like GraSS heat maps: ``[count, 224, 224]``."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(count, 7, 7, generator=generator, dtype=torch.float64)
    return upsample_maps(coarse, VIEW).numpy()


def box_area(box: tuple[int, int, int, int]) -> int:
    r0, r1, c0, c1 = box
    return (r1 - r0) * (c1 - c0)


def contains(outer: tuple[int, int, int, int], inner: tuple[int, int, int, int]) -> bool:
    return outer[0] <= inner[0] and inner[1] <= outer[1] and outer[2] <= inner[2] and inner[3] <= outer[3]


# --- select_box on hand-made maps -------------------------------------------------------


def test_component_holding_the_peak_wins() -> None:
    heat = np.zeros((40, 50))
    heat[2:6, 3:10] = 0.9  # large component, lower peak
    heat[20:23, 30:32] = 0.7
    heat[21, 31] = 1.0  # the peak
    heat[30:38, 5:8] = 0.8
    assert select_box(heat) == (20, 23, 30, 32)


def test_ties_go_to_the_later_component() -> None:
    heat = np.zeros((30, 30))
    heat[2:4, 2:5] = 1.0  # first in raster order
    heat[20:25, 10:12] = 1.0  # later in raster order, same peak
    assert select_box(heat) == (20, 25, 10, 12)


def test_diagonal_pixels_are_one_component() -> None:
    heat = np.zeros((10, 10))
    heat[2, 2] = heat[3, 3] = heat[4, 4] = 1.0
    assert select_box(heat) == (2, 5, 2, 5)


def test_boxes_are_scored_by_the_max_inside_the_box() -> None:
    """Step 5d scores a component's bounding box, not its pixels.

    A "U" (right arm taller) is labelled after a lone peak pixel that lies inside the
    U's bounding box; both boxes then score the peak value, and the tie goes to the
    later label, the U. A component-pixel rule would pick the peak's 1-pixel box.
    """
    heat = np.zeros((12, 12))
    heat[0:6, 8] = 0.8  # right arm, first U pixel at (0, 8)
    heat[2:6, 0] = 0.8  # left arm
    heat[5, 0:9] = 0.8  # bottom
    heat[0, 4] = 1.0  # the peak, before (0, 8) in raster order
    labels, count = ndimage.label(heat > 0.5, structure=np.ones((3, 3)))
    assert count == 2 and labels[0, 4] < labels[0, 8]
    assert select_box(heat) == (0, 6, 0, 9)
    heat[0, 4] = 0.0
    heat[3, 4] = 1.0  # now labelled after the U: its own box wins the tie
    assert select_box(heat) == (3, 4, 4, 5)


def test_constant_map_gives_no_box_and_no_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert select_box(np.full((224, 224), 3.5)) is None
        assert select_box(np.zeros((7, 7))) is None
        assert select_box(torch.full((5, 6), -2.0)) is None


def test_nan_map_gives_no_box() -> None:
    heat = np.zeros((8, 8))
    heat[3, 3] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert select_box(heat) is None


def test_one_pixel_component_gives_a_one_pixel_box() -> None:
    heat = np.zeros((224, 224))
    heat[10, 20] = 1.0
    assert select_box(heat) == (10, 11, 20, 21)


def test_min_side_grows_the_box_inside_the_map() -> None:
    heat = np.zeros((224, 224))
    heat[10, 20] = 1.0
    assert select_box(heat, min_side=16) == (3, 19, 13, 29)  # 7 px above/left, 8 below/right
    heat[:] = 0.0
    heat[0, 223] = 1.0  # corner: shifted back inside
    assert select_box(heat, min_side=16) == (0, 16, 208, 224)
    heat[:] = 0.0
    heat[100:150, 100:103] = 1.0  # already tall enough: rows kept
    assert select_box(heat, min_side=16) == (100, 150, 94, 110)
    assert select_box(heat, min_side=1000) == (0, 224, 0, 224)  # capped at the map


def test_threshold_ratio_is_strict() -> None:
    heat = np.array([[0.0, 0.5, 1.0]])
    assert select_box(heat, ratio=0.5) == (0, 1, 2, 3)  # 0.5 is not > 0.5
    assert select_box(heat, ratio=0.49) == (0, 1, 1, 3)
    assert select_box(heat, ratio=1.0) is None


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError):
        select_box(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError):
        select_box(np.eye(3), ratio=1.5)
    with pytest.raises(ValueError):
        select_box(np.eye(3), min_side=-1)


# --- select_box on random smoothed maps (spec tests 3, 4, 5) --------------------------


def test_box_contains_argmax_and_lies_inside_the_view() -> None:
    """Spec test 3 and 4 (validity), on 300 random smoothed maps."""
    for heat in smooth_maps(300, seed=3):
        box = select_box(heat)
        assert box is not None
        r0, r1, c0, c1 = box
        assert 0 <= r0 < r1 <= 224 and 0 <= c0 < c1 <= 224
        row, col = np.unravel_index(np.argmax(heat), heat.shape)
        assert r0 <= row < r1 and c0 <= col < c1


def peak_component_box(heat: np.ndarray, ratio: float) -> tuple[int, int, int, int]:
    """Bounding box of the thresholded component that holds argmax(H)."""
    labels, _ = ndimage.label(heat > heat.min() + ratio * (heat.max() - heat.min()), structure=np.ones((3, 3)))
    peak = labels[np.unravel_index(np.argmax(heat), heat.shape)]
    rows, cols = ndimage.find_objects(labels)[peak - 1]
    return (rows.start, rows.stop, cols.start, cols.stop)


def test_raising_the_threshold_never_enlarges_the_box() -> None:
    """Spec test 5: r 0.5 -> 0.8 never enlarges the box (300 random smoothed maps).

    The official rule scores bounding boxes, so a later component whose box wraps
    around the peak wins the tie (see test_boxes_are_scored_by_the_max_inside_the_box);
    then the 0.5 box need not contain the 0.8 box (about 1 map in 200). Containment is
    therefore asserted where both boxes are the peak's component, and the area
    inequality everywhere.
    """
    tie_overrides = 0
    for heat in smooth_maps(300, seed=5):
        loose, tight = select_box(heat, ratio=0.5), select_box(heat, ratio=0.8)
        assert loose is not None and tight is not None
        assert box_area(tight) <= box_area(loose)
        if loose == peak_component_box(heat, 0.5) and tight == peak_component_box(heat, 0.8):
            assert contains(loose, tight)
        else:
            tie_overrides += 1
    assert tie_overrides <= 15  # rare: ~1 % of selections in 4000 tried while writing this


def test_zero_ratio_on_a_unimodal_map_gives_the_full_view() -> None:
    rows, cols = np.mgrid[0:224, 0:224]
    heat = np.exp(-((rows - 100.0) ** 2 + (cols - 130.0) ** 2) / (2 * 40.0**2))
    assert select_box(heat, ratio=0.0) == (0, 224, 0, 224)
    small = select_box(heat, ratio=0.9)
    assert small is not None and box_area(small) < 0.1 * 224 * 224


# --- gradient_maps --------------------------------------------------------------------


def naive_maps(features: Tensor, gradients: Tensor) -> Tensor:
    """Spec step 4 written out with loops, as an independent reference."""
    views, channels, height, width = features.shape
    out = torch.zeros(views, height, width, dtype=torch.float64)
    for b in range(views):
        for c in range(channels):
            alpha = sum(float(gradients[b, c, i, j]) for i in range(height) for j in range(width))
            alpha /= height * width
            for i in range(height):
                for j in range(width):
                    out[b, i, j] += alpha * float(features[b, c, i, j]) / channels
        peak = float(out[b].max())
        if peak > 0:
            out[b] /= peak
    return out


class TinyEncoder(nn.Module):
    """Two convs -> feature map A -> global average pool -> linear projection."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, stride=2, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(5, 4)

    def project(self, features: Tensor) -> Tensor:
        """The part after A: pool and project."""
        return self.head(features.mean(dim=(2, 3)))


def contrastive_setup() -> tuple[TinyEncoder, Tensor, NTXentLoss]:
    torch.manual_seed(0)
    model = TinyEncoder().double()
    views = torch.randn(8, 3, 16, 16, dtype=torch.float64)  # 2 views x 4 images
    return model, views, NTXentLoss(temperature=0.5)


def loss_from_features(model: TinyEncoder, loss_fn: NTXentLoss, features: Tensor) -> Tensor:
    z = model.project(features)
    half = z.shape[0] // 2
    return loss_fn(z[:half], z[half:])


def test_gradient_maps_match_a_naive_reference_on_real_gradients() -> None:
    model, views, loss_fn = contrastive_setup()
    features = model.trunk(views)  # [8, 5, 4, 4]
    loss = loss_from_features(model, loss_fn, features)
    assert torch.isfinite(loss)
    gradients = torch.autograd.grad(loss, features)[0]
    maps = gradient_maps(features, gradients)
    assert maps.shape == (8, 4, 4)
    assert not maps.requires_grad
    torch.testing.assert_close(maps, naive_maps(features.detach(), gradients), rtol=1e-10, atol=1e-12)
    assert maps.abs().sum() > 0


def test_autograd_gradient_matches_finite_differences() -> None:
    """G = dL/dA from autograd against central differences on 6 entries of A.

    float64 and a step of 1e-6 give a truncation error ~1e-12 and a rounding error
    ~1e-10 on a loss of order 1; the tolerance is 1e-7 absolute + 1e-5 relative.
    """
    model, views, loss_fn = contrastive_setup()
    features = model.trunk(views).detach().requires_grad_(True)
    gradients = torch.autograd.grad(loss_from_features(model, loss_fn, features), features)[0]
    step = 1e-6
    generator = torch.Generator().manual_seed(1)
    flat = torch.randint(0, features.numel(), (6,), generator=generator).tolist()
    flat.append(int(gradients.abs().argmax()))  # one entry with a clearly non-zero gradient
    with torch.no_grad():
        for index in flat:
            where = np.unravel_index(index, features.shape)
            plus, minus = features.clone(), features.clone()
            plus[where] += step
            minus[where] -= step
            difference = loss_from_features(model, loss_fn, plus) - loss_from_features(model, loss_fn, minus)
            estimate, exact = float(difference) / (2 * step), float(gradients[where])
            assert abs(estimate - exact) <= 1e-7 + 1e-5 * abs(exact)
    assert float(gradients.abs().max()) > 1e-4


def test_single_active_cell_gives_a_box_on_that_cell() -> None:
    """Spec test 2: channel 3 active only in cell (2, 5), positive pooled gradient."""
    features = torch.zeros(1, 16, 7, 7)
    features[0, 3, 2, 5] = 2.0
    gradients = torch.zeros(1, 16, 7, 7)
    gradients[0, 3] = 0.01
    gradients[0, 7] = -5.0  # a channel whose A is zero contributes nothing
    maps = gradient_maps(features, gradients)
    assert divmod(int(maps[0].argmax()), 7) == (2, 5)
    assert float(maps.max()) == pytest.approx(1.0)
    (box,) = select_boxes(maps, VIEW)
    assert box is not None
    r0, r1, c0, c1 = box
    assert 64 <= r0 < 80 < r1 <= 96 and 160 <= c0 < 176 < c1 <= 192


def test_negative_maps_are_not_flipped() -> None:
    """A2: max(M) <= 0 skips the division, so the map keeps its sign and values."""
    features = torch.ones(2, 3, 7, 7)
    features[0, :, 4, 4] = 0.5  # the least negative cell
    gradients = -torch.ones(2, 3, 7, 7)
    maps = gradient_maps(features, gradients)
    assert float(maps[0].max()) == pytest.approx(-0.5)
    assert divmod(int(maps[0].argmax()), 7) == (4, 4)
    # all-zero gradients: zero map, no NaN, no box
    maps = gradient_maps(features, torch.zeros_like(gradients))
    assert torch.equal(maps, torch.zeros(2, 7, 7))
    assert select_boxes(maps, VIEW) == [None, None]


def test_scaling_the_gradient_leaves_the_boxes_unchanged() -> None:
    """Spec test 7, with positive and with all-negative maps."""
    generator = torch.Generator().manual_seed(7)
    features = torch.rand(6, 32, 7, 7, generator=generator, dtype=torch.float64)
    gradients = torch.randn(6, 32, 7, 7, generator=generator, dtype=torch.float64)
    gradients[5] = -gradients[5].abs()  # view 5: max(M) < 0, division skipped
    assert float(gradient_maps(features, gradients)[5].max()) < 0
    reference = select_boxes(gradient_maps(features, gradients), VIEW)
    assert all(box is not None for box in reference)
    for scale in (1e-3, 0.5, 3.7, 1e4):
        assert select_boxes(gradient_maps(features, gradients * scale), VIEW) == reference


def test_gradient_maps_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        gradient_maps(torch.zeros(2, 3, 7, 7), torch.zeros(2, 3, 7, 6))


# --- upsampling, per-view independence, crops ----------------------------------------


def test_upsampling_uses_half_pixel_centres() -> None:
    maps = torch.tensor([[[0.0, 1.0]]])
    up = upsample_maps(maps, (1, 4))
    # cv2.resize INTER_LINEAR: centres at (x + 0.5) / 2 - 0.5 -> -0.25, 0.25, 0.75, 1.25
    torch.testing.assert_close(up, torch.tensor([[[0.0, 0.25, 0.75, 1.0]]]))
    assert upsample_maps(torch.rand(3, 7, 7), VIEW).shape == (3, 224, 224)


def test_each_box_depends_on_its_own_map_only() -> None:
    """Spec test 8."""
    generator = torch.Generator().manual_seed(8)
    maps = torch.randn(5, 7, 7, generator=generator)
    boxes = select_boxes(maps, VIEW)
    heat = upsample_maps(maps, VIEW)
    assert boxes == [select_box(heat[k]) for k in range(5)]
    changed = maps.clone()
    changed[1] = torch.randn(7, 7, generator=generator)
    changed[3] = 0.0
    new = select_boxes(changed, VIEW)
    assert new[3] is None
    assert [new[k] for k in (0, 2, 4)] == [boxes[k] for k in (0, 2, 4)]
    assert new[1] != boxes[1]


def test_crop_keeps_shape_dtype_device_and_none_keeps_the_view() -> None:
    views = torch.randn(4, 3, 224, 224)
    boxes = [(10, 50, 30, 200), None, (0, 224, 0, 224), (100, 101, 5, 6)]
    out = crop_and_resize(views, boxes)
    assert out.shape == views.shape and out.dtype == views.dtype and out.device == views.device
    assert torch.equal(out[1], views[1])
    assert torch.equal(out[2], views[2])
    assert not torch.equal(out[0], views[0])
    assert torch.equal(out[3], views[3, :, 100:101, 5:6].expand(3, 224, 224))  # A6: a constant crop
    half = crop_and_resize(views.half(), boxes)
    assert half.dtype == torch.float16


def test_crop_pixels_are_pixels_of_the_box() -> None:
    """Spec test 4: nearest resize adds no new values; corners map to corners."""
    views = torch.arange(2 * 3 * 224 * 224, dtype=torch.float32).reshape(2, 3, 224, 224)
    boxes = [(37, 150, 61, 90), (5, 12, 200, 224)]
    out = crop_and_resize(views, boxes)
    for k, (r0, r1, c0, c1) in enumerate(boxes):
        inside = set(views[k, :, r0:r1, c0:c1].flatten().tolist())
        assert set(out[k].flatten().tolist()) <= inside
        assert torch.equal(out[k, :, 0, 0], views[k, :, r0, c0])
        assert torch.equal(out[k, :, -1, -1], views[k, :, r1 - 1, c1 - 1])
        expected = F.interpolate(views[k : k + 1, :, r0:r1, c0:c1], size=VIEW, mode="nearest")[0]
        assert torch.equal(out[k], expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.uint8])
def test_crop_equals_per_view_nearest_interpolation(dtype: torch.dtype) -> None:
    """The batched gather gives, pixel for pixel, the official per-view F.interpolate."""
    generator = torch.Generator().manual_seed(11)
    views = (torch.rand(50, 1, 224, 224, generator=generator) * 250).to(dtype)
    starts = torch.randint(0, 223, (50, 2), generator=generator)
    boxes = []
    for r0, c0 in starts.tolist():
        r1 = r0 + 1 + int(torch.randint(0, 224 - r0, (1,), generator=generator))
        c1 = c0 + 1 + int(torch.randint(0, 224 - c0, (1,), generator=generator))
        boxes.append((r0, r1, c0, c1))
    out = crop_and_resize(views, boxes)
    for k, (r0, r1, c0, c1) in enumerate(boxes):
        expected = F.interpolate(views[k : k + 1, :, r0:r1, c0:c1], size=VIEW, mode="nearest")[0]
        assert torch.equal(out[k], expected), (k, boxes[k])


def test_crop_works_for_integer_views_and_keeps_gradients() -> None:
    views = torch.arange(2 * 1 * 8 * 8).reshape(2, 1, 8, 8)
    out = crop_and_resize(views, [(0, 2, 0, 2), None])
    assert out.dtype == torch.int64
    assert set(out[0].flatten().tolist()) == {0, 1, 8, 9}
    assert torch.equal(out[0, 0, :4, :4], torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))
    assert torch.equal(out[1], views[1])
    floats = torch.rand(2, 1, 8, 8, requires_grad=True)
    crop_and_resize(floats, [(0, 4, 0, 4), None]).sum().backward()
    assert floats.grad is not None and float(floats.grad[0, 0, 0, 0]) == 4.0


def test_crop_rejects_bad_boxes() -> None:
    views = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError):
        crop_and_resize(views, [None])
    with pytest.raises(ValueError):
        crop_and_resize(views, [(0, 9, 0, 4), None])
    with pytest.raises(ValueError):
        crop_and_resize(views, [(3, 3, 0, 4), None])


def test_full_chain_on_a_batch_of_512_views_is_fast() -> None:
    """The official batch: 512 views of 224 px; the CPU part must not dominate a step.

    About 0.5 s on 2 idle cores, a few seconds when other jobs load them; the bound
    leaves room for that.
    """
    import time

    generator = torch.Generator().manual_seed(9)
    features = torch.rand(512, 64, 7, 7, generator=generator)
    gradients = torch.randn(512, 64, 7, 7, generator=generator)
    views = torch.randn(512, 3, 224, 224, generator=generator)
    start = time.perf_counter()
    boxes = select_boxes(gradient_maps(features, gradients), VIEW)
    out = crop_and_resize(views, boxes)
    elapsed = time.perf_counter() - start
    assert out.shape == views.shape
    assert sum(box is not None for box in boxes) == 512
    assert elapsed < 15.0


def test_box_purity_is_the_majority_class_share_of_the_labelled_pixels() -> None:
    labels = np.array([[0, 0, 1, 2], [0, 1, 1, 2], [-100, -100, 2, 2]])
    # rows 0-2, cols 0-2: 0,0,1 / 0,1,1 / 2 (the two -100 left out) -> 0: 3, 1: 3, 2: 1 of 7 labelled
    assert box_purity(labels, (0, 3, 0, 3)) == pytest.approx(3 / 7)
    assert box_purity(labels, (0, 2, 0, 2)) == pytest.approx(3 / 4)  # 0,0,0,1
    assert box_purity(labels, (0, 3, 3, 4)) == 1.0  # one class
    assert box_purity(labels, (0, 3, 0, 4)) == pytest.approx(4 / 10)  # 2 wins: 4 of 10 labelled
    assert np.isnan(box_purity(labels, (2, 3, 0, 2)))  # no labelled pixel


def test_moved_boxes_keep_their_size_stay_inside_and_reach_every_place() -> None:
    boxes = [(0, 2, 1, 4), None, (3, 5, 0, 5)]
    generator = torch.Generator().manual_seed(0)
    tops: set[tuple[int, int]] = set()
    for _ in range(300):
        moved = move_boxes(boxes, (5, 5), generator)
        assert moved[1] is None  # a view kept whole stays whole
        for box, new in zip(boxes, moved, strict=True):
            if box is None or new is None:
                continue
            assert (new[1] - new[0], new[3] - new[2]) == (box[1] - box[0], box[3] - box[2])
            assert 0 <= new[0] < new[1] <= 5 and 0 <= new[2] < new[3] <= 5
        tops.add((moved[0][0], moved[0][2]))  # type: ignore[index]
    assert tops == {(r, c) for r in range(4) for c in range(3)}  # a 2 x 3 box has 4 x 3 places in 5 x 5
