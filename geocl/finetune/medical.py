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
  header (:mod:`geocl.finetune.volume_prediction`).
- **scores**: per test case on the input's grid with its voxel size (mm): Dice, Jaccard,
  95HD, ASD (:mod:`geocl.finetune.volume_metrics`), in ``cases.csv``; their means over
  the test cases in ``metrics.json``. A PNG per pictured case shows slices with the
  prediction (red) and label (green) contours (:func:`~geocl.finetune.volume_prediction.score_cases`).

Slices are padded to a side that is a multiple of 32 (the encoders downsample 32x);
``window`` too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Unpack

import lightning
import numpy as np
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from geocl.data.medical.files import Case, check_voxels, find_cases, median_spacing
from geocl.data.medical.nifti import Intensity, NiftiSliceDataset, Preprocessing
from geocl.data.medical.split import CaseSplits, labelled_subset, split_cases
from geocl.errors import GeoclError
from geocl.finetune.downstream import (
    BudgetArguments,
    DataDescription,
    DownstreamData,
    DownstreamOptions,
    ModuleFactory,
    Scores,
    budget_from,
    run_downstream,
)
from geocl.finetune.train import SegmenterFactory
from geocl.finetune.volume_metrics import METRICS

# inference and per-case scoring live in geocl.finetune.volume_prediction; these names stay importable from here
from geocl.finetune.volume_prediction import (
    CASES_FILE,
    MEDICAL_KEY,
    SIDE_MULTIPLE,
    VolumePrediction,
    VolumeSegmenter,
    label_beside,
    plot_case,
    predict_volume,
    score_cases,
)

__all__ = [
    "CASES_FILE",
    "MEDICAL_KEY",
    "MedicalFinetuneResult",
    "NiftiSlices",
    "VolumePrediction",
    "VolumeSegmenter",
    "label_beside",
    "plot_case",
    "predict_volume",
    "run_medical_finetune",
]


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
        np.asarray(weights, dtype=np.float64).tolist(),
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
    return run_on_cases(factory, slices, out, label_fraction, seed, subset_seed, budget, network=factory.identity())


def run_on_cases(
    factory: ModuleFactory,
    data: DownstreamData,
    out: str | Path,
    label_fraction: float,
    seed: int,
    subset_seed: int | None,
    budget: BudgetArguments,
    *,
    network: Mapping[str, Any],
) -> MedicalFinetuneResult:
    """One downstream training on a medical data folder's cases, scored per test case
    (:func:`run_medical_finetune`, and the semi-supervised trainer of
    :mod:`geocl.finetune.medical_semi_supervised`).

    ``network``: what identifies the factory's network in the run folder (its ``identity()``).
    :attr:`MedicalFinetuneResult.val_miou` is the best monitored score where the factory
    monitors the slice mIoU, else NaN (the semi-supervised trainer monitors a Dice per case).
    """
    options = DownstreamOptions(
        out=out,
        label_fraction=label_fraction,
        seed=seed,
        subset_seed=subset_seed,
        budget=budget_from(budget),
        # compared with a run found in out by what metrics.json holds at its top level (no options record)
        identity={"label_fraction": label_fraction, "seed": seed, "subset_seed": subset_seed, **network},
        record_options=False,
    )
    done = run_downstream(factory, data, options)
    return MedicalFinetuneResult(
        **{name: done.record[name] for name in METRICS},
        val_miou=done.best_score if factory.monitor == "val/miou" else math.nan,
        checkpoint=done.checkpoint,
        out=done.out,
        labelled_cases=done.record["labelled_cases"],
        cases=done.scores.cases,
    )
