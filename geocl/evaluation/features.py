"""Frozen features for evaluation: the embedding of a labelled dataset.

A checkpoint's encoder is loaded by :func:`geocl.models.encoders.load_checkpoint_encoder`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from geocl.models import Encoder, embed_dataset


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
