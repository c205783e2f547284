"""NIfTI files of a data folder: case discovery, header checks and atomic writing (nibabel only, no torch).

A data folder holds one 3D volume per file and, for labelled cases, a label map of the
same name on the same grid::

    DIR/images/<case>.nii.gz          DIR/labels/<case>.nii.gz       (geocl make-volumes)
    DIR/imagesTr/<case>_0000.nii.gz   DIR/labelsTr/<case>.nii.gz     (nnU-Net / MSD)

``.nii`` and ``.nii.gz`` are read; an image without a label map is an unlabelled case;
hidden files are skipped and any other file is refused by name. :func:`find_cases`
checks every header before any voxel is read: one 3D volume per file (a 4D file is
refused unless its fourth axis has length 1), a label map on its image's grid (same
shape and affine).

:func:`check_voxels` then reads every volume once, before any training, so that a
damaged file is named at once rather than after hours of training: image voxels must
be finite real numbers (NIfTI has no nodata value: a NaN or inf voxel would poison the
per-volume normalisation and the whole prediction), label maps must hold whole class
numbers >= 0. Class numbers follow the rule of tile masks
(:class:`~geocl.data.tile_dataset.TileDataset`): the classes are the values the label
maps hold (0, background, always among them), in ascending order, and a model predicts
their positions (:func:`class_indices`), written back as the values. A label map holding
{0, 2, 7} trains a 3-class model whose predictions hold 0, 2 and 7.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np

from geocl.errors import GeoclError, InvalidInputError, MissingInputError
from geocl.io import atomic_write_bytes

__all__ = [
    "LAYOUTS",
    "NIFTI_SUFFIXES",
    "Case",
    "VolumeHeader",
    "MAX_CLASSES",
    "MAX_CLASS_VALUE",
    "case_id",
    "check_image_voxels",
    "check_voxels",
    "class_indices",
    "class_values",
    "find_cases",
    "is_nifti",
    "label_classes",
    "median_spacing",
    "read_header",
    "read_voxels",
    "write_nifti",
]

#: File endings read as NIfTI.
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
#: (image folder, label folder) layouts, tried in order.
LAYOUTS: tuple[tuple[str, str], ...] = (("images", "labels"), ("imagesTr", "labelsTr"))
#: A label map holding more distinct values than this is refused (an image given as a label map).
MAX_CLASSES = 64
#: The largest class number a label map may hold (predictions are written as uint8 or uint16).
MAX_CLASS_VALUE = 65535
#: Errors reading a damaged NIfTI file's voxels (a truncated ``.gz``: EOFError; a bad stream: zlib.error).
_READ_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, ValueError, zlib.error)


def is_nifti(path: str | os.PathLike[str]) -> bool:
    """Whether a file name ends in ``.nii`` or ``.nii.gz``."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def case_id(path: Path) -> str:
    """The case name of an image or label file: the name without ``.nii[.gz]`` and nnU-Net's ``_0000``."""
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.removesuffix("_0000")


def write_nifti(
    path: str | os.PathLike[str], array: np.ndarray, affine: np.ndarray, header: nib.Nifti1Header | None = None
) -> Path:
    """Write a 3D array as NIfTI-1 atomically (gzip-compressed for ``.nii.gz``).

    Args:
        path: the ``.nii`` or ``.nii.gz`` file.
        array: ``[X, Y, Z]`` voxels (stored in their dtype).
        affine: ``[4, 4]`` voxel-to-world (mm) matrix; set as both qform and sform.
        header: a header to copy (orientation codes, units); its data type is replaced
            by the array's.

    Returns:
        The path.

    Raises:
        GeoclError: naming ``path`` when it cannot be written (disk full, no permission:
            :class:`geocl.io.OutputWriteError`); nothing is left at ``path`` but what
            was there before.
    """
    path = Path(path)
    image = nib.Nifti1Image(np.asarray(array), affine, header=header.copy() if header is not None else None)
    image.set_data_dtype(np.asarray(array).dtype)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    data = image.to_bytes()
    if path.name.lower().endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    return atomic_write_bytes(path, data)  # nibabel's own writer would refuse the temporary name


