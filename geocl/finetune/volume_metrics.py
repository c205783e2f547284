"""Per-case overlap and surface-distance metrics of 3D label maps (MONAI): Dice, Jaccard, 95HD, ASD.

For one case and each foreground class ``k`` (label > 0), with ``P`` and ``G`` the voxel
sets of the prediction and the ground truth:

- Dice ``2 |P ∩ G| / (|P| + |G|)``; Jaccard ``|P ∩ G| / |P ∪ G|`` (= Dice / (2 - Dice));
- 95HD: MONAI's ``compute_hausdorff_distance(percentile=95)``: the larger of the two
  directed 95th percentiles of the distances from the surface voxels of one set to the
  nearest surface voxel of the other (surface = voxels of the set with a 6-neighbour
  outside it);
- ASD: MONAI's ``compute_average_surface_distance(symmetric=False)``: the mean distance
  from the prediction's surface voxels to the ground truth's surface, medpy's ``asd``
  that the FBA-Net tables report.

Distances are in mm when ``spacing`` (mm per axis) is given, in voxels otherwise (the
FBA-Net tables, in the README of github.com/cys1102/FBA-Net, are in voxels; geocl reports
mm). Values are averaged over the foreground classes (one class for binary maps).

Empty sets (MONAI gives NaN or inf there): both empty -> Dice and Jaccard 1, distances
0; one empty -> Dice and Jaccard 0, distances the diagonal of the volume (the largest
distance a surface voxel can have), so that an empty prediction scores worst rather
than dropping out of the case average. MONAI's per-mask warnings are silenced.

95HD differs slightly from medpy's ``hd95`` (the 95th percentile of both directions'
distances pooled); the directed maxima agree exactly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["METRICS", "case_metrics"]

#: The metric names, in report order; the first two higher-is-better, the distances lower.
METRICS: tuple[str, ...] = ("dice", "jaccard", "hd95", "asd")


def _one_hot(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """``[X, Y, Z]`` class indices -> ``[1, K, X, Y, Z]`` float one-hot (MONAI's metric input)."""
    tensor = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    return torch.nn.functional.one_hot(tensor, num_classes).movedim(-1, 0)[None].float()


def case_metrics(
    prediction: np.ndarray, label: np.ndarray, num_classes: int = 2, spacing: Sequence[float] | None = None
) -> dict[str, float]:
    """Dice, Jaccard, 95HD and ASD of one case, averaged over the foreground classes.

    Args:
        prediction: ``[X, Y, Z]`` integer class indices.
        label: ``[X, Y, Z]`` integer class indices (same grid).
        num_classes: classes including the background 0.
        spacing: voxel size in mm per axis; None: distances in voxels.

    Returns:
        ``{"dice", "jaccard", "hd95", "asd"}``, finite floats.

    Raises:
        ValueError: different shapes, or a value outside ``[0, num_classes)``.
    """
    from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance, compute_iou

    prediction, label = np.asarray(prediction), np.asarray(label)
    if prediction.shape != label.shape:
        raise ValueError(f"prediction {prediction.shape} and label {label.shape} differ in shape")
    for name, array in (("prediction", prediction), ("label", label)):
        if array.size and (array.min() < 0 or array.max() >= num_classes):
            raise ValueError(f"{name} holds values outside [0, {num_classes})")
    steps = np.ones(prediction.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    worst = float(np.linalg.norm(np.asarray(prediction.shape) * steps))
    predicted, truth = _one_hot(prediction, num_classes), _one_hot(label, num_classes)
    sums = dict.fromkeys(METRICS, 0.0)
    for k in range(1, num_classes):
        p, g = predicted[:, [0, k]], truth[:, [0, k]]  # MONAI skips channel 0 (background)
        p_any, g_any = bool(p[:, 1].any()), bool(g[:, 1].any())
        if not (p_any and g_any):
            both_empty = not p_any and not g_any
            values = {
                "dice": float(both_empty),
                "jaccard": float(both_empty),
                "hd95": 0.0 if both_empty else worst,
                "asd": 0.0 if both_empty else worst,
            }
        else:
            distance_spacing = None if spacing is None else [float(s) for s in spacing]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                values = {
                    "dice": float(compute_dice(p, g, include_background=False)),
                    "jaccard": float(compute_iou(p, g, include_background=False)),
                    "hd95": float(
                        compute_hausdorff_distance(
                            p, g, include_background=False, percentile=95, spacing=distance_spacing
                        )
                    ),
                    "asd": float(
                        compute_average_surface_distance(
                            p, g, include_background=False, symmetric=False, spacing=distance_spacing
                        )
                    ),
                }
        for name, value in values.items():
            sums[name] += value if math.isfinite(value) else worst
    return {name: total / max(1, num_classes - 1) for name, total in sums.items()}
