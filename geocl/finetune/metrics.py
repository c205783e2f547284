"""Segmentation metrics: per-class IoU and mIoU over a whole evaluation set.

geocl follows the MMSeg convention: one confusion matrix is accumulated over every
pixel of every image of the set, and the IoU of class ``k`` is

    IoU_k = TP_k / (TP_k + FP_k + FN_k)

computed once from those totals (not averaged per image, which would over-weight small
images and classes that are rare in one image). The mIoU is the mean of IoU_k over the
classes that occur in the set.

**Absent classes.** A class that appears neither in the reference nor in the prediction
anywhere in the set has ``TP + FP + FN = 0``: its IoU is undefined, not 0 and not 1. It is
reported as NaN and left out of the mean, so a test split that happens to lack a class
neither punishes nor rewards the model for it. (A class present in the reference but
never predicted, or predicted but never present, has IoU 0 and does count.) torchmetrics'
``average="macro"`` does the same (in 1.9 it gives such classes weight 0); geocl
computes ``average="none"`` and reduces itself so the per-class list and the mean always
agree, and so the rule is written down here.
"""

from __future__ import annotations

import math
from typing import TypedDict

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassJaccardIndex

from geocl.data.tile_dataset import IGNORE_INDEX

__all__ = ["IoUSummary", "miou_from_confusion", "segmentation_metric", "summarize_iou"]


def segmentation_metric(num_classes: int, ignore_index: int = IGNORE_INDEX) -> MulticlassJaccardIndex:
    """A torchmetrics metric accumulating per-class IoU over a whole set.

    ``update(preds, target)`` takes logits ``[B, K, H, W]`` (float; argmax is taken) or
    class indices ``[B, H, W]``, and ``target`` long ``[B, H, W]`` with class indices in
    ``[0, K)`` or ``ignore_index``. The state is a ``[K, K]`` confusion matrix
    (``metric.confmat``, rows = reference, columns = prediction) summed over updates and,
    under DDP, over processes. ``compute()`` returns per-class IoU ``[K]`` (float), NaN
    for classes absent from both reference and prediction; reduce it with
    :func:`summarize_iou`.

    A negative ``ignore_index`` such as -100 works as is: torchmetrics drops pixels whose
    target equals ``ignore_index`` before binning (``target != ignore_index``), and only
    treats it specially in the reduction when ``0 <= ignore_index < K`` (then that class
    would get weight 0), which never applies to -100.

    Args:
        num_classes: ``K``, the number of classes (>= 2).
        ignore_index: target value of unlabelled pixels (nodata), skipped.

    Returns:
        A ``MulticlassJaccardIndex(average="none")``.
    """
    # zero_division=nan: 0/0 (class absent from the whole set) must stay distinguishable
    # from a real IoU of 0; see the module docstring.
    return MulticlassJaccardIndex(
        num_classes=num_classes, average="none", ignore_index=ignore_index, zero_division=float("nan")
    )


def miou_from_confusion(confusion: Tensor) -> tuple[Tensor, float]:
    """Per-class IoU and mIoU of a confusion matrix.

    Args:
        confusion: ``[K, K]`` pixel counts, rows = reference class, columns = predicted
            class (torchmetrics' layout).

    Returns:
        Per-class IoU ``[K]`` float64 (NaN where ``TP + FP + FN = 0``), and the mean over
        the other classes (NaN when no class occurs at all).
    """
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion matrix must be square [K, K], got {tuple(confusion.shape)}")
    confusion = confusion.to(torch.float64)
    tp = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - tp  # TP + FP + FN
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    return iou, summarize_iou(iou)["miou"]


class IoUSummary(TypedDict):
    """:func:`summarize_iou`'s figures: ``miou`` (mean over present classes) and ``iou`` (one a class)."""

    miou: float
    iou: list[float]


def summarize_iou(per_class: Tensor, present: Tensor | None = None) -> IoUSummary:
    """Reduce per-class IoU to the numbers geocl reports.

    Args:
        per_class: ``[K]`` IoU per class, NaN for classes absent from the whole set (as
            returned by :func:`segmentation_metric` or :func:`miou_from_confusion`).
        present: optional ``[K]`` bool, False for classes to treat as absent as well
            (for IoUs computed elsewhere that put 0 on absent classes).

    Returns:
        ``{"miou": mean IoU over present classes, "iou": [IoU per class]}``, plain Python
        floats; absent classes are NaN in ``iou`` and excluded from ``miou``, which is
        NaN when no class is present. (``json.dumps`` writes NaN as ``NaN``.)
    """
    values = per_class.detach().to("cpu", torch.float64).flatten()
    if present is not None:
        present = present.detach().to("cpu", torch.bool).flatten()
        if present.shape != values.shape:
            raise ValueError(f"present has {present.numel()} entries, per_class {values.numel()}")
        values = torch.where(present, values, torch.full_like(values, float("nan")))
    kept = values[~values.isnan()]
    miou = float(kept.mean()) if kept.numel() else math.nan
    return {"miou": miou, "iou": [float(v) for v in values]}
