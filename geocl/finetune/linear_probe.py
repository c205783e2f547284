"""The dense linear probe: a frozen encoder's multi-level features, upsampled, and one 1x1 classifier.

The frozen protocol of ``geocl compare --protocol frozen`` (the usual dense linear probe
of self-supervised segmentation work): every stage's feature map of the encoder is
upsampled (bilinear) to the input size and concatenated, standardised by a BatchNorm
without learnable parameters, and a 1x1 convolution gives the class logits. Only that
convolution trains; the encoder stays in eval mode with its weights and BatchNorm
statistics untouched, so the score measures the representation, not what finetuning
makes of it, and varies far less between seeds than full finetuning.

Computed in the cheap order: standardisation and the 1x1 convolution are per-pixel
linear maps and bilinear upsampling is a per-channel linear map whose weights sum to 1,
so they commute, and each stage is standardised and projected to the class logits at its
own resolution before the logits are upsampled and summed. The result equals the
upsample-first formula (tested); the upsampled 960-channel map of a ResNet-18, 2 GB of
floats for 8 tiles of 256 px, is never built. The one difference: the BatchNorm's
statistics are gathered on each stage's own grid, not on its upsampled copy.
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
        self.widths = list(self.encoder.out_channels[1:])  # stage 0 is the input itself
        self.norms = nn.ModuleList(nn.BatchNorm2d(width, affine=False) for width in self.widths)
        # one classifier over the concatenated channels: column block s reads stage s
        self.classifier = nn.Conv2d(sum(self.widths), num_classes, kernel_size=1)

    def stages(self, images: Tensor) -> list[Tensor]:
        """Every encoder stage's feature map ``[B, D_s, H_s, W_s]`` at its own resolution (no graph)."""
        # frozen, BatchNorm statistics included: eval mode whatever mode a trainer set
        # (Lightning restores each submodule's mode itself, so overriding train() is not enough)
        self.encoder.eval()
        with torch.no_grad():
            return list(self.encoder(images)[1:])

    def features(self, images: Tensor) -> Tensor:
        """Concatenated, upsampled features ``[B, D, H, W]`` of every encoder stage (no graph; for inspection)."""
        size = images.shape[-2:]
        return torch.cat([F.interpolate(stage, size=size, mode="bilinear", align_corners=False) for stage in self.stages(images)], 1)

    def forward(self, images: Tensor) -> Tensor:
        size = images.shape[-2:]
        weights = torch.split(self.classifier.weight, self.widths, dim=1)
        logits = self.classifier.bias[None, :, None, None]
        for stage, norm, weight in zip(self.stages(images), self.norms, weights, strict=True):
            projected = F.conv2d(norm(stage), weight)  # [B, num_classes, H_s, W_s]
            logits = logits + F.interpolate(projected, size=size, mode="bilinear", align_corners=False)
        return logits
