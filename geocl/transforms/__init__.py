"""Multi-band batch augmentations (kornia) and the view pipelines built from them."""

from geocl.transforms.augment import (
    MultiBandViewAugmentation,
    RandomBandBrightnessContrast,
    RandomRot90,
    TwoViews,
    blur_kernel_size,
    photometric_only,
)

__all__ = [
    "MultiBandViewAugmentation",
    "RandomBandBrightnessContrast",
    "RandomRot90",
    "TwoViews",
    "blur_kernel_size",
    "photometric_only",
]
