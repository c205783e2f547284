"""Whole NIfTI volumes through a finetuned 2D segmenter: predicted slice by slice, back on their grid, scored per case.

What :mod:`geocl.finetune.medical` (and its semi-supervised counterpart,
:mod:`geocl.finetune.medical_semi_supervised`) does after training, and what ``geocl
predict`` does to a NIfTI volume:

- **inference**: whole volumes, slice by slice, with MONAI's ``SliceInferer`` (2D
  sliding windows of ``window`` px, Gaussian-weighted overlaps) on the preprocessed
  volume; the class probabilities go back to the input's grid by inverting the
  preprocessing (``monai.transforms.Invertd``: resampling and reorientation undone,
  bilinear), then argmax. The label map is written as NIfTI with the input's affine and
  header (:class:`VolumeSegmenter`, :func:`predict_volume`).
- **scores**: per case on the input's grid with its voxel size (mm): Dice, Jaccard,
  95HD, ASD (:mod:`geocl.finetune.volume_metrics`), in ``cases.csv``; their means over
  the cases (:func:`score_cases`). A PNG per pictured case shows slices with the
  prediction (red) and label (green) contours (:func:`plot_case`).

Windows are rounded up to a multiple of 32 (the encoders downsample 32x).
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import nibabel as nib
import numpy as np
import torch
from torch import Tensor

from geocl.data.medical.files import (
    LAYOUTS,
    NIFTI_SUFFIXES,
    Case,
    case_id,
    check_image_voxels,
    class_indices,
    class_values,
    is_nifti,
    label_classes,
    read_header,
    read_voxels,
    write_nifti,
)
from geocl.data.medical.nifti import Preprocessing, apply_transform
from geocl.errors import GeoclError
from geocl.finetune.downstream import Scores
from geocl.finetune.train import SegmentationModule
from geocl.finetune.volume_metrics import METRICS, case_metrics
from geocl.io import atomic_write_text, save_figure

__all__ = [
    "CASES_FILE",
    "MEDICAL_KEY",
    "SIDE_MULTIPLE",
    "VolumePrediction",
    "VolumeSegmenter",
    "case_row",
    "label_beside",
    "plot_case",
    "predict_volume",
    "score_case",
    "score_cases",
    "write_cases_csv",
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
        x, y, z = (float(side) for side in settings["spacing"])
        self.preprocessing = Preprocessing((x, y, z), settings["intensity"])
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
        logits = torch.as_tensor(inferer(volume, self.module))  # one output: a tensor [1, K, X, Y, Z]
        return labels_on_input_grid(torch.softmax(logits, dim=1)[0].cpu(), data, transform)


def labels_on_input_grid(
    probabilities: Tensor, data: dict[str, Any], transform: Callable[[dict[str, Any]], dict[str, Any]]
) -> np.ndarray:
    """Class probabilities of a preprocessed volume back on the input's grid, then argmax.

    The preprocessing is undone by ``monai.transforms.Invertd`` (resampling and
    reorientation, bilinear), reading the transforms that ``data["image"]`` (a MetaTensor)
    carries.

    Args:
        probabilities: ``[K, *S]`` on the preprocessed grid.
        data: what ``transform`` made of ``{"image": path}``.
        transform: the preprocessing (a MONAI ``Compose``,
            :meth:`~geocl.data.medical.nifti.Preprocessing.transform`).

    Returns:
        uint8 ``[X, Y, Z]`` class positions on the input's voxels.
    """
    from monai.transforms import Invertd, InvertibleTransform

    if not isinstance(transform, InvertibleTransform):
        raise TypeError(
            f"{type(transform).__name__} cannot be inverted: the predictions cannot go back to the input grid"
        )
    keyed: dict[Hashable, Any] = {key: value for key, value in data.items()}
    keyed["pred"] = probabilities
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        restored = Invertd("pred", transform, orig_keys="image", nearest_interp=False)(keyed)["pred"]
    return np.asarray(torch.as_tensor(restored).argmax(0).numpy(), dtype=np.uint8)


class CaseSegmenter(Protocol):
    """What :func:`score_case` reads of a volume segmenter (:class:`VolumeSegmenter`, FBA's predictor...)."""

    @property
    def classes(self) -> list[int]:
        """The class number of each output."""
        ...

    @property
    def num_classes(self) -> int:
        """The outputs of the model."""
        ...

    @property
    def slice_axis(self) -> int:
        """RAS axis the pictures are drawn across."""
        ...

    def predict(self, image: str | os.PathLike[str]) -> np.ndarray:
        """The label map of one volume on its own grid: uint8 ``[X, Y, Z]`` class positions."""
        ...


def _read_volume(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Voxels ``[X, Y, Z]`` (a trailing length-1 axis dropped) and the nibabel image."""
    return read_voxels(path), _nifti(path)


def _nifti(path: str | os.PathLike[str]) -> nib.Nifti1Image:
    """The nibabel image of a ``.nii``/``.nii.gz`` file (a NIfTI image, as :mod:`geocl.data.medical.files` reads it)."""
    return cast(nib.Nifti1Image, nib.load(path))


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


def score_case(segmenter: CaseSegmenter, case: Case, prediction_path: Path, picture: Path | None) -> dict[str, float]:
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
        checkpoint: a checkpoint of :func:`geocl.finetune.medical.run_medical_finetune`.
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
        stored = _nifti(volume)
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


def score_cases(segmenter: CaseSegmenter, cases: Sequence[Case], out: Path, pictures: int) -> Scores:
    """Score every case (:func:`score_case`; label maps to ``out/predictions/``, the first ``pictures`` to
    ``out/plots/``, the rows to ``out/cases.csv``): their rows and the means over them (distances in mm)."""
    rows = []
    for index, case in enumerate(cases):
        picture = out / "plots" / f"{case.id}.png" if index < pictures else None
        rows.append(case_row(case.id, score_case(segmenter, case, out / "predictions" / f"{case.id}.nii.gz", picture)))
    write_cases_csv(out / CASES_FILE, rows)
    means = {name: float(np.mean([row[name] for row in rows])) for name in METRICS}
    return Scores({**means, "distance_unit": "mm"}, {f"test/{name}": value for name, value in means.items()}, rows)
