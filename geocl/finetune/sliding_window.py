"""Sliding-window inference over a whole scene: window grid, blend weights, streamed logits.

A scene is predicted in its own pixel grid with square windows of ``window`` px placed
every ``stride = window - overlap`` px (the last row and column of windows are moved
back to end on the scene's edge, so no window hangs out of the scene unless the scene
is smaller than one window; there the window is padded with nodata). Where windows
overlap, their logits are averaged with a smooth weight that is largest at the window
centre and small, but above zero, at its border (:func:`blend_weight`): a pixel near one
window's border, where the model sees the least context, is then decided mostly by the
window that holds it near its centre, and the result shows no seams along window edges.

The scene is streamed. Windows are processed one row band at a time into a strip
buffer of ``K x window x span`` float32 logits (``K`` classes); rows that no later band
reaches are finished and yielded (:func:`~geocl.finetune.predict.predict_scene`
classifies and writes them), and the buffer moves down. Memory is therefore
independent of the scene's height. To make it independent of the width as well, a
caller asks for the output columns ``[start, stop)`` of one column block at a time
(:func:`column_blocks`): only the windows that reach those columns run, and ``span`` is
the block width plus at most two windows, so memory is about ``4 K window span`` bytes
(plus the raw row band, ``bands x window x span`` samples) whatever the scene's size:
e.g. 10 classes, 256 px windows and 4096 px blocks take about 50 MB. Blocks do not
change the result: every window that covers a pixel of the block is run and blended
with the same weight as in one pass over the whole width. The windows that straddle a
block edge run once for each of the two blocks (about ``window / block`` more model
calls: 6 % for 256 px windows and 4096 px blocks).

The scene readers the windows are read from: :class:`FiniteReader` (NaN and infinite
pixels read as nodata), :class:`AnchoredView` (a mosaic's windows where they fall on
its first file) and :func:`has_pixel_to_predict` (a scene with nothing to predict is
refused before the pass).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from rasterio.windows import Window
from torch import Tensor
from tqdm.auto import tqdm

from geocl.data.malloc import computing
from geocl.data.mosaic import SceneReader
from geocl.data.normalize import BandNormalizer
from geocl.errors import GeoclError

__all__ = [
    "BLEND_FLOOR",
    "AnchoredView",
    "FiniteReader",
    "Model",
    "Strip",
    "blend_weight",
    "column_blocks",
    "has_pixel_to_predict",
    "sliding_window_logits",
    "window_grid",
    "window_origins",
]

#: Blend weight at a window's corner, relative to 1 at its centre. Above zero so that a
#: pixel covered by one window only (along the scene edge) still gets that window's logits.
BLEND_FLOOR = 1e-3

Model = Callable[[Tensor], Tensor]


class Strip(NamedTuple):
    """Finished rows of blended logits, as yielded by :func:`sliding_window_logits`.

    Attributes:
        row: scene row of the first row (px).
        logits: ``[K, rows, columns]`` float32, the weighted mean of the covering windows'
            logits (0 where every band of the scene is nodata and no window ran).
        invalid: ``[rows, columns]`` bool, True where every band of the scene is nodata.
        col: scene column of the first column (px); 0 unless a column block was asked for.
    """

    row: int
    logits: np.ndarray
    invalid: np.ndarray
    col: int = 0


def window_origins(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows covering ``[0, length)`` (px).

    Every ``stride`` px from 0; the last window is moved back to end at ``length`` so it
    stays inside the scene (a scene shorter than ``window`` gets the single origin 0).

    Returns:
        Increasing origins; consecutive ones differ by at most ``stride``.
    """
    if length <= window:
        return [0]
    origins = list(range(0, length - window + 1, stride))
    if origins[-1] + window < length:
        origins.append(length - window)
    return origins


def column_blocks(width: int, block: int) -> list[tuple[int, int]]:
    """Consecutive column ranges ``[start, stop)`` of at most ``block`` px covering ``[0, width)``."""
    return [(start, min(start + block, width)) for start in range(0, width, block)]


