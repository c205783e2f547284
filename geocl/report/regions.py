"""Pictures of GraSS's regions: a tile's gradient region map with its box, and the box areas over training."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from geocl.io import save_figure
from geocl.report.curves import read_lightning_csv

#: The logged mean box area of a stage-2 epoch, as a fraction of the view (:mod:`geocl.methods.grass`).
BOX_AREA_KEY = "train/box_area"

if TYPE_CHECKING:
    from geocl.sampling.regions import Box


def plot_region_overlay(
    path_png: str | os.PathLike[str], rgb: np.ndarray, heatmap: np.ndarray, boxes: Sequence[Box | None]
) -> Path:
    """Draw a tile, its region map and the chosen boxes side by side.

    Panels: the tile as RGB; the map (``jet`` colour map, half transparent) over the
    tile; the tile with each box outlined. NaN map pixels are left transparent.

    Args:
        path_png: the PNG to write (atomic).
        rgb: ``[H, W, 3]`` float image in ``[0, 1]`` (values outside are clipped).
        heatmap: ``[H, W]`` map on the same pixels.
        boxes: ``(r0, r1, c0, c1)`` boxes in those pixels; ``None`` entries are skipped.

    Returns:
        ``path_png`` as a :class:`~pathlib.Path`.
    """
    image = np.clip(np.asarray(rgb, dtype=np.float64), 0.0, 1.0)
    heat = np.asarray(heatmap, dtype=np.float64)
    if image.ndim != 3 or image.shape[2] != 3 or heat.shape != image.shape[:2]:
        raise ValueError(f"need rgb [H, W, 3] and heatmap [H, W]; got {image.shape} and {heat.shape}")
    # Figure + Agg canvas, not pyplot: no global figure state in a training process.
    figure = Figure(figsize=(12, 4.4), layout="constrained")
    FigureCanvasAgg(figure)
    tile_ax, heat_ax, box_ax = figure.subplots(1, 3)
    tile_ax.imshow(image)
    tile_ax.set_title("tile")
    heat_ax.imshow(image)
    shown = heat_ax.imshow(np.ma.masked_invalid(heat), cmap="jet", alpha=0.5)
    # an opaque colour bar: the overlay's transparency would wash it out
    figure.colorbar(ScalarMappable(norm=shown.norm, cmap=shown.cmap), ax=heat_ax, shrink=0.8)
    heat_ax.set_title("region map")
    box_ax.imshow(image)
    for box in boxes:
        if box is None:
            continue
        r0, r1, c0, c1 = box
        # imshow puts pixel (r, c) at [c - 0.5, c + 0.5]; a box's outer edge is at r0 - 0.5
        box_ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, edgecolor="red", linewidth=1.5))
    box_ax.set_title(f"boxes ({sum(box is not None for box in boxes)})")
    for ax in (tile_ax, heat_ax, box_ax):
        ax.set_xticks([])
        ax.set_yticks([])
    return save_figure(figure, path_png, dpi=100)


def plot_box_areas(logs: str | os.PathLike[str], path_png: str | os.PathLike[str], title: str = "") -> Path | None:
    """Draw GraSS's mean box area per stage-2 epoch from Lightning CSV logs; None when none is logged.

    The area is the fraction of the view that the crop keeps (1 = the whole view, the
    crop then changes nothing); a dotted line marks half the view.

    Args:
        logs: the run's ``logs/`` folder (``version_*/metrics.csv``).
        path_png: the PNG to write (atomic).
        title: figure title (e.g. the method's name).
    """
    metrics = read_lightning_csv(logs)
    if metrics.empty or BOX_AREA_KEY not in metrics:
        return None
    # a resumed run repeats epochs after its checkpoint: the later version wins
    epochs = metrics.dropna(subset=[BOX_AREA_KEY]).drop_duplicates("epoch", keep="last").sort_values("step")
    if epochs.empty:
        return None
    figure = Figure(figsize=(7, 3.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.plot(epochs["step"], epochs[BOX_AREA_KEY], "o-", ms=3, label="mean box area, stage-2 epoch")
    axes.axhline(0.5, ls=":", color="grey", label="half the view")
    axes.set_ylim(0.0, 1.02)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("fraction of the view")
    axes.set_title(title)
    axes.legend(loc="lower left")
    return save_figure(figure, path_png, dpi=100)
