"""FBA on NIfTI volumes: semi-supervised 2D (slices) or 3D (patches) segmentation, scored per test case.

The semi-supervised counterpart of :func:`geocl.finetune.medical.run_medical_finetune`,
on the same downstream skeleton (:func:`geocl.finetune.downstream.run_downstream`, with the
network of :class:`~geocl.finetune.semi_supervised.FBAFactory` and the data adapter
:class:`SemiSupervisedVolumes`), with the same data rules and outputs, so that the medical Dice evaluation reads both
alike: cases split train/val/test by case (:func:`~geocl.data.medical.split.split_cases`),
every volume read once before training and the classes those of the label maps
(:func:`~geocl.finetune.medical.read_cases`),
the labelled train cases drawn by case with the subset seed
(:func:`~geocl.data.medical.split.labelled_subset`), the
test cases predicted whole and scored on their own grid (Dice, Jaccard, 95HD, ASD in mm;
``cases.csv``, ``metrics.json``, ``predictions/``, ``plots/``), and a
:class:`~geocl.finetune.medical.MedicalFinetuneResult`.

What is semi-supervised (:class:`~geocl.finetune.semi_supervised_module.SemiSupervisedSegmenter`,
labelled-first batches of :mod:`geocl.sampling.labelled_first`):

- labelled items: slices (2D) or patches (3D) of the labelled train cases, with masks;
- unlabelled items: those of every other train case, read without its label map (the
  labelled cases outside the subset and the cases that have none), so that no label of
  theirs reaches training, not even through where patches are drawn;
- 2D: the U-Net of :func:`~geocl.models.fba_nets.fba_unet` on the encoder (a pretrain
  checkpoint loads into it), random ``crop`` px crops of the slices, validation on the val
  cases' slices, test volumes predicted slice by slice (MONAI's ``SliceInferer``);
- 3D: the released V-Net (:func:`~geocl.models.fba_nets.fba_vnet`, random init),
  ``patch_size`` patches (labelled cases: centred on foreground with probability
  ``foreground_fraction``, MONAI's ``RandCropByPosNegLabeld``; unlabelled cases:
  uniform), validation and test on whole volumes by MONAI's sliding window of
  ``patch_size`` (half overlap, as :meth:`SemiSupervisedSegmenter.predict_probabilities`).

The test prediction is decoder 1's, as in the released test script (github.com/cys1102/FBA-Net
scores decoder 1's output alone, and its README's numbers come from that path);
probabilities go back to the input's grid by inverting the preprocessing
(``monai.transforms.Invertd``), then argmax.

Checkpoint selection scores the val cases as the test scores the test cases: one Dice per
case (2D: over the stack of the case's slices, :class:`~geocl.finetune.semi_supervised_data.CaseSlices`;
3D: the whole volume by sliding window), averaged over cases
(:func:`~geocl.finetune.semi_supervised_data.case_dice`), not a Dice of all val slices pooled,
which an easy case's many foreground slices make optimistic.

The label budget (``label_budget``):

* ``train``: the fraction is of the labelled train cases; the val cases are held out
  (their images never train).
* ``train-and-val``: the paper's reading (FBA-Net, arXiv 2306.15189: 20 % of the 80 left-atrium
  training volumes = 16 labelled + 64 unlabelled, the 20 test volumes apart). geocl
  needs validation cases, and the paper took none apart (the released code picked its
  checkpoint on the test volumes, which geocl does not copy); so its 80 are geocl's train
  and val cases together: ``ceil(fraction * (train + val))`` labelled cases are drawn among
  the train cases (the subset seed's order, as :func:`~geocl.data.medical.split.labelled_subset`),
  every other case of the 80 trains unlabelled, the val cases included (their images,
  never their labels), and the val labels only choose the checkpoint. With a
  ``splits.json`` of 64 train + 16 val + 20 test cases: 16 + 64 at 20 %.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Unpack

import lightning
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from geocl.data.medical.files import Case, class_indices, median_spacing
from geocl.data.medical.nifti import (
    Intensity,
    NiftiSliceDataset,
    NiftiVolumeDataset,
    Preprocessing,
    apply_transform,
    load_case,
)
from geocl.data.medical.split import labelled_subset
from geocl.errors import GeoclError
from geocl.finetune.downstream import BudgetArguments, DataDescription, DownstreamOptions, Scores
from geocl.finetune.medical import MedicalFinetuneResult, read_cases, run_on_cases
from geocl.finetune.semi_supervised import FBAFactory, FBAOptions, LabelBudget
from geocl.finetune.semi_supervised_data import CaseSlices, semi_supervised_loaders
from geocl.finetune.semi_supervised_module import SemiSupervisedSegmenter
from geocl.finetune.volume_prediction import MEDICAL_KEY, SIDE_MULTIPLE, labels_on_input_grid, score_cases
from geocl.models.checkpoints import read_checkpoint

__all__ = [
    "SemiSupervisedVolumePredictor",
    "SemiSupervisedVolumes",
    "WholeVolumes",
    "label_budget_split",
    "run_medical_semi_supervised",
]


class WholeVolumes(Dataset[dict[str, Any]]):
    """Labelled cases whole and preprocessed, for 3D validation.

    Args:
        cases: the labelled cases.
        preprocessing: how volumes are read.
        classes: the class numbers, ascending from 0; masks hold their positions.

    Samples: ``image`` float32 ``[1, X, Y, Z]``, ``mask`` long ``[X, Y, Z]``.

    Raises:
        GeoclError: an unlabelled case (naming its image); a label value that is none of ``classes``.
    """

    def __init__(self, cases: Sequence[Case], preprocessing: Preprocessing, classes: Sequence[int]) -> None:
        unlabelled = [case for case in cases if not case.labelled]
        if unlabelled:
            raise GeoclError("a validation case needs a label map", path=unlabelled[0].image)
        self.volumes = [load_case(case, preprocessing) for case in cases]
        for volume in self.volumes:
            if volume.label is not None and volume.case.label is not None:  # checked above: every case is labelled
                volume.label = class_indices(volume.label, classes, volume.case.label)

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        loaded = self.volumes[index]
        assert loaded.label is not None
        return {"image": torch.from_numpy(loaded.image[None]), "mask": torch.from_numpy(loaded.label)}


class SemiSupervisedVolumePredictor:
    """Decoder 1 of a :class:`SemiSupervisedSegmenter` on whole volumes, back on the input's grid.

    Has what :func:`geocl.finetune.medical.score_case` reads of a volume segmenter
    (``predict``, ``classes``, ``num_classes``, ``slice_axis``).

    Args:
        module: the trained model (2D: slices; 3D: volumes).
        preprocessing: how its training volumes were read.
        slice_axis: RAS axis of the 2D slices (3D: the axis pictures are drawn across).
        window: 2D window side in px (the training slice side).
        device: torch device; default: CUDA when available.
        classes: the class number of each output; default ``0 .. num_classes - 1``.
    """

    def __init__(
        self,
        module: SemiSupervisedSegmenter,
        preprocessing: Preprocessing,
        *,
        slice_axis: int = 2,
        window: int | None = None,
        device: str | None = None,
        classes: Sequence[int] | None = None,
    ) -> None:
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.module = module.eval().to(self.device)
        self.preprocessing = preprocessing
        self.num_classes = int(module.num_classes)
        self.classes = list(range(self.num_classes)) if classes is None else [int(value) for value in classes]
        if len(self.classes) != self.num_classes:
            raise ValueError(f"{len(self.classes)} classes for a model of {self.num_classes} outputs")
        self.slice_axis = slice_axis
        self.window = window

    def decoder_one(self, images: Tensor) -> Tensor:
        """Class probabilities of decoder 1, ``[B, K, *S]`` (3D: by sliding window beyond the patch)."""
        return self.module.predict_probabilities(images)[0]

    @torch.no_grad()
    def predict(self, image: str | os.PathLike[str]) -> np.ndarray:
        """The label map of one volume on its own grid: uint8 ``[X, Y, Z]`` class positions (in ``classes``)."""
        from monai.inferers import SliceInferer

        transform = self.preprocessing.transform(with_label=False)
        data = apply_transform(transform, {"image": str(image)})
        volume = data["image"][None].to(self.device)  # [1, 1, X, Y, Z] MetaTensor (keeps the applied transforms)
        if self.module.spatial_dims == 2:
            side = int(self.window or SIDE_MULTIPLE)
            inferer = SliceInferer(
                roi_size=(side, side),
                spatial_dim=self.slice_axis,
                sw_batch_size=16,
                overlap=0.25,
                mode="gaussian",
                padding_mode="constant",
                cval=0.0,
                progress=False,
            )
            probabilities = inferer(volume, self.decoder_one)
        else:
            probabilities = self.decoder_one(volume)
        return labels_on_input_grid(torch.as_tensor(probabilities)[0].cpu(), data, transform)


def label_budget_split(
    train: Sequence[Case], val: Sequence[Case], fraction: float, seed: int, budget: LabelBudget = "train"
) -> tuple[list[Case], list[Case]]:
    """The labelled and the unlabelled training cases under a label budget (module docstring).

    Args:
        train: the train cases.
        val: the val cases (``train-and-val``: counted in the budget, trained unlabelled).
        fraction: the label fraction, in (0, 1].
        seed: the subset seed.
        budget: ``train`` or ``train-and-val``.

    Returns:
        ``(labelled, unlabelled)``: labelled among the train cases; unlabelled the other
        train cases, then (``train-and-val``) the val cases.

    Raises:
        GeoclError: as :func:`~geocl.data.medical.split.labelled_subset`; ``train-and-val``
            asking more labelled cases than the train cases hold (key ``label_fraction``).
    """
    if budget == "train":
        return labelled_subset(train, fraction, seed)
    if not 0.0 < fraction <= 1.0:
        raise GeoclError(f"must be in (0, 1], got {fraction}", key="label_fraction")
    candidates = [case for case in train if case.labelled]
    pool = len(candidates) + len(val)
    keep = max(1, math.ceil(fraction * pool))
    if keep > len(candidates):
        raise GeoclError(
            f"{fraction:g} of the {pool} train and val cases is {keep} labelled cases, more than the "
            f"{len(candidates)} labelled train cases; lower it or move cases from val to train",
            key="label_fraction",
        )
    # labelled_subset's draw (the subset seed's order over the candidates), ``keep`` of them: a fraction just
    # below keep / n gives exactly ``keep`` under its ceil rule whatever the float rounding
    labelled, rest = labelled_subset(train, (keep - 0.5) / len(candidates), seed)
    return labelled, [*rest, *val]


def _without_labels(cases: Sequence[Case]) -> list[Case]:
    """The cases as unlabelled ones: their label maps are not even read."""
    return [dataclasses.replace(case, label=None) for case in cases]


@dataclass
class SemiSupervisedVolumes:
    """The data of FBA on a NIfTI data folder (a :class:`~geocl.finetune.downstream.DownstreamData`).

    Cases split by case, every volume read once before training
    (:func:`~geocl.finetune.medical.read_cases`), the labelled train cases drawn under the
    label budget (:func:`label_budget_split`), the other training cases unlabelled (their
    label maps never read); 2D: slices, 3D: patches (module docstring). Validation by
    case; test volumes predicted by decoder 1 and scored case by case on their own grid
    (:func:`~geocl.finetune.volume_prediction.score_cases`).

    Attributes:
        data: a NIfTI data folder (:func:`~geocl.data.medical.files.find_cases`).
        fba: FBA's settings (``spatial_dims``, ``label_budget``, ``patch_size``...).
        spacing, slice_axis, intensity, image_size, val_fraction, pictures: as
            :class:`~geocl.finetune.medical.NiftiSlices`.
        foreground_fraction: 3D: probability that a labelled patch is centred on foreground.
        crop: 2D training crop side (px; at most the slice side).
    """

    data: str | Path
    fba: FBAOptions
    spacing: Sequence[float] | None = None
    slice_axis: int = 2
    intensity: Intensity = "zscore"
    image_size: int = 0
    val_fraction: float = 0.2
    foreground_fraction: float = 0.5
    crop: int = 128
    pictures: int = 2

    def setup(self, options: DownstreamOptions) -> DataDescription:
        """Read every volume once, draw the labelled cases, make the training and val items.

        Raises:
            GeoclError: as :func:`~geocl.finetune.medical.read_cases`; a bad label fraction or budget.
        """
        cases, self.splits, classes = read_cases(self.data, self.val_fraction, self.image_size)
        self.classes = list(classes)
        split = label_budget_split(
            self.splits.train, self.splits.val, options.label_fraction, options.drawn_with, self.fba.label_budget
        )
        self.labelled, rest = split
        self.unlabelled = [] if self.fba.supervised_only else _without_labels(rest)
        x, y, z = self.spacing if self.spacing else median_spacing(cases)
        self.preprocessing = Preprocessing((float(x), float(y), float(z)), self.intensity)
        self.side: int | None = None
        if self.fba.spatial_dims == 2:
            patch = self._slices()
        else:
            patch = self._patches(options)
        settings = {
            "spacing": list(self.preprocessing.spacing),
            "slice_axis": self.slice_axis,
            "intensity": self.intensity,
            "image_size": self.side,
            "patch_size": list(patch) if self.fba.spatial_dims == 3 else None,
        }
        record = {
            "labelled_cases": [case.id for case in self.labelled],
            "unlabelled_cases": [case.id for case in self.unlabelled],
            "test_cases": [case.id for case in self.splits.test],
            "val_cases": [case.id for case in self.splits.val],
        }
        network = {
            "labelled_bs": min(self.fba.labelled_bs, options.budget.batch_size),
            "patch_size": patch,
            "val_per_case": True,
        }
        meta = {"in_chans": 1, "classes": self.classes, MEDICAL_KEY: settings}
        return DataDescription(meta, record, {"spacing": list(self.preprocessing.spacing)}, network)

    def _slices(self) -> tuple[int, ...]:
        """2D: the labelled and unlabelled training slices, the val cases' slices by case; the crop."""
        train = NiftiSliceDataset(
            self.labelled,
            self.preprocessing,
            slice_axis=self.slice_axis,
            image_size=self.image_size,
            with_mask=True,
            classes=self.classes,
            multiple=SIDE_MULTIPLE,
        )
        side = self.side = train.image_size
        self.train: Dataset[dict[str, Any]] = train
        self.other: Dataset[dict[str, Any]] | None = None
        if self.unlabelled:
            self.other = NiftiSliceDataset(
                self.unlabelled, self.preprocessing, slice_axis=self.slice_axis, image_size=side
            )
        val = NiftiSliceDataset(
            self.splits.val,
            self.preprocessing,
            slice_axis=self.slice_axis,
            image_size=side,
            with_mask=True,
            classes=self.classes,
        )
        self.val: Dataset[dict[str, Any]] = CaseSlices(val)
        return (min(self.crop, side),) * 2

    def _patches(self, options: DownstreamOptions) -> tuple[int, ...]:
        """3D: pools of labelled and unlabelled patches as large as the budget draws (none seen twice); whole val volumes."""
        if self.fba.patch_size is None:
            raise GeoclError(_NO_PATCH, key="method.patch_size")
        patch = tuple(int(side) for side in self.fba.patch_size)
        draws = options.budget.max_epochs * options.budget.draws
        self.train = NiftiVolumeDataset(
            self.labelled,
            self.preprocessing,
            patch,
            foreground_fraction=self.foreground_fraction,
            samples_per_case=math.ceil(draws / len(self.labelled)),
            seed=options.seed,
            classes=self.classes,
        )
        self.other = None
        if self.unlabelled:
            self.other = NiftiVolumeDataset(
                self.unlabelled,
                self.preprocessing,
                patch,
                foreground_fraction=0.0,
                samples_per_case=math.ceil(draws / len(self.unlabelled)),
                seed=options.seed,
            )
        self.val = WholeVolumes(self.splits.val, self.preprocessing, self.classes)
        return patch

    def loaders(
        self, module: lightning.LightningModule, options: DownstreamOptions
    ) -> tuple[DataLoader[dict[str, Any]], DataLoader[dict[str, Any]] | None]:
        """Labelled-first batches (:func:`~geocl.finetune.semi_supervised_data.semi_supervised_loaders`); val cases whole."""
        assert isinstance(module, SemiSupervisedSegmenter)
        config, dims = module.config, module.spatial_dims
        return semi_supervised_loaders(config, dims, self.train, self.other, self.val, options.budget, options.seed)

    def score(
        self, trainer: lightning.Trainer, module: lightning.LightningModule, checkpoint: Path, out: Path
    ) -> Scores:
        """Decoder 1 of ``checkpoint`` on each test case, on the input's grid: Dice, Jaccard, 95HD, ASD (mm)."""
        assert isinstance(module, SemiSupervisedSegmenter)
        module.load_state_dict(read_checkpoint(checkpoint)["state_dict"])  # torch.load(weights_only=True)
        predictor = SemiSupervisedVolumePredictor(
            module, self.preprocessing, slice_axis=self.slice_axis, window=self.side, classes=self.classes
        )
        return score_cases(predictor, self.splits.test, out, self.pictures)