def window_grid(
    height: int, width: int, window: int, overlap: int, columns: tuple[int, int] | None = None
) -> tuple[list[int], list[int]]:
    """Row and column origins of the windows that reach the output columns ``columns``.

    The grid is that of the whole scene (:func:`window_origins` with ``stride = window -
    overlap``); ``columns`` (default: all) keeps the column origins whose window
    overlaps ``[start, stop)``.
    """
    stride = window - overlap
    rows, cols = window_origins(height, window, stride), window_origins(width, window, stride)
    if columns is not None:
        start, stop = columns
        cols = [col for col in cols if col < stop and col + window > start]
    return rows, cols


def blend_weight(window: int, floor: float = BLEND_FLOOR) -> np.ndarray:
    """The ``[window, window]`` float32 weight of one window's logits in the blend.

    The outer product of a 1-D Hann window sampled at pixel centres, ``sin(pi (i + 0.5)
    / window)^2``, so 1 at the centre and falling smoothly to about ``(pi / 2 window)^2``
    at the border; clipped below at ``floor`` so no pixel gets zero weight.
    """
    centres = (np.arange(window, dtype=np.float64) + 0.5) / window
    ramp = np.sin(np.pi * centres) ** 2
    return np.maximum(np.outer(ramp, ramp), floor).astype(np.float32)


def _read_band(src: SceneReader, row: int, col: int, height: int, width: int, fill: float) -> np.ndarray:
    """Rows ``[row, row + height)``, columns ``[col, col + width)`` of every band,
    ``[C, height, width]``, nodata-padded past the scene's edge.

    One windowed read per row band rather than one boundless read per window: GDAL then
    decompresses each block once per band instead of once per overlapping window, and
    padding past the scene edge (only when the scene is smaller than a window) is a numpy
    fill instead of a boundless read through a VRT.
    """
    rows, cols = min(height, src.height - row), min(width, src.width - col)
    data = src.read(window=Window(col, row, cols, rows))
    if data.shape[1:] == (height, width):
        return data
    padded = np.full((src.count, height, width), fill, dtype=data.dtype)
    padded[:, :rows, :cols] = data
    return padded


