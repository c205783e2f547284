"""Few-label 2D segmentation of NIfTI volumes from any pretrained encoder: finetune, predict, score per case.

The medical counterpart of :mod:`geocl.finetune.train` and :mod:`geocl.finetune.inference`,
built from the same parts (the downstream skeleton
:func:`~geocl.finetune.downstream.run_downstream` with one run a folder, the segmenter of
:class:`~geocl.finetune.train.SegmenterFactory`: smp models whose ``tu-`` encoder loads any
pretrain checkpoint) and MONAI for what is medical; its data adapter is :class:`NiftiSlices`:

- **data**: the cases of a NIfTI folder split train/val/test by case
  (:mod:`geocl.data.medical.split`), every volume of every split read once before any
  training (:func:`~geocl.data.medical.files.check_voxels`: damaged files, NaN voxels,
  label maps that hold no class numbers are named at once); the classes are the values
  the label maps hold, as for tile masks (a map holding {0, 2, 7}: three classes,
  predictions written as 0, 2 and 7); the labelled train cases are ``label_fraction`` of
  the labelled train cases (at least one), drawn by case with ``subset_seed``; a case's
  slices never lie on two sides of a split. Slices come from
  :class:`~geocl.data.medical.nifti.NiftiSliceDataset` (RAS, common spacing, per-volume
  intensity normalisation).
- **training**: the 2D segmenter trains on slices of the labelled cases, drawn with
  replacement with probability ``foreground_fraction`` from slices holding foreground
  (the rest from the others), so that few labelled cases with a small organ still teach
  it; validation mIoU on the val cases' slices picks the best checkpoint and stops early.
- **inference**: whole volumes, slice by slice, with MONAI's ``SliceInferer`` (2D
  sliding windows of ``window`` px, Gaussian-weighted overlaps) on the preprocessed
  volume; the class probabilities go back to the input's grid by inverting the
  preprocessing (``monai.transforms.Invertd``: resampling and reorientation undone,
  bilinear), then argmax. The label map is written as NIfTI with the input's affine and
  header.
- **scores**: per test case on the input's grid with its voxel size (mm): Dice, Jaccard,
  95HD, ASD (:mod:`geocl.finetune.volume_metrics`), in ``cases.csv``; their means over
  the test cases in ``metrics.json``. A PNG per pictured case shows slices with the
  prediction (red) and label (green) contours.

Slices are padded to a side that is a multiple of 32 (the encoders downsample 32x);
``window`` too.
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Unpack

import lightning
import nibabel as nib
import numpy as np
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from geocl.data.medical.files import (
    LAYOUTS,
    NIFTI_SUFFIXES,
    Case,
    case_id,
    check_image_voxels,
    check_voxels,
    class_indices,
    class_values,
    find_cases,
    is_nifti,
    label_classes,
    median_spacing,
    read_header,
    read_voxels,
    write_nifti,
)
from geocl.data.medical.nifti import Intensity, NiftiSliceDataset, Preprocessing, apply_transform
from geocl.data.medical.split import CaseSplits, labelled_subset, split_cases
from geocl.errors import GeoclError
from geocl.finetune.downstream import (
    BudgetArguments,
    DataDescription,
    DownstreamOptions,
    Scores,
    budget_from,
    run_downstream,
)
from geocl.finetune.train import SegmentationModule, SegmenterFactory
from geocl.finetune.volume_metrics import METRICS, case_metrics
from geocl.io import atomic_write_text, save_figure

__all__ = [
    "CASES_FILE",
    "MEDICAL_KEY",
    "MedicalFinetuneResult",
    "NiftiSlices",
    "VolumePrediction",
    "label_beside",
    "plot_case",
    "predict_volume",
    "run_medical_finetune",
]

#: Key of the volume settings in a finetuned checkpoint's metadata (what predicting a volume needs).
MEDICAL_KEY = "medical"
#: The per-case metrics file of a run.
CASES_FILE = "cases.csv"
#: The side of slices and windows is rounded up to a multiple of this (the encoders' output stride).
SIDE_MULTIPLE = 32


def _round_up(side: int, multiple: int = SIDE_MULTIPLE) -> int:
    return int(math.ceil(side / multiple) * multiple)


# ----------------------------------------------------------------------- inference


class VolumeSegmenter:
    """A finetuned 2D segmenter applied to whole volumes (see the module docstring).

    Args:
        module: the finetuned model.
        meta: its checkpoint metadata (with ``meta["medical"]``).
        window: side in px of the 2D windows (rounded up to a multiple of 32); None:
            the side of the training slices.
        overlap: px shared by neighbouring windows; None: a quarter of the window.
        device: torch device; default: CUDA when available.
    """

    def __init__(
        self,
        module: SegmentationModule,
        meta: dict[str, Any],
        *,
        window: int | None = None,
        overlap: int | None = None,
        device: str | None = None,
    ) -> None:
        settings = meta[MEDICAL_KEY]
        self.module = module.eval()
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.module.to(self.device)
        self.classes = [int(value) for value in meta["classes"]]
        self.num_classes = len(self.classes)
        self.slice_axis = int(settings["slice_axis"])
        self.preprocessing = Preprocessing(tuple(settings["spacing"]), settings["intensity"])  # type: ignore[arg-type]
        self.window = _round_up(int(window or settings["image_size"]))
        if overlap is not None and not 0 <= overlap < self.window:
            raise GeoclError(
                f"must be at least 0 and below the window ({self.window} px), got {overlap}", key="overlap"
            )
        self.overlap = 0.25 if overlap is None else overlap / self.window  # MONAI's overlap is a share of the window

    @torch.no_grad()
    def predict(self, image: str | os.PathLike[str]) -> np.ndarray:
        """The label map of one volume on its own grid: uint8 ``[X, Y, Z]`` class positions (in ``classes``)."""
        from monai.inferers import SliceInferer
        from monai.transforms import Invertd

        transform = self.preprocessing.transform(with_label=False)
        data = apply_transform(transform, {"image": str(image)})
        inferer = SliceInferer(
            roi_size=(self.window, self.window),
            spatial_dim=self.slice_axis,
            sw_batch_size=16,
            overlap=self.overlap,
            mode="gaussian",
            padding_mode="constant",
            cval=0.0,
            progress=False,
        )
        volume = data["image"][None].to(self.device)  # [1, 1, X, Y, Z] MetaTensor (keeps the applied transforms)
        probabilities = torch.softmax(inferer(volume, self.module), dim=1)[0].cpu()
        data["pred"] = probabilities
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            restored = Invertd("pred", transform, orig_keys="image", nearest_interp=False)(data)["pred"]
        return np.asarray(torch.as_tensor(restored).argmax(0).numpy(), dtype=np.uint8)


def _read_volume(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Voxels ``[X, Y, Z]`` (a trailing length-1 axis dropped) and the nibabel image."""
    return read_voxels(path), nib.load(path)