_NO_PATCH = "3D FBA trains on patches: set it, e.g. [112, 112, 80] (the released left-atrium patch)"


def run_medical_semi_supervised(
    *,
    data: str | Path,
    out: str | Path,
    encoder_checkpoint: str | Path | None = None,
    encoder: str = "resnet18",
    label_fraction: float = 0.2,
    seed: int = 0,
    subset_seed: int | None = None,
    spacing: Sequence[float] | None = None,
    slice_axis: int = 2,
    intensity: Intensity = "zscore",
    image_size: int = 0,
    val_fraction: float = 0.2,
    foreground_fraction: float = 0.5,
    pictures: int = 2,
    fba: FBAOptions | None = None,
    optimizer: Literal["sgd", "adamw"] = "adamw",
    lr: float = 1e-3,
    crop: int = 128,
    **budget: Unpack[BudgetArguments],
) -> MedicalFinetuneResult:
    """FBA on a NIfTI data folder: a fraction of the labelled train cases plus the other train cases unlabelled.

    Args:
        data: a NIfTI data folder (:func:`~geocl.data.medical.files.find_cases`).
        out: run folder (must not hold a finetuning run).
        encoder_checkpoint: 2D only: a geocl pretrain checkpoint (1 band) for the shared encoder.
        encoder: 2D encoder of a random init (a checkpoint brings its own).
        label_fraction, seed, subset_seed, spacing, slice_axis, intensity, image_size,
            val_fraction: as :func:`~geocl.finetune.medical.run_medical_finetune`.
        foreground_fraction: 3D: probability that a labelled patch is centred on foreground.
        pictures: test cases written as PNG.
        fba: FBA's settings (:class:`~geocl.finetune.semi_supervised.FBAOptions`:
            ``spatial_dims`` 2 (slices, U-Net) or 3 (patches, V-Net; needs ``patch_size``),
            ``label_budget``...); None: its defaults with ``labelled_bs`` 2.
        optimizer: ``adamw`` (every other row's) or ``sgd`` (released, momentum 0.9, constant lr).
        lr: learning rate.
        crop: 2D training crop side (px).
        **budget: the keywords of :class:`~geocl.finetune.downstream.TrainingBudget`
            (``max_epochs`` ... ``logger``); ``batch_size`` is the whole labelled-first batch.

    Returns:
        A :class:`~geocl.finetune.medical.MedicalFinetuneResult` (means over the test
        cases; ``val_miou`` NaN: the checkpoint is chosen by val Dice, the released
        criterion); ``out/metrics.json`` holds it with the run's settings.

    Raises:
        GeoclError: as ``run_medical_finetune``; a 3D run without ``patch_size`` or
            with a (2D) encoder checkpoint; fewer items than a batch takes.
        TypeError: an unknown keyword argument.
    """
    fba = fba or FBAOptions(labelled_bs=2)
    if fba.spatial_dims == 3 and fba.patch_size is None:
        raise GeoclError(_NO_PATCH, key="method.patch_size")
    if fba.spatial_dims == 3 and encoder_checkpoint is not None:
        raise GeoclError(
            "the 3D V-Net starts from random init (pretrain checkpoints hold 2D encoders); "
            "use spatial_dims 2 to start from one",
            key="method.init_checkpoint",
        )
    factory = FBAFactory(
        fba=fba,
        encoder=encoder,
        encoder_checkpoint=encoder_checkpoint,
        optimizer=optimizer,
        lr=lr,
        monitor="val/dice",
        volumes=True,
    )
    volumes = SemiSupervisedVolumes(
        data,
        fba,
        spacing=spacing,
        slice_axis=slice_axis,
        intensity=intensity,
        image_size=image_size,
        val_fraction=val_fraction,
        foreground_fraction=foreground_fraction,
        crop=crop,
        pictures=pictures,
    )
    return run_on_cases(factory, volumes, out, label_fraction, seed, subset_seed, budget, network=factory.identity())