def sliding_window_logits(
    model: Model,
    src: SceneReader,
    normalizer: BandNormalizer,
    *,
    num_classes: int,
    window: int = 256,
    overlap: int = 64,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    nodata: float | None = None,
    columns: tuple[int, int] | None = None,
    progress: bool | tqdm = False,
) -> Iterator[Strip]:
    """Blended logits of a whole scene, streamed top to bottom as :class:`Strip` s.

    Args:
        model: normalised images ``[B, C, window, window]`` float32 on ``device`` ->
            logits ``[B, K, h, w]`` (resized bilinearly to the window when h, w differ).
        src: the open scene: a rasterio dataset or a
            :class:`~geocl.data.mosaic.SceneMosaic`.
        normalizer: the band statistics the model was trained with.
        num_classes: ``K``, the channels the model must return.
        window: window side (px).
        overlap: overlap of neighbouring windows (px).
        batch_size: windows per model call.
        device: where the model runs.
        nodata: the scene value that marks a missing pixel when every band holds it;
            default: the file's nodata, else the normaliser's.
        columns: the output columns ``[start, stop)`` to compute (default: all); only the
            windows reaching them run (:func:`window_grid`).
        progress: show a tqdm bar over windows, or a bar to advance (left open).

    Yields:
        Consecutive strips covering rows ``0 .. src.height``, each the width of
        ``columns``, starting at column ``columns[0]`` (their ``col``).
        Windows whose pixels are all nodata are skipped (not run through the model).
    """
    height, width = src.height, src.width
    if nodata is None:
        nodata = src.nodata if src.nodata is not None else normalizer.nodata
    start, stop = columns if columns is not None else (0, width)
    rows, cols = window_grid(height, width, window, overlap, (start, stop))
    # the buffer spans the block's windows: columns [left, left + buffer_width) of the scene
    left = cols[0]
    buffer_width = cols[-1] + window - left
    cols = [col - left for col in cols]
    first, last = start - left, stop - left
    weight = blend_weight(window)
    # The strip buffer holds scene rows [top, top + window): the sum of weighted logits,
    # the sum of weights, and the nodata mask of those rows.
    logits_sum = np.zeros((num_classes, window, buffer_width), dtype=np.float32)
    weight_sum = np.zeros((window, buffer_width), dtype=np.float32)
    invalid = np.ones((window, buffer_width), dtype=bool)
    top = 0

    def finished(end: int) -> Strip:
        """Rows [top, end) as a strip; no band still to come reaches them."""
        count = min(end, height) - top
        weights = weight_sum[:count, first:last]
        blended = np.zeros((num_classes, count, last - first), dtype=np.float32)
        np.divide(logits_sum[:, :count, first:last], weights, out=blended, where=weights > 0)
        return Strip(top, blended, invalid[:count, first:last].copy(), start)

    def run(images: list[np.ndarray]) -> np.ndarray:
        batch = torch.from_numpy(np.stack(images)).to(device)
        with computing(), torch.inference_mode():
            out = model(batch)
        if out.ndim != 4 or out.shape[0] != len(images):
            raise ValueError(f"model must return logits [B, K, h, w]; got shape {tuple(out.shape)}")
        if out.shape[1] != num_classes:
            raise GeoclError(
                f"the model returns {out.shape[1]} classes but {num_classes} class values were given",
                key="class_values",
            )
        if out.shape[-2:] != (window, window):  # e.g. a model predicting at a coarser stride
            out = F.interpolate(out.float(), size=(window, window), mode="bilinear", align_corners=False)
        return out.float().cpu().numpy()

    own_bar = not isinstance(progress, tqdm)
    bar = (
        progress
        if isinstance(progress, tqdm)
        else tqdm(total=len(rows) * len(cols), unit="window", desc="predict", disable=not progress)
    )
    try:
        for row in rows:
            if row > top:
                yield finished(row)
                shift = row - top
                # numpy copies through a temporary when source and target overlap
                logits_sum[:, : window - shift] = logits_sum[:, shift:]
                logits_sum[:, window - shift :] = 0
                weight_sum[: window - shift] = weight_sum[shift:]
                weight_sum[window - shift :] = 0
                top = row
            raw = _read_band(src, row, left, window, buffer_width, nodata)
            # the band covers the whole buffer; NaN nodata (float scenes) never compares equal
            invalid[:] = (np.isnan(raw) if np.isnan(nodata) else raw == nodata).all(axis=0)
            pending: list[tuple[int, np.ndarray]] = []
            for index, col in enumerate(cols):
                mask = invalid[:, col : col + window]
                if mask.all():  # nothing to predict: its pixels will be written as nodata
                    bar.update(1)
                else:
                    pending.append((col, normalizer(raw[:, :, col : col + window], mask)))
                if pending and (len(pending) == batch_size or index == len(cols) - 1):
                    logits = run([image for _, image in pending])
                    for (origin, _), window_logits in zip(pending, logits, strict=False):
                        logits_sum[:, :, origin : origin + window] += window_logits * weight
                        weight_sum[:, origin : origin + window] += weight
                    bar.update(len(pending))
                    pending = []
        yield finished(top + window)
    finally:
        if own_bar:
            bar.close()


class FiniteReader:
    """A scene reader on which a pixel holding NaN or an infinity in any band reads as nodata in every band.

    Such a value reaching the model spreads through every convolution of its window (a
    10 x 10 px hole of NaN in a scene whose nodata is 0 turned whole windows into class
    0); as nodata the pixel is written as nodata and the rest of its window is predicted.
    Integer scenes are passed through untouched.

    Args:
        src: the scene reader.
        nodata: the value the prediction takes for missing pixels (may be NaN).
    """

    def __init__(self, src: Any, nodata: float) -> None:
        self._src = src
        self._nodata = nodata
        #: the value of missing pixels
        self.missing = nodata
        #: whether a read met such a pixel that was not nodata already
        self.found = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._src, name)

    def read(self, *, window: Window) -> np.ndarray:
        data = self._src.read(window=window)
        if data.dtype.kind != "f":
            return data
        bad = ~np.isfinite(data).all(axis=0)
        if bad.any():
            missing = (np.isnan(data) if np.isnan(self._nodata) else data == self._nodata).all(axis=0)
            self.found |= bool((bad & ~missing).any())
            data[:, bad] = self._nodata
        return data


