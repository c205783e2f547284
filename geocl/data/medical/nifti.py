"""NIfTI volumes as training data: MONAI preprocessing, 2D-slice and 3D-patch datasets.

The ``data.format: nifti`` adapter; the folder layout, case discovery and header checks
are :mod:`geocl.data.medical.files`' (re-exported here).

Preprocessing (:class:`Preprocessing`, MONAI transforms, invertible so that predictions
go back to the input's grid): load, reorient to RAS (so ``slice_axis`` 2 is the axial
one whatever the storage order), resample to a common spacing in mm (images bilinear,
label maps nearest; default: the median spacing of the cases, as nnU-Net does), and
normalise intensities per volume (``zscore``: zero mean, unit std over the volume, for
MRI; ``percentile``: the 0.5-99.5 percentile range to [0, 1], clipped, for CT).
Images reach the models in these units, so a dataset's ``band_stats`` are the identity
(mean 0, std 1): per-volume normalisation replaces the per-band statistics of tiles.

Datasets:

- :class:`NiftiSliceDataset`: 2D slices across ``slice_axis`` of a split's cases, padded
  or centre-cropped to one side, with the batch contract of the tile and natural-image
  datasets (``image`` float32 ``[1, S, S]``, ``mask`` long ``[S, S]``: positions in the
  dataset's ``classes``, as for tile masks, with the padding at
  :data:`~geocl.data.tile_dataset.IGNORE_INDEX`, ``index``, ``band_count``,
  ``metadata["band_stats"]``): every 2D pretraining method and the 2D finetuning run on
  it unchanged. ``has_foreground`` marks slices holding label > 0, for samplers biased
  toward the foreground.
- :class:`NiftiVolumeDataset`: 3D patches of whole cases, drawn with MONAI's
  ``RandCropByPosNegLabeld`` (centred on foreground with probability
  ``foreground_fraction``) for labelled cases, uniformly for unlabelled ones.

Every read names the file at fault in one line (:func:`apply_transform`: MONAI's own
report is ``applying transform <... object at 0x...>``): damaged voxels, NaN or infinite
image voxels, label maps holding no class numbers (see :mod:`geocl.data.medical.files`).

Memory: both keep the preprocessed volumes of their cases in memory as float32 (the 20
embedded cases: about 60 MB; 80 left-atrium MRI at 0.625 mm: about 9 GB, so resample
coarser through ``spacing`` on a small machine).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from geocl.data.medical.files import (
    MAX_CLASSES,
    Case,
    check_image_voxels,
    check_voxels,
    class_indices,
    find_cases,
    is_nifti,
    label_classes,
    median_spacing,
    read_header,
    read_voxels,
    write_nifti,
)
from geocl.data.normalize import BandNormalizer
from geocl.data.tile_dataset import IGNORE_INDEX
from geocl.errors import GeoclError, InvalidInputError, MissingInputError

__all__ = [
    "Case",
    "Intensity",
    "LoadedCase",
    "NiftiSliceDataset",
    "NiftiVolumeDataset",
    "Preprocessing",
    "apply_transform",
    "find_cases",
    "is_nifti",
    "load_case",
    "median_spacing",
    "open_slice_dataset",
    "read_header",
    "write_nifti",
]

#: Intensity normalisations.
Intensity = Literal["zscore", "percentile"]
INTENSITIES: tuple[str, ...] = ("zscore", "percentile")

Sample = dict[str, Any]


@dataclass(frozen=True)
class Preprocessing:
    """The MONAI pipeline from files to model input: RAS, a common spacing, intensity normalisation.

    Args:
        spacing: target voxel size in mm per RAS axis.
        intensity: ``zscore`` (per volume) or ``percentile`` (0.5-99.5 % to [0, 1], clipped).
    """

    spacing: tuple[float, float, float]
    intensity: Intensity = "zscore"

    def __post_init__(self) -> None:
        if len(self.spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in self.spacing):
            raise InvalidInputError(f"must be three positive sizes in mm, got {list(self.spacing)}", key="data.spacing")
        if self.intensity not in INTENSITIES:
            raise InvalidInputError(
                f"unknown intensity normalisation {self.intensity!r}; choose from {', '.join(INTENSITIES)}",
                key="data.intensity",
            )

    def transform(self, with_label: bool) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """A MONAI ``Compose`` over ``{"image": path[, "label": path]}`` giving ``[1, X, Y, Z]`` MetaTensors.

        Invertible (``monai.transforms.Invertd``): predictions made on its output go back
        to the input's grid.
        """
        from monai.transforms import (
            Compose,
            EnsureChannelFirstd,
            LoadImaged,
            NormalizeIntensityd,
            Orientationd,
            ScaleIntensityRangePercentilesd,
            Spacingd,
        )

        keys = ["image", "label"] if with_label else ["image"]
        modes = ("bilinear", "nearest") if with_label else ("bilinear",)
        normalise: Any = (
            NormalizeIntensityd("image", channel_wise=True)
            if self.intensity == "zscore"
            else ScaleIntensityRangePercentilesd("image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True)
        )
        return Compose(
            [
                LoadImaged(keys, image_only=True, reader="NibabelReader", squeeze_non_spatial_dims=True),
                EnsureChannelFirstd(keys, channel_dim="no_channel"),
                Orientationd(keys, axcodes="RAS", labels=None),
                Spacingd(keys, pixdim=self.spacing, mode=modes, padding_mode="border", dtype=np.float32),
                normalise,
            ]
        )


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a chain (MONAI wraps each failure as ``applying transform <... object>``)."""
    seen = {id(exc)}
    while True:
        inner = exc.__cause__ if exc.__cause__ is not None else None if exc.__suppress_context__ else exc.__context__
        if inner is None or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner


