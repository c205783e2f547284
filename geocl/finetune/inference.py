"""Load a finetuned checkpoint and predict a whole scene with it.

:func:`predict_with_checkpoint` is ``geocl predict``; :func:`predict_scene` is the same
for one scene of a batch run by a worker process (settings as one
:class:`~geocl.recipes.options.PredictSettings`, no progress bar, no output on the
terminal, a picklable result).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import ValidationError

from geocl.data.mosaic import scene_files
from geocl.data.normalize import BandNormalizer
from geocl.data.rasters import inspect_rasters
from geocl.errors import GeoclError
from geocl.finetune.model import read_checkpoint
from geocl.finetune.predict import DEFAULT_BLOCK, PredictionResult, ProbabilityType, check_prediction_outputs
from geocl.finetune.predict import predict_scene as predict_scene_with_model
from geocl.finetune.train import SEGMENTER_KEY, SegmentationModule
from geocl.recipes.options import PredictSettings

__all__ = ["load_segmenter", "predict_scene", "predict_with_checkpoint"]

PathLike = str | os.PathLike[str]


def load_segmenter(checkpoint: PathLike) -> tuple[SegmentationModule, dict[str, Any]]:
    """A finetuned model in eval mode and its metadata (classes, band statistics, ...).

    Raises:
        GeoclError: if the file is not a geocl finetuning checkpoint.
    """
    stored = read_checkpoint(checkpoint)
    if SEGMENTER_KEY not in stored:
        raise GeoclError("not a geocl finetuning checkpoint (made by `geocl finetune`)", path=checkpoint)
    module = SegmentationModule.load_from_checkpoint(checkpoint, map_location="cpu")
    module.eval()
    return module, stored[SEGMENTER_KEY]


def predict_with_checkpoint(
    checkpoint: PathLike,
    scene: PathLike | Sequence[PathLike],
    out: PathLike,
    *,
    polygons: PathLike | None = None,
    window: int = 256,
    overlap: int = 64,
    batch_size: int = 8,
    tta: bool = False,
    probabilities: ProbabilityType | None = None,
    cog: bool = True,
    block: int = DEFAULT_BLOCK,
    device: str | None = None,
    progress: bool = True,
) -> PredictionResult:
    """``geocl predict``: sliding-window prediction of a scene with a finetuned checkpoint.

    Args:
        checkpoint: made by ``geocl finetune``.
        scene: a GeoTIFF, a folder of GeoTIFFs, or a list of files and folders (one mosaic).
        out: the prediction GeoTIFF.
        polygons, window, overlap, batch_size, tta, probabilities, cog, block: see
            :func:`geocl.finetune.predict.predict_scene`.
        device: where the model runs (default: CUDA when available, else the CPU).
        progress: show a progress bar.

    Raises:
        GeoclError: before any work: an output cannot be written (see
            :func:`~geocl.finetune.predict.check_prediction_outputs`), the checkpoint is
            not a finetuning checkpoint, a scene file is unusable or its band count
            differs from the model's.
    """
    # before loading the model (seconds): the outputs, then the scene's files
    check_prediction_outputs(out, polygons, scene, probabilities=probabilities is not None)
    module, meta = load_segmenter(checkpoint)
    infos = inspect_rasters(scene_files(scene))
    if infos[0].count != int(meta["in_chans"]):
        raise GeoclError(
            f"scene has {infos[0].count} bands but the model was trained on {meta['in_chans']}", path=infos[0].path
        )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    module.to(device)
    stats = meta["band_stats"]
    normalizer = BandNormalizer(stats["mean"], stats["std"], meta["nodata"])

    @torch.no_grad()
    def logits(images: torch.Tensor) -> torch.Tensor:
        return module(images.to(device))

    return predict_scene_with_model(
        logits, scene, out, normalizer=normalizer, class_values=meta["classes"], window=window,
        overlap=overlap, batch_size=batch_size, device=device, polygons=polygons, tta=tta,
        probabilities=probabilities, cog=cog, block=block, progress=progress,
    )


def predict_scene(
    checkpoint: PathLike,
    scene_paths: PathLike | Sequence[PathLike],
    out: PathLike,
    options: PredictSettings | Mapping[str, Any] | None = None,
    *,
    polygons: PathLike | None = None,
    device: str | None = None,
) -> PredictionResult:
    """Predict one scene with a finetuned checkpoint, as a worker process does for each scene of a batch.

    Safe in a worker (a Dask task, a ``multiprocessing`` pool): every file is written
    atomically (a temporary name beside it, unique per process, renamed when complete),
    so a killed or retried task leaves either the old file or the new one; nothing is
    printed and no progress bar is drawn; memory is bounded by ``options.block`` (see
    :func:`geocl.finetune.predict.predict_scene`), not by the scene; nothing is kept
    between calls (the model is loaded each call, about a second) and no global state
    is changed except GDAL's block cache for the duration of the call. Each call uses
    torch's threads as the process has set them (``torch.set_num_threads``).

    Args:
        checkpoint: made by ``geocl finetune``.
        scene_paths: the scene: a GeoTIFF, a folder, or a list of files and folders
            predicted as one mosaic.
        out: the prediction GeoTIFF; beside it ``<stem>.png`` (preview) and, when
            ``options.probabilities``, ``<stem>_probabilities.tif``.
        options: :class:`~geocl.recipes.options.PredictSettings` or a mapping of its
            fields (``window``, ``overlap``, ``batch_size``, ``tta``, ``probabilities``,
            ``cog``, ``block``); default: its defaults.
        polygons: also write the class polygons to this GeoPackage.
        device: where the model runs (default: CUDA when available, else the CPU).

    Returns:
        The :class:`~geocl.finetune.predict.PredictionResult` (picklable): paths written,
        shape, class values, the scene's files, windows run and seconds.

    Raises:
        GeoclError: a bad option (naming the key) or any error of
            :func:`predict_with_checkpoint`, before any work.
    """
    if not isinstance(options, PredictSettings):
        try:
            options = PredictSettings.model_validate(dict(options or {}))
        except ValidationError as error:
            from geocl.recipes.errors import validation_error

            raise validation_error(error, model=PredictSettings) from None
    return predict_with_checkpoint(
        checkpoint, scene_paths, out, polygons=polygons, device=device, progress=False, **options.model_dump()
    )
