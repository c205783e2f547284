"""Whole-scene prediction: a classified GeoTIFF with a colour table, its preview and polygons.

:func:`predict_scene` streams the blended logits of
:func:`~geocl.finetune.sliding_window.sliding_window_logits` (windows, blending and
memory are described there), writes the argmax class of each pixel as the scene's
grid in whole rows of internal blocks, then the preview
(:func:`~geocl.report.prediction.plot_prediction_preview`) and, when asked for, the
polygons (:func:`~geocl.finetune.polygons.write_polygons`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.io import DatasetWriter
from rasterio.windows import Window

from geocl.data.normalize import BandNormalizer
from geocl.data.rasters import bounded_memory, find_rasters, geotiff_profile, inspect_raster
from geocl.errors import GeoclError
from geocl.finetune.polygons import write_polygons
from geocl.finetune.sliding_window import Model, sliding_window_logits
from geocl.io import atomic_path, check_output_file
from geocl.report.prediction import plot_prediction_preview

__all__ = [
    "PredictionResult",
    "check_prediction_outputs",
    "default_colours",
    "predict_scene",
]

#: Smallest window side accepted (px); smaller windows give the model no context.
MIN_WINDOW = 16

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


def check_prediction_outputs(
    out: str | os.PathLike[str], polygons: str | os.PathLike[str] | None = None,
    scene: str | os.PathLike[str] | None = None,
) -> Path:
    """Make sure the files of a prediction can be written, before any work.

    Checks ``out`` (the GeoTIFF), its preview ``out`` with suffix ``.png`` and
    ``polygons`` with :func:`geocl.io.check_output_file`, and that none of them is
    the scene or another of them.

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        GeoclError: naming the path and the option (``out``, ``polygons``) at fault: a
            folder, a folder that cannot be written to, a file that would overwrite the
            scene or another output.
    """
    out = check_output_file(out, key="out")
    preview = check_output_file(out.with_suffix(".png"), key="out")
    taken = {out.resolve(): "the prediction", preview.resolve(): "its preview (.png)"}
    if scene is not None:
        scene = Path(scene)
        if out.resolve() == scene.resolve():
            raise GeoclError("output would overwrite the scene; choose another out", path=out, key="out")
        if preview.resolve() == scene.resolve():
            raise GeoclError(
                f"its preview {preview.name} would overwrite the scene; choose another out", path=out, key="out"
            )
        taken[scene.resolve()] = "the scene"
    if polygons is not None:
        polygons = check_output_file(polygons, key="polygons")
        clash = taken.get(polygons.resolve())
        if clash is not None:
            raise GeoclError(f"would overwrite {clash}; choose another polygons file", path=polygons, key="polygons")
    return out


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
            :data:`~geocl.finetune.polygons.POLYGON_LAYER`, one row per polygon, column ``class_value``, the scene's
            CRS, nodata left out). The prediction is read back whole for this, which takes
            ``height x width`` bytes (2 for uint16 output): fine for scenes up to some
            10^8 px, not for continent-sized mosaics.
        progress: show a progress bar.

    Returns:
        A :class:`PredictionResult`. The GeoTIFF has the scene's CRS, transform and size,
        one band of uint8 (uint16 when a value exceeds 255), the nodata value recorded,
        a colour table, deflate compression and 256 px tiles; it is written atomically.

    Raises:
        GeoclError: before any work, naming the scene when it is not a readable
            georeferenced raster or its band count differs from the normaliser's, an
            output that cannot be written (:func:`check_prediction_outputs`), or the
            option at fault (``window``, ``overlap``, ``batch_size``, ``class_values``,
            ``class_colours``, ``nodata``).
    """
    dtype = _check_options(window, overlap, batch_size, class_values, nodata, class_colours)
    values = tuple(int(v) for v in class_values)
    colours = list(class_colours) if class_colours is not None else default_colours(len(values))
    path = _single_scene_file(scene)
    out = check_prediction_outputs(out, polygons, path)
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

    png = plot_prediction_preview(path, out, values, colours, nodata)
    gpkg = write_polygons(out, polygons) if polygons is not None else None
    return PredictionResult(path=out, png=png, polygons=gpkg, shape=shape, classes=values)
