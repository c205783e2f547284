"""The contract shared by the natural-image datasets: a sample dict, metadata and normalisation.

Both :class:`~geocl.data.cifar.CifarDataset` and
:class:`~geocl.data.image_folder.ImageFolderDataset` give the batch contract of
:class:`~geocl.data.tile_dataset.TileDataset`, so every method and the pretraining loop
run on them unchanged: a sample is ``{"image": float32 [C, H, W] normalised with
per-channel statistics, "label": int, "index": int}``, and a dataset has ``band_count``,
``metadata["band_stats"]`` (``mean``/``std`` per channel, in pixel units 0-255, as
:class:`~geocl.data.normalize.BandNormalizer` reads them), ``classes`` (names) and
``num_classes``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from geocl.data.normalize import BandNormalizer
from geocl.data.stats import RunningBandStats
from geocl.errors import GeoclError, InvalidInputError

#: Splits a natural data set can be asked for.
NATURAL_SPLITS: tuple[str, ...] = ("train", "val", "test")

Sample = dict[str, Any]


def check_split(split: str) -> None:
    """Raise a :class:`GeoclError` (key ``data.split``) unless ``split`` is one of :data:`NATURAL_SPLITS`."""
    if split not in NATURAL_SPLITS:
        raise InvalidInputError(f"unknown split {split!r}; choose from {', '.join(NATURAL_SPLITS)}", key="data.split")


def stats_dict(running: RunningBandStats, where: Path) -> dict[str, Any]:
    """The accumulated train statistics as ``band_stats``; a GeoclError naming ``where`` if there were none."""
    if running.count == 0:
        raise GeoclError("no training images to compute channel statistics from", path=where)
    return running.result().to_dict()


class NaturalDataset(Dataset[Sample]):
    """What both natural-image datasets share: normalisation, class names and the metadata contract.

    Subclasses set ``self.root``, ``self.classes``, ``self.labels`` and implement
    :meth:`raw` (the ``[C, H, W]`` uint8 pixels of one sample).
    """

    root: Path
    classes: list[str]
    labels: np.ndarray
    transforms: Callable[[Sample], Sample] | None

    def _set_stats(self, band_stats: dict[str, Any], channels: int) -> None:
        if len(band_stats["mean"]) != channels:
            raise InvalidInputError(
                f"statistics have {len(band_stats['mean'])} channels but the images have {channels}", path=self.root
            )
        self.metadata: dict[str, Any] = {
            "band_stats": band_stats,
            "bands": channels,
            "nodata": None,
            "classes": list(self.classes),
        }
        # Natural images have no nodata: the normaliser is never given a nodata mask.
        self.normalizer = BandNormalizer(band_stats["mean"], band_stats["std"], nodata=math.nan)

    @property
    def band_count(self) -> int:
        """Number of image channels."""
        return int(self.metadata["bands"])

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def raw(self, item: int) -> np.ndarray:
        """The stored pixels of sample ``item``: uint8 ``[C, H, W]``."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: int) -> Sample:
        image = self.normalizer(self.raw(item))
        sample: Sample = {"image": torch.from_numpy(image), "label": int(self.labels[item]), "index": int(item)}
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample
