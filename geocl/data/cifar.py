"""CIFAR-10/100 "python version" batches from a local folder, read by torchvision, as training data.

The folder holds CIFAR-10's ``data_batch_1..N``, ``test_batch`` and ``batches.meta`` or
CIFAR-100's ``train``, ``test`` and ``meta`` (labels ``fine_labels``), as the
official archives extract them; it may also be the folder the archive was extracted
into. Nothing is downloaded. CIFAR has no validation split: ``val`` and ``test`` both
read the test batch, the set kNN and linear-probe results are reported on.

Each batch file is read by torchvision's :class:`~torchvision.datasets.CIFAR10` /
:class:`~torchvision.datasets.CIFAR100` (same pickle layout, same pixel order), with
three changes made by :class:`_LocalCifar10`: files are checked to exist rather than
against the md5 sums of the official archive (geocl's toy batches from
:func:`~geocl.data.natural_toy.write_toy_cifar` and users' re-packed folders are not
those bytes), a CIFAR-10 folder may hold any number of data batches, and the meta file
(class names) may be missing. Files are read one at a time so that a missing or corrupt
one is named in a one-line :class:`~geocl.errors.GeoclError`.

Statistics are those of the train split, accumulated batch file by batch file with
:class:`~geocl.data.stats.RunningBandStats`; pass ``band_stats`` to normalise with other
statistics instead, e.g. those stored in a pretraining checkpoint.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.transforms import v2

from geocl.data.natural_dataset import NaturalDataset, Sample, check_split, stats_dict
from geocl.data.stats import RunningBandStats
from geocl.errors import GeoclError, InvalidInputError, MissingInputError

#: Side of a CIFAR image (px) and its channels.
CIFAR_SIZE = 32
CIFAR_CHANNELS = 3

# What torchvision's reader raises on a file that is not a CIFAR pickle: the unpickler's
# errors, and those of indexing and stacking what came out of it.
_UNREADABLE = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError)


class _LocalCifar10(CIFAR10):
    """torchvision's CIFAR-10 reader on one batch file of a folder geocl was given.

    ``train_list`` names that one file with md5 ``None``, which makes torchvision's
    ``check_integrity`` an existence check; ``base_folder`` is empty because the caller
    has already found the folder (the archive's own or its parent). ``classes`` is
    ``None`` when the folder has no meta file.

    Args:
        folder: the folder holding the batch files.
        name: the batch file's name in it.
    """

    base_folder = ""
    # torchvision's attributes, as this reader sets them (annotations only: the class
    # values stay torchvision's, e.g. CIFAR-100's ``meta``)
    meta: dict[str, Any]
    classes: list[str] | None

    def __init__(self, folder: Path, name: str) -> None:
        self.train_list: list[list[str | None]] = [[name, None]]
        self.test_list: list[list[str | None]] = []
        self.meta = {**type(self).meta, "md5": None}
        super().__init__(str(folder), train=True, download=False)

    def _load_meta(self) -> None:
        path = Path(self.root, self.base_folder, self.meta["filename"])
        if not path.exists():
            self.classes = None  # names are then the label numbers
            return
        try:
            super()._load_meta()
        except KeyError:
            raise InvalidInputError(f"corrupt CIFAR meta file: no {self.meta['key']!r}", path=path) from None
        except _UNREADABLE as error:
            raise InvalidInputError(f"corrupt CIFAR meta file (not a readable pickle: {error})", path=path) from None
        assert self.classes is not None  # torchvision's _load_meta set them from the file
        self.classes = [item.decode() if isinstance(item, bytes) else str(item) for item in self.classes]


class _LocalCifar100(_LocalCifar10, CIFAR100):
    """The same on CIFAR-100's layout: meta file ``meta``, class names ``fine_label_names``."""


class _Batch(NamedTuple):
    """One batch file: images uint8 ``[N, 3, 32, 32]``, labels int64 ``[N]``, class names or None."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str] | None


def _batch_number(path: Path) -> int:
    match = re.search(r"(\d+)$", path.name)
    return int(match.group(1)) if match else 0


def _find_cifar_root(root: Path) -> Path:
    """The folder holding the batch files: ``root`` or the archive's own folder inside it."""
    if not root.is_dir():
        raise MissingInputError("CIFAR folder not found", path=root)
    for candidate in (root, root / CIFAR10.base_folder, root / CIFAR100.base_folder):
        if (candidate / "data_batch_1").exists() or (candidate / "train").is_file():
            return candidate
    raise MissingInputError(
        "not a CIFAR python folder: expected data_batch_1..5 and test_batch (CIFAR-10) "
        "or train and test (CIFAR-100), as in the 'python version' archives",
        path=root,
    )


def cifar_files(root: str | os.PathLike[str], split: str) -> list[Path]:
    """The batch files of a split (``val`` and ``test`` both read the test batch).

    Raises:
        GeoclError: naming the folder when it holds no CIFAR batches.
    """
    check_split(split)
    folder = _find_cifar_root(Path(root))
    if (folder / "data_batch_1").exists():
        if split == "train":
            return sorted(folder.glob("data_batch_*"), key=_batch_number)
        return [folder / "test_batch"]
    return [folder / ("train" if split == "train" else "test")]


def _read_batch(path: Path) -> _Batch:
    """Read one batch file (of a folder :func:`cifar_files` listed) with torchvision.

    Raises:
        GeoclError: naming the file when it is missing or not a CIFAR batch.
    """
    if not path.is_file():
        raise MissingInputError("CIFAR batch file not found", path=path)
    reader = _LocalCifar10 if (path.parent / "data_batch_1").exists() else _LocalCifar100
    try:
        batch = reader(path.parent, path.name)
    except GeoclError:  # the meta file's own error (an InvalidInputError is also a ValueError)
        raise
    except KeyError as error:
        raise InvalidInputError(
            f"corrupt CIFAR batch file: needs 'data' and 'labels' or 'fine_labels', has no {error}", path=path
        ) from None
    except _UNREADABLE as error:
        raise InvalidInputError(f"corrupt CIFAR batch file (not a readable pickle: {error})", path=path) from None
    labels = np.asarray(batch.targets, dtype=np.int64)
    # torchvision keeps whatever dtype 'data' had and only reshapes it to [N, 32, 32, 3].
    if batch.data.dtype != np.uint8 or len(labels) != len(batch.data):
        raise InvalidInputError(
            f"corrupt CIFAR batch file: 'data' gives {len(batch.data)} {batch.data.dtype} images for {len(labels)} "
            f"labels (expected uint8 [N, {CIFAR_CHANNELS * CIFAR_SIZE * CIFAR_SIZE}] and N labels)",
            path=path,
        )
    # torchvision's [N, H, W, C] is a view of the file's [N, C, H, W] rows: transposing back copies nothing.
    return _Batch(batch.data.transpose(0, 3, 1, 2), labels, batch.classes)


def _band_stats(images: Iterable[np.ndarray], where: Path) -> dict[str, Any]:
    """Per-channel statistics of ``[N, 3, H, W]`` image arrays, one array (batch file) at a time."""
    running = RunningBandStats(CIFAR_CHANNELS)
    for batch in images:
        running.update(batch.transpose(1, 0, 2, 3).reshape(CIFAR_CHANNELS, -1))
    return stats_dict(running, where)


def cifar_band_stats(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Per-channel statistics of the CIFAR train batches, one batch file at a time."""
    return _band_stats((_read_batch(path).images for path in cifar_files(root, "train")), Path(root))


class CifarDataset(NaturalDataset):
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
        self.images = np.concatenate([batch.images for batch in batches])
        self.labels = np.concatenate([batch.labels for batch in batches])
        names = batches[0].classes
        if names is None:  # no meta file: the label numbers up to the largest label
            names = [str(index) for index in range(int(self.labels.max()) + 1 if len(self.labels) else 0)]
        self.classes = names
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise InvalidInputError(
                f"labels run from {self.labels.min()} to {self.labels.max()} but there are {len(self.classes)} classes",
                path=self.root,
            )
        self.image_size = image_size
        self._resize = v2.Resize((image_size, image_size), antialias=True) if image_size else None
        if band_stats is None and split == "train":  # its batches are in memory already
            band_stats = _band_stats((batch.images for batch in batches), self.root)
        elif band_stats is None:
            band_stats = cifar_band_stats(self.root)
        self._set_stats(band_stats, CIFAR_CHANNELS)

    def raw(self, item: int) -> np.ndarray:
        image = self.images[item]
        if self._resize is None:
            return image
        return self._resize(torch.from_numpy(image)).numpy()
