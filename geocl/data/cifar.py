"""CIFAR-10/100 "python version" batches from a local folder, as training data.

The folder holds CIFAR-10's ``data_batch_1..N``, ``test_batch`` and ``batches.meta`` or
CIFAR-100's ``train``, ``test`` and ``meta`` (labels ``fine_labels``), as the
official archives extract them; it may also be the folder the archive was extracted
into. Nothing is downloaded. CIFAR has no validation split: ``val`` and ``test`` both
read the test batch, the set kNN and linear-probe results are reported on.

The batch files are pickles, and a pickle can name any function for the reader to call.
geocl never unpickles a file as :func:`pickle.load` does: :class:`_DataUnpickler` builds
only plain data and numpy arrays and refuses a file that names anything else, in one
line naming the file, before anything in it runs. The layout is the one torchvision's
:class:`~torchvision.datasets.CIFAR10` reads (same keys, same pixel order, read with
``encoding="latin1"`` so that the official Python 2 pickles load); unlike torchvision,
files are checked to exist rather than against the md5 sums of the official archive
(geocl's toy batches from :func:`~geocl.data.natural_toy.write_toy_cifar` and users'
re-packed folders are not those bytes), a CIFAR-10 folder may hold any number of data
batches, and the meta file (class names) may be missing. Files are read one at a time so
that a missing or corrupt one is named in a one-line :class:`~geocl.errors.GeoclError`.

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
from typing import Any, NamedTuple, NoReturn, cast

import numpy as np
import torch
from torchvision.transforms import v2

from geocl.data.natural_dataset import NaturalDataset, Sample, check_split, stats_dict
from geocl.data.stats import RunningBandStats
from geocl.errors import GeoclError, InvalidInputError, MissingInputError

#: Side of a CIFAR image (px) and its channels.
CIFAR_SIZE = 32
CIFAR_CHANNELS = 3

#: The label key and class-name file of each layout (CIFAR-10's first; CIFAR-100's fine labels).
_LABEL_KEYS = ("labels", "fine_labels")
_META = {"batches.meta": "label_names", "meta": "fine_label_names"}

# What reading a file that is not a CIFAR pickle raises: the unpickler's errors, and those
# of indexing and reshaping what came out of it.
_UNREADABLE = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError)


class _RefusedName(pickle.UnpicklingError):
    """A pickle named, or called in another way, something :class:`_DataUnpickler` does not run."""


# How numpy pickles its arrays and scalars, taken from numpy itself rather than from a private
# module path: ``_reconstruct(ndarray, (0,), b"b")`` then the array's state (protocols 0-4),
# ``_frombuffer(buffer, dtype, shape, order)`` (protocol 5), ``scalar(dtype, raw bytes)``.
_RECONSTRUCT = cast(Callable[..., np.ndarray], np.ndarray((0,)).__reduce__()[0])
_FROMBUFFER = cast(Callable[..., np.ndarray], np.zeros(1).__reduce_ex__(5)[0])
_SCALAR = cast(Callable[..., Any], np.int64(0).__reduce__()[0])


class _ArrayType:
    """Stands in for ``numpy.ndarray`` in a pickle: :func:`_empty_array` takes it; calling it is refused."""

    def __call__(self, *args: Any) -> NoReturn:
        _refuse("numpy.ndarray called directly")


_ARRAY_TYPE = _ArrayType()


def _refuse(what: str) -> NoReturn:
    raise _RefusedName(what)


def _empty_array(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    """numpy's ``_reconstruct``, for the one call numpy's pickles make: an empty array its state then fills."""
    if subtype is not _ARRAY_TYPE or tuple(shape) != (0,) or typecode not in (b"b", "b"):
        _refuse(f"numpy _reconstruct with {shape!r}, {typecode!r}")
    return _RECONSTRUCT(np.ndarray, (0,), b"b")


def _dtype(*args: Any) -> np.dtype:
    """``numpy.dtype``, without object dtypes (a CIFAR file holds numbers and strings)."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        _refuse("an array of Python objects")
    return dtype


