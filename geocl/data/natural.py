"""Natural images as training data: an image folder or CIFAR-10/100 python batches, opened by format.

Both datasets give the batch contract of :class:`~geocl.data.tile_dataset.TileDataset`
(see :mod:`geocl.data.natural_dataset`), so every method and the pretraining loop run on
them unchanged:

* :class:`~geocl.data.image_folder.ImageFolderDataset`: one sub-folder a class, read
  with torchvision's ``ImageFolder``;
* :class:`~geocl.data.cifar.CifarDataset`: the "python version" batches of CIFAR-10 or
  CIFAR-100 from a folder the user gives, read with torchvision's ``CIFAR10`` /
  ``CIFAR100``; nothing is downloaded.

:mod:`geocl.data.natural_toy` writes small data sets in both formats.
"""

from __future__ import annotations

import os
from typing import Any

from geocl.data.cifar import CifarDataset
from geocl.data.image_folder import ImageFolderDataset
from geocl.errors import InvalidInputError

#: ``data.format`` values read by this module (``tiles`` is :class:`TileDataset`'s).
NATURAL_FORMATS: tuple[str, ...] = ("image_folder", "cifar")


def open_natural_dataset(
    format: str,
    root: str | os.PathLike[str],
    split: str = "train",
    *,
    image_size: int = 0,
    val_fraction: float = 0.2,
    band_stats: dict[str, Any] | None = None,
) -> CifarDataset | ImageFolderDataset:
    """The dataset of a recipe's ``data.format`` (``image_folder`` or ``cifar``)."""
    if format == "cifar":
        return CifarDataset(root, split, image_size=image_size, band_stats=band_stats)
    if format == "image_folder":
        return ImageFolderDataset(root, split, image_size=image_size, val_fraction=val_fraction, band_stats=band_stats)
    raise InvalidInputError(
        f"unknown natural-image format {format!r}; choose from {', '.join(NATURAL_FORMATS)}", key="data.format"
    )
