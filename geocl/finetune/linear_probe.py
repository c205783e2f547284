"""The dense linear probe: a frozen encoder's multi-level features, upsampled, and one 1x1 classifier.

The frozen protocol of ``geocl compare --protocol frozen`` (the usual dense linear probe
of self-supervised segmentation work): the feature maps of the encoder's stages are
upsampled (bilinear) to the input size and concatenated, standardised by a BatchNorm
without learnable parameters, and a 1x1 convolution gives the class logits. Only that
convolution trains; the encoder stays in eval mode with its weights and BatchNorm
statistics untouched, so the score measures the representation, not what finetuning
makes of it, and varies far less between seeds than full finetuning.

Which stages (``stages``; 1 = the stem at output stride 2 ... 5 = the deepest at stride
32): every one by default, a hypercolumn (Hariharan et al. 2015, arXiv:1411.5752). The
SSL literature's dense probes read the deepest map alone (e.g. MaskContrast,
arXiv:2102.06191), where the shallow stages cannot pass per-pixel spectra through a
random encoder as well as through a trained one. Measured on a 0.2 m urban tile set (a
60-step SimCLR checkpoint against random init, 6 label subsets of 5 %, paired): reading
stages 4-5 only widened the gap to random init by +0.6 points [0.0, +1.1] while every
row lost 6 points of mIoU (objects of 10-20 px vanish at strides 16-32); stages 3-5
narrowed it (-0.6 [-1.5, +0.3]). The shallow stages did not hide what pretraining
learnt there, so the default stays every stage; ``stages`` picks fewer (the option
``probe_stages``: ``geocl finetune --arch linear --probe-stages 4 5``, and the frozen rows
of ``geocl compare --protocol frozen --probe-stages 4 5``).

BatchNorm statistics stay the encoder's own: a random encoder keeps torch's defaults
(mean 0, variance 1, so its BatchNorms are the identity, and its scale does not matter
to the standardised probe). Re-estimating them on the train tiles was measured as well
(same rows): +0.9 [-0.3, +2.1] for random init, 0.0 for the pretrained encoder, so the
eval-mode statistics do not favour random init.

Computed in the cheap order: standardisation and the 1x1 convolution are per-pixel
linear maps and bilinear upsampling is a per-channel linear map whose weights sum to 1,
so they commute, and each stage is standardised and projected to the class logits at its
own resolution before the logits are upsampled and summed. The result equals the
upsample-first formula (tested); the upsampled 960-channel map of a ResNet-18, 2 GB of
floats for 8 tiles of 256 px, is never built. The one difference: the BatchNorm's
statistics are gathered on each stage's own grid, not on its upsampled copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geocl.errors import GeoclError
from geocl.models.encoders import timm_arguments, timm_name

#: The stages of an smp ``tu-`` encoder of depth 5 (ResNet: 1 = stem, 2-5 = layer1-layer4).
#: Stage ``i`` has output stride ``2**i`` (2 to 32 px a feature cell), less where the
#: encoder is dilated (timm ``output_stride``).
ENCODER_STAGES = (1, 2, 3, 4, 5)
#: The stages the probe reads unless told otherwise.
DEFAULT_STAGES: tuple[int, ...] = ENCODER_STAGES


def probe_stages(stages: Sequence[int] | None) -> tuple[int, ...]:
    """The validated, sorted encoder stages a probe reads (None: :data:`DEFAULT_STAGES`).

    Raises:
        GeoclError: no stage, or one the encoder does not have (key ``probe_stages``).
    """
    chosen = tuple(sorted({int(stage) for stage in (DEFAULT_STAGES if stages is None else stages)}))
    wrong = [stage for stage in chosen if stage not in ENCODER_STAGES]
    if not chosen or wrong:
        raise GeoclError(
            f"choose one or more of the encoder stages {', '.join(map(str, ENCODER_STAGES))} "
            f"(1: stem, stride 2; 5: deepest, stride 32), got {list(chosen)}",
            key="probe_stages",
        )
    return chosen


class DenseLinearProbe(nn.Module):
    """Frozen encoder + upsampled multi-level features + one 1x1 convolution.

    Args:
        encoder: timm encoder name (CNNs; smp's ``tu-`` encoder wraps it, so pretrain
            checkpoints load as for the other segmenters, into ``encoder.model``).
        in_chans: input bands.
        num_classes: output classes.
        encoder_args: timm arguments of the encoder.
        stages: the encoder stages read, 1 (stem, output stride 2) to 5 (deepest,
            stride 32); ResNet: 1 = stem, 2-5 = layer1-layer4. None: :data:`DEFAULT_STAGES`.

    Raises:
        GeoclError: a stage the encoder does not have.

    Shape:
        - Input: ``[B, C, H, W]``.
        - Output: ``[B, num_classes, H, W]`` logits.
    """

    def __init__(
        self,
        encoder: str,
        in_chans: int,
        num_classes: int,
        encoder_args: dict[str, Any] | None = None,
        stages: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.read = probe_stages(stages)
        self.encoder = smp.encoders.get_encoder(
            f"tu-{timm_name(encoder)}", in_channels=in_chans, depth=5, weights=None, **timm_arguments(encoder_args)
        )
        self.encoder.requires_grad_(False)
        # smp's feature 0 is the input itself, feature i is stage i
        self.widths = [self.encoder.out_channels[i] for i in self.read]
        self.norms = nn.ModuleList(nn.BatchNorm2d(width, affine=False) for width in self.widths)
        # one classifier over the concatenated channels: column block s reads stage s
        self.classifier = nn.Conv2d(sum(self.widths), num_classes, kernel_size=1)

    def stages(self, images: Tensor) -> list[Tensor]:
        """The read stages' feature maps ``[B, D_s, H_s, W_s]`` at their own resolution (no graph)."""
        # frozen, BatchNorm statistics included: eval mode whatever mode a trainer set
        # (Lightning restores each submodule's mode itself, so overriding train() is not enough)
        self.encoder.eval()
        with torch.no_grad():
            features = self.encoder(images)
        return [features[i] for i in self.read]

    def features(self, images: Tensor) -> Tensor:
        """Concatenated, upsampled features ``[B, D, H, W]`` of the read stages (no graph; for inspection)."""
        size = images.shape[-2:]
        return torch.cat(
            [F.interpolate(stage, size=size, mode="bilinear", align_corners=False) for stage in self.stages(images)], 1
        )

    def forward(self, images: Tensor) -> Tensor:
        size = images.shape[-2:]
        weights = torch.split(self.classifier.weight, self.widths, dim=1)
        bias = self.classifier.bias
        assert bias is not None  # the classifier is built with a bias
        logits = bias[None, :, None, None]
        for stage, norm, weight in zip(self.stages(images), self.norms, weights, strict=True):
            projected = F.conv2d(norm(stage), weight)  # [B, num_classes, H_s, W_s]
            logits = logits + F.interpolate(projected, size=size, mode="bilinear", align_corners=False)
        return logits