def _array_from_buffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """numpy's ``_frombuffer`` (protocol 5): an array over bytes the file holds."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        _refuse("an array of Python objects")
    return _FROMBUFFER(buffer, dtype, shape, order)


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """``codecs.encode(text, "latin1")``, the way Python 3 writes bytes into protocol-2 pickles, and no other codec."""
    if not isinstance(text, str) or encoding != "latin1":
        _refuse(f"codecs.encode with {encoding!r}")
    return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    """``bytes()``, the way Python 3 writes empty bytes into protocol-2 pickles, with no argument to size it."""
    if args:
        _refuse("bytes() with arguments")
    return b""


class _DataUnpickler(pickle.Unpickler):
    """Unpickles plain data (dicts, lists, strings, numbers) and numeric numpy arrays, nothing else.

    A pickle rebuilds objects by calling the functions it names. This reader hands out none
    of them: each name numpy's pickles use (under their NumPy 1 and NumPy 2 module paths), and
    those Python 3 uses for bytes in protocol-2 pickles, maps to a wrapper that accepts only
    the call those pickles make (no object arrays, no codec but latin-1, no sized
    allocation), so a file can neither run code nor make the reader allocate more than it
    holds. Any other name is refused before it is called.
    """

    _SAFE: dict[tuple[str, str], Any] = {
        **{(module, "_reconstruct"): _empty_array for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
        **{(module, "scalar"): _SCALAR for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
        **{(module, "_frombuffer"): _array_from_buffer for module in ("numpy.core.numeric", "numpy._core.numeric")},
        ("numpy", "ndarray"): _ARRAY_TYPE,
        ("numpy", "dtype"): _dtype,
        ("_codecs", "encode"): _latin1_bytes,
        ("__builtin__", "bytes"): _empty_bytes,
        ("builtins", "bytes"): _empty_bytes,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._SAFE[(module, name)]
        except KeyError:
            raise _RefusedName(f"{module}.{name}") from None


def _unpickle_data(path: Path) -> Any:
    """The plain data and arrays of a pickle file (:class:`_DataUnpickler`).

    Raises:
        GeoclError: naming the file when it names any other function (nothing in it has run).
    """
    try:
        with path.open("rb") as handle:
            return _DataUnpickler(handle, encoding="latin1").load()
    except _RefusedName as refused:
        raise InvalidInputError(
            f"refused: the file asks for {refused}, which geocl does not run when it reads a pickle; nothing in "
            "it was run (geocl reads plain data and numeric numpy arrays only)",
            path=path,
        ) from None


def _class_names(folder: Path) -> list[str] | None:
    """The class names of the folder's meta file, or None when it has none."""
    for name, key in _META.items():
        path = folder / name
        if not path.is_file():
            continue
        try:
            names = _unpickle_data(path)[key]
        except GeoclError:  # refused (an InvalidInputError is also a ValueError)
            raise
        except (KeyError, TypeError):
            raise InvalidInputError(f"corrupt CIFAR meta file: no {key!r}", path=path) from None
        except _UNREADABLE as error:
            raise InvalidInputError(f"corrupt CIFAR meta file (not a readable pickle: {error})", path=path) from None
        if not isinstance(names, list | tuple | np.ndarray):
            raise InvalidInputError(f"corrupt CIFAR meta file: {key!r} is not a list of names", path=path)
        return [item.decode() if isinstance(item, bytes) else str(item) for item in names]
    return None


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
    for candidate in (root, root / "cifar-10-batches-py", root / "cifar-100-python"):
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
    """Read one batch file (of a folder :func:`cifar_files` listed), and the folder's class names.

    Raises:
        GeoclError: naming the file when it is missing or not a CIFAR batch.
    """
    if not path.is_file():
        raise MissingInputError("CIFAR batch file not found", path=path)
    try:
        entry = _unpickle_data(path)
    except GeoclError:  # refused (an InvalidInputError is also a ValueError)
        raise
    except _UNREADABLE as error:
        raise InvalidInputError(f"corrupt CIFAR batch file (not a readable pickle: {error})", path=path) from None
    label_key = next((key for key in _LABEL_KEYS if isinstance(entry, dict) and key in entry), None)
    if label_key is None or "data" not in entry:
        missing = "'labels' or 'fine_labels'" if label_key is None else "'data'"
        raise InvalidInputError(
            f"corrupt CIFAR batch file: needs 'data' and 'labels' or 'fine_labels', has no {missing}", path=path
        )
    data, labels = entry["data"], entry[label_key]
    pixels = CIFAR_CHANNELS * CIFAR_SIZE * CIFAR_SIZE
    try:
        labels = np.asarray(labels)
    except ValueError:  # ragged lists
        labels = np.asarray(None)
    if labels.ndim != 1 or not (labels.size == 0 or np.issubdtype(labels.dtype, np.integer)):
        raise InvalidInputError(f"corrupt CIFAR batch file: {label_key!r} is not a list of integer labels", path=path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.size != labels.size * pixels:
        shape = f"{data.dtype} {tuple(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise InvalidInputError(
            f"corrupt CIFAR batch file: 'data' is {shape} for {labels.size} labels "
            f"(expected uint8 [N, {pixels}] and N integer labels)",
            path=path,
        )
    # the file's rows are [C, H, W] images, as torchvision reads them
    images = data.reshape(len(labels), CIFAR_CHANNELS, CIFAR_SIZE, CIFAR_SIZE)
    return _Batch(images, labels.astype(np.int64), _class_names(path.parent))


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