def _read_label(path: Path, classes: Sequence[int]) -> np.ndarray:
    """A label map as positions in ``classes`` (int64 ``[X, Y, Z]``), its values checked."""
    values = read_voxels(path)
    label_classes(path, values)
    return class_indices(values, classes, path)


def _voxel_axis(affine: np.ndarray, ras_axis: int) -> int:
    """The voxel axis of a volume that runs along RAS axis ``ras_axis``."""
    return int(np.flatnonzero(nib.io_orientation(affine)[:, 0] == ras_axis)[0])


def plot_case(
    image: np.ndarray,
    prediction: np.ndarray | None,
    label: np.ndarray | None,
    *,
    affine: np.ndarray,
    slice_axis: int = 2,
    count: int = 3,
    title: str = "",
) -> Any:
    """A figure of ``count`` slices of a volume with the prediction (red) and label (green) contours.

    Args:
        image: ``[X, Y, Z]`` voxels as stored.
        prediction: ``[X, Y, Z]`` class indices, or None.
        label: ``[X, Y, Z]`` class indices, or None.
        affine: the volume's affine (gives the slice direction and the pixel aspect).
        slice_axis: RAS axis the slices are taken across (2: axial).
        count: slices shown: at 25, 50 and 75 % (for 3) of the foreground's extent along
            the axis (label, else prediction, else the whole volume).
        title: the figure's title.

    Returns:
        A ``matplotlib.figure.Figure`` (no pyplot).
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    axis = _voxel_axis(affine, slice_axis)
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    plane = [a for a in range(3) if a != axis]
    reference = label if label is not None and label.any() else prediction
    if reference is not None and reference.any():
        present = np.flatnonzero(np.moveaxis(reference > 0, axis, 0).reshape(reference.shape[axis], -1).any(axis=1))
        low, high = int(present[0]), int(present[-1])
    else:
        low, high = 0, image.shape[axis] - 1
    positions = sorted({int(round(low + (high - low) * (k + 1) / (count + 1))) for k in range(count)})
    figure = Figure(figsize=(3.4 * len(positions), 3.8))
    for column, position in enumerate(positions):
        axes = figure.add_subplot(1, len(positions), column + 1)
        cut = [slice(None)] * 3
        cut[axis] = position  # type: ignore[call-overload]
        axes.imshow(image[tuple(cut)].T, cmap="gray", origin="lower", aspect=zooms[plane[1]] / zooms[plane[0]])
        for volume, colour in ((label, "lime"), (prediction, "red")):
            if volume is not None and (volume[tuple(cut)] > 0).any():
                # one contour per class boundary: levels between consecutive class indices
                levels = np.arange(int(volume[tuple(cut)].max())) + 0.5
                axes.contour(volume[tuple(cut)].T, levels=levels, colors=colour, linewidths=1.0)
        axes.set_title(f"slice {position} of {image.shape[axis]}", fontsize=9)
        axes.set_axis_off()
    handles = [
        Line2D([], [], color=c, label=n)
        for v, c, n in ((label, "lime", "label"), (prediction, "red", "prediction"))
        if v is not None
    ]
    if handles:
        figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    return figure


def case_row(case: str, metrics: dict[str, float]) -> dict[str, Any]:
    """One row of ``cases.csv``: the case id and its metrics rounded to 6 decimals."""
    return {"case": case, **{name: round(float(metrics[name]), 6) for name in METRICS}}


def write_cases_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Per-case metrics (``case, dice, jaccard, hd95, asd``; distances in mm), written atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["case", *METRICS], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())
    return path


def score_case(segmenter: VolumeSegmenter, case: Case, prediction_path: Path, picture: Path | None) -> dict[str, float]:
    """Predict one labelled case, write its label map (class numbers; and picture), return its metrics.

    The label map is read (and checked: class numbers among the segmenter's ``classes``)
    before the prediction; both are compared as positions in ``classes``.
    """
    assert case.label is not None
    label = _read_label(case.label, segmenter.classes)
    prediction = segmenter.predict(case.image)
    image, stored = _read_volume(case.image)
    write_nifti(prediction_path, class_values(prediction, segmenter.classes), stored.affine, header=stored.header)
    metrics = case_metrics(prediction, label, segmenter.num_classes, spacing=stored.header.get_zooms()[:3])
    if picture is not None:
        title = f"{case.id}: Dice {metrics['dice']:.3f}, 95HD {metrics['hd95']:.1f} mm"
        save_figure(
            plot_case(image, prediction, label, affine=stored.affine, slice_axis=segmenter.slice_axis, title=title),
            picture,
        )
    return metrics


def _data_folders(volume: Path) -> list[Path]:
    """The image and label folders of the data folder that holds ``volume`` (none outside the layouts)."""
    for images, labels in LAYOUTS:
        if volume.parent.name == images:
            return [volume.parent, *[folder for folder in [volume.parent.parent / labels] if folder.is_dir()]]
    return []


def label_beside(volume: str | os.PathLike[str]) -> Path | None:
    """The label map of a volume in a data folder: ``labels/<case>`` beside ``images/<case>`` (any layout
    of :data:`~geocl.data.medical.files.LAYOUTS`, either NIfTI ending), or None."""
    volume = Path(volume)
    for images, labels in LAYOUTS:
        if volume.parent.name == images:
            name = case_id(volume)
            for suffix in NIFTI_SUFFIXES:
                candidate = volume.parent.parent / labels / f"{name}{suffix}"
                if candidate.is_file():
                    return candidate
    return None


@dataclass
class VolumePrediction:
    """What :func:`predict_volume` wrote.

    Attributes:
        path: the label map (NIfTI, the input's affine).
        png: slices with contours.
        csv: per-case metrics, when a label map was given; else None.
        metrics: the case's metrics, when a label map was given; else None.
    """

    path: Path
    png: Path
    csv: Path | None
    metrics: dict[str, float] | None


def predict_volume(
    checkpoint: str | os.PathLike[str],
    volume: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    label: str | os.PathLike[str] | None = None,
    window: int | None = None,
    overlap: int | None = None,
    device: str | None = None,
) -> VolumePrediction:
    """``geocl predict`` on a NIfTI volume: its label map, a picture and, given its label map, its metrics.

    Args:
        checkpoint: a checkpoint of :func:`run_medical_finetune`.
        volume: a ``.nii`` or ``.nii.gz`` volume.
        out: the label map to write (``.nii`` or ``.nii.gz``); the picture goes beside it
            as ``<name>.png``, the metrics as ``<name>.csv``.
        label: the volume's label map, to score the prediction against.
        window: 2D window side in px (rounded up to a multiple of 32); None: the training slice side.
        overlap: px shared by neighbouring windows; None: a quarter of the window.
        device: torch device.

    Raises:
        GeoclError: before any work: ``out`` not a NIfTI name or not writable, or it,
            its picture or its metrics file would overwrite the volume or its label map
            (also through links or ``..``) or land in the data folder's ``images/`` or
            ``labels/`` (where they would be read as a case); the volume or label
            unreadable, not 3D, on another grid, with NaN or infinite voxels, or a label
            map holding values that are no class of the model; the checkpoint not a
            volume segmenter.
    """
    from geocl.finetune.inference import check_trained_on, load_segmenter
    from geocl.finetune.predict import check_prediction_outputs  # rasterio: imported when predicting

    volume, out = Path(volume), Path(out)
    label = None if label is None else Path(label)
    if not is_nifti(out):
        raise GeoclError("must be a .nii or .nii.gz file for the predicted label map", path=out, key="out")
    stem = out.name.removesuffix(".gz").removesuffix(".nii")
    png, table = out.with_name(f"{stem}.png"), out.with_name(f"{stem}.csv")
    inputs = [volume, *([label] if label is not None else []), *_data_folders(volume)]
    for written in (out, png, *([table] if label is not None else [])):
        check_prediction_outputs(written, scene=inputs)  # the GeoTIFF predictor's rule: never onto an input
    module, meta = load_segmenter(checkpoint)
    check_trained_on(checkpoint, meta, "volumes")  # the GeoTIFF predictor's rule, the other way round
    header = read_header(volume)
    if label is not None:
        label_header = read_header(label)
        if label_header.shape != header.shape or not np.allclose(label_header.affine, header.affine, atol=1e-3):
            raise GeoclError(f"label map is not on the grid of {volume}", path=label)
    image = read_voxels(volume)
    check_image_voxels(volume, image)
    if label is not None:
        label_classes(label, read_voxels(label))
    segmenter = VolumeSegmenter(module, meta, window=window, overlap=overlap, device=device)
    case = Case(case_id(volume), volume, label, header)
    if label is None:
        prediction = segmenter.predict(volume)
        stored = nib.load(volume)
        write_nifti(out, class_values(prediction, segmenter.classes), stored.affine, header=stored.header)
        figure = plot_case(
            image,
            prediction,
            None,
            affine=stored.affine,
            slice_axis=segmenter.slice_axis,
            title=f"{case.id}: prediction",
        )
        return VolumePrediction(out, save_figure(figure, png), None, None)
    metrics = score_case(segmenter, case, out, png)
    return VolumePrediction(out, png, write_cases_csv(table, [case_row(case.id, metrics)]), metrics)


# ------------------------------------------------------------------------ training


@dataclass
class MedicalFinetuneResult:
    """What a medical finetuning run produced.

    Attributes:
        dice, jaccard, hd95, asd: means over the test cases (distances in mm).
        val_miou: best val mIoU (slices).
        checkpoint: the best checkpoint.
        out: the run folder.
        labelled_cases: ids of the labelled train cases used.
        cases: per test case: ``{"case", "dice", "jaccard", "hd95", "asd"}``.
    """

    dice: float
    jaccard: float
    hd95: float
    asd: float
    val_miou: float
    checkpoint: Path
    out: Path
    labelled_cases: list[str]
    cases: list[dict[str, Any]]


def _foreground_sampler(dataset: NiftiSliceDataset, fraction: float, count: int, seed: int) -> WeightedRandomSampler:
    """Slices with replacement, a ``fraction`` of the draws (in expectation) from slices holding foreground."""
    has = dataset.has_foreground
    if not 0.0 <= fraction <= 1.0:
        raise GeoclError(f"must be in [0, 1], got {fraction}", key="foreground_fraction")
    if has.all() or not has.any():
        weights = np.ones(len(has))
    else:
        weights = np.where(has, fraction / has.sum(), (1.0 - fraction) / (~has).sum())
    return WeightedRandomSampler(
        torch.as_tensor(weights, dtype=torch.double),
        num_samples=count,
        replacement=True,
        generator=torch.Generator().manual_seed(seed),
    )


def read_cases(
    data: str | os.PathLike[str], val_fraction: float, image_size: int
) -> tuple[list[Case], CaseSplits, list[int]]:
    """The cases of a medical data folder, their split by case and their classes, checked for a downstream training.

    Every volume (all splits, unlabelled cases too) is read once here, before any
    training (:func:`~geocl.data.medical.files.check_voxels`).

    Returns:
        ``(cases, splits, classes)``; ``classes``: 0 and the values the label maps hold.

    Raises:
        GeoclError: ``image_size`` is no multiple of :data:`SIDE_MULTIPLE`; a bad data
            folder (see :func:`~geocl.data.medical.files.find_cases`); no labelled val
            or test case; a damaged volume, NaN voxels, a label map that holds no class
            numbers (:func:`~geocl.data.medical.files.check_voxels`).
    """
    if image_size % SIDE_MULTIPLE:
        raise GeoclError(
            f"must be a multiple of {SIDE_MULTIPLE} (the encoders downsample 32x), got {image_size}",
            key="data.image_size",
        )
    cases = find_cases(data)
    splits = split_cases(cases, data, val_fraction=val_fraction)
    if not splits.val or not splits.test:
        raise GeoclError(
            f"needs labelled val and test cases ({len(splits.val)} val, {len(splits.test)} test): add labelled cases "
            "or a splits.json",
            path=data,
        )
    return cases, splits, check_voxels(cases, root=data)


def score_cases(segmenter: VolumeSegmenter, cases: Sequence[Case], out: Path, pictures: int) -> Scores:
    """Score every case (:func:`score_case`; label maps to ``out/predictions/``, the first ``pictures`` to
    ``out/plots/``, the rows to ``out/cases.csv``): their rows and the means over them (distances in mm)."""
    rows = []
    for index, case in enumerate(cases):
        picture = out / "plots" / f"{case.id}.png" if index < pictures else None
        rows.append(case_row(case.id, score_case(segmenter, case, out / "predictions" / f"{case.id}.nii.gz", picture)))
    write_cases_csv(out / CASES_FILE, rows)
    means = {name: float(np.mean([row[name] for row in rows])) for name in METRICS}
    return Scores({**means, "distance_unit": "mm"}, {f"test/{name}": value for name, value in means.items()}, rows)


@dataclass
class NiftiSlices:
    """The data of a 2D downstream training on a NIfTI data folder (a :class:`~geocl.finetune.downstream.DownstreamData`):
    cases split by case, slices of the labelled train cases drawn foreground-first, test volumes scored case by case
    on their own grid (the module docstring says how).

    Attributes:
        data: a NIfTI data folder (:func:`~geocl.data.medical.files.find_cases`).
        spacing: voxel size in mm per RAS axis; None: the cases' median.
        slice_axis: RAS axis of the slices.
        intensity: ``zscore`` or ``percentile``.
        image_size: slice side in px (a multiple of 32); 0: the largest slice, rounded up.
        val_fraction: share of the labelled cases held out as val (no ``splits.json``).
        foreground_fraction: share of the training slices drawn from slices holding foreground.
        window: inference window side; None: the slice side.
        pictures: test cases written as PNG (the first ones by name).
    """

    data: str | os.PathLike[str]
    spacing: Sequence[float] | None = None
    slice_axis: int = 2
    intensity: Intensity = "zscore"
    image_size: int = 0
    val_fraction: float = 0.2
    foreground_fraction: float = 0.5
    window: int | None = None
    pictures: int = 2

    def setup(self, options: DownstreamOptions) -> DataDescription:
        """Read every volume once (:func:`read_cases`), draw the labelled train cases, cut the slices.

        Raises:
            GeoclError: as :func:`read_cases`; a bad ``label_fraction``.
        """
        self.budget = options.budget
        cases, self.splits, classes = read_cases(self.data, self.val_fraction, self.image_size)
        self.labelled, _ = labelled_subset(self.splits.train, options.label_fraction, options.drawn_with)
        spacing = tuple(self.spacing) if self.spacing else median_spacing(cases)
        preprocessing = Preprocessing(spacing, self.intensity)  # type: ignore[arg-type]
        self.train = NiftiSliceDataset(
            self.labelled,
            preprocessing,
            slice_axis=self.slice_axis,
            image_size=self.image_size,
            with_mask=True,
            classes=classes,
            multiple=SIDE_MULTIPLE,
        )
        side = self.train.image_size
        self.val = NiftiSliceDataset(
            self.splits.val, preprocessing, slice_axis=self.slice_axis, image_size=side, with_mask=True, classes=classes
        )
        meta = {
            "in_chans": 1,
            "classes": list(classes),
            "band_stats": self.train.metadata["band_stats"],
            "nodata": None,
            "tile_size": side,
            MEDICAL_KEY: {
                "spacing": list(preprocessing.spacing),
                "slice_axis": self.slice_axis,
                "intensity": self.intensity,
                "image_size": side,
            },
        }
        record = {
            f"{name}_cases": [case.id for case in chosen]
            for name, chosen in (("labelled", self.labelled), ("test", self.splits.test), ("val", self.splits.val))
        }
        return DataDescription(
            meta, {**record, "train_slices": len(self.train)}, {"spacing": list(preprocessing.spacing)}
        )

    def loaders(self, module: lightning.LightningModule, options: DownstreamOptions) -> tuple[DataLoader, DataLoader]:
        """Training slices drawn foreground-first with replacement; every val slice.

        Raises:
            GeoclError: ``foreground_fraction`` outside [0, 1].
        """
        budget = options.budget
        sampler = _foreground_sampler(self.train, self.foreground_fraction, budget.draws, options.seed)
        return (
            DataLoader(self.train, batch_size=budget.batch_size, sampler=sampler, num_workers=budget.num_workers),
            DataLoader(self.val, batch_size=budget.batch_size, num_workers=budget.num_workers),
        )

    def score(
        self, trainer: lightning.Trainer, module: lightning.LightningModule, checkpoint: Path, out: Path
    ) -> Scores:
        """Dice, Jaccard, 95HD and ASD of ``checkpoint`` per test case, on the input's grid (:func:`score_cases`)."""
        from geocl.finetune.inference import load_segmenter  # rasterio: imported when scoring

        segmenter = VolumeSegmenter(*load_segmenter(checkpoint), window=self.window)
        return score_cases(segmenter, self.splits.test, out, self.pictures)


def run_medical_finetune(
    *,
    data: str | Path,
    out: str | Path,
    encoder_checkpoint: str | Path | None = None,
    encoder: str = "resnet18",
    arch: str = "unet",
    label_fraction: float = 0.2,
    seed: int = 0,
    subset_seed: int | None = None,
    spacing: Sequence[float] | None = None,
    slice_axis: int = 2,
    intensity: Intensity = "zscore",
    image_size: int = 0,
    val_fraction: float = 0.2,
    foreground_fraction: float = 0.5,
    window: int | None = None,
    pictures: int = 2,
    lr: float = 1e-3,
    crop: int = 128,
    freeze_encoder: bool = False,
    **budget: Unpack[BudgetArguments],
) -> MedicalFinetuneResult:
    """Finetune a 2D segmenter on slices of a fraction of the labelled cases; per-case metrics on the test cases.

    Args:
        data: a NIfTI data folder (:func:`~geocl.data.medical.files.find_cases`).
        out: run folder (checkpoints/, logs/, predictions/, plots/, cases.csv, metrics.json).
        encoder_checkpoint: a geocl pretrain checkpoint (1 band), or None for random init.
        encoder: encoder name for random init (a checkpoint brings its own).
        arch: ``unet``, ``deeplabv3plus`` (CNN encoders) or ``dpt`` (ViT).
        label_fraction, seed, subset_seed, lr, crop, freeze_encoder: as for
            :func:`geocl.finetune.train.run_finetune` (the subset drawn by case).
        spacing, slice_axis, intensity, image_size, val_fraction, foreground_fraction,
            window, pictures: how the volumes are read, drawn and scored (:class:`NiftiSlices`).
        **budget: the keywords of :class:`~geocl.finetune.downstream.TrainingBudget`
            (``max_epochs`` ... ``logger``), slices instead of tiles.

    Returns:
        A :class:`MedicalFinetuneResult`; ``out/metrics.json`` holds the same figures.

    Raises:
        GeoclError: ``out`` holds a finetuning run or cannot be written; a bad data folder
            (:func:`read_cases`); a bad fraction; a checkpoint for another band count.
        TypeError: an unknown keyword argument.
    """
    factory = SegmenterFactory(
        arch=arch,
        encoder=encoder,
        encoder_checkpoint=encoder_checkpoint,
        lr=lr,
        crop=crop,
        freeze_encoder=freeze_encoder,
    )
    slices = NiftiSlices(
        data,
        spacing=spacing,
        slice_axis=slice_axis,
        intensity=intensity,
        image_size=image_size,
        val_fraction=val_fraction,
        foreground_fraction=foreground_fraction,
        window=window,
        pictures=pictures,
    )
    options = DownstreamOptions(
        out=out,
        label_fraction=label_fraction,
        seed=seed,
        subset_seed=subset_seed,
        budget=budget_from(budget),
        # compared with a run found in out by what metrics.json holds at its top level (no options record)
        identity={"label_fraction": label_fraction, "seed": seed, "subset_seed": subset_seed, **factory.identity()},
        record_options=False,
    )
    done = run_downstream(factory, slices, options)
    return MedicalFinetuneResult(
        **{name: done.record[name] for name in METRICS},
        val_miou=done.best_score,
        checkpoint=done.checkpoint,
        out=done.out,
        labelled_cases=done.record["labelled_cases"],
        cases=done.scores.cases,
    )