def apply_transform(transform: Callable[[dict[str, Any]], dict[str, Any]], files: dict[str, str]) -> dict[str, Any]:
    """Run a MONAI pipeline over ``{"image": path[, "label": path]}``; a failure names the file and its reason.

    MONAI reports any failure as ``applying transform <... object at 0x...>``; the
    reason is its innermost exception, the file the first of ``files`` whose voxels
    cannot be read (else the image).

    The image it gives must be finite: a NaN voxel spreads over the whole normalised
    volume (and its prediction would be background everywhere).

    Raises:
        GeoclError: naming the file and the reason; naming the image and its count of
            NaN or infinite voxels.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MONAI's notes on meta data and defaults
            data = transform(files)
    except MemoryError:
        raise
    except Exception as exc:  # MONAI wraps reader errors in RuntimeError with the whole pipeline
        cause = _root_cause(exc)
        reason = (str(cause).splitlines() or [""])[0] or type(cause).__name__
        for path in files.values():
            read_voxels(path)  # names a damaged file, with nibabel's reason
        raise InvalidInputError(f"cannot read the volume: {reason}", path=files["image"]) from None
    if not bool(torch.isfinite(torch.as_tensor(data["image"])).all()):
        check_image_voxels(files["image"], read_voxels(files["image"]))  # names the stored NaN or inf voxels
        raise InvalidInputError(
            "holds values too large to normalise in float32; rescale the volume", path=files["image"]
        )
    return data


@dataclass
class LoadedCase:
    """One preprocessed case in memory.

    Attributes:
        case: the case.
        image: float32 ``[X, Y, Z]``, normalised, at the preprocessing spacing (RAS).
        label: int64 ``[X, Y, Z]``: the label map's class numbers (:func:`load_case`), or
            their positions among a dataset's classes (the datasets), or None.
    """

    case: Case
    image: np.ndarray
    label: np.ndarray | None


def load_case(case: Case, preprocessing: Preprocessing, with_label: bool = True) -> LoadedCase:
    """Read and preprocess one case; its label map as class numbers (see :func:`~geocl.data.medical.files.label_classes`).

    Raises:
        GeoclError: naming the file: unreadable voxels, NaN or infinite image voxels,
            or a label map whose values are no class numbers.
    """
    with_label = with_label and case.label is not None
    files = {"image": str(case.image), **({"label": str(case.label)} if with_label else {})}
    loaded = apply_transform(preprocessing.transform(with_label), files)
    image = np.asarray(loaded["image"].numpy()[0], dtype=np.float32)
    label = None
    if with_label:
        values = loaded["label"].numpy()[0]
        label_classes(case.label, values)  # type: ignore[arg-type]
        label = values.astype(np.int64)
    return LoadedCase(case, image, label)


def _dataset_classes(volumes: Sequence[LoadedCase], classes: Sequence[int] | None) -> list[int]:
    """The datasets' classes: ``classes``, else 0 and the values of the label maps (at least 0 and 1)."""
    if classes is None:
        seen = {0}.union(*(np.unique(v.label).tolist() for v in volumes if v.label is not None))
        classes = sorted(seen) if len(seen) > 1 else [0, 1]
    classes = [int(value) for value in classes]
    if classes != sorted(set(classes)) or classes[0] != 0:
        raise GeoclError(f"must be distinct class numbers in ascending order from 0, got {classes}", key="classes")
    if len(classes) > MAX_CLASSES:
        raise InvalidInputError(f"{len(classes)} classes; at most {MAX_CLASSES} are supported", key="classes")
    for volume in volumes:  # class numbers -> positions, as tile masks (TileDataset)
        if volume.label is not None:
            volume.label = class_indices(volume.label, classes, volume.case.label)  # type: ignore[arg-type]
    return classes


