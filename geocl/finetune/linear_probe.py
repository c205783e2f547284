"""The dense linear probe: a frozen encoder's multi-level features, upsampled, and one 1x1 classifier.

The frozen protocol of ``geocl compare --protocol frozen`` (the usual dense linear probe
of self-supervised segmentation work): every stage's feature map of the encoder is
upsampled (bilinear) to the input size and concatenated, standardised by a BatchNorm
without learnable parameters, and a 1x1 convolution gives the class logits. Only that
convolution trains; the encoder stays in eval mode with its weights and BatchNorm
statistics untouched, so the score measures the representation, not what finetuning
makes of it, and varies far less between seeds than full finetuning.
"""

from __future__ import annotations

from typing import Any

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geocl.models.encoders import timm_arguments, timm_name


class DenseLinearProbe(nn.Module):
    """Frozen encoder + upsampled multi-level features + one 1x1 convolution.

    Args:
        encoder: timm encoder name (CNNs; smp's ``tu-`` encoder wraps it, so pretrain
            checkpoints load as for the other segmenters, into ``encoder.model``).
        in_chans: input bands.
        num_classes: output classes.
        encoder_args: timm arguments of the encoder.

    Shape:
        - Input: ``[B, C, H, W]``.
        - Output: ``[B, num_classes, H, W]`` logits.
    """

    def __init__(self, encoder: str, in_chans: int, num_classes: int, encoder_args: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.encoder = smp.encoders.get_encoder(
            f"tu-{timm_name(encoder)}", in_channels=in_chans, depth=5, weights=None, **timm_arguments(encoder_args)
        )
        self.encoder.requires_grad_(False)
        width = sum(self.encoder.out_channels[1:])  # stage 0 is the input itself
        self.norm = nn.BatchNorm2d(width, affine=False)
        self.classifier = nn.Conv2d(width, num_classes, kernel_size=1)

    def features(self, images: Tensor) -> Tensor:
        """Concatenated, upsampled features ``[B, D, H, W]`` of every encoder stage (no graph)."""
        # frozen, BatchNorm statistics included: eval mode whatever mode a trainer set
        # (Lightning restores each submodule's mode itself, so overriding train() is not enough)
        self.encoder.eval()
        with torch.no_grad():
            stages = self.encoder(images)[1:]
        size = images.shape[-2:]
        return torch.cat([F.interpolate(stage, size=size, mode="bilinear", align_corners=False) for stage in stages], 1)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.norm(self.features(images)))
