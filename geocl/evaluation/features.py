"""Frozen features for evaluation: a checkpoint's encoder, and the embedding of a dataset."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from geocl.errors import GeoclError
from geocl.finetune.model import pretrained_encoder_args, read_pretrain_checkpoint
from geocl.models import Encoder, create_encoder, embed_dataset
from geocl.models.encoders import is_vision_transformer


def evaluation_encoder(name: str, in_chans: int, args: dict[str, Any] | None = None) -> Encoder:
    """A randomly initialised encoder as evaluation builds it (the caller seeds torch).

    A ViT gets ``dynamic_img_size`` (same weights, position embedding interpolated), so
    it embeds whole images even when it was pretrained on smaller views.
    """
    args = dict(args or {})
    if is_vision_transformer(name):
        args["dynamic_img_size"] = True
    return create_encoder(name, in_chans, args=args)


def load_checkpoint_encoder(
    path: str | os.PathLike[str], momentum_encoder: bool = False
) -> tuple[Encoder, dict[str, Any]]:
    """The encoder a pretraining checkpoint trained (any method), in eval mode on the CPU.

    Args:
        path: the checkpoint.
        momentum_encoder: the method's momentum (EMA) encoder instead of the online one.

    Returns:
        (encoder, the checkpoint's ``geocl`` entry: recipe, band statistics, names...).

    Raises:
        GeoclError: naming the file if it is not a geocl pretrain checkpoint or its
            weights do not fit the encoder it names.
    """
    loaded = read_pretrain_checkpoint(path, momentum_encoder)
    meta = loaded["meta"]
    encoder = evaluation_encoder(str(meta["encoder"]), int(meta["in_chans"]), pretrained_encoder_args(meta))
    try:
        encoder.body.load_state_dict(loaded["encoder_state"], strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise GeoclError(f"encoder weights do not fit {meta['encoder']!r}: {first}", path=path) from None
    return encoder.eval(), meta


def embed_labelled(
    encoder: Encoder, dataset: Dataset[dict[str, Any]], *, batch_size: int = 256, num_workers: int = 0
) -> tuple[Tensor, Tensor]:
    """Pooled features and labels of a labelled dataset (CUDA when available, else the CPU).

    Returns:
        (features float ``[N, D]`` on the CPU, labels long ``[N]``).
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    features, fields = embed_dataset(
        encoder, dataset, batch_size=batch_size, collect=("label",), num_workers=num_workers, device=device
    )
    labels = fields.get("label", torch.empty(0))
    return features, labels.long()