def _pad_or_crop(array: np.ndarray, size: int, fill: float) -> np.ndarray:
    """A ``[H, W]`` slice centred in a ``[size, size]`` one (padded with ``fill``, or centre-cropped)."""
    out = np.full((size, size), fill, dtype=array.dtype)
    source, target = [], []
    for length in array.shape:
        if length >= size:
            start = (length - size) // 2
            source.append(slice(start, start + size))
            target.append(slice(0, size))
        else:
            start = (size - length) // 2
            source.append(slice(0, length))
            target.append(slice(start, start + length))
    out[tuple(target)] = array[tuple(source)]
    return out


def _pad_to(array: np.ndarray, size: Sequence[int], fill: float) -> np.ndarray:
    """``array`` padded with ``fill`` (centred) to at least ``size`` per axis."""
    pads = [((max(0, s - n)) // 2, max(0, s - n) - max(0, s - n) // 2) for n, s in zip(array.shape, size, strict=True)]
    return np.pad(array, pads, constant_values=fill) if any(sum(p) for p in pads) else array


class NiftiSliceDataset(Dataset[Sample]):
    """2D slices of preprocessed NIfTI volumes, with the tile datasets' batch contract.

    Args:
        cases: the cases whose slices it serves (e.g. one split's; see
            :mod:`geocl.data.medical.split`).
        preprocessing: how volumes are read (spacing, intensity).
        slice_axis: RAS axis slices are taken across (2: axial).
        image_size: side in px of every slice (padded, or centre-cropped); 0: the
            largest in-plane side among the cases, rounded up to ``multiple``.
        with_mask: give ``mask`` (every case must be labelled).
        classes: the class numbers, ascending from 0 (a model's outputs); masks hold
            their positions. Default: 0 and the values of the cases' label maps (at
            least 0 and 1).
        transforms: applied to each sample dict.
        multiple: a default side is rounded up to a multiple of this (32 for the
            segmenters, whose encoders downsample 32x).

    Samples: ``image`` float32 ``[1, S, S]`` (normalised per volume; padding 0),
    ``mask`` long ``[S, S]`` (positions in ``classes``, :data:`IGNORE_INDEX` on the padding),
    ``index``, ``case`` (its id) and ``slice`` (its position along ``slice_axis``).

    Raises:
        GeoclError: no cases, a mask asked of an unlabelled case, a bad axis, a label
            value that is none of ``classes``.
    """

    def __init__(
        self,
        cases: Sequence[Case],
        preprocessing: Preprocessing,
        *,
        slice_axis: int = 2,
        image_size: int = 0,
        with_mask: bool = False,
        classes: Sequence[int] | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
        multiple: int = 1,
    ) -> None:
        if not cases:
            raise GeoclError("no cases to take slices from", key="data.path")
        if slice_axis not in (0, 1, 2):
            raise InvalidInputError(f"must be 0, 1 or 2, got {slice_axis}", key="data.slice_axis")
        unlabelled = [case.id for case in cases if not case.labelled]
        if with_mask and unlabelled:
            raise MissingInputError(
                f"case {unlabelled[0]} has no label map in {cases[0].image.parent.parent}",
                path=next(c.image for c in cases if not c.labelled),
            )
        self.cases = list(cases)
        self.preprocessing = preprocessing
        self.slice_axis = slice_axis
        self.with_mask = with_mask
        self.transforms = transforms
        self.volumes = [load_case(case, preprocessing, with_label=with_mask) for case in self.cases]
        planes = [np.delete(np.asarray(v.image.shape), slice_axis) for v in self.volumes]
        self.image_size = int(image_size or math.ceil(max(int(p.max()) for p in planes) / multiple) * multiple)
        self.classes = _dataset_classes(self.volumes, classes)
        self.index = [
            (volume, position)
            for volume in range(len(self.volumes))
            for position in range(self.volumes[volume].image.shape[slice_axis])
        ]
        self.has_foreground = np.array(
            [
                bool((label := self.volumes[v].label) is not None and np.take(label, p, axis=slice_axis).any())
                for v, p in self.index
            ]
        )
        stats = {"mean": [0.0], "std": [1.0]}
        self.metadata: dict[str, Any] = {"band_stats": stats, "bands": 1, "nodata": None, "classes": list(self.classes)}
        self.normalizer = BandNormalizer(stats["mean"], stats["std"], nodata=math.nan)

    @property
    def band_count(self) -> int:
        """Channels of a slice (1)."""
        return 1

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> Sample:
        volume, position = self.index[item]
        loaded = self.volumes[volume]
        image = _pad_or_crop(np.take(loaded.image, position, axis=self.slice_axis), self.image_size, 0.0)
        sample: Sample = {
            "image": torch.from_numpy(image[None].astype(np.float32)),
            "index": int(item),
            "case": loaded.case.id,
            "slice": int(position),
        }
        if self.with_mask:
            assert loaded.label is not None
            mask = _pad_or_crop(np.take(loaded.label, position, axis=self.slice_axis), self.image_size, IGNORE_INDEX)
            sample["mask"] = torch.from_numpy(mask.astype(np.int64))
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample


class NiftiVolumeDataset(Dataset[Sample]):
    """3D patches of preprocessed NIfTI volumes, drawn toward the foreground in labelled cases.

    Each item is one random patch of one case (item ``i`` is case ``i % len(cases)``;
    ``samples_per_case`` items a case per epoch). Labelled cases: MONAI's
    ``RandCropByPosNegLabeld``, centred on a foreground voxel with probability
    ``foreground_fraction`` and on a background voxel otherwise; unlabelled cases:
    ``RandSpatialCropd`` (uniform). Volumes smaller than the patch are padded first
    (image 0, label :data:`IGNORE_INDEX`). The draw is a function of (``seed``, epoch
    set by :meth:`set_epoch`, item), so it is reproducible and the same in any
    DataLoader worker.

    Args:
        cases: the cases (labelled and unlabelled may mix).
        preprocessing: how volumes are read.
        patch_size: patch side in voxels per axis.
        foreground_fraction: probability that a labelled case's patch is centred on
            foreground.
        samples_per_case: patches a case per epoch.
        seed: seed of the draws.
        classes: as :class:`NiftiSliceDataset`'s.

    Samples: ``image`` float32 ``[1, *patch]``, ``mask`` long ``[*patch]`` (labelled
    cases; positions in ``classes``) or absent, ``labelled`` bool, ``case`` id, ``index``.
    """

    def __init__(
        self,
        cases: Sequence[Case],
        preprocessing: Preprocessing,
        patch_size: Sequence[int],
        *,
        foreground_fraction: float = 0.5,
        samples_per_case: int = 1,
        seed: int = 0,
        classes: Sequence[int] | None = None,
    ) -> None:
        if not cases:
            raise GeoclError("no cases to draw patches from", key="data.path")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise InvalidInputError(f"must be in [0, 1], got {foreground_fraction}", key="foreground_fraction")
        self.cases = list(cases)
        self.volumes = [load_case(case, preprocessing) for case in self.cases]
        self.classes = _dataset_classes(self.volumes, classes)
        self.patch_size = tuple(int(side) for side in patch_size)
        self.foreground_fraction = foreground_fraction
        self.samples_per_case = samples_per_case
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the patches of another epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.volumes) * self.samples_per_case

    def __getitem__(self, item: int) -> Sample:
        from monai.transforms import RandCropByPosNegLabeld, RandSpatialCropd

        loaded = self.volumes[item % len(self.volumes)]
        labelled = loaded.label is not None
        data: dict[str, Any] = {"image": _pad_to(loaded.image, self.patch_size, 0.0)[None]}
        if labelled:
            assert loaded.label is not None
            data["label"] = _pad_to(loaded.label, self.patch_size, IGNORE_INDEX)[None]
            # a key of its own: MONAI counts every non-zero voxel as foreground, the padding too
            data["foreground"] = (data["label"] > 0).astype(np.uint8)
        keys = ["image", "label"] if labelled else ["image"]
        if labelled and self.foreground_fraction > 0 and bool(data["foreground"].any()):
            crop: Any = RandCropByPosNegLabeld(
                keys,
                "foreground",
                self.patch_size,
                pos=self.foreground_fraction,
                neg=1.0 - self.foreground_fraction,
                num_samples=1,
                allow_smaller=False,
            )
        else:
            crop = RandSpatialCropd(keys, self.patch_size, random_size=False)
        crop.set_random_state(seed=int(np.random.default_rng([self.seed, self.epoch, item]).integers(2**31)))
        patch = crop(data)
        patch = patch[0] if isinstance(patch, list) else patch
        sample: Sample = {
            "image": torch.as_tensor(np.asarray(patch["image"]), dtype=torch.float32),
            "labelled": labelled,
            "case": loaded.case.id,
            "index": int(item),
        }
        if labelled:
            sample["mask"] = torch.as_tensor(np.asarray(patch["label"][0]), dtype=torch.long)
        return sample


def open_slice_dataset(
    root: str | os.PathLike[str],
    split: str = "train",
    *,
    spacing: Sequence[float] | None = None,
    slice_axis: int = 2,
    intensity: Intensity = "zscore",
    image_size: int = 0,
    val_fraction: float = 0.1,
    with_mask: bool = False,
) -> NiftiSliceDataset:
    """The 2D slices of one split of a data folder (what a recipe's ``data`` section names).

    Args:
        root: the data folder.
        split: ``train`` (labelled and unlabelled cases), ``val`` or ``test``.
        spacing: target voxel size in mm per RAS axis; None: the median of all cases
            (of every split, so that each split is resampled alike).
        slice_axis: RAS axis slices are taken across.
        intensity: ``zscore`` or ``percentile``.
        image_size: slice side in px; 0: the largest in-plane side of the split's cases.
        val_fraction: share of the labelled cases held out for validation (no ``splits.json``).
        with_mask: give masks (every case of the split must be labelled); the classes are
            those of every split's label maps (:func:`~geocl.data.medical.files.check_voxels`).

    Raises:
        GeoclError: see :func:`find_cases` and :func:`~geocl.data.medical.split.split_cases`;
            a split without cases.
    """
    from geocl.data.medical.split import split_cases

    cases = find_cases(root)
    chosen = split_cases(cases, root, val_fraction=val_fraction).of(split)
    if not chosen:
        raise GeoclError(f"has no {split} cases", path=root, key="data.split")
    preprocessing = Preprocessing(tuple(spacing) if spacing else median_spacing(cases), intensity)  # type: ignore[arg-type]
    # masks: the classes of every split's label maps, so that a class means the same in each split
    classes = check_voxels(cases, root=root) if with_mask else None
    return NiftiSliceDataset(
        chosen, preprocessing, slice_axis=slice_axis, image_size=image_size, with_mask=with_mask, classes=classes
    )
