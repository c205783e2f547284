"""Load a finetuned checkpoint and predict a whole scene with it."""

from __future__ import annotations

import os
from typing import Any

import torch

from geocl.data.normalize import BandNormalizer
from geocl.data.rasters import find_rasters, inspect_rasters
from geocl.errors import GeoclError
from geocl.finetune.model import read_checkpoint
from geocl.finetune.predict import PredictionResult, check_prediction_outputs, predict_scene
from geocl.finetune.train import SEGMENTER_KEY, SegmentationModule


def load_segmenter(checkpoint: str | os.PathLike[str]) -> tuple[SegmentationModule, dict[str, Any]]:
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
    checkpoint: str | os.PathLike[str],
    scene: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    polygons: str | os.PathLike[str] | None = None,
    window: int = 256,
    overlap: int = 64,
    device: str | None = None,
) -> PredictionResult:
    """``geocl predict``: sliding-window prediction of a scene with a finetuned checkpoint.

    Raises:
        GeoclError: before any work: ``out`` or ``polygons`` cannot be written (see
            :func:`~geocl.finetune.predict.check_prediction_outputs`), the checkpoint is
            not a finetuning checkpoint, the scene's band count differs from the model's.
    """
    check_prediction_outputs(out, polygons, scene)  # before loading the model: seconds
    module, meta = load_segmenter(checkpoint)
    infos = inspect_rasters(find_rasters(scene))
    if infos[0].count != int(meta["in_chans"]):
        raise GeoclError(
            f"scene has {infos[0].count} bands but the model was trained on {meta['in_chans']}", path=scene
        )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    module.to(device)
    stats = meta["band_stats"]
    normalizer = BandNormalizer(stats["mean"], stats["std"], meta["nodata"])

    @torch.no_grad()
    def logits(images: torch.Tensor) -> torch.Tensor:
        return module(images.to(device))

    return predict_scene(
        logits, scene, out, normalizer=normalizer, class_values=meta["classes"], window=window,
        overlap=overlap, device=device, polygons=polygons,
    )
