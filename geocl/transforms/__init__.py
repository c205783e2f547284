"""Multi-band batch augmentations (kornia) and the view pipelines built from them."""

from geocl.transforms.augment import (
    MultiBandViewAugmentation,
    RandomBandBrightnessContrast,
    RandomRot90,
    TwoViews,
    blur_kernel_size,
    photometric_only,
)
from geocl.transforms.patchmix import PatchMix

__all__ = [
    "MultiBandViewAugmentation",
    "PatchMix",
    "RandomBandBrightnessContrast",
    "RandomRot90",
    "TwoViews",
    "blur_kernel_size",
    "photometric_only",
]
