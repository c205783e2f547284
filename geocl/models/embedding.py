"""Frozen embeddings of a whole dataset (SPPS mining, kNN and linear-probe evaluation)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset


@torch.no_grad()
def embed_dataset(
    encoder: nn.Module,
    dataset: Dataset[dict[str, Any]],
    *,
    batch_size: int = 256,
    size: int | None = None,
    collect: Sequence[str] = (),
    num_workers: int = 0,
    device: torch.device | str | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Embed every item's un-augmented ``image`` with a frozen encoder, in dataset order.

    The encoder runs in eval mode (BatchNorm uses its running statistics and is not
    updated, so batch composition does not matter) without gradients; its mode is
    restored afterwards.

    Args:
        encoder: ``[B, C, H, W]`` -> ``[B, D]``.
        dataset: items with ``image`` ``[C, H, W]``.
        batch_size: images per forward pass.
        size: resize images to ``size`` x ``size`` first (e.g. the pretraining view size);
            None keeps them.
        collect: other item fields to gather alongside (``label``, ``bounds``, ...); a
            field that some item lacks is left out of the result.
        num_workers: DataLoader workers.
        device: where to run (default: the encoder's device).

    Returns:
        (``[N, D]`` float features on the CPU, ``{field: [N, ...] tensor}`` of the
        collected fields present in every item).
    """
    if device is None:
        device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.to(device).eval()
    features: list[Tensor] = []
    gathered: dict[str, list[Tensor]] = {name: [] for name in collect}
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers):
            images = batch["image"].to(device)
            if size is not None and tuple(images.shape[-2:]) != (size, size):
                images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            features.append(encoder(images).float().cpu())
            for name in list(gathered):
                if name in batch:
                    gathered[name].append(torch.as_tensor(batch[name]))
                else:
                    del gathered[name]
    finally:
        encoder.train(was_training)
    if not features:
        width = getattr(encoder, "num_features", 0)
        return torch.empty(0, width), {name: torch.empty(0) for name in gathered}
    return torch.cat(features), {name: torch.cat(parts) for name, parts in gathered.items()}
