"""Whole-scene prediction: a classified GeoTIFF with a colour table, its preview, and
optionally per-class probabilities and polygons.

:func:`predict_scene` streams the blended logits of
:func:`~geocl.finetune.sliding_window.sliding_window_logits` (windows, blending and
memory are described there) one column block of ``block`` px at a time, top to bottom,
and writes the argmax class of each pixel (and, when asked for, the softmax
probabilities) in whole internal tiles. Nothing holds a whole row or column of the
scene: memory depends on ``block``, ``window`` and the class count, not on the scene's
size. Then, by default, each GeoTIFF is turned into a Cloud-Optimized GeoTIFF by
rio-cogeo (internal 256 px tiles, overviews: ``mode`` for classes, ``average`` for
probabilities), the preview is drawn
(:func:`~geocl.report.prediction.plot_prediction_preview`) and, when asked for, the
polygons are written (:func:`~geocl.finetune.polygons.write_polygons`, by blocks too).

The scene is one GeoTIFF, a folder of them or a list of files and folders; several
files are predicted as their mosaic on the first file's pixel grid (:mod:`geocl.data.mosaic`:
the first file's pixels as they are, other files resampled onto its grid where they are
off it, the file given first winning where files overlap; the result's ``notes`` say
which), with the windows placed on the first file as when it is predicted alone, so that
its map is its own wherever the windows holding a pixel lie inside it. With ``tta`` each
window's logits are the mean over its 8 flips and rotations
(:class:`~geocl.finetune.tta.D4Average`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import torch
from rasterio.io import DatasetWriter
from rasterio.windows import Window
from tqdm.auto import tqdm

from geocl.data.mosaic import open_scene, scene_files
from geocl.data.normalize import BandNormalizer
from geocl.data.rasters import RasterPath, bounded_memory, geotiff_profile
from geocl.data.remote import is_remote
from geocl.data.stac import StacRaster
from geocl.errors import GeoclError
from geocl.finetune.polygons import POLYGON_BLOCK, write_polygons
from geocl.finetune.sliding_window import (
    AnchoredView,
    FiniteReader,
    Model,
    column_blocks,
    has_pixel_to_predict,
    sliding_window_logits,
    window_grid,
)
from geocl.finetune.tta import D4Average
from geocl.io import atomic_path, check_output_file
from geocl.report.prediction import plot_prediction_preview

__all__ = [
    "DEFAULT_BLOCK",
    "PROBABILITY_SCALE",
    "PredictionResult",
    "check_prediction_outputs",
    "class_probabilities",
    "default_colours",
    "predict_scene",
    "probabilities_path",
]

#: How the overviews of a COG are resampled: classes by their mode, probabilities by their average.
OverviewResampling = Literal["mode", "average"]
#: Smallest window side accepted (px); smaller windows give the model no context.
MIN_WINDOW = 16
#: Internal tile side of the GeoTIFFs written (px); column blocks are multiples of it,
#: so every tile is written once, whole.
TILE = 256
#: Default column block (px): the demo scene's width, so scenes up to that wide run in one pass.
DEFAULT_BLOCK = 4096
#: uint8 probabilities store ``round(p * PROBABILITY_SCALE)``; 255 is their nodata.
PROBABILITY_SCALE = 254
#: Nodata of the probability rasters, by dtype.
PROBABILITY_NODATA = {"uint8": 255, "float16": float("nan")}

Colour = tuple[int, int, int]
ProbabilityType = Literal["uint8", "float16"]


@dataclass(frozen=True)
class PredictionResult:
    """What :func:`predict_scene` wrote (picklable: it crosses process boundaries).

    Attributes:
        path: the classified GeoTIFF.
        png: its preview (scene and prediction side by side).
        polygons: the GeoPackage of class polygons, or None when not asked for.
        shape: ``(height, width)`` of the prediction (px), the scene's (or its mosaic's).
        classes: the raster value written for each class index.
        probabilities: the per-class probability GeoTIFF, or None when not asked for.
        scenes: the scene's files.
        windows: model windows run (each 8 model calls with ``tta``).
        seconds: wall time of the whole prediction.
        notes: what a mosaic did to its files (:attr:`~geocl.data.mosaic.SceneMosaic.notes`):
            files resampled onto the first file's grid, files that overlap and which wins.
    """

    path: Path
    png: Path
    polygons: Path | None
    shape: tuple[int, int]
    classes: tuple[int, ...]
    probabilities: Path | None = None
    scenes: tuple[RasterPath, ...] = ()
    windows: int = 0
    seconds: float = 0.0
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        """The lines ``geocl predict`` prints."""
        lines = [
            f"prediction: {self.path} ({self.shape[1]} x {self.shape[0]} px, {len(self.classes)} classes, "
            f"{self.seconds:.1f} s)"
        ]
        if len(self.scenes) > 1:
            lines.append(f"  mosaic of {len(self.scenes)} files on the grid of the first, {self.scenes[0]}")
        lines += [f"  note: {note}" for note in self.notes]
        lines.append(f"  preview: {self.png}")
        if self.probabilities is not None:
            lines.append(f"  probabilities: {self.probabilities}")
        if self.polygons is not None:
            lines.append(f"  polygons: {self.polygons}")
        return "\n".join(lines)


def default_colours(count: int) -> list[Colour]:
    """``count`` distinct RGB colours from a matplotlib qualitative palette (0-255)."""
    import matplotlib

    if count <= 20:
        qualitative = matplotlib.colormaps["tab10" if count <= 10 else "tab20"]
        assert isinstance(qualitative, matplotlib.colors.ListedColormap)  # matplotlib's qualitative palettes are
        palette = np.asarray(qualitative.colors, dtype=np.float64)
    else:  # no qualitative palette is that long: sample a perceptual one instead
        palette = np.asarray(matplotlib.colormaps["turbo"](np.linspace(0, 1, count)), dtype=np.float64)
    return [(int(round(255 * r)), int(round(255 * g)), int(round(255 * b))) for r, g, b in palette[:count, :3]]


def probabilities_path(out: str | os.PathLike[str]) -> Path:
    """Where the probabilities of the prediction ``out`` go: ``<stem>_probabilities<suffix>`` beside it."""
    out = Path(out)
    return out.with_name(f"{out.stem}_probabilities{out.suffix}")


def class_probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax over the class axis of ``[K, ...]`` logits, float32 (stable: the max is taken off first)."""
    shifted = logits - logits.max(axis=0, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=0, keepdims=True)
    return shifted


