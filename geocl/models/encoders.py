"""Encoders looked up by name in timm's registry, built for any input band count.

A recipe says ``encoder: {name: resnet18}``; smp-style ``tu-resnet18`` names are
accepted too (the same timm model), so a checkpoint's encoder loads into a
segmentation-models-pytorch ``tu-`` encoder for finetuning.
"""

from __future__ import annotations

import difflib
from functools import cache

import timm
from torch import Tensor, nn

from geocl.errors import GeoclError


@cache
def _timm_names() -> frozenset[str]:
    return frozenset(timm.list_models())


def timm_name(name: str) -> str:
    """The timm model name behind an encoder name (``tu-`` prefix removed).

    Raises:
        GeoclError: if timm has no such model, with the closest names.
    """
    model = name.removeprefix("tu-")
    if model not in _timm_names():
        close = difflib.get_close_matches(model, sorted(_timm_names()), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise GeoclError(f"unknown encoder {name!r} (not a timm model){hint}", key="encoder.name")
    return model


class Encoder(nn.Module):
    """A timm backbone that exposes its last spatial feature map and a pooled vector.

    Args:
        name: timm model name (or smp ``tu-`` name).
        in_chans: number of input bands.
        pretrained: load timm's pretrained weights (off by default: nothing is
            downloaded unless asked for, and only 3-band weights exist).

    Attributes:
        body: the timm model without classifier and pooling.
        num_features: channels D of the feature map and of the pooled vector.
    """

    def __init__(self, name: str, in_chans: int, pretrained: bool = False) -> None:
        super().__init__()
        self.name = name
        self.in_chans = in_chans
        self.body = timm.create_model(
            timm_name(name), pretrained=pretrained, in_chans=in_chans, num_classes=0, global_pool=""
        )
        self.num_features: int = self.body.num_features

    def feature_map(self, images: Tensor) -> Tensor:
        """Last feature map: ``[B, C, H, W]`` -> ``[B, D, h, w]`` (h = H / 32 for a ResNet)."""
        features = self.body.forward_features(images)
        if features.ndim != 4:
            raise GeoclError(
                f"encoder {self.name!r} gives no spatial feature map (shape {tuple(features.shape)})",
                key="encoder.name",
            )
        return features

    @staticmethod
    def pool(features: Tensor) -> Tensor:
        """Global average pooling: ``[B, D, h, w]`` -> ``[B, D]``."""
        return features.mean(dim=(2, 3))

    def forward(self, images: Tensor) -> Tensor:
        """Pooled representation: ``[B, C, H, W]`` -> ``[B, D]``."""
        return self.pool(self.feature_map(images))


def create_encoder(name: str, in_chans: int, pretrained: bool = False) -> Encoder:
    """Build an :class:`Encoder` (see its arguments)."""
    if in_chans < 1:
        raise GeoclError(f"need at least one input band, got {in_chans}", key="encoder.in_chans")
    return Encoder(name, in_chans, pretrained)
