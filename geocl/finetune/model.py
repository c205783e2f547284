"""Segmentation models (segmentation-models-pytorch) whose encoder can come from any pretrain checkpoint.

smp's ``tu-<name>`` encoders wrap the same timm model geocl pretrains, with the same
parameter names, so a pretrained encoder loads key for key.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import segmentation_models_pytorch as smp
import torch
from torch import nn

from geocl.errors import GeoclError
from geocl.models.encoders import timm_name

ARCHITECTURES = {"unet": smp.Unet, "deeplabv3plus": smp.DeepLabV3Plus}
#: Prefix of encoder weights in a pretrain checkpoint's state dict (``PretrainMethod.encoder.body``).
PRETRAIN_ENCODER_PREFIX = "encoder.body."


def build_segmenter(arch: str, encoder: str, in_chans: int, num_classes: int) -> nn.Module:
    """An smp model with a timm encoder, randomly initialised (no download).

    Args:
        arch: ``unet`` or ``deeplabv3plus``.
        encoder: timm (or smp ``tu-``) encoder name.
        in_chans: input bands.
        num_classes: output classes.
    """
    if arch not in ARCHITECTURES:
        raise GeoclError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}", key="--arch")
    return ARCHITECTURES[arch](
        encoder_name=f"tu-{timm_name(encoder)}", encoder_weights=None, in_channels=in_chans, classes=num_classes
    )


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint file's contents on the CPU.

    Raises:
        GeoclError: naming the file if it cannot be read.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise GeoclError(f"cannot read checkpoint: {error}", path=path) from None
    return checkpoint if isinstance(checkpoint, dict) else {}


def read_pretrain_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``geocl`` entry and encoder weights of a pretrain checkpoint (any method).

    Returns:
        ``{"meta": <checkpoint["geocl"]>, "encoder_state": {timm key: tensor}}``.

    Raises:
        GeoclError: if the file is not a geocl pretrain checkpoint.
    """
    checkpoint = read_checkpoint(path)
    meta = checkpoint.get("geocl")
    if meta is None or "state_dict" not in checkpoint:
        raise GeoclError("not a geocl pretrain checkpoint (no 'geocl' entry)", path=path)
    state = {
        key.removeprefix(PRETRAIN_ENCODER_PREFIX): value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(PRETRAIN_ENCODER_PREFIX)
    }
    if not state:
        raise GeoclError("checkpoint holds no encoder weights", path=path)
    return {"meta": meta, "encoder_state": state}


def load_pretrained_encoder(
    model: nn.Module, path: str | os.PathLike[str], in_chans: int, loaded: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Copy a pretrain checkpoint's encoder weights into an smp model's ``tu-`` encoder.

    Args:
        model: from :func:`build_segmenter`.
        path: a pretrain checkpoint.
        in_chans: band count of the data the model will see.
        loaded: :func:`read_pretrain_checkpoint` of ``path`` when the caller already
            read it (a checkpoint is large: read it once).

    Returns:
        The checkpoint's ``geocl`` entry.

    Raises:
        GeoclError: on a band-count or encoder mismatch, naming the checkpoint.
    """
    loaded = loaded if loaded is not None else read_pretrain_checkpoint(path)
    meta = loaded["meta"]
    if int(meta["in_chans"]) != in_chans:
        raise GeoclError(
            f"checkpoint was pretrained on {meta['in_chans']} bands but the data has {in_chans}", path=path
        )
    target = model.encoder.model
    own = target.state_dict()
    missing = [key for key in own if key not in loaded["encoder_state"]]
    if missing:
        raise GeoclError(
            f"checkpoint encoder {meta['encoder']!r} does not fit this model's encoder "
            f"({len(missing)} missing weights, e.g. {missing[0]})",
            path=path,
        )
    target.load_state_dict({key: loaded["encoder_state"][key] for key in own}, strict=True)
    return meta