def _encode_probabilities(logits: np.ndarray, invalid: np.ndarray, dtype: ProbabilityType) -> np.ndarray:
    """``[K, rows, cols]`` probabilities as written: uint8 ``round(p * 254)`` or float16; nodata where invalid."""
    probabilities = class_probabilities(logits)
    if dtype == "uint8":
        encoded = np.rint(probabilities * PROBABILITY_SCALE).astype(np.uint8)
    else:
        encoded = probabilities.astype(np.float16)
    encoded[:, invalid] = PROBABILITY_NODATA[dtype]
    return encoded


def _check_options(
    window: int,
    overlap: int,
    batch_size: int,
    class_values: Sequence[int],
    nodata: int,
    class_colours: Sequence[Colour] | None,
    probabilities: str | None,
    block: int,
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
    if block < TILE or block % TILE:
        raise GeoclError(f"block must be a multiple of {TILE} px, got {block}", key="block")
    if probabilities is not None and probabilities not in PROBABILITY_NODATA:
        raise GeoclError(
            f"probabilities must be one of {', '.join(PROBABILITY_NODATA)}, got {probabilities!r}", key="probabilities"
        )
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
        raise GeoclError(f"{len(class_colours)} colours given for {len(values)} classes", key="class_colours")
    largest = max(*values, nodata)
    if nodata < 0 or largest > np.iinfo(np.uint16).max:
        raise GeoclError("class values and nodata must lie in 0..65535", key="class_values")
    return "uint8" if largest <= np.iinfo(np.uint8).max else "uint16"


def check_prediction_outputs(
    out: str | os.PathLike[str],
    polygons: str | os.PathLike[str] | None = None,
    scene: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    *,
    probabilities: bool = False,
) -> Path:
    """Make sure the files of a prediction can be written, before any work.

    Checks ``out`` (the GeoTIFF), its preview ``out`` with suffix ``.png``, the
    probabilities (:func:`probabilities_path`, when asked for) and ``polygons`` with
    :func:`geocl.io.check_output_file`, that none of them is a scene file or another of
    them, and that none lies in a scene folder (a rerun would read it as part of the scene).

    Args:
        out: the prediction GeoTIFF.
        polygons: the GeoPackage, or None.
        scene: the scene as given (files and folders), or None to skip those checks.
        probabilities: whether the probability GeoTIFF is written too.

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        GeoclError: naming the path and the option (``out``, ``polygons``) at fault: a
            folder, a folder that cannot be written to, a file that would overwrite the
            scene or another output, a file inside a scene folder.
    """
    out = Path(out)
    preview = out.with_suffix(".png")
    outputs = [(out, "output", "out"), (preview, f"its preview {preview.name}", "out")]
    if probabilities:
        extra = probabilities_path(out)
        outputs.append((extra, f"its probabilities {extra.name}", "out"))
    if polygons is not None:
        polygons = Path(polygons)
        taken = {out.resolve(): "the prediction", preview.resolve(): "its preview (.png)"}
        if probabilities:
            taken[probabilities_path(out).resolve()] = "its probabilities"
        clash = taken.get(polygons.resolve())
        if clash is not None:
            raise GeoclError(f"would overwrite {clash}; choose another polygons file", path=polygons, key="polygons")
        outputs.append((polygons, "polygons", "polygons"))
    if scene is not None:  # first: checking a file below creates its folder
        sources = [scene] if isinstance(scene, (str, os.PathLike)) else list(scene)
        # remote files and STAC items cannot be overwritten by a local output
        given = [Path(path) for path in sources if not is_remote(path) and not isinstance(path, StacRaster)]
        for path, what, key in outputs:
            target = path.resolve()
            for source in given:
                if target == source.resolve():
                    raise GeoclError(
                        f"{what} would overwrite the scene; choose another {key}",
                        path=out if key == "out" else path,
                        key=key,
                    )
                if source.is_dir() and target.is_relative_to(source.resolve()):
                    raise GeoclError(
                        f"{what} would be written inside the scene folder {source} and read as part of the scene "
                        f"next time; choose another {key}",
                        path=path,
                        key=key,
                    )
    for path, _, key in outputs:
        check_output_file(path, key=key)
    return out


class _BlockRowWriter:
    """Write one column block of a tiled GeoTIFF in whole rows of internal tiles.

    Strips come in heights of the window stride, which need not divide the tile
    height; writing them directly would leave half-filled compressed tiles that GDAL
    writes, then rereads and rewrites (growing the file). Holding back at most one
    tile row of the block avoids that.

    Args:
        dst: the open GeoTIFF.
        col: the block's first column (a multiple of the tile width, or 0).
    """

    def __init__(self, dst: DatasetWriter, col: int = 0) -> None:
        self.dst = dst
        self.col = col
        self.block_rows = dst.block_shapes[0][0]
        self.row = 0
        self.pending: list[np.ndarray] = []

    def write(self, rows: np.ndarray) -> None:
        """Append ``[bands, rows, cols]`` below what was written."""
        self.pending.append(rows)
        held = sum(part.shape[1] for part in self.pending)
        if held >= self.block_rows:
            self._flush(held - held % self.block_rows)

    def close(self) -> None:
        held = sum(part.shape[1] for part in self.pending)
        if held:
            self._flush(held)

    def _flush(self, count: int) -> None:
        rows = np.concatenate(self.pending, axis=1) if len(self.pending) > 1 else self.pending[0]
        self.dst.write(rows[:, :count], window=Window(self.col, self.row, rows.shape[2], count))
        self.row += count
        self.pending = [rows[:, count:]] if count < rows.shape[1] else []


def _to_cog(source: Path, final: Path, overview_resampling: OverviewResampling) -> None:
    """Copy a tiled GeoTIFF to a Cloud-Optimized GeoTIFF with rio-cogeo (deflate, 256 px tiles, overviews).

    Block by block through a temporary file beside ``final`` (never in memory), so
    memory stays that of GDAL's block cache whatever the raster's size.
    """
    from rio_cogeo.cogeo import cog_translate
    from rio_cogeo.profiles import cog_profiles

    profile = cog_profiles.get("deflate")
    profile.update(blockxsize=TILE, blockysize=TILE)
    cog_translate(
        source,
        final,
        profile,
        overview_resampling=overview_resampling,
        in_memory=False,
        allow_intermediate_compression=True,
        quiet=True,
    )


@contextlib.contextmanager
def _geotiff_output(
    final: Path, profile: dict[str, Any], *, cog: bool, overview_resampling: OverviewResampling
) -> Iterator[DatasetWriter]:
    """An open GeoTIFF for ``final``, written atomically; turned into a COG on close when ``cog``.

    On error nothing is left: neither ``final`` (as it was) nor any temporary file.
    """
    with atomic_path(final) as temp:
        if not cog:
            with rasterio.open(temp, "w", **profile) as dst:
                yield dst
            return
        blocks = temp.with_name(f"{temp.stem}-blocks{temp.suffix}")
        try:
            # fast deflate: this copy is read once by the COG step and deleted
            with rasterio.open(blocks, "w", **{**profile, "zlevel": 1}) as dst:
                yield dst
            _to_cog(blocks, temp, overview_resampling)
        finally:
            blocks.unlink(missing_ok=True)


@contextlib.contextmanager
def _eval_mode(model: Model, device: str | torch.device) -> Iterator[None]:
    """An ``nn.Module`` moved to ``device`` in eval mode while open, its mode restored after;
    other callables as they are."""
    module = model if isinstance(model, torch.nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.to(device).eval()
    try:
        yield
    finally:
        if module is not None:
            module.train(was_training)


def _open_outputs(
    outputs: contextlib.ExitStack,
    out: Path,
    src: Any,
    dtype: str,
    nodata: int,
    values: tuple[int, ...],
    colours: Sequence[Colour],
    probabilities: ProbabilityType | None,
    cog: bool,
) -> tuple[DatasetWriter, DatasetWriter | None]:
    """The class GeoTIFF (with its colour table) and, when asked for, the probability GeoTIFF,
    on the grid of the scene reader ``src``, open in ``outputs`` (see :func:`_geotiff_output`)."""
    shape = (src.height, src.width)
    grid = {"crs": src.crs, "transform": src.transform, "block": TILE}
    labels = outputs.enter_context(
        _geotiff_output(
            out,
            geotiff_profile((1, *shape), dtype, nodata=nodata, compress="deflate", **grid),
            cog=cog,
            overview_resampling="mode",
        )
    )
    colour_table = {v: (*c, 255) for v, c in zip(values, colours, strict=False)}
    colour_table[nodata] = (0, 0, 0, 0)
    labels.write_colormap(1, colour_table)
    if probabilities is None:
        return labels, None
    scores = outputs.enter_context(
        _geotiff_output(
            probabilities_path(out),
            geotiff_profile(
                (len(values), *shape),
                probabilities,
                nodata=PROBABILITY_NODATA[probabilities],
                # not RGB(A), GDAL's guess for 3 or 4 bands of uint8: no band is an alpha mask
                compress="deflate",
                photometric="minisblack",
                **grid,
            ),
            cog=cog,
            overview_resampling="average",
        )
    )
    scores.descriptions = tuple(f"class {value}" for value in values)
    if probabilities == "uint8":
        scores.scales = (1 / PROBABILITY_SCALE,) * len(values)
    return labels, scores


def predict_scene(
    model: Model,
    scene: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
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
    tta: bool = False,
    probabilities: ProbabilityType | None = None,
    cog: bool = True,
    block: int = DEFAULT_BLOCK,
    progress: bool = True,
) -> PredictionResult:
    """Classify every pixel of a scene with a segmentation model.

    Args:
        model: normalised images ``[B, C, window, window]`` float32 on ``device`` ->
            logits ``[B, K, h, w]``. An ``nn.Module`` is moved to ``device`` and run in
            eval mode (its mode is restored afterwards); any other callable must already
            run on ``device``.
        scene: one GeoTIFF, a folder of GeoTIFFs, or a list of files and folders; several
            files are predicted as one mosaic (:mod:`geocl.data.mosaic`); a remote file or
            a STAC document too (:func:`~geocl.data.mosaic.scene_files`; its items' one
            raster asset: :func:`geocl.finetune.inference.predict_with_checkpoint` takes
            ``assets``).
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
        nodata: value written where every band of the scene is nodata, or a band holds NaN or an
            infinity (not a class value).
        polygons: also write the prediction as polygons to this GeoPackage (layer
            :data:`~geocl.finetune.polygons.POLYGON_LAYER`, one row per 4-connected region,
            column ``class_value``, the scene's CRS, nodata left out), vectorised in
            blocks of ``block`` px, at most :data:`~geocl.finetune.polygons.POLYGON_BLOCK`.
        tta: average each window's logits over its 8 flips and rotations (D4; 8 times the
            model calls).
        probabilities: also write the softmax class probabilities to
            :func:`probabilities_path` (``<out stem>_probabilities.tif``), band ``k`` for
            class ``k`` (described ``class <value>``): ``"uint8"`` stores ``round(254 p)``
            (GDAL scale ``1/254`` recorded, nodata 255), ``"float16"`` stores ``p``
            (nodata NaN). Their argmax is the class map (up to uint8 rounding ties).
        cog: write Cloud-Optimized GeoTIFFs (rio-cogeo: deflate, 256 px tiles, overviews
            down to one tile, ``mode`` for the classes and ``average`` for the
            probabilities); False writes plain tiled GeoTIFFs (faster, no overviews).
        block: width (px, a multiple of 256) of the column blocks the scene is predicted
            in, and the side of the polygon blocks up to 1024 px; memory grows with it,
            not with the scene (about ``4 K window (block + 2 window)`` bytes of logits).
        progress: show a progress bar.

    Returns:
        A :class:`PredictionResult`. The GeoTIFF has the scene's CRS, transform and size
        (a mosaic's: see :mod:`geocl.data.mosaic`), one band of uint8 (uint16 when a
        value exceeds 255), the nodata value recorded, a colour table, deflate
        compression and 256 px tiles. Every file is written atomically.

    Raises:
        GeoclError: before any work, naming the scene file when it is not a readable
            georeferenced raster, the band counts of a mosaic differ or differ from the
            normaliser's, an output that cannot be written (:func:`check_prediction_outputs`),
            or the option at fault (``window``, ``overlap``, ``batch_size``, ``block``,
            ``probabilities``, ``class_values``, ``class_colours``, ``nodata``); after the
            pass, naming the scene file when it held no pixel to predict (every one nodata,
            NaN or infinite: no output is left). A write the disk refuses raises
            :class:`~geocl.io.OutputWriteError` naming the file; the outputs written before
            it are complete, the one being written is left as it was.
    """
    started = time.perf_counter()
    dtype = _check_options(window, overlap, batch_size, class_values, nodata, class_colours, probabilities, block)
    values = tuple(int(v) for v in class_values)
    colours = list(class_colours) if class_colours is not None else default_colours(len(values))
    files = scene_files(scene)
    out = check_prediction_outputs(out, polygons, scene, probabilities=probabilities is not None)
    lookup = np.asarray(values, dtype=dtype)

    run: Model = D4Average(model) if tta else model
    with _eval_mode(model, device), bounded_memory(), open_scene(files) as src:
        if src.count != len(normalizer.mean):
            raise GeoclError(
                f"scene has {src.count} bands but the band statistics have {len(normalizer.mean)}", path=files[0]
            )
        shape = (src.height, src.width)
        notes = tuple(getattr(src, "notes", ()))  # a mosaic's: resampled files, overlaps
        finite = FiniteReader(src, src.nodata if src.nodata is not None else normalizer.nodata)
        if not has_pixel_to_predict(finite):
            raise GeoclError(
                f"holds no pixel to predict: every pixel is nodata ({finite.missing:g} in every band), NaN or infinite",
                path=files[0],
            )
        blocks = column_blocks(src.width, block)
        # a mosaic's windows fall where they fall on its first file alone (see AnchoredView)
        view = AnchoredView(finite, getattr(src, "first_origin", (0, 0)), window - overlap)
        windows = sum(
            len(rows) * len(cols)
            for rows, cols in (
                window_grid(view.height, view.width, window, overlap, view.columns(span)) for span in blocks
            )
        )
        with contextlib.ExitStack() as outputs:
            labels, scores = _open_outputs(outputs, out, src, dtype, nodata, values, colours, probabilities, cog)
            bar = outputs.enter_context(tqdm(total=windows, unit="window", desc="predict", disable=not progress))
            for start, stop in blocks:
                label_rows = _BlockRowWriter(labels, start)
                score_rows = _BlockRowWriter(scores, start) if scores is not None else None
                for strip in view.strips(
                    sliding_window_logits(
                        run,
                        view,
                        normalizer,
                        num_classes=len(values),
                        window=window,
                        overlap=overlap,
                        batch_size=batch_size,
                        device=device,
                        columns=view.columns((start, stop)),
                        progress=bar,
                    )
                ):
                    classes = lookup[strip.logits.argmax(axis=0)]
                    classes[strip.invalid] = nodata
                    label_rows.write(classes[None])
                    if score_rows is not None and probabilities is not None:
                        score_rows.write(_encode_probabilities(strip.logits, strip.invalid, probabilities))
                label_rows.close()
                if score_rows is not None:
                    score_rows.close()
    if finite.found:
        notes += (f"the scene holds NaN or infinite values: those pixels are written as nodata ({nodata})",)

    png = plot_prediction_preview([Path(file) for file in files], out, values, colours, nodata)
    gpkg = write_polygons(out, polygons, block=min(block, POLYGON_BLOCK)) if polygons is not None else None
    return PredictionResult(
        path=out,
        png=png,
        polygons=gpkg,
        shape=shape,
        classes=values,
        probabilities=probabilities_path(out) if probabilities is not None else None,
        scenes=tuple(files),
        windows=windows,
        seconds=time.perf_counter() - started,
        notes=notes,
    )
