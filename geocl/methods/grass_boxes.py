"""Do GraSS's boxes hold one ground object? Box area and purity on labelled tiles.

GraSS's premise (Zhang et al., TGRS 2023, arXiv 2306.15868) is that the region driving the
contrastive loss holds one ground object, so that cropping to it makes object-level
positives. A box's mean area says how much it crops; it does not say whether what it
keeps is one object. With the tiles' class masks that can be measured: a box's *purity*
is the share of its labelled pixels that belong to its most frequent class, and the same
box shifted to a random place in the same view gives the purity that a box of that size
has by chance. Boxes no purer than their random twins crop, but do not find objects.

:func:`box_statistics` draws views of labelled tiles exactly as training does (the
method's own augmentation, the masks warped with the same crops and flips), runs the
guide pass in training mode as the training step does (BatchNorm on batch statistics,
running statistics restored afterwards) and scores the boxes at several map thresholds
at once, so a user sees what a higher threshold would change. It writes nothing and
leaves the module, its buffers and the global random state as they were.
:class:`~geocl.methods.grass_maps.RegionMapWriter` calls it at the end of every GraSS
run on tiles with masks and writes ``box_statistics.csv``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from geocl.data.tile_dataset import IGNORE_INDEX, TileDataset
from geocl.sampling.regions import Box, box_purity, gradient_maps, select_boxes

#: Thresholds scored besides the recipe's own: the released 0.5 and two stricter ones.
COMPARED_RATIOS: tuple[float, ...] = (0.5, 0.6, 0.7)

#: A box covering at least this share of its view counts as the view kept whole.
WHOLE_VIEW = 0.95


@dataclass(frozen=True)
class BoxStatistics:
    """GraSS's boxes at one map threshold, over the same views.

    Attributes:
        threshold_ratio: the map threshold, a fraction of its range.
        layer: the encoder module whose output gave the map (``layer4`` = the last).
        cells: ``(h, w)`` cells of that map for one view.
        views: views scored (a view whose map was constant counts as kept whole).
        area: mean box area as a fraction of the view (a view kept whole counts 1).
        whole: share of views whose box covers at least :data:`WHOLE_VIEW` of it.
        purity: mean share of a box's labelled pixels in its most frequent class.
        random_purity: the same for a box of the same size at a random place in the
            same view (boxes with no labelled pixel are left out of both means).
    """

    threshold_ratio: float
    layer: str
    cells: tuple[int, int]
    views: int
    area: float
    whole: float
    purity: float
    random_purity: float


def box_statistics(
    model: Any,
    tiles: TileDataset,
    ratios: Sequence[float] = COMPARED_RATIOS,
    *,
    batches: int = 2,
    batch_size: int = 32,
    seed: int = 0,
) -> list[BoxStatistics]:
    """Score GraSS's boxes on views of labelled tiles at each threshold in ``ratios``.

    Args:
        model: a :class:`~geocl.methods.grass.GraSS` module (any stage: the boxes are
            those stage 2 would crop); typed ``Any`` as :mod:`~geocl.methods.grass` imports
            this module's caller.
        tiles: tiles with masks (``with_mask=True``); a seeded draw of them is used.
        ratios: map thresholds (fractions of the map's range, in ``[0, 1)``).
        batches: batches of views; each batch is one contrastive problem, as in training.
        batch_size: tiles per batch (at least 2: the other tiles are the negatives).
        seed: seed of the tile draw, the augmentation and the random boxes.

    Returns:
        One :class:`BoxStatistics` per ratio, in the order given, all over the same views.

    Raises:
        ValueError: if the tiles carry no masks, fewer than 2 tiles are available or a
            ratio is outside ``[0, 1)``.
    """
    if not tiles.with_mask:
        raise ValueError("box purity needs the tiles' masks: give a TileDataset with with_mask=True")
    if not all(0.0 <= ratio < 1.0 for ratio in ratios):
        raise ValueError(f"ratios must be in [0, 1); got {list(ratios)}")
    size = min(batch_size, len(tiles))
    if size < 2:
        raise ValueError(f"box statistics need at least 2 tiles (negatives); got {len(tiles)}")
    areas: dict[float, list[float]] = {ratio: [] for ratio in ratios}
    purities: dict[float, list[float]] = {ratio: [] for ratio in ratios}
    random_purities: dict[float, list[float]] = {ratio: [] for ratio in ratios}
    cells = (0, 0)
    device = next(model.parameters()).device
    places = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), _buffers_kept(model):
        torch.manual_seed(seed)
        was_training = model.training
        model.train()  # the training step's guide pass: BatchNorm on the batch's statistics
        try:
            for _ in range(batches):
                items = torch.randperm(len(tiles))[:size].tolist()
                samples = [tiles[item] for item in items]
                images = torch.stack([sample["image"] for sample in samples]).to(device)
                masks = torch.stack([sample["mask"] for sample in samples]).to(device)
                views, labels = _labelled_views(model, images, masks, len(tiles.classes))
                features, gradients = model.guide(views)
                maps = gradient_maps(features, gradients)
                cells = (int(maps.shape[-2]), int(maps.shape[-1]))
                view_size = (int(views.shape[-2]), int(views.shape[-1]))
                label_arrays = labels.cpu().numpy()
                for ratio in ratios:
                    for view_labels, box in zip(label_arrays, select_boxes(maps, view_size, ratio), strict=True):
                        _score(
                            view_labels, box, view_size, places, areas[ratio], purities[ratio], random_purities[ratio]
                        )
        finally:
            model.train(was_training)
    layer = model.params.layer or "layer4"
    return [
        BoxStatistics(
            threshold_ratio=float(ratio),
            layer=layer,
            cells=cells,
            views=len(areas[ratio]),
            area=float(np.mean(areas[ratio])),
            whole=float(np.mean(np.asarray(areas[ratio]) >= WHOLE_VIEW)),
            purity=_mean(purities[ratio]),
            random_purity=_mean(random_purities[ratio]),
        )
        for ratio in ratios
    ]


def describe_box_statistics(path: Path, threshold_ratio: float) -> str | None:
    """One line for people on the row of ``threshold_ratio`` in a run's ``box_statistics.csv``.

    Returns:
        The line, or None when the file or that row is absent (no masks, another method).
    """
    if not path.is_file():
        return None
    table = pd.read_csv(path)
    rows = table[np.isclose(table["threshold_ratio"], threshold_ratio)]
    if rows.empty:
        return None
    row = rows.iloc[0]
    return (
        f"boxes at threshold {threshold_ratio:g}: {row['area']:.2f} of the view on average, purity "
        f"{row['purity']:.3f} against {row['random_purity']:.3f} for random boxes of their size ({path.name})"
    )


def _labelled_views(
    model: Any, images: torch.Tensor, masks: torch.Tensor, classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views of each tile as training draws them, and their labels warped alike.

    The class masks travel through the geometric half of the augmentation as one-hot
    channels beside the bands (one more channel for unlabelled pixels), so each label
    follows its pixel through the same crop, flip and rotation; the photometric half
    then changes the bands only.

    Returns:
        ``[2N, C, S, S]`` views and ``[2N, S, S]`` labels (:data:`IGNORE_INDEX` unlabelled).
    """
    ignored = masks == IGNORE_INDEX
    one_hot = F.one_hot(torch.where(ignored, classes, masks).long(), classes + 1).permute(0, 3, 1, 2)
    bands = images.shape[1]
    views, labels = [], []
    for _ in range(2):
        warped = model.augmentation.geometric(torch.cat([images, one_hot.to(images.dtype)], dim=1))
        views.append(model.augmentation.photometric(warped[:, :bands]))
        label = warped[:, bands:].argmax(dim=1)
        labels.append(torch.where(label == classes, IGNORE_INDEX, label))
    return torch.cat(views), torch.cat(labels)


def _score(
    labels: np.ndarray,
    box: Box | None,
    view_size: tuple[int, int],
    places: np.random.Generator,
    areas: list[float],
    purities: list[float],
    random_purities: list[float],
) -> None:
    """Area, purity and a random twin's purity of one view's box (None: the view kept whole)."""
    height, width = view_size
    r0, r1, c0, c1 = box if box is not None else (0, height, 0, width)
    rows, cols = r1 - r0, c1 - c0
    areas.append(rows * cols / (height * width))
    top = int(places.integers(0, height - rows + 1))
    left = int(places.integers(0, width - cols + 1))
    purity = box_purity(labels, (r0, r1, c0, c1))
    twin = box_purity(labels, (top, top + rows, left, left + cols))
    if not (np.isnan(purity) or np.isnan(twin)):
        purities.append(purity)
        random_purities.append(twin)


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


@contextmanager
def _buffers_kept(model: torch.nn.Module) -> Iterator[None]:
    """Restore every buffer (BatchNorm running statistics, counters) on exit."""
    saved = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(saved[name])
