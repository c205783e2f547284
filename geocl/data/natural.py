"""Natural-image adapters: an image folder and CIFAR-10/100 python batches, as training data.

Both give the batch contract of :class:`~geocl.data.tile_dataset.TileDataset`, so every
method and the pretraining loop run on them unchanged: a sample is ``{"image": float32
[C, H, W] normalised with per-channel statistics, "label": int, "index": int}``, and a
dataset has ``band_count``, ``metadata["band_stats"]`` (``mean``/``std`` per channel, in
pixel units 0-255, as :class:`~geocl.data.normalize.BandNormalizer` reads them),
``classes`` (names) and ``num_classes``.

* :class:`ImageFolderDataset`: one sub-folder a class, read with torchvision's
  ``ImageFolder``. Splits are the sub-folders ``train/``, ``val/`` (and ``test/``) when
  ``train/`` and ``val/`` exist; otherwise the class folders sit at the top and ``val`` is
  a seeded, stratified ``val_fraction`` of each class (``train`` the rest).
* :class:`CifarDataset`: the "python version" archives of CIFAR-10 (``data_batch_1..5``,
  ``test_batch``, ``batches.meta``) or CIFAR-100 (``train``, ``test``, ``meta``; labels
  ``fine_labels``), from a folder the user gives; nothing is downloaded. CIFAR has no
  validation split: ``val`` and ``test`` both read the test batch, the set kNN and
  linear-probe results are reported on.

Statistics are those of the train split, accumulated image by image (or batch file by
batch file) with :class:`~geocl.data.stats.RunningBandStats`; pass ``band_stats`` to
normalise with other statistics instead, e.g. those stored in a pretraining checkpoint.

:func:`write_toy_cifar` and :func:`write_toy_image_folder` make small data sets in the
exact on-disk formats, with class-dependent colour and stripes so that an encoder
pretrained on them beats chance; tests, the examples and ``geocl make-natural`` use them.
"""

from __future__ import annotations

import colorsys
import math
import os
import pickle
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from geocl.data.normalize import BandNormalizer
from geocl.data.stats import RunningBandStats
from geocl.errors import GeoclError

#: ``data.format`` values read by this module (``tiles`` is :class:`TileDataset`'s).
NATURAL_FORMATS: tuple[str, ...] = ("image_folder", "cifar")
#: Splits a natural data set can be asked for.
NATURAL_SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Side of a CIFAR image (px) and its channels.
CIFAR_SIZE = 32
CIFAR_CHANNELS = 3

Sample = dict[str, Any]


# ------------------------------------------------------------------ shared


def _check_split(split: str) -> None:
    if split not in NATURAL_SPLITS:
        raise GeoclError(f"unknown split {split!r}; choose from {', '.join(NATURAL_SPLITS)}", key="data.split")


def _stats_dict(running: RunningBandStats, where: Path) -> dict[str, Any]:
    if running.count == 0:
        raise GeoclError("no training images to compute channel statistics from", path=where)
    return running.result().to_dict()


