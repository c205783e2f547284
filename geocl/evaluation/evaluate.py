"""``geocl evaluate``: kNN and linear-probe top-1 of a pretrained encoder on natural images.

The encoder (from a checkpoint, or randomly initialised for the baseline) embeds the
train split and the val split (CIFAR: the test batch) once; the train features are the
kNN bank and the probe's training set, the val features the queries and the probe's
test set. Images are normalised with the checkpoint's channel statistics, the mapping
the encoder was trained on; a random encoder uses the data's own train statistics.
``evaluation.json`` records the numbers and what produced them.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from geocl.data.natural import NATURAL_FORMATS, open_natural_dataset
from geocl.errors import GeoclError
from geocl.evaluation.features import embed_labelled
from geocl.evaluation.knn import DEFAULT_TEMPERATURE, knn_top1
from geocl.evaluation.linear_probe import linear_probe_top1
from geocl.io import atomic_write_text
from geocl.models.encoders import evaluation_encoder, load_checkpoint_encoder

#: File written into the output folder.
EVALUATION_FILE = "evaluation.json"


@dataclass
class EvaluationResult:
    """What :func:`run_evaluation` measured.

    Attributes:
        knn_top1: weighted cosine kNN top-1 accuracy on the val split.
        probe_top1: linear-probe top-1 accuracy on the val split.
        k: kNN neighbours.
        temperature: kNN vote temperature.
        probe_epochs: linear-probe epochs.
        train_images: images in the bank / probe training set.
        val_images: images evaluated.
        num_classes: classes of the data set.
        encoder: encoder name.
        method: pretraining method (``none`` for a random encoder).
        checkpoint: the checkpoint evaluated ("" for a random encoder).
        seconds: wall time.
        path: the ``evaluation.json`` written (None when no folder was given).
    """

    knn_top1: float
    probe_top1: float
    k: int
    temperature: float
    probe_epochs: int
    train_images: int
    val_images: int
    num_classes: int
    encoder: str
    method: str
    checkpoint: str
    seconds: float
    path: Path | None = None


def default_out(checkpoint: str | os.PathLike[str]) -> Path:
    """The run folder of a checkpoint (``RUN/checkpoints/x.ckpt`` -> ``RUN``)."""
    folder = Path(checkpoint).resolve().parent
    return folder.parent if folder.name == "checkpoints" else folder


def run_evaluation(
    checkpoint: str | os.PathLike[str] | None,
    data: str | os.PathLike[str],
    format: str,
    *,
    out: str | os.PathLike[str] | None = None,
    encoder: str = "resnet18",
    encoder_args: dict[str, Any] | None = None,
    k: int = 20,
    temperature: float = DEFAULT_TEMPERATURE,
    probe_epochs: int = 100,
    probe_lr: float = 0.1,
    image_size: int | None = None,
    val_fraction: float | None = None,
    batch_size: int = 256,
    seed: int = 0,
    num_workers: int = 0,
    momentum_encoder: bool = False,
) -> EvaluationResult:
    """kNN and linear-probe top-1 accuracy of an encoder on a natural-image data set.

    Args:
        checkpoint: a geocl pretrain checkpoint, or None for a randomly initialised
            ``encoder`` (seeded with ``seed``).
        data: the image folder or CIFAR folder.
        format: ``image_folder`` or ``cifar``.
        out: folder for ``evaluation.json``; None writes nothing.
        encoder: encoder name for a random encoder (a checkpoint brings its own).
        encoder_args: timm arguments of that random encoder (recipe ``encoder.args``).
        k: kNN neighbours (the usual values: 10, 20, 100, 200).
        temperature: kNN vote temperature (InstDisc, Wu et al., arXiv 1805.01978: 0.07).
        probe_epochs: linear-probe epochs.
        probe_lr: linear-probe SGD learning rate.
        image_size: resize images to this side; None = the checkpoint recipe's
            ``data.image_size`` when it trained on the same format, else 0 (as stored).
        val_fraction: image folders without ``val/``: share held out per class; None =
            the checkpoint recipe's, else 0.2.
        batch_size: images per forward pass.
        seed: seed of the random encoder and of the probe.
        num_workers: DataLoader workers.
        momentum_encoder: evaluate the checkpoint's momentum (EMA) encoder, as PatchMix
            does (arXiv 2306.12243), instead of the online one.

    Raises:
        GeoclError: an unknown format, unreadable data or checkpoint, or a band-count mismatch.
    """
    start = time.perf_counter()
    if format not in NATURAL_FORMATS:
        raise GeoclError(f"unknown format {format!r}; choose from {', '.join(NATURAL_FORMATS)}", key="format")
    if checkpoint is not None:
        model, meta = load_checkpoint_encoder(checkpoint, momentum_encoder)
        if not isinstance(meta.get("band_stats"), dict) or not isinstance(meta.get("method"), str):
            # without them the images would be normalised otherwise than the encoder learnt
            raise GeoclError(
                "is a pretraining checkpoint without its band statistics or method (damaged)", path=checkpoint
            )
        band_stats: dict[str, Any] | None = meta["band_stats"]
        recipe_data = dict(meta.get("recipe", {}).get("data", {}))
        method = str(meta["method"])
    else:
        model, meta, band_stats, recipe_data, method = None, {}, None, {}, "none"
    same_format = recipe_data.get("format", "tiles") == format
    if image_size is None:
        image_size = int(recipe_data.get("image_size", 0)) if same_format else 0
    if val_fraction is None:
        val_fraction = float(recipe_data.get("val_fraction", 0.2)) if same_format else 0.2
    train = open_natural_dataset(
        format, data, "train", image_size=image_size, val_fraction=val_fraction, band_stats=band_stats
    )
    val = open_natural_dataset(
        format, data, "val", image_size=image_size, val_fraction=val_fraction, band_stats=train.metadata["band_stats"]
    )
    if model is None:
        torch.manual_seed(seed)
        model = evaluation_encoder(encoder, train.band_count, encoder_args).eval()
    elif model.in_chans != train.band_count:
        raise GeoclError(
            f"checkpoint was pretrained on {model.in_chans} bands but the images have {train.band_count}",
            path=checkpoint,
        )
    train_features, train_labels = embed_labelled(model, train, batch_size=batch_size, num_workers=num_workers)
    val_features, val_labels = embed_labelled(model, val, batch_size=batch_size, num_workers=num_workers)
    knn = knn_top1(train_features, train_labels, val_features, val_labels, train.num_classes, k, temperature)
    probe = linear_probe_top1(
        train_features,
        train_labels,
        val_features,
        val_labels,
        train.num_classes,
        epochs=probe_epochs,
        lr=probe_lr,
        batch_size=batch_size,
        seed=seed,
    )
    result = EvaluationResult(
        knn_top1=knn,
        probe_top1=probe,
        k=k,
        temperature=temperature,
        probe_epochs=probe_epochs,
        train_images=len(train),
        val_images=len(val),
        num_classes=train.num_classes,
        encoder=model.name,
        method=method,
        checkpoint="" if checkpoint is None else str(checkpoint),
        seconds=round(time.perf_counter() - start, 1),
    )
    if out is not None:
        result.path = Path(out) / EVALUATION_FILE
        record = {key: value for key, value in asdict(result).items() if key != "path"}
        record.update(data=str(data), format=format, image_size=image_size, seed=seed)
        result.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(result.path, json.dumps(record, indent=1))
    return result
