"""Whole-scene prediction: sliding windows, blended logits, a classified GeoTIFF.

A scene is predicted in its own pixel grid with square windows of ``window`` px placed
every ``stride = window - overlap`` px (the last row and column of windows are moved
back to end on the scene's edge, so no window hangs out of the scene unless the scene
is smaller than one window; there the window is padded with nodata). Where windows
overlap, their logits are averaged with a smooth weight that is largest at the window
centre and small, but above zero, at its border (:func:`blend_weight`): a pixel near one
window's border, where the model sees the least context, is then decided mostly by the
window that holds it near its centre, and the result shows no seams along window edges.

The scene is streamed. Windows are processed one row band at a time into a strip
buffer of ``K x window x width`` float32 logits (``K`` classes); rows that no later band
reaches are finished, classified and written, and the buffer moves down. Memory is
therefore independent of the scene's height and about ``4 K window width`` bytes (plus
the raw row band, ``bands x window x width`` samples): e.g. 10 classes, 256 px windows
and a 20 000 px wide scene take about 200 MB. It does grow with the width.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from rasterio.io import DatasetReader, DatasetWriter
from rasterio.windows import Window
from torch import Tensor
from tqdm.auto import tqdm

from geocl.data.normalize import BandNormalizer
from geocl.data.rasters import bounded_memory, find_rasters, geotiff_profile, inspect_raster, read_decimated
from geocl.errors import GeoclError
from geocl.io import atomic_path, save_figure

__all__ = [
    "PredictionResult",
    "Strip",
    "blend_weight",
    "default_colours",
    "predict_scene",
    "sliding_window_logits",
    "window_origins",
]

#: Smallest window side accepted (px); smaller windows give the model no context.
MIN_WINDOW = 16

#: Blend weight at a window's corner, relative to 1 at its centre. Above zero so that a
#: pixel covered by one window only (along the scene edge) still gets that window's logits.
BLEND_FLOOR = 1e-3

#: GeoPackage layer of the prediction polygons.
POLYGON_LAYER = "prediction"

Model = Callable[[Tensor], Tensor]
Colour = tuple[int, int, int]


@dataclass(frozen=True)
class PredictionResult:
    """What :func:`predict_scene` wrote.

    Attributes:
        path: the classified GeoTIFF.
        png: its preview (scene and prediction side by side).
        polygons: the GeoPackage of class polygons, or None when not asked for.
        shape: ``(height, width)`` of the prediction (px), the scene's.
        classes: the raster value written for each class index.
    """

    path: Path
    png: Path
    polygons: Path | None
    shape: tuple[int, int]
    classes: tuple[int, ...]


class Strip(NamedTuple):
    """Finished rows of blended logits, as yielded by :func:`sliding_window_logits`.

    Attributes:
        row: scene row of the first row (px).
        logits: ``[K, rows, width]`` float32, the weighted mean of the covering windows'
            logits (0 where every band of the scene is nodata and no window ran).
        invalid: ``[rows, width]`` bool, True where every band of the scene is nodata.
    """

    row: int
    logits: np.ndarray
    invalid: np.ndarray


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


def blend_weight(window: int, floor: float = BLEND_FLOOR) -> np.ndarray:
    """The ``[window, window]`` float32 weight of one window's logits in the blend.

    The outer product of a 1-D Hann window sampled at pixel centres, ``sin(pi (i + 0.5)
    / window)^2``, so 1 at the centre and falling smoothly to about ``(pi / 2 window)^2``
    at the border; clipped below at ``floor`` so no pixel gets zero weight.
    """
    centres = (np.arange(window, dtype=np.float64) + 0.5) / window
    ramp = np.sin(np.pi * centres) ** 2
    return np.maximum(np.outer(ramp, ramp), floor).astype(np.float32)


def default_colours(count: int) -> list[Colour]:
    """``count`` distinct RGB colours from a matplotlib qualitative palette (0-255)."""
    import matplotlib

    if count <= 10:
        palette = matplotlib.colormaps["tab10"].colors
    elif count <= 20:
        palette = matplotlib.colormaps["tab20"].colors
    else:  # no qualitative palette is that long: sample a perceptual one instead
        palette = matplotlib.colormaps["turbo"](np.linspace(0, 1, count))[:, :3]
    return [tuple(int(round(255 * c)) for c in palette[i][:3]) for i in range(count)]  # type: ignore[misc]


def _check_options(
    window: int, overlap: int, batch_size: int, class_values: Sequence[int], nodata: int,
    class_colours: Sequence[Colour] | None,
) -> str:
    """Validate the options of :func:`predict_scene`; returns the output dtype name."""
    if window < MIN_WINDOW:
        raise GeoclError(f"window must be at least {MIN_WINDOW} px, got {window}", key="window")
    if overlap < 0:
        raise GeoclError(f"overlap must be >= 0 px, got {overlap}", key="overlap")
    if overlap >= window:
        raise GeoclError(f"overlap ({overlap} px) must be smaller than window ({window} px)", key="overlap")
    if batch_size < 1:
        raise GeoclError(f"batch_size must be >= 1, got {batch_size}", key="batch_size")
    values = [int(v) for v in class_values]
    if not values:
        raise GeoclError("no class values given", key="class_values")
    if len(set(values)) != len(values):
        raise GeoclError(f"class values repeat: {values}", key="class_values")
    if min(values) < 0:
        raise GeoclError(f"class values must be >= 0, got {values}", key="class_values")
    if nodata in values:
        raise GeoclError(f"nodata value {nodata} is also a class value; pick another", key="nodata")
    if class_colours is not None and len(class_colours) != len(values):
        raise GeoclError(
            f"{len(class_colours)} colours given for {len(values)} classes", key="class_colours"
        )
    largest = max(*values, nodata)
    if nodata < 0 or largest > np.iinfo(np.uint16).max:
        raise GeoclError("class values and nodata must lie in 0..65535", key="class_values")
    return "uint8" if largest <= np.iinfo(np.uint8).max else "uint16"


def _single_scene_file(scene: str | os.PathLike[str]) -> Path:
    """The one GeoTIFF of ``scene``, checked to be a georeferenced raster."""
    files = find_rasters(scene)
    if len(files) > 1:
        raise GeoclError(
            f"predict takes one GeoTIFF; this folder holds {len(files)} (predict each file separately)",
            path=scene,
        )
    inspect_raster(files[0])  # readable, not empty, has a CRS and a transform
    return files[0]


def _read_band(src: DatasetReader, row: int, height: int, width: int, fill: float) -> np.ndarray:
    """Rows ``[row, row + height)`` of every band, ``[C, height, width]``, nodata-padded.

    One windowed read per row band rather than one boundless read per window: GDAL then
    decompresses each block once per band instead of once per overlapping window, and
    padding past the scene edge (only when the scene is smaller than a window) is a numpy
    fill instead of a boundless read through a VRT.
    """
    rows = min(height, src.height - row)
    data = src.read(window=Window(0, row, src.width, rows))
    if data.shape[1:] == (height, width):
        return data
    padded = np.full((src.count, height, width), fill, dtype=data.dtype)
    padded[:, :rows, : src.width] = data
    return padded


def sliding_window_logits(
    model: Model,
    src: DatasetReader,
    normalizer: BandNormalizer,
    *,
    num_classes: int,
    window: int = 256,
    overlap: int = 64,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    nodata: float | None = None,
    progress: bool = False,
) -> Iterator[Strip]:
    """Blended logits of a whole scene, streamed top to bottom as :class:`Strip` s.

    Args:
        model: normalised images ``[B, C, window, window]`` float32 on ``device`` ->
            logits ``[B, K, h, w]`` (resized bilinearly to the window when h, w differ).
        src: the open scene.
        normalizer: the band statistics the model was trained with.
        num_classes: ``K``, the channels the model must return.
        window: window side (px).
        overlap: overlap of neighbouring windows (px).
        batch_size: windows per model call.
        device: where the model runs.
        nodata: the scene value that marks a missing pixel when every band holds it;
            default: the file's nodata, else the normaliser's.
        progress: show a tqdm bar over windows.

    Yields:
        Consecutive strips covering rows ``0 .. src.height``, each ``src.width`` wide.
        Windows whose pixels are all nodata are skipped (not run through the model).
    """
    height, width = src.height, src.width
    stride = window - overlap
    if nodata is None:
        nodata = src.nodata if src.nodata is not None else normalizer.nodata
    rows, cols = window_origins(height, window, stride), window_origins(width, window, stride)
    buffer_width = max(width, window)
    weight = blend_weight(window)
    # The strip buffer holds scene rows [top, top + window): the sum of weighted logits,
    # the sum of weights, and the nodata mask of those rows.
    logits_sum = np.zeros((num_classes, window, buffer_width), dtype=np.float32)
    weight_sum = np.zeros((window, buffer_width), dtype=np.float32)
    invalid = np.ones((window, buffer_width), dtype=bool)
    top = 0

    def finished(stop: int) -> Strip:
        """Rows [top, stop) as a strip; no band still to come reaches them."""
        count = min(stop, height) - top
        weights = weight_sum[:count, :width]
        blended = np.zeros((num_classes, count, width), dtype=np.float32)
        np.divide(logits_sum[:, :count, :width], weights, out=blended, where=weights > 0)
        return Strip(top, blended, invalid[:count, :width].copy())

    def run(images: list[np.ndarray]) -> np.ndarray:
        batch = torch.from_numpy(np.stack(images)).to(device)
        with torch.inference_mode():
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

    bar = tqdm(total=len(rows) * len(cols), unit="window", desc="predict", disable=not progress)
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
            raw = _read_band(src, row, window, buffer_width, nodata)
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
                    for (start, _), window_logits in zip(pending, logits):
                        logits_sum[:, :, start : start + window] += window_logits * weight
                        weight_sum[:, start : start + window] += weight
                    bar.update(len(pending))
                    pending = []
        yield finished(top + window)
    finally:
        bar.close()


class _BlockRowWriter:
    """Write rows to a tiled GeoTIFF in whole rows of internal blocks.

    Strips come in heights of the window stride, which need not divide the block
    height; writing them directly would leave half-filled compressed blocks that GDAL
    writes, then rereads and rewrites (growing the file). Holding back at most one
    block row avoids that.
    """

    def __init__(self, dst: DatasetWriter) -> None:
        self.dst = dst
        self.block_rows = dst.block_shapes[0][0]
        self.row = 0
        self.pending: list[np.ndarray] = []

    def write(self, rows: np.ndarray) -> None:
        self.pending.append(rows)
        held = sum(part.shape[0] for part in self.pending)
        if held >= self.block_rows:
            self._flush(held - held % self.block_rows)

    def close(self) -> None:
        held = sum(part.shape[0] for part in self.pending)
        if held:
            self._flush(held)

    def _flush(self, count: int) -> None:
        rows = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        self.dst.write(rows[None, :count], window=Window(0, self.row, rows.shape[1], count))
        self.row += count
        self.pending = [rows[count:]] if count < rows.shape[0] else []


def predict_scene(
    model: Model,
    scene: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    normalizer: BandNormalizer,
    class_values: Sequence[int],
    class_colours: Sequence[Colour] | None = None,
    window: int = 256,
    overlap: int = 64,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    nodata: int = 255,
    polygons: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> PredictionResult:
    """Classify every pixel of a scene with a segmentation model.

    Args:
        model: normalised images ``[B, C, window, window]`` float32 on ``device`` ->
            logits ``[B, K, h, w]``. An ``nn.Module`` is moved to ``device`` and run in
            eval mode (its mode is restored afterwards); any other callable must already
            run on ``device``.
        scene: one GeoTIFF, or a folder holding exactly one (mosaics are not supported).
        out: the prediction GeoTIFF to write; the preview goes beside it with suffix
            ``.png``.
        normalizer: the band statistics the model was trained with; its nodata value
            marks missing scene pixels when the file sets none.
        class_values: the raster value written for class index ``k`` (``K`` values).
        class_colours: RGB (0-255) per class for the GeoTIFF's colour table and the
            preview; default: :func:`default_colours`.
        window: window side (px, >= 16).
        overlap: overlap of neighbouring windows (px, < window).
        batch_size: windows per model call.
        device: where the model runs.
        nodata: value written where every band of the scene is nodata (not a class value).
        polygons: also write the prediction as polygons to this GeoPackage (layer
            :data:`POLYGON_LAYER`, one row per polygon, column ``class_value``, the scene's
            CRS, nodata left out). The prediction is read back whole for this, which takes
            ``height x width`` bytes (2 for uint16 output): fine for scenes up to some
            10^8 px, not for continent-sized mosaics.
        progress: show a progress bar.

    Returns:
        A :class:`PredictionResult`. The GeoTIFF has the scene's CRS, transform and size,
        one band of uint8 (uint16 when a value exceeds 255), the nodata value recorded,
        a colour table, deflate compression and 256 px tiles; it is written atomically.

    Raises:
        GeoclError: naming the scene when it is not a readable georeferenced raster or
            its band count differs from the normaliser's, or the option at fault
            (``window``, ``overlap``, ``batch_size``, ``class_values``, ``class_colours``,
            ``nodata``).
    """
    dtype = _check_options(window, overlap, batch_size, class_values, nodata, class_colours)
    values = tuple(int(v) for v in class_values)
    colours = list(class_colours) if class_colours is not None else default_colours(len(values))
    path = _single_scene_file(scene)
    out = Path(out)
    if out.resolve() == path.resolve():
        raise GeoclError("output would overwrite the scene; choose another --out", path=out)
    lookup = np.asarray(values, dtype=dtype)

    module = model if isinstance(model, torch.nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.to(device).eval()
    try:
        with bounded_memory(), rasterio.open(path) as src:
            if src.count != len(normalizer.mean):
                raise GeoclError(
                    f"scene has {src.count} bands but the band statistics have {len(normalizer.mean)}",
                    path=path,
                )
            profile = geotiff_profile(
                (1, src.height, src.width), dtype, crs=src.crs, transform=src.transform, nodata=nodata,
                compress="deflate",
            )
            shape = (src.height, src.width)
            with atomic_path(out) as temp:
                with rasterio.open(temp, "w", **profile) as dst:
                    writer = _BlockRowWriter(dst)
                    for strip in sliding_window_logits(
                        model, src, normalizer, num_classes=len(values), window=window, overlap=overlap,
                        batch_size=batch_size, device=device, progress=progress,
                    ):
                        classes = lookup[strip.logits.argmax(axis=0)]
                        classes[strip.invalid] = nodata
                        writer.write(classes)
                    writer.close()
                    colour_table = {v: (*c, 255) for v, c in zip(values, colours)}
                    colour_table[nodata] = (0, 0, 0, 0)
                    dst.write_colormap(1, colour_table)
    finally:
        if module is not None:
            module.train(was_training)

    png = _write_preview(path, out, values, colours, nodata)
    gpkg = _write_polygons(out, polygons) if polygons is not None else None
    return PredictionResult(path=out, png=png, polygons=gpkg, shape=shape, classes=values)


def _write_preview(
    scene: Path, prediction: Path, values: Sequence[int], colours: Sequence[Colour], nodata: int
) -> Path:
    """``prediction.png``: the scene's quicklook and the prediction side by side."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from geocl.report.maps import quicklook

    rgb, extent = quicklook(scene)
    # nearest neighbour (rasterio's default), so every preview pixel holds a real class value
    shown, _, _ = read_decimated(prediction, 1, rgb.shape[:2])
    palette = np.ones((*shown.shape, 3))  # nodata stays white, as in the quicklook
    for value, colour in zip(values, colours):
        palette[shown == value] = np.asarray(colour) / 255.0

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 6.2), sharex=True, sharey=True)
    left.imshow(rgb, extent=extent)
    left.set_title(scene.name)
    right.imshow(palette, extent=extent, interpolation="nearest")
    right.set_title(f"prediction ({prediction.name})")
    # long legends list only the classes that occur in the preview
    handles = [
        Patch(facecolor=np.asarray(c) / 255.0, edgecolor="black", label=f"class value {v}")
        for v, c in zip(values, colours)
        if len(values) <= 12 or (shown == v).any()
    ]
    if (shown == nodata).any():
        handles.append(Patch(facecolor="white", edgecolor="black", label=f"nodata ({nodata})"))
    right.legend(handles=handles, loc="upper right", fontsize="small", framealpha=0.9)
    for axes in (left, right):
        axes.ticklabel_format(useOffset=False, style="plain")
        axes.tick_params(labelsize="x-small")
    figure.tight_layout()
    return save_figure(figure, prediction.with_suffix(".png"))


def _write_polygons(prediction: Path, final: str | os.PathLike[str]) -> Path:
    """Vectorise the prediction (4-connected regions of one value) into a GeoPackage."""
    import geopandas as gpd
    from rasterio.features import shapes
    from shapely.geometry import shape

    with bounded_memory(), rasterio.open(prediction) as src:
        classes = src.read(1)
        valid = classes != src.nodata
        records = [
            (int(value), shape(geometry))
            for geometry, value in shapes(classes, mask=valid, connectivity=4, transform=src.transform)
        ]
        crs = src.crs
    frame = gpd.GeoDataFrame(
        {"class_value": np.asarray([value for value, _ in records], dtype=np.int64)},
        geometry=[geometry for _, geometry in records],
        crs=crs,
    )
    final = Path(final)
    with atomic_path(final) as temp:
        frame.to_file(temp, driver="GPKG", layer=POLYGON_LAYER)
    return final