class _NaturalDataset(Dataset[Sample]):
    """What both adapters share: normalisation, class names and the metadata contract.

    Subclasses set ``self.root``, ``self.classes``, ``self.labels`` and implement
    :meth:`raw` (the ``[C, H, W]`` uint8 pixels of one sample).
    """

    root: Path
    classes: list[str]
    labels: np.ndarray
    transforms: Callable[[Sample], Sample] | None

    def _set_stats(self, band_stats: dict[str, Any], channels: int) -> None:
        if len(band_stats["mean"]) != channels:
            raise GeoclError(
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


# ------------------------------------------------------------------ CIFAR


def _load_pickle(path: Path) -> dict[str, Any]:
    """A CIFAR pickle as a dict with text keys (Python 2 files give bytes keys otherwise)."""
    if not path.is_file():
        raise GeoclError("CIFAR batch file not found", path=path)
    try:
        with path.open("rb") as handle:
            # latin1 reads the Python 2 strings of the original files (and numpy arrays) as
            # they were written; it is what the CIFAR page recommends for Python 3.
            data = pickle.load(handle, encoding="latin1")  # noqa: S301 - the user's own data set
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as error:
        raise GeoclError(f"corrupt CIFAR batch file (not a readable pickle: {error})", path=path) from None
    if not isinstance(data, dict):
        raise GeoclError(f"corrupt CIFAR batch file: holds {type(data).__name__}, not a dict", path=path)
    return {key.decode("latin1") if isinstance(key, bytes) else str(key): value for key, value in data.items()}


def _batch_number(path: Path) -> int:
    match = re.search(r"(\d+)$", path.name)
    return int(match.group(1)) if match else 0


def _find_cifar_root(root: Path) -> Path:
    """The folder holding the batch files: ``root`` or the archive's own folder inside it."""
    if not root.is_dir():
        raise GeoclError("CIFAR folder not found", path=root)
    for candidate in (root, root / "cifar-10-batches-py", root / "cifar-100-python"):
        if (candidate / "data_batch_1").exists() or (candidate / "train").is_file():
            return candidate
    raise GeoclError(
        "not a CIFAR python folder: expected data_batch_1..5 and test_batch (CIFAR-10) "
        "or train and test (CIFAR-100), as in the 'python version' archives",
        path=root,
    )


def cifar_files(root: str | os.PathLike[str], split: str) -> list[Path]:
    """The batch files of a split (``val`` and ``test`` both read the test batch).

    Raises:
        GeoclError: naming the folder when it holds no CIFAR batches.
    """
    _check_split(split)
    folder = _find_cifar_root(Path(root))
    if (folder / "data_batch_1").exists():
        if split == "train":
            return sorted(folder.glob("data_batch_*"), key=_batch_number)
        return [folder / "test_batch"]
    return [folder / ("train" if split == "train" else "test")]


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 ``[N, 3, 32, 32]``, labels int64 ``[N]``) of one batch file."""
    batch = _load_pickle(path)
    key = "labels" if "labels" in batch else "fine_labels" if "fine_labels" in batch else None
    if key is None or "data" not in batch:
        raise GeoclError(
            f"corrupt CIFAR batch file: needs 'data' and 'labels' or 'fine_labels', has {sorted(batch)}", path=path
        )
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[key], dtype=np.int64)
    pixels = CIFAR_CHANNELS * CIFAR_SIZE * CIFAR_SIZE
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels or len(labels) != len(data):
        raise GeoclError(
            f"corrupt CIFAR batch file: 'data' is {data.dtype} {data.shape} with {len(labels)} labels "
            f"(expected uint8 [N, {pixels}] and N labels)",
            path=path,
        )
    # Each row is the red plane, then green, then blue, each row-major.
    return data.reshape(-1, CIFAR_CHANNELS, CIFAR_SIZE, CIFAR_SIZE), labels


def cifar_class_names(root: str | os.PathLike[str], labels: np.ndarray | None = None) -> list[str]:
    """Class names from ``batches.meta`` (CIFAR-10) or ``meta`` (CIFAR-100, fine labels).

    Without a meta file the names are the label numbers (``"0"``, ``"1"``, ...) up to the
    largest label in ``labels``.
    """
    folder = _find_cifar_root(Path(root))
    for name, key in (("batches.meta", "label_names"), ("meta", "fine_label_names")):
        path = folder / name
        if path.exists():
            meta = _load_pickle(path)
            if key not in meta:
                raise GeoclError(f"corrupt CIFAR meta file: no {key!r}", path=path)
            return [item.decode() if isinstance(item, bytes) else str(item) for item in meta[key]]
    count = int(labels.max()) + 1 if labels is not None and len(labels) else 0
    return [str(index) for index in range(count)]


def cifar_band_stats(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Per-channel statistics of the CIFAR train batches, one batch file at a time."""
    running = RunningBandStats(CIFAR_CHANNELS)
    for path in cifar_files(root, "train"):
        images, _ = _read_batch(path)
        running.update(images.transpose(1, 0, 2, 3).reshape(CIFAR_CHANNELS, -1))
    return _stats_dict(running, Path(root))


class CifarDataset(_NaturalDataset):
    """CIFAR-10 or CIFAR-100 from the python batch files in ``root``.

    Args:
        root: the extracted ``cifar-10-batches-py`` / ``cifar-100-python`` folder (or its parent).
        split: ``train`` (the data batches) or ``val``/``test`` (the test batch).
        image_size: resize images to this side (px; 0 = keep 32).
        band_stats: normalise with these statistics instead of the train split's.
        transforms: applied to each sample dict after normalisation.

    Raises:
        GeoclError: naming the folder or file when it is missing or corrupt.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        *,
        image_size: int = 0,
        band_stats: dict[str, Any] | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        batches = [_read_batch(path) for path in cifar_files(self.root, split)]
        self.images = np.concatenate([images for images, _ in batches])
        self.labels = np.concatenate([labels for _, labels in batches])
        self.classes = cifar_class_names(self.root, self.labels)
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise GeoclError(
                f"labels run from {self.labels.min()} to {self.labels.max()} but there are {len(self.classes)} classes",
                path=self.root,
            )
        self.image_size = image_size
        self._resize = v2.Resize((image_size, image_size), antialias=True) if image_size else None
        self._set_stats(band_stats if band_stats is not None else cifar_band_stats(self.root), CIFAR_CHANNELS)

    def raw(self, item: int) -> np.ndarray:
        image = self.images[item]
        if self._resize is None:
            return image
        return self._resize(torch.from_numpy(image)).numpy()


# ------------------------------------------------------------------ image folder


def _open_image(path: str) -> Image.Image:
    """An image file as RGB (grey, palette and alpha images too), or a GeoclError naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise GeoclError(f"cannot read image ({error})", path=path) from None


