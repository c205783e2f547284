"""Tests of the per-pixel spectral baseline (geocl.evaluation.spectral_baseline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from geocl.data.synthetic import MASK_NODATA, SceneFiles, make_scene
from geocl.errors import GeoclError
from geocl.evaluation import spectral_baseline
from geocl.evaluation.spectral_baseline import nearest_class_mean_miou


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def test_ncm_miou_not_trivial_not_hopeless(scene1024: SceneFiles) -> None:
    score = nearest_class_mean_miou(scene1024.image, scene1024.mask, sample_pixels=400_000)
    assert 0.2 < score < 0.9


def _naive_miou(target: np.ndarray, pred: np.ndarray) -> float:
    classes = sorted(set(target.tolist()) | set(pred.tolist()))
    ious = []
    for c in classes:
        tp = np.sum((target == c) & (pred == c))
        fp = np.sum((target != c) & (pred == c))
        fn = np.sum((target == c) & (pred != c))
        ious.append(tp / (tp + fp + fn))
    return float(np.mean(ious))


def test_ncm_miou_matches_naive_confusion_matrix(scene512: SceneFiles) -> None:
    image = _read(scene512.image)
    mask = _read(scene512.mask)[0]
    target, pred, _ = spectral_baseline._ncm_predict(image, mask, sample_pixels=50_000, seed=5)
    assert target.size == 25_000 and MASK_NODATA not in target
    expected = _naive_miou(target, pred)
    score = nearest_class_mean_miou(scene512.image, scene512.mask, sample_pixels=50_000, seed=5)
    assert score == pytest.approx(expected, abs=1e-6)


def _write_pair(folder: Path, image: np.ndarray, mask: np.ndarray) -> tuple[Path, Path]:
    profile = {
        "driver": "GTiff",
        "height": mask.shape[0],
        "width": mask.shape[1],
        "crs": "EPSG:32633",
        "transform": from_origin(0.0, float(mask.shape[0]), 1.0, 1.0),
    }
    with rasterio.open(folder / "img.tif", "w", count=image.shape[0], dtype="uint16", nodata=0, **profile) as dst:
        dst.write(image)
    with rasterio.open(folder / "msk.tif", "w", count=1, dtype="uint8", nodata=255, **profile) as dst:
        dst.write(mask[None])
    return folder / "img.tif", folder / "msk.tif"


def test_ncm_miou_hand_made(tmp_path: Path) -> None:
    # 3 well separated spectra, one per class, plus a nodata row: perfect score.
    mask = np.repeat(np.array([0, 1, 2, 255], dtype=np.uint8), 100).reshape(20, 20)
    spectra = {0: (100, 200), 1: (1000, 900), 2: (3000, 50), 255: (0, 0)}
    image = np.stack([np.vectorize(lambda c, b=b: spectra[c][b])(mask) for b in range(2)]).astype(np.uint16)
    img, msk = _write_pair(tmp_path, image, mask)
    assert nearest_class_mean_miou(img, msk) == pytest.approx(1.0)

    # Classes 1 and 2 share one spectrum: every class-2 pixel is labelled 1 (ties go to
    # the lower class). By hand: IoU(0) = 1, IoU(2) = 0, IoU(1) = n1 / (n1 + n2) with
    # n1, n2 the class counts of the evaluation half; class 3 (absent) does not count.
    spectra[2] = spectra[1]
    image = np.stack([np.vectorize(lambda c, b=b: spectra[c][b])(mask) for b in range(2)]).astype(np.uint16)
    img, msk = _write_pair(tmp_path, image, mask)
    target, pred, _ = spectral_baseline._ncm_predict(image, mask, sample_pixels=1_000_000, seed=0)
    assert target.size == 150  # half of the 300 valid pixels
    np.testing.assert_array_equal(pred, np.where(target == 2, 1, target))
    n1, n2 = int(np.sum(target == 1)), int(np.sum(target == 2))
    expected = (1.0 + n1 / (n1 + n2) + 0.0) / 3
    assert nearest_class_mean_miou(img, msk) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(_naive_miou(target, pred))


def test_ncm_miou_errors(tmp_path: Path, scene512: SceneFiles) -> None:
    with pytest.raises(GeoclError):
        nearest_class_mean_miou(tmp_path / "missing.tif", scene512.mask)
    with pytest.raises(GeoclError) as info:
        nearest_class_mean_miou(scene512.image, scene512.mask, sample_pixels=1)
    assert info.value.key == "sample_pixels"
    small = make_scene(tmp_path / "small", size=64)
    with pytest.raises(GeoclError):
        nearest_class_mean_miou(scene512.image, small.mask)