@dataclass(frozen=True)
class VolumeHeader:
    """What a NIfTI header says of a volume.

    Attributes:
        shape: voxels per axis (3 values).
        affine: ``[4, 4]`` voxel-to-world matrix (mm).
        spacing: voxel size in mm along the axes of the volume reoriented to RAS.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    spacing: tuple[float, float, float]


def read_header(path: str | os.PathLike[str]) -> VolumeHeader:
    """The header of one NIfTI volume (no voxels are read).

    Raises:
        GeoclError: naming the file if it is not a readable NIfTI file or not one 3D
            volume (a 4D file whose fourth axis has length 1 counts as 3D).
    """
    path = Path(path)
    if not is_nifti(path):
        raise InvalidInputError(
            "is not a NIfTI file (.nii or .nii.gz); convert it, or move it out of the folder", path=path
        )
    try:
        # a .nii or .nii.gz loads as a Nifti1Image (or a Nifti2Image, its subclass)
        image = cast(nib.Nifti1Image, nib.load(path))
        shape = tuple(int(n) for n in image.shape)
        zooms = [float(z) for z in image.header.get_zooms()[:3]]
        affine = np.asarray(image.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises many types for a damaged or foreign file
        raise InvalidInputError(f"cannot be read as NIfTI: {exc}", path=path) from None
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        dims = "x".join(map(str, shape))
        raise InvalidInputError(
            f"is {len(shape)}D ({dims}); give one 3D volume per file (split a multi-channel or time series into "
            "files, one a volume)",
            path=path,
        )
    axes = nib.io_orientation(affine)[:, 0].astype(int)  # voxel axis i becomes RAS axis axes[i]
    spacing = [0.0, 0.0, 0.0]
    for voxel_axis, ras_axis in enumerate(axes):
        spacing[ras_axis] = zooms[voxel_axis]
    return VolumeHeader((shape[0], shape[1], shape[2]), affine, (spacing[0], spacing[1], spacing[2]))


@dataclass(frozen=True)
class Case:
    """One case of a data folder.

    Attributes:
        id: its name (the file name without ``.nii[.gz]`` and nnU-Net's ``_0000``).
        image: the image volume.
        label: its label map, or None (unlabelled).
        header: the image's header.
    """

    id: str
    image: Path
    label: Path | None
    header: VolumeHeader

    @property
    def labelled(self) -> bool:
        return self.label is not None


def _nifti_files(folder: Path) -> list[Path]:
    """The NIfTI files of a folder, sorted; any other visible file is refused by name."""
    files = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            raise InvalidInputError(
                "is a folder inside a volume folder; one NIfTI file a volume is expected", path=path
            )
        if not is_nifti(path):
            raise InvalidInputError(
                "is not a NIfTI file (.nii or .nii.gz); convert it, or move it out of the folder", path=path
            )
        files.append(path)
    return files


def find_cases(root: str | os.PathLike[str], *, key: str = "data.path") -> list[Case]:
    """The cases of a data folder, every header checked.

    Args:
        root: the data folder (see the module docstring for its layout).
        key: the option or recipe key that named it (for messages).

    Returns:
        The cases in name order.

    Raises:
        GeoclError: naming the folder or file at fault: no such folder, no image folder,
            no volume, a file that is not NIfTI or cannot be read, a 4D volume, two
            images of one case, a label map without its image, or on another grid.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingInputError(f"no such folder (given by {key})", path=root, key=key)
    layout = next(((root / a, root / b) for a, b in LAYOUTS if (root / a).is_dir()), None)
    if layout is None:
        expected = " or ".join(f"{a}/ (and {b}/)" for a, b in LAYOUTS)
        raise MissingInputError(
            f"holds no {expected} folder of NIfTI volumes; `geocl make-volumes` writes an example", path=root
        )
    image_folder, label_folder = layout
    images: dict[str, Path] = {}
    for path in _nifti_files(image_folder):
        name = case_id(path)
        if name in images:
            raise InvalidInputError(
                f"is a second image of case {name!r} (beside {images[name].name}); keep one", path=path
            )
        images[name] = path
    if not images:
        raise MissingInputError("holds no NIfTI volumes (.nii, .nii.gz)", path=image_folder)
    labels: dict[str, Path] = {}
    if label_folder.is_dir():
        for path in _nifti_files(label_folder):
            name = case_id(path)
            if name not in images:
                raise MissingInputError(f"is a label map without an image {name}.nii[.gz] in {image_folder}", path=path)
            labels[name] = path
    cases = []
    for name, image in images.items():
        header = read_header(image)
        label = labels.get(name)
        if label is not None:
            _check_label_grid(label, header, image)
        cases.append(Case(name, image, label, header))
    return cases


def _check_label_grid(label: Path, image_header: VolumeHeader, image: Path) -> None:
    header = read_header(label)
    if header.shape != image_header.shape:
        raise InvalidInputError(
            f"label map has shape {'x'.join(map(str, header.shape))} but its image {image} has "
            f"{'x'.join(map(str, image_header.shape))}; a label map must be on its image's grid",
            path=label,
        )
    if not np.allclose(header.affine, image_header.affine, atol=1e-3):
        raise InvalidInputError(
            f"label map's affine (voxel-to-mm matrix) differs from its image's ({image}); a label map must be on "
            "its image's grid",
            path=label,
        )


def median_spacing(cases: Sequence[Case]) -> tuple[float, float, float]:
    """The median voxel size (mm) per RAS axis over the cases (nnU-Net's target spacing)."""
    spacing = np.median(np.array([case.header.spacing for case in cases]), axis=0)
    return (float(spacing[0]), float(spacing[1]), float(spacing[2]))


# ------------------------------------------------------------------------- voxels


def read_voxels(path: str | os.PathLike[str]) -> np.ndarray:
    """The voxels of one NIfTI volume as stored, ``[X, Y, Z]`` (trailing length-1 axes dropped).

    Raises:
        GeoclError: naming the file when its voxels cannot be read (a truncated or
            damaged file whose header alone is fine).
    """
    try:
        data = np.asanyarray(cast(nib.Nifti1Image, nib.load(path)).dataobj)
    except _READ_ERRORS as exc:
        reason = str(exc) or type(exc).__name__
        raise InvalidInputError(f"cannot read the voxels (a truncated or damaged file?): {reason}", path=path) from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    return data


def _shown(values: np.ndarray, limit: int = 5) -> str:
    """Up to ``limit`` distinct values, comma-separated (with "..." when there are more)."""
    distinct = np.unique(values)
    text = ", ".join(f"{float(v):g}" for v in distinct[:limit])
    return text + (", ..." if len(distinct) > limit else "")


def check_image_voxels(path: str | os.PathLike[str], data: np.ndarray) -> None:
    """Refuse an image volume whose voxels are not finite real numbers.

    NIfTI has no nodata value and the intensity normalisation is per volume: one NaN
    voxel makes the whole normalised volume NaN and its prediction background.

    Raises:
        GeoclError: naming the file: a non-numeric (e.g. RGB) or complex data type, the
            count of NaN or infinite voxels, values beyond float32.
    """
    if data.dtype.names is not None or not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise InvalidInputError(f"holds {data.dtype} voxels; an image volume holds one real number a voxel", path=path)
    if np.issubdtype(data.dtype, np.floating):
        bad = np.count_nonzero(~np.isfinite(data))
        if bad:
            raise InvalidInputError(
                f"holds {bad} non-finite voxels (NaN or inf) of {data.size}; NIfTI has no nodata value: "
                "replace them with a number (e.g. the background's)",
                path=path,
            )
        if data.size and float(np.abs(data).max()) > float(np.finfo(np.float32).max):
            raise InvalidInputError(
                f"holds values up to {float(np.abs(data).max()):.3g}, beyond float32 (the volumes are normalised "
                "in float32); rescale the volume",
                path=path,
            )


def label_classes(path: str | os.PathLike[str], data: np.ndarray) -> list[int]:
    """The class numbers a label map holds, ascending, after checking them.

    Raises:
        GeoclError: naming the file and the offending values: values that are not
            whole numbers (fractions, NaN, inf), negative values, values above
            :data:`MAX_CLASS_VALUE`, or more than :data:`MAX_CLASSES` distinct values.
    """
    if data.dtype.names is not None or not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise GeoclError(f"holds {data.dtype} voxels; a label map holds one class number a voxel", path=path)
    if np.issubdtype(data.dtype, np.floating):
        finite = np.isfinite(data)
        bad = ~finite
        bad[finite] = data[finite] != np.floor(data[finite])
        if bad.any():
            raise InvalidInputError(
                f"label map holds {np.count_nonzero(bad)} voxels that are no class number ({_shown(data[bad])}); "
                "a label map holds whole class numbers 0, 1, 2, ...",
                path=path,
            )
    if data.size == 0:
        return []
    low, high = float(data.min()), float(data.max())
    if low < 0 or high > MAX_CLASS_VALUE:
        outside = data[(data < 0) | (data > MAX_CLASS_VALUE)]
        raise InvalidInputError(
            f"label map holds {outside.size} voxels outside the class numbers 0..{MAX_CLASS_VALUE} "
            f"({_shown(outside)}); a label map holds class numbers, 0 the background",
            path=path,
        )
    counts = np.bincount(data.astype(np.int64, copy=False).ravel(), minlength=1)
    classes = [int(value) for value in np.flatnonzero(counts)]
    if len(classes) > MAX_CLASSES:
        raise InvalidInputError(
            f"label map holds {len(classes)} distinct values ({', '.join(map(str, classes[:5]))}, ...); a label map "
            f"holds at most {MAX_CLASSES} classes: is it an image?",
            path=path,
        )
    return classes


def class_indices(values: np.ndarray, classes: Sequence[int], path: str | os.PathLike[str]) -> np.ndarray:
    """Class positions (int64) of a label map's values, given the ascending class numbers.

    Raises:
        GeoclError: naming the file and the values that are no class of ``classes``.
    """
    table = np.asarray(classes, dtype=np.int64)
    values = np.asarray(values).astype(np.int64, copy=False)
    positions = np.clip(np.searchsorted(table, values), 0, len(table) - 1)
    unknown = table[positions] != values
    if unknown.any():
        raise InvalidInputError(
            f"label map holds class {_shown(values[unknown])}, which is none of the model's classes "
            f"({', '.join(map(str, classes))})",
            path=path,
        )
    return positions.astype(np.int64, copy=False)


def class_values(indices: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """The class numbers of predicted class positions: uint8 when they fit, else uint16."""
    dtype = np.uint8 if max(classes) <= np.iinfo(np.uint8).max else np.uint16
    return np.asarray(classes, dtype=dtype)[np.asarray(indices, dtype=np.int64)]


def check_voxels(cases: Sequence[Case], *, root: str | os.PathLike[str] | None = None) -> list[int]:
    """Read every image and label map of ``cases`` once; the class numbers of the label maps.

    What training needs of every file, checked before any training starts (a damaged
    test volume is otherwise found after the whole training): images readable and
    finite (:func:`check_image_voxels`), label maps readable and holding class numbers
    (:func:`label_classes`).

    Args:
        cases: the cases (all splits, unlabelled ones too).
        root: the data folder, named when no label map holds a foreground class.

    Returns:
        The classes: 0 (background) and every value a label map holds, ascending;
        ``[0]`` when no case is labelled.

    Raises:
        GeoclError: naming the first file at fault; naming ``root`` when label maps
            are there but none holds a class other than 0.
    """
    classes = {0}
    labelled = False
    for case in cases:
        check_image_voxels(case.image, read_voxels(case.image))
        if case.label is not None:
            labelled = True
            classes.update(label_classes(case.label, read_voxels(case.label)))
    if len(classes) > MAX_CLASSES:
        raise InvalidInputError(
            f"label maps hold {len(classes)} classes together; at most {MAX_CLASSES} are supported", path=root
        )
    if labelled and classes == {0}:
        raise GeoclError("no label map holds a class other than 0 (background): nothing to segment", path=root)
    return sorted(classes)
