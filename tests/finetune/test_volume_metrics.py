"""Dice, Jaccard, 95HD and ASD of 3D label maps against values worked out by hand (anisotropic spacing included)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geocl.finetune.volume_metrics import case_metrics

SPACING = (0.5, 1.0, 3.0)  # mm per axis, deliberately anisotropic


def _cube(shape: tuple[int, int, int], origin: tuple[int, int, int], side: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.int64)
    x, y, z = origin
    mask[x : x + side, y : y + side, z : z + side] = 1
    return mask


def test_two_single_voxels_are_their_distance_apart() -> None:
    prediction, label = np.zeros((6, 6, 6), np.int64), np.zeros((6, 6, 6), np.int64)
    prediction[1, 1, 1] = 1
    label[2, 3, 1] = 1  # 1 voxel along x (0.5 mm), 2 along y (2 mm)
    metrics = case_metrics(prediction, label, spacing=SPACING)
    assert metrics["dice"] == 0.0 and metrics["jaccard"] == 0.0
    assert metrics["hd95"] == pytest.approx(math.hypot(0.5, 2.0))
    assert metrics["asd"] == pytest.approx(math.hypot(0.5, 2.0))
    in_voxels = case_metrics(prediction, label)
    assert in_voxels["hd95"] == pytest.approx(math.sqrt(5.0))


def test_overlapping_cubes_offset_along_the_coarse_axis() -> None:
    # two cubes of side a = 4 voxels, the prediction moved d = 1 voxel along z (3 mm voxels)
    a, d = 4, 1
    label = _cube((10, 10, 10), (3, 3, 3), a)
    prediction = _cube((10, 10, 10), (3, 3, 3 + d), a)
    metrics = case_metrics(prediction, label, spacing=SPACING)
    assert metrics["dice"] == pytest.approx((a - d) / a)  # 2 a^2 (a - d) / (2 a^3)
    assert metrics["jaccard"] == pytest.approx((a - d) / (a + d))  # a^2 (a - d) / (a^2 (a + d))
    assert metrics["jaccard"] == pytest.approx(metrics["dice"] / (2 - metrics["dice"]))
    # every surface voxel lies within d * 3 mm of the other surface, and the 16 voxels of the moved
    # face (of 56 surface voxels, so more than the top 5 %) exactly that far: the 95th percentile is d * 3 mm
    assert metrics["hd95"] == pytest.approx(d * SPACING[2])


def test_disjoint_cubes_by_counting_surface_voxels() -> None:
    # cubes of side 4 along x (0.5 mm voxels) with a gap of 2 voxels: the prediction spans x = 2..5,
    # the label x = 8..11, so a prediction surface voxel at x lies 8 - x voxels from the label's
    # facing surface (x = 8, same y and z). Surface voxels per x-layer: 16 (face), 12, 12, 16 (face).
    label = _cube((16, 8, 8), (8, 2, 2), 4)
    prediction = _cube((16, 8, 8), (2, 2, 2), 4)
    counts = {6: 16, 5: 12, 4: 12, 3: 16}  # distance in voxels -> surface voxels that far
    distances = np.repeat([voxels * SPACING[0] for voxels in counts], list(counts.values()))
    metrics = case_metrics(prediction, label, spacing=SPACING)
    assert metrics["dice"] == 0.0
    assert metrics["asd"] == pytest.approx(distances.mean())  # 4.5 voxels = 2.25 mm
    assert metrics["asd"] == pytest.approx(2.25)
    assert metrics["hd95"] == pytest.approx(np.percentile(distances, 95))  # 3 mm (symmetric by symmetry)


def test_identical_maps_and_empty_sets() -> None:
    label = _cube((8, 8, 8), (2, 2, 2), 3)
    assert case_metrics(label, label, spacing=SPACING) == {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0}
    empty = np.zeros_like(label)
    assert case_metrics(empty, empty, spacing=SPACING) == {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0}
    # an empty prediction of a non-empty label scores worst: distances = the volume's diagonal in mm
    diagonal = math.sqrt(sum((8 * s) ** 2 for s in SPACING))
    assert case_metrics(empty, label, spacing=SPACING) == pytest.approx(
        {"dice": 0.0, "jaccard": 0.0, "hd95": diagonal, "asd": diagonal}
    )


def test_classes_are_averaged_over_the_foreground() -> None:
    label = _cube((10, 10, 10), (1, 1, 1), 4) + 2 * _cube((10, 10, 10), (6, 6, 6), 3)
    prediction = _cube((10, 10, 10), (1, 1, 1), 4)  # class 1 perfect, class 2 missed
    metrics = case_metrics(prediction, label, num_classes=3, spacing=SPACING)
    assert metrics["dice"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="outside"):
        case_metrics(prediction, label, num_classes=2)
