"""Natural images in class sub-folders (torchvision ``ImageFolder``), as training data.

One sub-folder a class, images read as RGB. Splits are the sub-folders ``train/``,
``val/`` (and ``test/``) when ``train/`` and ``val/`` exist; otherwise the class folders
sit at the top and ``val`` is a seeded, stratified ``val_fraction`` of each class
(``train`` the rest). Statistics are those of the train split, accumulated image by
image; pass ``band_stats`` to normalise with other statistics instead, e.g. those
stored in a pretraining checkpoint. Samples follow
:class:`~geocl.data.natural_dataset.NaturalDataset`'s contract.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from geocl.data.natural_dataset import NaturalDataset, Sample, check_split, stats_dict
from geocl.data.stats import RunningBandStats
from geocl.errors import InvalidInputError, MissingInputError


def _open_image(path: str) -> Image.Image:
    """An image file as RGB (grey, palette and alpha images too), or a GeoclError naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise InvalidInputError(f"cannot read image ({error})", path=path) from None


def _image_folder(folder: Path) -> ImageFolder:
    try:
        return ImageFolder(str(folder), loader=_open_image)
    except FileNotFoundError as error:
        # torchvision says "Couldn't find any class folder" or "Found no valid file for the classes".
        raise MissingInputError(
            f"not an image folder (one sub-folder of images a class): {error}", path=folder
        ) from None


def stratified_split(labels: Sequence[int], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/val indices with ``val_fraction`` of every class in val.

    Each class is shuffled with its own generator (``seed`` and the class), so adding
    images of one class leaves the other classes' split alone. A class with n images
    puts ``round(n * val_fraction)`` of them in val, at least one when ``val_fraction > 0``
    and ``n >= 2``, and always keeps one for train.

    Returns:
        (train indices, val indices), each sorted.
    """
    values = np.asarray(labels)
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for label in np.unique(values):
        members = np.flatnonzero(values == label)
        order = np.random.default_rng([seed, int(label)]).permutation(members)
        count = round(len(members) * val_fraction)
        if val_fraction > 0 and len(members) >= 2:
            count = max(1, count)
        count = min(count, len(members) - 1)
        val.append(order[:count])
        train.append(order[count:])
    return np.sort(np.concatenate(train)).astype(np.int64), np.sort(np.concatenate(val)).astype(np.int64)


class ImageFolderDataset(NaturalDataset):
    """Images in class sub-folders (torchvision ``ImageFolder``), read as RGB.

    Args:
        root: the folder (``train/`` and ``val/`` inside it, or the class folders).
        split: ``train``, ``val`` or ``test`` (``test`` needs a ``test/`` sub-folder).
        image_size: resize the shorter side to this and centre-crop a square (px);
            0 = use the images as stored, which must then all have one size.
        val_fraction: share of each class held out as ``val`` when there is no ``val/``.
        seed: seed of that split.
        band_stats: normalise with these statistics instead of the train split's.
        transforms: applied to each sample dict after normalisation.

    Raises:
        GeoclError: naming the folder or image file when it is missing or unreadable.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        *,
        image_size: int = 0,
        val_fraction: float = 0.2,
        seed: int = 0,
        band_stats: dict[str, Any] | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
    ) -> None:
        check_split(split)
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        self.image_size = image_size
        if not self.root.is_dir():
            raise MissingInputError("image folder not found", path=self.root)
        self.split_folders = (self.root / "train").is_dir() and (self.root / "val").is_dir()
        train_folder, train_rows = self._split_rows("train", val_fraction, seed)
        folder, rows = (train_folder, train_rows) if split == "train" else self._split_rows(split, val_fraction, seed)
        if folder.classes != train_folder.classes:
            raise InvalidInputError(
                f"class folders differ from train/'s ({', '.join(train_folder.classes)})", path=folder.root
            )
        self.classes = list(folder.classes)
        self.samples = [folder.samples[row] for row in rows]
        self.labels = np.array([label for _, label in self.samples], dtype=np.int64)
        resize: list[Any] = [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)] if image_size else []
        self._resize = v2.Compose(resize) if resize else None
        self._shape: tuple[int, ...] | None = None
        self._shape = self.raw(0).shape if self.samples else None
        if band_stats is None:
            band_stats = self._train_stats(train_folder, train_rows)
        self._set_stats(band_stats, 3)

    def _split_rows(self, split: str, val_fraction: float, seed: int) -> tuple[ImageFolder, np.ndarray]:
        """(the ImageFolder holding ``split``, its sample rows in the split)."""
        if self.split_folders:
            folder = self.root / split
            if not folder.is_dir():
                raise MissingInputError(f"no {split}/ sub-folder for split {split!r}", path=self.root)
            found = _image_folder(folder)
            return found, np.arange(len(found.samples))
        if split == "test":
            raise MissingInputError(
                "no test split: the folder has no train/, val/ and test/ sub-folders", path=self.root
            )
        if split == "val" and val_fraction <= 0:
            raise InvalidInputError("no val split: no val/ sub-folder and data.val_fraction is 0", path=self.root)
        found = _image_folder(self.root)
        train, val = stratified_split(found.targets, val_fraction, seed)
        return found, train if split == "train" else val

    def _load(self, path: str) -> np.ndarray:
        image = _open_image(path)
        if self._resize is not None:
            image = self._resize(image)
        return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)

    def _train_stats(self, folder: ImageFolder, rows: np.ndarray) -> dict[str, Any]:
        running = RunningBandStats(3)
        for row in rows:
            pixels = self._load(folder.samples[row][0])
            running.update(pixels.reshape(3, -1))
        return stats_dict(running, self.root)

    def raw(self, item: int) -> np.ndarray:
        path = self.samples[item][0]
        pixels = self._load(path)
        if self._shape is not None and pixels.shape != self._shape:
            # The default collate would fail later with a message about tensor sizes.
            raise InvalidInputError(
                f"image is {pixels.shape[2]}x{pixels.shape[1]} px but the first one is "
                f"{self._shape[2]}x{self._shape[1]}; set data.image_size to resize them all",
                path=path,
            )
        return pixels
