"""A per-pixel spectral baseline: nearest class mean, scored as mIoU.

How separable are the classes of a labelled scene from the spectrum of one pixel? The
synthetic scene (:mod:`geocl.data.synthetic`) is built so that this baseline is far
from perfect while spatial context separates the classes; ``geocl demo`` prints it next
to the finetuned models.
"""

from __future__ import annotations

import os

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError

from geocl.data.synthetic import CLASS_NAMES, IMAGE_NODATA, MASK_NODATA
from geocl.errors import GeoclError

_N_CLASSES = len(CLASS_NAMES)


def nearest_class_mean_miou(
    image_path: str | os.PathLike[str],
    mask_path: str | os.PathLike[str],
    *,
    sample_pixels: int = 1_000_000,
    seed: int = 0,
) -> float:
    """mIoU of a per-pixel spectral nearest-class-mean classifier.

    A baseline that measures how separable the classes are from the spectrum of a
    single pixel. Up to ``sample_pixels`` valid pixels (mask != 255 and image not
    nodata, by its profile or 0, in every band) are drawn at random and split in two halves: class mean
    vectors are fitted on one half, and the other half is labelled with the class
    whose mean is nearest (Euclidean distance on the raw band values). The score is
    torchmetrics' multiclass Jaccard index (``average="macro"``,
    ``ignore_index=255``); classes absent from both truth and prediction do not count.

    Args:
        image_path: GeoTIFF of shape (bands, H, W).
        mask_path: single-band class GeoTIFF of shape (1, H, W), 255 = nodata.
        sample_pixels: number of valid pixels to draw (all if fewer), >= 2.
        seed: seed of the pixel draw.

    Returns:
        the mean intersection over union in [0, 1].

    Raises:
        GeoclError: if the files cannot be read, their shapes differ, or there are
            fewer than two valid pixels.
    """
    import torch
    from torchmetrics.classification import MulticlassJaccardIndex

    if sample_pixels < 2:
        raise GeoclError("must be at least 2", key="sample_pixels")
    image, image_nodata = _read(image_path)
    mask, _ = _read(mask_path)
    if mask.shape[0] != 1 or mask.shape[1:] != image.shape[1:]:
        raise GeoclError(
            f"mask shape {mask.shape} does not match image shape {image.shape} (expected one band, same size)",
            path=mask_path,
        )
    target, pred, num_classes = _ncm_predict(
        image,
        mask[0],
        sample_pixels=sample_pixels,
        seed=seed,
        image_nodata=IMAGE_NODATA if image_nodata is None else image_nodata,
    )
    if target.size == 0:
        raise GeoclError("fewer than two valid pixels", path=mask_path)
    metric = MulticlassJaccardIndex(num_classes=num_classes, average="macro", ignore_index=MASK_NODATA)
    score = metric(torch.from_numpy(pred), torch.from_numpy(target))
    return float(score)


def _ncm_predict(
    image: np.ndarray, mask: np.ndarray, *, sample_pixels: int, seed: int, image_nodata: float = IMAGE_NODATA
) -> tuple[np.ndarray, np.ndarray, int]:
    """Fit class means on a random half of the valid pixels and label the other half.

    Args:
        image: array of shape (bands, H, W).
        mask: class array of shape (H, W), :data:`MASK_NODATA` = nodata.
        sample_pixels: number of valid pixels to draw (all if fewer).
        seed: seed of the draw and of the split.
        image_nodata: image value that marks nodata when found in every band.

    Returns:
        ``(target, pred, num_classes)``: true and predicted classes of the evaluation
        half, int64 arrays of shape (N,) (empty if there are fewer than two valid
        pixels), and the number of classes to score.
    """
    labels = mask.ravel()
    pixels = image.reshape(image.shape[0], -1)
    valid = labels != MASK_NODATA
    valid &= np.any(pixels != image_nodata, axis=0)
    index = np.flatnonzero(valid)
    if index.size < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, _N_CLASSES
    rng = np.random.default_rng(seed)
    if index.size > sample_pixels:
        index = np.sort(rng.choice(index, size=sample_pixels, replace=False))
    index = rng.permutation(index)
    half = index.size // 2
    fit, test = index[:half], index[half:]
    num_classes = max(_N_CLASSES, int(labels[index].max()) + 1)
    y_fit = labels[fit].astype(np.int64)
    counts = np.bincount(y_fit, minlength=num_classes)
    sums = np.stack(
        [
            np.bincount(y_fit, weights=pixels[b, fit].astype(np.float64), minlength=num_classes)
            for b in range(len(pixels))
        ],
        axis=1,
    )
    present = counts > 0
    means = sums[present] / counts[present, None]
    classes = np.flatnonzero(present)
    pred = np.empty(test.size, dtype=np.int64)
    chunk = 1 << 16
    for start in range(0, test.size, chunk):
        x = pixels[:, test[start : start + chunk]].T.astype(np.float64)
        dist = ((x[:, None, :] - means[None, :, :]) ** 2).sum(axis=2)
        pred[start : start + chunk] = classes[np.argmin(dist, axis=1)]
    return labels[test].astype(np.int64), pred, num_classes


def _read(path: str | os.PathLike[str]) -> tuple[np.ndarray, float | None]:
    """Read all bands of a raster: an array of shape (bands, H, W) and the nodata value."""
    try:
        with rasterio.open(path) as src:
            return src.read(), src.nodata
    except RasterioIOError as err:
        raise GeoclError(f"cannot read the raster: {err}", path=path) from err
