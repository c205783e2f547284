"""Frozen features for evaluation: a checkpoint's encoder, and the embedding of a dataset."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from geocl.errors import GeoclError
from geocl.finetune.model import pretrained_encoder_args, read_pretrain_checkpoint
from geocl.models import Encoder, create_encoder
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


def load_checkpoint_encoder(path: str | os.PathLike[str]) -> tuple[Encoder, dict[str, Any]]:
    """The encoder a pretraining checkpoint trained (any method), in eval mode on the CPU.

    Returns:
        (encoder, the checkpoint's ``geocl`` entry: recipe, band statistics, names...).

    Raises:
        GeoclError: naming the file if it is not a geocl pretrain checkpoint or its
            weights do not fit the encoder it names.
    """
    loaded = read_pretrain_checkpoint(path)
    meta = loaded["meta"]
    encoder = evaluation_encoder(str(meta["encoder"]), int(meta["in_chans"]), pretrained_encoder_args(meta))
    try:
        encoder.body.load_state_dict(loaded["encoder_state"], strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise GeoclError(f"encoder weights do not fit {meta['encoder']!r}: {first}", path=path) from None
    return encoder.eval(), meta


@torch.no_grad()
def embed_dataset(
    encoder: Encoder,
    dataset: Dataset[dict[str, Any]],
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device | None = None,
) -> tuple[Tensor, Tensor]:
    """Pooled features of every image of a labelled dataset, in dataset order.

    Args:
        encoder: the (frozen) encoder; put in eval mode here.
        dataset: samples ``{"image": [C, H, W], "label": int}``.
        batch_size: images per forward pass.
        num_workers: DataLoader workers.
        device: where to run (default: CUDA when available, else the CPU).

    Returns:
        (features float ``[N, D]`` on the CPU, labels long ``[N]``).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    encoder = encoder.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    features: list[Tensor] = []
    labels: list[Tensor] = []
    for batch in loader:
        features.append(encoder(batch["image"].to(device)).float().cpu())
        labels.append(torch.as_tensor(batch["label"]).long())
    if not features:
        return torch.empty(0, encoder.num_features), torch.empty(0, dtype=torch.long)
    return torch.cat(features), torch.cat(labels)