class AnchoredView:
    """A scene seen with nodata rows above and columns left of it, so that window origins,
    every ``stride`` px from the view's corner, fall on ``origin`` (the mosaic pixel where
    its first file starts), as they do when that file is predicted alone.

    Where the windows fall changes a network's labels (a U-Net's output depends on its
    whole window): a poorly trained test network agreed with itself on 75 % of the pixels
    when its windows were moved by 20 px. On the first file's own window grid, every pixel
    whose windows all lie inside that file gets the logits of its single-file prediction.
    The added rows and columns are dropped again from the strips (:meth:`strips`); nothing
    is added when ``origin`` already lies on the grid (a single file: (0, 0)).

    Args:
        src: the scene reader.
        origin: ``(col, row)`` of the pixel to put on the window grid.
        stride: px between window origins.
    """

    def __init__(self, src: Any, origin: tuple[int, int], stride: int) -> None:
        self._src = src
        self.cols, self.rows = (-origin[0]) % stride, (-origin[1]) % stride
        self.height, self.width = src.height + self.rows, src.width + self.cols

    def __getattr__(self, name: str) -> Any:
        return getattr(self._src, name)

    def columns(self, span: tuple[int, int]) -> tuple[int, int]:
        """Scene columns ``[start, stop)`` as columns of the view."""
        return span[0] + self.cols, span[1] + self.cols

    def read(self, *, window: Window) -> np.ndarray:
        col, row = int(window.col_off) - self.cols, int(window.row_off) - self.rows
        width, height = int(window.width), int(window.height)
        if col >= 0 and row >= 0:
            return self._src.read(window=Window(col, row, width, height))
        inside = Window(max(col, 0), max(row, 0), width + min(col, 0), height + min(row, 0))
        data = self._src.read(window=inside)
        out = np.full((data.shape[0], height, width), self._src.missing, dtype=data.dtype)
        out[:, height - data.shape[1] :, width - data.shape[2] :] = data
        return out

    def strips(self, strips: Iterator[Strip]) -> Iterator[Strip]:
        """The strips of the scene's rows: the added rows dropped, columns as the scene's."""
        for strip in strips:
            skip = min(max(self.rows - strip.row, 0), strip.logits.shape[1])
            if skip < strip.logits.shape[1]:
                yield Strip(
                    strip.row + skip - self.rows, strip.logits[:, skip:], strip.invalid[skip:], strip.col - self.cols
                )


#: Side (px) of the windows :func:`has_pixel_to_predict` reads.
PROBE_SIDE = 256


def has_pixel_to_predict(src: FiniteReader) -> bool:
    """Whether the scene holds a pixel that is not nodata, NaN or infinite: before the pass, so
    a scene with nothing to predict is refused before any output or progress bar.

    Nine windows (corners, edge middles, centre) answer for nearly every scene; only when they
    hold no such pixel is the scene read on, window by window, up to the first one.
    """
    rows = sorted({0, max(0, (src.height - PROBE_SIDE) // 2), max(0, src.height - PROBE_SIDE)})
    cols = sorted({0, max(0, (src.width - PROBE_SIDE) // 2), max(0, src.width - PROBE_SIDE)})
    every = [(row, col) for row in range(0, src.height, PROBE_SIDE) for col in range(0, src.width, PROBE_SIDE)]
    first = [(row, col) for row in rows for col in cols]
    for row, col in [*first, *(origin for origin in every if origin not in first)]:
        data = src.read(window=Window(col, row, min(PROBE_SIDE, src.width - col), min(PROBE_SIDE, src.height - row)))
        missing = src.missing
        invalid = (np.isnan(data) if np.isnan(missing) else data == missing).all(axis=0)
        if not invalid.all():
            return True
    return False
