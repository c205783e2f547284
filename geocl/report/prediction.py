"""A preview of a scene prediction: the scene's quicklook and the classified map side by side."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from geocl.data.rasters import read_decimated
from geocl.io import save_figure


def mosaic_quicklook(files: Sequence[Path], max_side: int = 1024) -> tuple[np.ndarray, tuple[float, ...]]:
    """:func:`geocl.report.maps.quicklook` of a scene of several files, read decimated through its mosaic.

    Returns:
        ``[H, W, 3]`` float array in [0, 1] (bands 3, 2, 1 when there are >= 3, else band
        1 as grey; 2-98 % stretch per band) and the extent (left, right, bottom, top).
    """
    from geocl.data.mosaic import SceneMosaic
    from geocl.data.rasters import inspect_rasters
    from geocl.report.maps import stretch

    mosaic = SceneMosaic(inspect_rasters(list(files)))  # read_decimated opens and closes its files itself
    scale = max(1.0, max(mosaic.width, mosaic.height) / max_side)
    shape = (max(1, round(mosaic.height / scale)), max(1, round(mosaic.width / scale)))
    data = mosaic.read_decimated(shape, [3, 2, 1] if mosaic.count >= 3 else [1, 1, 1]).astype(np.float64)
    valid = ~np.all(data == mosaic.nodata, axis=0)
    rgb = np.ones((*shape, 3))
    for band in range(3):
        rgb[..., band] = stretch(data[band], valid)
    rgb[~valid] = 1.0
    left, bottom, right, top = mosaic.bounds
    return rgb, (left, right, bottom, top)


def plot_prediction_preview(
    scene: str | os.PathLike[str] | Sequence[Path],
    prediction: Path,
    values: Sequence[int],
    colours: Sequence[tuple[int, int, int]],
    nodata: int,
) -> Path:
    """Write ``prediction.png`` beside the prediction: the scene's quicklook and the classes side by side.

    Args:
        scene: the predicted scene, one file or the files of a mosaic (its bands 3, 2, 1
            are shown, 2-98 % stretch).
        prediction: the classified GeoTIFF, read decimated to the quicklook's size.
        values: the raster value of each class.
        colours: RGB (0-255) of each class, as in the GeoTIFF's colour table.
        nodata: the prediction's nodata value (shown white).

    Returns:
        The PNG path.
    """
    # imported on use: report.maps loads geopandas, which
    # importing geocl.finetune.predict should not do
    from geocl.report.maps import quicklook

    files = [Path(scene)] if isinstance(scene, (str, os.PathLike)) else [Path(file) for file in scene]
    rgb, extent = quicklook(files[0]) if len(files) == 1 else mosaic_quicklook(files)
    title = files[0].name if len(files) == 1 else f"mosaic of {len(files)} files ({files[0].name}, ...)"
    # nearest neighbour (rasterio's default), so every preview pixel holds a real class value
    shown, _, _ = read_decimated(prediction, 1, rgb.shape[:2])
    palette = np.full((*shown.shape, 3), 255, dtype=np.uint8)  # nodata stays white, as in the quicklook
    for value, colour in zip(values, colours, strict=False):
        palette[shown == value] = colour

    # Figure + Agg canvas, not pyplot: no global figure state and no backend to switch.
    figure = Figure(figsize=(12, 6.2))
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2, sharex=True, sharey=True)
    left.imshow(rgb, extent=extent)
    left.set_title(title)
    right.imshow(palette, extent=extent, interpolation="nearest")
    right.set_title(f"prediction ({prediction.name})")
    # long legends list only the classes that occur in the preview
    handles = [
        Patch(facecolor=(c[0] / 255.0, c[1] / 255.0, c[2] / 255.0), edgecolor="black", label=f"class value {v}")
        for v, c in zip(values, colours, strict=False)
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
