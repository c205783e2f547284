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
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from geocl.errors import GeoclError
from geocl.io import atomic_path

__all__ = [
    "LAYOUTS",
    "NIFTI_SUFFIXES",
    "Case",
    "VolumeHeader",
    "case_id",
    "find_cases",
    "is_nifti",
    "median_spacing",
    "read_header",
    "write_nifti",
]

#: File endings read as NIfTI.
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
#: (image folder, label folder) layouts, tried in order.
LAYOUTS: tuple[tuple[str, str], ...] = (("images", "labels"), ("imagesTr", "labelsTr"))


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
    """
    path = Path(path)
    image = nib.Nifti1Image(np.asarray(array), affine, header=header.copy() if header is not None else None)
    image.set_data_dtype(np.asarray(array).dtype)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    data = image.to_bytes()
    if path.name.lower().endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    with atomic_path(path) as temp:  # nibabel's own writer would refuse the temporary name
        temp.write_bytes(data)
    return path


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
        raise GeoclError("is not a NIfTI file (.nii or .nii.gz); convert it, or move it out of the folder", path=path)
    try:
        image = nib.load(path)
        shape = tuple(int(n) for n in image.shape)
        zooms = [float(z) for z in image.header.get_zooms()[:3]]
        affine = np.asarray(image.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises many types for a damaged or foreign file
        raise GeoclError(f"cannot be read as NIfTI: {exc}", path=path) from None
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        dims = "x".join(map(str, shape))
        raise GeoclError(
            f"is {len(shape)}D ({dims}); give one 3D volume per file (split a multi-channel or time series into "
            "files, one a volume)",
            path=path,
        )
    axes = nib.io_orientation(affine)[:, 0].astype(int)  # voxel axis i becomes RAS axis axes[i]
    spacing = [0.0, 0.0, 0.0]
    for voxel_axis, ras_axis in enumerate(axes):
        spacing[ras_axis] = zooms[voxel_axis]
    return VolumeHeader(shape, affine, (spacing[0], spacing[1], spacing[2]))  # type: ignore[arg-type]


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
            raise GeoclError("is a folder inside a volume folder; one NIfTI file a volume is expected", path=path)
        if not is_nifti(path):
            raise GeoclError("is not a NIfTI file (.nii or .nii.gz); convert it, or move it out of the folder", path=path)
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
        raise GeoclError(f"no such folder (given by {key})", path=root, key=key)
    layout = next(((root / a, root / b) for a, b in LAYOUTS if (root / a).is_dir()), None)
    if layout is None:
        expected = " or ".join(f"{a}/ (and {b}/)" for a, b in LAYOUTS)
        raise GeoclError(f"holds no {expected} folder of NIfTI volumes; `geocl make-volumes` writes an example", path=root)
    image_folder, label_folder = layout
    images: dict[str, Path] = {}
    for path in _nifti_files(image_folder):
        name = case_id(path)
        if name in images:
            raise GeoclError(f"is a second image of case {name!r} (beside {images[name].name}); keep one", path=path)
        images[name] = path
    if not images:
        raise GeoclError("holds no NIfTI volumes (.nii, .nii.gz)", path=image_folder)
    labels: dict[str, Path] = {}
    if label_folder.is_dir():
        for path in _nifti_files(label_folder):
            name = case_id(path)
            if name not in images:
                raise GeoclError(f"is a label map without an image {name}.nii[.gz] in {image_folder}", path=path)
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
        raise GeoclError(
            f"label map has shape {'x'.join(map(str, header.shape))} but its image {image} has "
            f"{'x'.join(map(str, image_header.shape))}; a label map must be on its image's grid",
            path=label,
        )
    if not np.allclose(header.affine, image_header.affine, atol=1e-3):
        raise GeoclError(
            f"label map's affine (voxel-to-mm matrix) differs from its image's ({image}); a label map must be on "
            "its image's grid",
            path=label,
        )


def median_spacing(cases: Sequence[Case]) -> tuple[float, float, float]:
    """The median voxel size (mm) per RAS axis over the cases (nnU-Net's target spacing)."""
    spacing = np.median(np.array([case.header.spacing for case in cases]), axis=0)
    return (float(spacing[0]), float(spacing[1]), float(spacing[2]))