def _image_folder(folder: Path) -> ImageFolder:
    try:
        return ImageFolder(str(folder), loader=_open_image)
    except FileNotFoundError as error:
        # torchvision says "Couldn't find any class folder" or "Found no valid file for the classes".
        raise GeoclError(f"not an image folder (one sub-folder of images a class): {error}", path=folder) from None


def stratified_split(labels: Sequence[int], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/val indices with ``val_fraction`` of every class in val.

    Each class is shuffled with its own generator (``seed`` and the class), so adding
    images of one class leaves the other classes' split alone. A class with n images
    puts ``round(n * val_fraction)`` of them in val, at least one when ``val_fraction > 0``
    and ``n >= 2``, and always keeps one for train.

    Returns:
        (train indices, val indices), each sorted.
    """
    labels = np.asarray(labels)
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        order = np.random.default_rng([seed, int(label)]).permutation(members)
        count = round(len(members) * val_fraction)
        if val_fraction > 0 and len(members) >= 2:
            count = max(1, count)
        count = min(count, len(members) - 1)
        val.append(order[:count])
        train.append(order[count:])
    return np.sort(np.concatenate(train)).astype(np.int64), np.sort(np.concatenate(val)).astype(np.int64)


class ImageFolderDataset(_NaturalDataset):
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
        _check_split(split)
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        self.image_size = image_size
        if not self.root.is_dir():
            raise GeoclError("image folder not found", path=self.root)
        self.split_folders = (self.root / "train").is_dir() and (self.root / "val").is_dir()
        train_folder, train_rows = self._split_rows("train", val_fraction, seed)
        folder, rows = (train_folder, train_rows) if split == "train" else self._split_rows(split, val_fraction, seed)
        if folder.classes != train_folder.classes:
            raise GeoclError(
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
                raise GeoclError(f"no {split}/ sub-folder for split {split!r}", path=self.root)
            found = _image_folder(folder)
            return found, np.arange(len(found.samples))
        if split == "test":
            raise GeoclError("no test split: the folder has no train/, val/ and test/ sub-folders", path=self.root)
        if split == "val" and val_fraction <= 0:
            raise GeoclError("no val split: no val/ sub-folder and data.val_fraction is 0", path=self.root)
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
        return _stats_dict(running, self.root)

    def raw(self, item: int) -> np.ndarray:
        path = self.samples[item][0]
        pixels = self._load(path)
        if self._shape is not None and pixels.shape != self._shape:
            # The default collate would fail later with a message about tensor sizes.
            raise GeoclError(
                f"image is {pixels.shape[2]}x{pixels.shape[1]} px but the first one is "
                f"{self._shape[2]}x{self._shape[1]}; set data.image_size to resize them all",
                path=path,
            )
        return pixels


# ------------------------------------------------------------------ opening by format


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
    raise GeoclError(f"unknown natural-image format {format!r}; choose from {', '.join(NATURAL_FORMATS)}", key="data.format")


# ------------------------------------------------------------------ toy data


def toy_images(labels: np.ndarray, num_classes: int, size: int, seed: int) -> np.ndarray:
    """Images whose class shows in their colour and stripes: uint8 ``[N, 3, size, size]``.

    Class c has its own stripe angle and frequency and leans towards its own hue (c /
    num_classes around the colour wheel); each image draws its hue around that one, its
    stripe phase, a brightness factor, a distracting blob and pixel noise, so images of
    one class differ and a random encoder does not separate the classes perfectly.
    """
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64) / size
    images = np.empty((len(labels), 3, size, size), dtype=np.uint8)
    for index, label in enumerate(np.asarray(labels)):
        hue = (label / num_classes + rng.normal(0.0, 0.5 / num_classes)) % 1.0
        colour = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.3, 0.9), 0.9))
        angle = math.pi * ((label * 3) % num_classes) / num_classes + rng.normal(0.0, 0.15)
        frequency = 2 + label % 3
        phase = rng.uniform(0, 2 * math.pi)
        stripes = 0.5 + 0.5 * np.sin(2 * math.pi * frequency * (cols * math.cos(angle) + rows * math.sin(angle)) + phase)
        light = rng.uniform(0.5, 1.0)
        pixels = colour[:, None, None] * (0.5 + 0.5 * stripes)[None] * light
        centre = rng.uniform(0, 1, size=2)
        blob = np.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / (2 * rng.uniform(0.05, 0.2) ** 2))
        pixels = pixels * (1 - blob) + rng.uniform(0, 1, size=3)[:, None, None] * blob
        pixels += rng.normal(0.0, 0.12, size=pixels.shape)
        images[index] = np.clip(np.round(pixels * 255), 0, 255).astype(np.uint8)
    return images


def _toy_labels(num_classes: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(num_classes), per_class))


def write_toy_cifar(
    out: str | os.PathLike[str],
    *,
    num_classes: int = 10,
    per_class: int = 50,
    test_per_class: int = 10,
    train_batches: int = 5,
    seed: int = 0,
    variant: str = "cifar10",
) -> Path:
    """Write a toy data set as CIFAR python batches (the exact keys, dtypes and layout).

    CIFAR-10 layout: ``data_batch_1..train_batches``, ``test_batch``, ``batches.meta``
    (``label_names``); CIFAR-100 layout (``variant="cifar100"``): ``train``, ``test``,
    ``meta`` (``fine_label_names``, ``coarse_label_names``) with ``fine_labels`` and
    ``coarse_labels`` (here: fine label // 5). ``data`` is uint8 ``[N, 3072]``: the red,
    green and blue 32x32 planes of each image, row-major.

    Returns:
        ``out``.
    """
    if variant not in ("cifar10", "cifar100"):
        raise GeoclError(f"unknown CIFAR variant {variant!r}; choose cifar10 or cifar100", key="variant")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"class{index}" for index in range(num_classes)]

    def batch(labels: np.ndarray, label_text: str, image_seed: int) -> dict[str, Any]:
        images = toy_images(labels, num_classes, CIFAR_SIZE, image_seed)
        content: dict[str, Any] = {
            "batch_label": label_text,
            "data": images.reshape(len(images), -1),
            "filenames": [f"toy_{image_seed}_{index:05d}.png" for index in range(len(images))],
        }
        if variant == "cifar10":
            content["labels"] = [int(label) for label in labels]
        else:
            content["fine_labels"] = [int(label) for label in labels]
            content["coarse_labels"] = [int(label) // 5 for label in labels]
        return content

    def dump(name: str, content: dict[str, Any]) -> None:
        with (out / name).open("wb") as handle:
            pickle.dump(content, handle, protocol=2)

    train = _toy_labels(num_classes, per_class, rng)
    test = _toy_labels(num_classes, test_per_class, rng)
    if variant == "cifar10":
        for number, labels in enumerate(np.array_split(train, train_batches), start=1):
            dump(f"data_batch_{number}", batch(labels, f"training batch {number} of {train_batches}", seed * 100 + number))
        dump("test_batch", batch(test, "testing batch 1 of 1", seed * 100))
        dump("batches.meta", {"num_cases_per_batch": math.ceil(len(train) / train_batches), "label_names": names, "num_vis": 3072})
    else:
        dump("train", batch(train, "training batch 1 of 1", seed * 100 + 1))
        dump("test", batch(test, "testing batch 1 of 1", seed * 100))
        coarse = [f"superclass{index}" for index in range((num_classes + 4) // 5)]
        dump("meta", {"fine_label_names": names, "coarse_label_names": coarse})
    return out


def write_toy_image_folder(
    out: str | os.PathLike[str],
    classes: Sequence[str] | int = 4,
    per_class: int = 10,
    size: int = 32,
    seed: int = 0,
    *,
    val_per_class: int = 0,
    suffix: str = ".png",
) -> Path:
    """Write a toy image folder: ``out/<class>/<n>.png`` (or ``train/`` and ``val/`` inside).

    Args:
        out: the folder.
        classes: class names, or a count (names ``class0``, ``class1``, ...).
        per_class: (train) images per class.
        size: image side (px).
        seed: seed of the pixels.
        val_per_class: with > 0, write ``train/<class>/`` and ``val/<class>/`` instead.
        suffix: image file type (``.png`` keeps pixels exact; ``.jpg`` does not).

    Returns:
        ``out``.
    """
    out = Path(out)
    names = [f"class{index}" for index in range(classes)] if isinstance(classes, int) else list(classes)
    splits = {"train": per_class, "val": val_per_class} if val_per_class > 0 else {"": per_class}
    for offset, (split, count) in enumerate(splits.items()):
        labels = np.repeat(np.arange(len(names)), count)
        images = toy_images(labels, len(names), size, seed * 10 + offset)
        for index, (label, image) in enumerate(zip(labels, images, strict=True)):
            folder = out / split / names[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{index:05d}{suffix}")
    return out
