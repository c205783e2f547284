"""GraSS step 4-5: from the loss gradient to one crop box per view.

The chain is ``gradient_maps`` (Grad-CAM-style map on the last feature grid) ->
``upsample_maps`` (bilinear, to the view size) -> ``select_box`` (threshold, connected
components, box of the peak) -> ``crop_and_resize`` (nearest, back to the view size).
Everything here is a pure function of tensors or arrays: no model, no optimiser, so
the training code (``geocl.methods``) decides when the guide pass runs.

Zhang et al., "GraSS: Contrastive Learning with Gradient Guided Sampling Strategy for
Remote Sensing Image Semantic Segmentation" (IEEE TGRS 2023, doi 10.1109/TGRS.2023.3336285,
arXiv 2306.15868): the map and box steps of its second stage, as its released code
(github.com/GeoX-Lab/GraSS, ``GraSS_train_step.py``) computes them. Where the code leaves
a case open, the readings taken are stated where they apply: the sign of the map
(:func:`gradient_maps`) and a minimum box side (:func:`select_box`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

#: A crop box ``(r0, r1, c0, c1)`` in pixels of the view: rows ``r0:r1`` and columns
#: ``c0:c1``, exclusive ends, as for numpy slicing.
Box = tuple[int, int, int, int]

#: 8-connectivity for :func:`scipy.ndimage.label` (the official code labels with
#: skimage's default for 2-D, which is full connectivity).
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def gradient_maps(features: Tensor, gradients: Tensor) -> Tensor:
    """Grad-CAM-style region map of each view (GraSS's map step).

    ``alpha = mean_{i,j} G`` per channel, ``M = mean_c(alpha * A)``, then ``M / max(M)``
    per view. The raw loss gradient is used: no ReLU, no absolute value, no sign flip.
    The reading taken where the code and paper leave the sign open: the division is
    skipped for views whose ``max(M) <= 0``. For a positive maximum this changes no box
    (the threshold of :func:`select_box` is relative to the map's range). For a
    non-positive maximum it does: the released code divides anyway, which flips the map
    (a negative maximum) or blows it up (zero), so its box would surround the *least*
    salient region; this package keeps the map's sign and boxes the most salient one.

    Args:
        features: last feature map ``A``, ``[B, C, h, w]`` (e.g. ResNet ``layer4``,
            ``[2N, 2048, 7, 7]`` for 224 px views).
        gradients: ``dL/dA``, same shape as ``features``.

    Returns:
        Maps ``[B, h, w]``, detached, in ``features``' float dtype (at least float32),
        on its device; values ``<= 1`` where normalised.

    Raises:
        ValueError: if the shapes differ or are not 4-D.
    """
    if features.ndim != 4 or features.shape != gradients.shape:
        raise ValueError(
            f"features and gradients must both be [B, C, h, w]; got {tuple(features.shape)} "
            f"and {tuple(gradients.shape)}"
        )
    dtype = torch.promote_types(features.dtype, torch.float32)
    with torch.no_grad():
        a = features.detach().to(dtype)
        g = gradients.detach().to(dtype)
        alpha = g.mean(dim=(2, 3), keepdim=True)  # [B, C, 1, 1]
        maps = (alpha * a).mean(dim=1)  # [B, h, w]
        peak = maps.amax(dim=(1, 2), keepdim=True)
        # keep the map as it is where its peak is not positive (the released code divides by the
        # peak whatever its sign; reading A2 of geocl.methods.grass; also avoids 0/0)
        scale = torch.where(peak > 0, peak, torch.ones_like(peak))
        return maps / scale


def upsample_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of maps to the view size (as the code's ``cv2.resize``).

    Half-pixel centres (``align_corners=False``) with edge clamping, which is what
    ``cv2.resize(..., INTER_LINEAR)`` in the official code does when enlarging.

    Args:
        maps: ``[B, h, w]`` float maps.
        size: ``(H, W)`` of the views (px).

    Returns:
        ``[B, H, W]`` maps, same dtype and device.
    """
    if maps.ndim != 3:
        raise ValueError(f"maps must be [B, h, w]; got {tuple(maps.shape)}")
    with torch.no_grad():
        up = F.interpolate(maps.detach()[:, None], size=tuple(size), mode="bilinear", align_corners=False)
    return up[:, 0]


def select_box(heatmap: np.ndarray | Tensor, ratio: float = 0.5, min_side: int = 0) -> Box | None:
    """Box of the thresholded component holding the map's peak (GraSS's region step).

    Rule, as in the official code:

    1. mask ``B = H > min(H) + ratio * (max(H) - min(H))`` (strict ``>``);
    2. 8-connected components of ``B``, each with its bounding box;
    3. each box scored by the maximum of ``H`` inside the box (the box, not only the
       component's pixels); the best score wins, ties go to the later component in
       label (raster-scan) order.

    In practice the winner is the component holding ``argmax(H)``; the box is adaptive
    (any size and aspect, down to a single pixel).

    Args:
        heatmap: ``[H, W]`` map (numpy or tensor).
        ratio: threshold as a fraction of the map's range, in ``[0, 1]`` (official 0.5).
        min_side: an ablation (the code has no guard against tiny boxes). ``0`` (default)
            keeps the official behaviour; ``> 0`` grows the box symmetrically about its
            centre to at least this many pixels per axis (capped at the map size), shifted
            back inside the map when it would cross an edge.

    Returns:
        ``(r0, r1, c0, c1)`` with ``0 <= r0 < r1 <= H`` and ``0 <= c0 < c1 <= W``, or
        ``None`` when the map has no component: constant maps (GraSS keeps such a
        view), maps holding NaN or inf, and ``ratio == 1``.

    Raises:
        ValueError: if ``heatmap`` is not 2-D, ``ratio`` is outside ``[0, 1]`` or
            ``min_side < 0``.
    """
    if isinstance(heatmap, Tensor):
        heatmap = heatmap.detach().cpu().numpy()
    heat = np.asarray(heatmap, dtype=np.float64)
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be [H, W]; got shape {heat.shape}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1]; got {ratio}")
    if min_side < 0:
        raise ValueError(f"min_side must be >= 0; got {min_side}")
    low, high = heat.min(), heat.max()
    # Also false for NaN: a broken map leaves its view alone instead of cropping noise.
    if not (np.isfinite(low) and np.isfinite(high) and high > low):
        return None
    labels, count = ndimage.label(heat > low + ratio * (high - low), structure=_EIGHT_CONNECTED)
    best: tuple[slice, slice] | None = None
    best_score = -np.inf
    for window in ndimage.find_objects(labels, max_label=count):
        if window is None:
            continue
        score = heat[window].max()
        if score >= best_score:  # ">=": ties go to the later label, as in the official code
            best, best_score = window, score
    if best is None:
        return None
    rows, cols = best
    r0, r1 = _grow(rows.start, rows.stop, min_side, heat.shape[0])
    c0, c1 = _grow(cols.start, cols.stop, min_side, heat.shape[1])
    return (r0, r1, c0, c1)


def _grow(start: int, stop: int, min_side: int, extent: int) -> tuple[int, int]:
    """Widen ``[start, stop)`` to ``min(min_side, extent)`` about its centre, inside ``[0, extent)``."""
    side = min(min_side, extent)
    missing = side - (stop - start)
    if missing <= 0:
        return int(start), int(stop)
    start -= missing // 2
    stop += missing - missing // 2
    if start < 0:
        start, stop = 0, side
    elif stop > extent:
        start, stop = extent - side, extent
    return int(start), int(stop)


def select_boxes(maps: Tensor, view_size: tuple[int, int], ratio: float = 0.5, min_side: int = 0) -> list[Box | None]:
    """One box per view: :func:`upsample_maps` then :func:`select_box` on each map.

    Box ``k`` depends on map ``k`` only.

    Args:
        maps: ``[B, h, w]`` maps from :func:`gradient_maps`.
        view_size: ``(H, W)`` of the views (px).
        ratio: threshold ratio (see :func:`select_box`).
        min_side: minimum box side (px), an ablation; 0 keeps the official behaviour.

    Returns:
        ``B`` boxes in view pixels, ``None`` where a view keeps its full extent.
    """
    heat = upsample_maps(maps, view_size).cpu().numpy()
    return [select_box(heat[k], ratio=ratio, min_side=min_side) for k in range(heat.shape[0])]


def move_boxes(
    boxes: Sequence[Box | None], view_size: tuple[int, int], generator: torch.Generator | None = None
) -> list[Box | None]:
    """Each box at a uniformly random place in its view, its height and width kept.

    An ablation of GraSS (not in the paper): with the boxes' sizes unchanged and their
    places drawn at random, what remains of the method is the zoom its crops apply;
    comparing it with GraSS measures what the gradient map's *location* adds.

    Args:
        boxes: ``(r0, r1, c0, c1)`` per view, or None (a view kept whole stays whole).
        view_size: ``(H, W)`` of the views (px).
        generator: random source (default: torch's global one, seeded per training step).

    Returns:
        The moved boxes, in the same order.
    """
    height, width = view_size
    moved: list[Box | None] = []
    for box in boxes:
        if box is None:
            moved.append(None)
            continue
        rows, cols = box[1] - box[0], box[3] - box[2]
        top = int(torch.randint(0, height - rows + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - cols + 1, (1,), generator=generator))
        moved.append((top, top + rows, left, left + cols))
    return moved


def box_purity(labels: np.ndarray, box: Box) -> float:
    """Share of a box's labelled pixels that belong to its most frequent class.

    1 for a box on one class; with ``k`` classes in equal parts, ``1 / k``. It measures
    whether a box holds one ground object's class, GraSS's aim for its crops.

    Args:
        labels: ``[H, W]`` integer class map of the view; negative values are unlabelled
            and left out.
        box: ``(r0, r1, c0, c1)`` inside the view.

    Returns:
        The share, or NaN when the box holds no labelled pixel.
    """
    r0, r1, c0, c1 = box
    inside = np.asarray(labels)[r0:r1, c0:c1].ravel()
    inside = inside[inside >= 0]
    if inside.size == 0:
        return float("nan")
    return float(np.bincount(inside).max() / inside.size)


@functools.lru_cache(maxsize=4096)
def _nearest_sources(length: int, size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Source index of each of ``size`` outputs when ``F.interpolate(mode="nearest")`` resizes ``length`` inputs.

    PyTorch's kernels compute these indices in a precision that depends on the device
    and the dtype (on CPU float64 for float64 tensors, float32 otherwise), and the rules
    differ where ``i * length / size`` is close to an integer; resizing a ramp with the
    same kernel gives exactly its rule. Computed once per size and device, returned on
    the CPU, where a batch's index tables are assembled.
    """
    ramp_dtype = torch.float64 if dtype == torch.float64 else torch.float32  # exact integers
    ramp = torch.arange(length, dtype=ramp_dtype, device=device)[None, None, None, :]
    return F.interpolate(ramp, size=(1, size), mode="nearest")[0, 0, 0].long().cpu()


def crop_and_resize(views: Tensor, boxes: Sequence[Box | None]) -> Tensor:
    """Cut each view's box and resize it back to the view size (GraSS's crop step).

    Nearest-neighbour resizing, pixel for pixel what ``F.interpolate(crop, size,
    mode="nearest")`` in the official code gives, so it introduces no new values: every
    output pixel is a pixel of the box. Crops come from the views as given, i.e. after
    augmentation and normalisation (as the code does; the paper does not say). The whole batch is done with one
    gather instead of one resize per view (4x faster for 512 views, and far less
    sensitive to a busy CPU).

    Args:
        views: ``[B, C, H, W]`` batch of views, any dtype.
        boxes: ``B`` boxes ``(r0, r1, c0, c1)`` in view pixels; ``None`` leaves the view
            unchanged.

    Returns:
        ``[B, C, H, W]`` tensor with the shape, dtype and device of ``views`` (a new
        tensor; ``views`` is not modified). Differentiable with respect to ``views``.

    Raises:
        ValueError: if the number of boxes differs from ``B`` or a box is empty or
            outside the view.
    """
    if views.ndim != 4:
        raise ValueError(f"views must be [B, C, H, W]; got {tuple(views.shape)}")
    if len(boxes) != views.shape[0]:
        raise ValueError(f"got {len(boxes)} boxes for {views.shape[0]} views")
    count, channels, height, width = views.shape
    device = views.device
    rows = torch.arange(height).repeat(count, 1)  # [B, H] source row of each output row
    cols = torch.arange(width).repeat(count, 1)  # [B, W]
    for k, box in enumerate(boxes):
        if box is None:
            continue
        r0, r1, c0, c1 = box
        if not (0 <= r0 < r1 <= height and 0 <= c0 < c1 <= width):
            raise ValueError(f"box {box} of view {k} is empty or outside the {height}x{width} view")
        rows[k] = _nearest_sources(r1 - r0, height, views.dtype, device) + r0
        cols[k] = _nearest_sources(c1 - c0, width, views.dtype, device) + c0
    # only the small [B, H] and [B, W] tables travel; the [B, H*W] index is built on the device
    rows, cols = rows.to(device), cols.to(device)
    flat = (rows[:, :, None] * width + cols[:, None, :]).view(count, 1, height * width)
    flat = flat.expand(count, channels, height * width)
    return views.reshape(count, channels, height * width).gather(2, flat).view(count, channels, height, width)
