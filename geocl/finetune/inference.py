"""Load a finetuned checkpoint and predict a whole scene with it.

:func:`predict_with_checkpoint` is ``geocl predict`` for GeoTIFF scenes (a worker runs it
for each scene of a batch: :func:`geocl.distributed.predict_task`); it runs
:func:`geocl.finetune.predict.predict_scene` with the model and band statistics the
checkpoint holds.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from rasterio.windows import Window

from geocl.data.mosaic import open_scene, scene_files
from geocl.data.normalize import BandNormalizer
from geocl.data.rasters import as_raster_path, bounded_memory, inspect_rasters
from geocl.errors import GeoclError
from geocl.finetune.predict import (
    DEFAULT_BLOCK,
    PredictionResult,
    ProbabilityType,
    check_prediction_outputs,
    predict_scene,
)
from geocl.finetune.train import SegmentationModule
from geocl.models.checkpoints import SEGMENTER_KEY, checkpoint_kind, read_checkpoint

__all__ = ["check_scene_values", "check_trained_on", "load_segmenter", "predict_with_checkpoint", "trained_on"]

PathLike = str | os.PathLike[str]


def load_segmenter(checkpoint: PathLike) -> tuple[SegmentationModule, dict[str, Any]]:
    """A finetuned model in eval mode and its metadata (classes, band statistics, ...).

    The file is read once, with ``torch.load(weights_only=True)``
    (:func:`~geocl.finetune.model.read_checkpoint`), and the model is built from the
    arguments it stores, those :class:`SegmentationModule` takes and nothing else:
    Lightning's ``load_from_checkpoint`` would also call a function a checkpoint names
    (``_instantiator``).

    Raises:
        GeoclError: naming the file, in one line, if it cannot be read (see
            :func:`~geocl.finetune.model.read_checkpoint`), is another kind of checkpoint
            (a pretraining one), or its weights do not fit the model it describes.
    """
    stored = read_checkpoint(checkpoint)
    meta, arguments = stored.get(SEGMENTER_KEY), stored.get("hyper_parameters")
    if not isinstance(meta, dict) or not isinstance(arguments, dict) or not isinstance(stored.get("state_dict"), dict):
        hint = ": finetune it first (geocl finetune --encoder ...)" if "geocl" in stored else ""
        raise GeoclError(
            f"is {checkpoint_kind(stored)}, not a finetuning checkpoint (made by `geocl finetune`){hint}",
            path=checkpoint,
        )
    missing = [key for key in ("in_chans", "classes", "band_stats", "nodata") if key not in meta]
    if missing:
        raise GeoclError(f"is a finetuning checkpoint without its {', '.join(missing)} (damaged)", path=checkpoint)
    accepted = inspect.signature(SegmentationModule.__init__).parameters
    try:
        module = SegmentationModule(**{key: value for key, value in arguments.items() if key in accepted})
        module.load_state_dict(stored["state_dict"])
    except (TypeError, ValueError, KeyError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise GeoclError(
            f"is a finetuning checkpoint whose weights do not fit the model it describes: {first}", path=checkpoint
        ) from None
    module.eval()
    return module, meta


#: Where a finetuning checkpoint records that it was trained on NIfTI volumes: its volume
#: settings (spacing, slice axis, intensity) under this key of its metadata, the
#: ``MEDICAL_KEY`` of :mod:`geocl.finetune.medical` (the same string; that module imports
#: this one, so it is not imported here). Checkpoints trained on GeoTIFF tiles lack it.
VOLUME_SETTINGS_KEY = "medical"

TrainingData = Literal["tiles", "volumes"]


def trained_on(meta: Mapping[str, Any]) -> TrainingData:
    """What a finetuned checkpoint was trained on, by what its metadata records: ``"volumes"`` or ``"tiles"``."""
    return "volumes" if VOLUME_SETTINGS_KEY in meta else "tiles"


def check_trained_on(checkpoint: PathLike, meta: Mapping[str, Any], data: TrainingData) -> None:
    """The one rule for what a finetuned checkpoint may predict: the kind of data it was trained on.

    A model trained on NIfTI slices (one band, intensities normalised per volume, no
    nodata) given a GeoTIFF, or a tile model given a volume, would run and write a map
    of noise; ``geocl predict`` asks this for both directions before any work.

    Args:
        checkpoint: the checkpoint (named in the error).
        meta: its metadata (:data:`~geocl.finetune.train.SEGMENTER_KEY`).
        data: what it is about to predict: ``"tiles"`` (GeoTIFF scenes) or ``"volumes"``.

    Raises:
        GeoclError: naming the checkpoint and what it was trained on, when that is not ``data``.
    """
    trained = trained_on(meta)
    if trained == data:
        return
    if trained == "volumes":
        raise GeoclError(
            "was finetuned on volumes (NIfTI), not tiles: predict .nii or .nii.gz volumes with it, not GeoTIFF scenes",
            path=checkpoint,
        )
    raise GeoclError("was finetuned on tiles, not volumes: predict GeoTIFF scenes with it", path=checkpoint)


#: Side (px) of the 3 x 3 windows of a scene :func:`check_scene_values` reads.
SAMPLE_SIDE = 256


def check_scene_values(
    files: Sequence[PathLike], band_stats: Mapping[str, Any], nodata: float | None, dtype: str = ""
) -> None:
    """Refuse a scene whose values are on another scale than the model's training data.

    A scene stored in another data type than the training scene is predicted as it is
    when its values mean the same (uint16 counts stored as float32 give the same map).
    When they do not (reflectances 0-1 as float32, or bytes 0-255, for a model trained
    on 16-bit counts), the normalised pixels lie far off what the model saw and the map
    it writes is noise. The rule: the median of the scene's valid pixels (finite, not
    nodata), sampled in 3 x 3 windows of :data:`SAMPLE_SIDE` px, lies outside the
    minimum to maximum of the training pixels in every band. Checkpoints that do not
    record that range are not checked.

    Args:
        files: the scene's files (:func:`~geocl.data.mosaic.scene_files`).
        band_stats: the checkpoint's band statistics (``minimum``, ``maximum`` per band).
        nodata: the value of missing pixels (when every band holds it).
        dtype: the scene's data type, for the message.

    Raises:
        GeoclError: naming the scene's first file, band 1's median and the training range.
    """
    low, high = band_stats.get("minimum"), band_stats.get("maximum")
    if not low or not high:
        return
    with bounded_memory(), open_scene([as_raster_path(file) for file in files]) as src:
        missing = src.nodata if src.nodata is not None else nodata

        def starts(length: int) -> list[int]:
            return sorted({0, max(0, (length - SAMPLE_SIDE) // 2), max(0, length - SAMPLE_SIDE)})

        parts = []
        for row in starts(src.height):
            for col in starts(src.width):
                window = Window(col, row, min(SAMPLE_SIDE, src.width - col), min(SAMPLE_SIDE, src.height - row))
                data = src.read(window=window).astype(np.float64)
                valid = np.isfinite(data).all(axis=0)
                if missing is not None:
                    valid &= ~(np.isnan(data) if np.isnan(missing) else data == missing).all(axis=0)
                parts.append(data[:, valid])
    values = np.concatenate(parts, axis=1)
    if values.shape[1] == 0 or values.shape[0] != len(low):
        return
    medians = np.median(values, axis=1)
    if any(lo <= median <= hi for median, lo, hi in zip(medians, low, high, strict=False)):
        return
    kind = f" ({dtype})" if dtype else ""
    raise GeoclError(
        f"its values are not on the scale of the model's training data in any band (band 1: median "
        f"{medians[0]:.4g}{kind}; the training tiles held {low[0]:.4g} to {high[0]:.4g}): another data type or "
        "unit (reflectances instead of counts, 8-bit instead of 16-bit values?); convert the scene to the units "
        "of the training scene",
        path=files[0],
    )


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
    assets: Sequence[str] | None = None,
) -> PredictionResult:
    """``geocl predict``: sliding-window prediction of a scene with a finetuned checkpoint.

    Args:
        checkpoint: made by ``geocl finetune``.
        scene: a GeoTIFF, a folder of GeoTIFFs, or a list of files and folders (one mosaic);
            a remote file or a STAC document (see :func:`~geocl.data.mosaic.scene_files`).
        out: the prediction GeoTIFF.
        polygons, window, overlap, batch_size, tta, probabilities, cog, block: see
            :func:`geocl.finetune.predict.predict_scene`.
        device: where the model runs (default: CUDA when available, else the CPU).
        progress: show a progress bar.
        assets: for a STAC scene: the asset keys stacked as bands, in order.

    Raises:
        GeoclError: before any work: an output cannot be written (see
            :func:`~geocl.finetune.predict.check_prediction_outputs`), the checkpoint is
            not a finetuning checkpoint or was trained on volumes (:func:`check_trained_on`),
            a scene file is unusable, its band count differs from the model's or its values
            are on another scale than the training data's (:func:`check_scene_values`).
    """
    # before loading the model (seconds): the outputs, what the checkpoint was trained on, the scene's files
    check_prediction_outputs(out, polygons, scene, probabilities=probabilities is not None)
    recorded = read_checkpoint(checkpoint, mmap=True).get(SEGMENTER_KEY)
    if isinstance(recorded, dict):  # anything else: load_segmenter says what the file is
        check_trained_on(checkpoint, recorded, "tiles")
    module, meta = load_segmenter(checkpoint)
    files = scene_files(scene, assets)  # STAC items stacked once, the rasters handed on as they are
    infos = inspect_rasters(files)
    if infos[0].count != int(meta["in_chans"]):
        raise GeoclError(
            f"scene has {infos[0].count} bands but the model was trained on {meta['in_chans']}", path=infos[0].path
        )
    check_scene_values([info.path for info in infos], meta["band_stats"], meta["nodata"], infos[0].dtype)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    module.to(device)
    stats = meta["band_stats"]
    normalizer = BandNormalizer(stats["mean"], stats["std"], meta["nodata"])

    @torch.no_grad()
    def logits(images: torch.Tensor) -> torch.Tensor:
        return module(images.to(device))

    return predict_scene(
        logits,
        files,
        out,
        normalizer=normalizer,
        class_values=meta["classes"],
        window=window,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        polygons=polygons,
        tta=tta,
        probabilities=probabilities,
        cog=cog,
        block=block,
        progress=progress,
    )
