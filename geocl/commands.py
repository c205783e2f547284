"""The library entries of ``geocl tile`` and ``geocl predict``: the command's options in, a result out.

:mod:`geocl.cli` parses the flags into :class:`~geocl.recipes.options.TileOptions` or
:class:`~geocl.recipes.options.PredictCommand`, calls :func:`run_tile` or
:func:`run_predict`, prints the result's ``describe()`` and, for several scenes, fails
with :meth:`~geocl.distributed.ManyScenesResult.failure_message`. What each command does
with its options (a benchmark or a scene, one scene here or several on Dask, a GeoTIFF
scene or a NIfTI volume) is decided here, so that Python callers get the same as the
command line. Heavy packages are imported inside the functions (start-up time: the CLI
answers a bad option before importing torch or rasterio).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geocl.distributed import ManyScenesResult, predict_scenes, tile_scenes
from geocl.errors import InvalidInputError
from geocl.recipes.options import PredictCommand, PredictSettings, TileOptions

__all__ = ["TileSetResult", "VolumePredictionResult", "run_predict", "run_tile"]


@dataclass(frozen=True)
class TileSetResult:
    """What ``geocl tile`` did for one scene or one benchmark: the summary and the tile map."""

    summary: Any  # geocl.data.tileset.TilingSummary
    map: object  # the map's path, or why it was not drawn

    def describe(self) -> str:
        """The lines ``geocl tile`` prints."""
        return f"{self.summary.describe()}\n  map: {self.map}"


def run_tile(
    options: TileOptions,
    *,
    scenes: Sequence[str | os.PathLike[str]] | None = None,
    masks: Sequence[str | os.PathLike[str]] | None = None,
    assets: Sequence[str] | None = None,
    verbose: bool = False,
) -> TileSetResult | ManyScenesResult:
    """``geocl tile``: a benchmark (``options.dataset``), one scene here, or several scenes as Dask tasks.

    Args:
        options: the command's validated options.
        scenes, masks: ``options.scene`` and ``options.mask`` as the user typed them, where
            they hold URLs (a ``Path`` folds the ``//`` of ``https://``); default: the options'.
        assets: for a STAC scene: the asset keys stacked as bands, in order.
        verbose: let Dask log.

    Returns:
        :class:`TileSetResult`, or :class:`ManyScenesResult` for several scenes (its
        :meth:`~ManyScenesResult.failure_message` names the failed ones).

    Raises:
        GeoclError: for any bad input, naming the file or option.
    """
    from geocl.data.tiler import OPTION_KEYS, TilingOptions, tile_scene

    progress = not options.quiet
    if options.dataset is not None:
        from geocl.data.benchmarks import export_benchmark

        if assets:
            raise InvalidInputError(
                "picks the bands of a STAC scene; --dataset keeps the dataset's bands", key="assets"
            )
        assert options.root is not None  # TileOptions requires --root with --dataset
        summary = export_benchmark(
            options.dataset,
            options.root,
            options.out,
            size=options.size,
            stride=options.stride,
            val_fraction=options.val_fraction,
            seed=options.seed,
            progress=progress,
        )
        return TileSetResult(summary, _tile_map(options.out, []))
    given = options.model_dump()
    tiling = TilingOptions(
        **{
            **{
                name: given[OPTION_KEYS.get(name, name)]
                for name in TilingOptions.__dataclass_fields__
                if name != "assets"
            },
            "roi": None if options.roi is None else str(options.roi),
            "assets": tuple(assets) if assets else None,
        }
    )
    scenes = list(scenes if scenes is not None else options.scene or [])
    masks = masks if masks is not None else options.mask
    if len(scenes) > 1:  # one Dask task a scene, each into OUT/<scene name>/
        return tile_scenes(
            scenes,
            options.out,
            masks=masks,
            options=tiling,
            workers=options.workers,
            scheduler=options.scheduler,
            progress=progress,
            verbose=verbose,
        )
    summary = tile_scene(scenes[0], options.out, mask=masks[0] if masks else None, options=tiling, progress=progress)
    return TileSetResult(summary, _tile_map(options.out, scenes))


def _tile_map(out: Path, scenes: Sequence[str | os.PathLike[str]]) -> object:
    """The tile-index map's path; for a STAC scene, what it shows without a backdrop (the map
    reopens the scene files tiles.json names, and a STAC item is no file of its own)."""
    import rasterio.errors

    from geocl.data.stac import is_stac
    from geocl.report.maps import plot_tile_index

    try:
        return plot_tile_index(out, out / "tiles.png")
    except rasterio.errors.RasterioError:
        if not any(is_stac(scene) for scene in scenes):
            raise
        return "not drawn: the map cannot show STAC items yet"


@dataclass(frozen=True)
class VolumePredictionResult:
    """What ``geocl predict`` did for a NIfTI volume: the prediction and the label map it was scored against."""

    prediction: Any  # geocl.finetune.medical.VolumePrediction
    label: Path | None

    def describe(self) -> str:
        """The lines ``geocl predict`` prints."""
        result, scores = self.prediction, ""
        if result.metrics is not None:
            scores = (
                f"\n  against {self.label}: Dice {result.metrics['dice']:.4f}, 95HD {result.metrics['hd95']:.2f} "
                f"mm, ASD {result.metrics['asd']:.2f} mm\n  metrics: {result.csv}"
            )
        return f"prediction: {result.path}\n  preview: {result.png}{scores}"


#: Suffixes of the NIfTI volumes ``geocl predict`` predicts as volumes.
VOLUME_SUFFIXES = (".nii", ".nii.gz")


def run_predict(
    options: PredictCommand,
    *,
    scenes: Sequence[str | os.PathLike[str]] | None = None,
    assets: Sequence[str] | None = None,
    verbose: bool = False,
) -> Any:
    """``geocl predict``: a NIfTI volume, one scene (or one mosaic) here, or several scenes as Dask tasks.

    A single scene named ``*.nii`` or ``*.nii.gz`` is a volume
    (:func:`geocl.finetune.medical.predict_volume`: a NIfTI label map with its affine);
    with ``workers`` or ``scheduler`` each scene is predicted on its own
    (:func:`predict_scenes`); otherwise the scenes are one mosaic
    (:func:`geocl.finetune.inference.predict_with_checkpoint`).

    Args:
        options: the command's validated options.
        scenes: ``options.scene`` as the user typed it, where it holds URLs (default: the options').
        assets: for a STAC scene: the asset keys stacked as bands, in order.
        verbose: let Dask log.

    Returns:
        A :class:`~geocl.finetune.predict.PredictionResult`, :class:`VolumePredictionResult`
        or :class:`ManyScenesResult`; each has ``describe()``.

    Raises:
        GeoclError: for any bad input, naming the file or option.
    """
    if assets and options.many_scenes:  # PredictSettings, what each Dask task gets, has no assets
        raise InvalidInputError(
            "is not yet passed to scenes predicted on Dask; predict a STAC scene without --workers/--scheduler",
            key="assets",
        )
    if len(options.scene) == 1 and str(options.scene[0]).lower().endswith(VOLUME_SUFFIXES):
        return _predict_volume(options)
    scenes = list(scenes if scenes is not None else options.scene)
    if options.many_scenes:
        settings = options.model_dump(include=set(PredictSettings.model_fields))
        return predict_scenes(
            options.checkpoint,
            scenes,
            options.out,
            options=settings,
            workers=options.workers,
            scheduler=options.scheduler,
            progress=True,
            verbose=verbose,
        )
    from geocl.finetune.inference import predict_with_checkpoint

    return predict_with_checkpoint(
        **{**options.model_dump(exclude={"workers", "scheduler"}), "scene": scenes}, assets=assets
    )


def _predict_volume(options: PredictCommand) -> VolumePredictionResult:
    """A NIfTI label map with the volume's affine; window and overlap default to the training slice's."""
    if options.polygons is not None:
        raise InvalidInputError("polygons are written for GeoTIFF scenes, not NIfTI volumes", key="polygons")
    from geocl.finetune.volume_prediction import label_beside, predict_volume

    volume = options.scene[0]
    window = options.window if "window" in options.model_fields_set else None  # default: the training slice side
    overlap = options.overlap if "overlap" in options.model_fields_set else None  # default: a quarter window
    label = label_beside(volume)
    result = predict_volume(options.checkpoint, volume, options.out, label=label, window=window, overlap=overlap)
    return VolumePredictionResult(result, label)
