"""FBA on NIfTI volumes: semi-supervised 2D (slices) or 3D (patches) segmentation, scored per test case.

The semi-supervised counterpart of :func:`geocl.finetune.medical.run_medical_finetune`,
with the same data rules and outputs, so that the medical Dice evaluation reads both
alike: cases split train/val/test by case (:func:`~geocl.data.medical.split.split_cases`),
every volume read once before training and the classes those of the label maps
(:func:`~geocl.finetune.medical.read_cases`),
the labelled train cases drawn by case with the subset seed
(:func:`~geocl.data.medical.split.labelled_subset`), the
test cases predicted whole and scored on their own grid (Dice, Jaccard, 95HD, ASD in mm;
``cases.csv``, ``metrics.json``, ``predictions/``, ``plots/``), and a
:class:`~geocl.finetune.medical.MedicalFinetuneResult`.

What is semi-supervised (:class:`~geocl.finetune.semi_supervised.SemiSupervisedSegmenter`,
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

The test prediction is decoder 1's (spec ambiguity 6); probabilities go back to the input's
grid by inverting the preprocessing (``monai.transforms.Invertd``), then argmax.

Checkpoint selection scores the val cases as the test scores the test cases: one Dice per
case (2D: over the stack of the case's slices, :class:`~geocl.finetune.semi_supervised.CaseSlices`;
3D: the whole volume by sliding window), averaged over cases
(:func:`~geocl.finetune.semi_supervised.case_dice`), not a Dice of all val slices pooled,
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
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

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
from geocl.finetune.medical import (
    CASES_FILE,
    MEDICAL_KEY,
    SIDE_MULTIPLE,
    MedicalFinetuneResult,
    case_row,
    read_cases,
    score_case,
    write_cases_csv,
)
from geocl.finetune.model import load_pretrained_encoder, read_checkpoint, read_pretrain_checkpoint
from geocl.finetune.semi_supervised import RAMP_END, CaseSlices, SemiSupervisedSegmenter, fit_semi_supervised
from geocl.finetune.train import check_finetune_folder, write_result
from geocl.finetune.volume_metrics import METRICS
from geocl.losses.fba import ContrastMode

__all__ = ["SemiSupervisedVolumePredictor", "WholeVolumes", "label_budget_split", "run_medical_semi_supervised"]

#: What a label fraction is of: the train cases, or the train and val cases together (the paper's 80).
LabelBudget = Literal["train", "train-and-val"]


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
            volume.label = class_indices(volume.label, classes, volume.case.label)  # type: ignore[arg-type]

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
        self.num_classes = int(module.hparams.num_classes)
        self.classes = list(range(self.num_classes)) if classes is None else [int(value) for value in classes]
        if len(self.classes) != self.num_classes:
            raise ValueError(f"{len(self.classes)} classes for a model of {self.num_classes} outputs")
        self.slice_axis = slice_axis
        self.window = window

    def decoder_one(self, images: Tensor) -> Tensor:
        """Class probabilities of decoder 1, ``[B, K, *S]`` (3D: by sliding window beyond the patch)."""
        return self.module.predict_probabilities(images)[0]

    @torch.no_grad()
    def predict(self, image: str | Path) -> np.ndarray:
        """The label map of one volume on its own grid: uint8 ``[X, Y, Z]`` class positions (in ``classes``)."""
        from monai.inferers import SliceInferer
        from monai.transforms import Invertd

        transform = self.preprocessing.transform(with_label=False)
        data = apply_transform(transform, {"image": str(image)})
        volume = data["image"][None].to(self.device)  # [1, 1, X, Y, Z] MetaTensor (keeps the applied transforms)
        if self.module.hparams.spatial_dims == 2:
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
        data["pred"] = torch.as_tensor(probabilities)[0].cpu()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            restored = Invertd("pred", transform, orig_keys="image", nearest_interp=False)(data)["pred"]
        return np.asarray(torch.as_tensor(restored).argmax(0).numpy(), dtype=np.uint8)


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
    label_budget: LabelBudget = "train",
    spatial_dims: Literal[2, 3] = 2,
    supervised_only: bool = False,
    decoders: int = 3,
    labelled_bs: int = 2,
    contrast_mode: ContrastMode = "pooled-map",
    contrast_weight: float = 1.0,
    consistency: float = 1.0,
    consistency_rampup: float = 40.0,
    rampup_iterations: int | None = None,
    decoder_channels: Sequence[int] | None = None,
    patch_size: Sequence[int] | None = None,
    width: int = 16,
    depth: int = 5,
    dropout: float = 0.5,
    segmenter_options: Mapping[str, Any] | None = None,
    foreground_fraction: float = 0.5,
    pictures: int = 2,
    max_epochs: int = 15,
    steps_per_epoch: int = 10,
    val_every: int = 3,
    patience: int = 3,
    batch_size: int = 4,
    lr: float = 1e-3,
    optimizer: Literal["sgd", "adamw"] = "adamw",
    crop: int = 128,
    num_workers: int = 0,
    accelerator: str = "auto",
    progress: bool = True,
) -> MedicalFinetuneResult:
    """FBA on a NIfTI data folder: a fraction of the labelled train cases plus the other train cases unlabelled.

    Args:
        data: a NIfTI data folder (:func:`~geocl.data.medical.files.find_cases`).
        out: run folder (must not hold a finetuning run).
        encoder_checkpoint: 2D only: a geocl pretrain checkpoint (1 band) for the shared encoder.
        encoder: 2D encoder of a random init (a checkpoint brings its own).
        label_fraction, seed, subset_seed, spacing, slice_axis, intensity, image_size,
            val_fraction: as :func:`~geocl.finetune.medical.run_medical_finetune`.
        label_budget: ``train`` or ``train-and-val`` (module docstring; :func:`label_budget_split`).
        spatial_dims: 2 (slices, U-Net) or 3 (patches, V-Net).
        supervised_only: the baseline on the labelled cases alone.
        decoders: 1 (FBA-Net) or 3 (FBA-Net+).
        labelled_bs: labelled items at the front of each batch of ``batch_size``.
        contrast_mode, contrast_weight, consistency, consistency_rampup: see
            :class:`~geocl.finetune.semi_supervised.SemiSupervisedSegmenter`.
        rampup_iterations: steps per ramp unit; None: the ramp ends at 40 % of the budget.
        decoder_channels: 2D U-Net decoder widths (default smp's).
        patch_size: 3D training patch and sliding window (voxels a side, multiples of
            ``2**(depth-1)``; released LA: 112 x 112 x 80); required in 3D.
        width, depth, dropout: the 3D V-Net's.
        segmenter_options: further :class:`SemiSupervisedSegmenter` arguments.
        foreground_fraction: 3D: probability that a labelled patch is centred on foreground.
        pictures: test cases written as PNG.
        max_epochs, steps_per_epoch, val_every, patience, batch_size, lr, crop, num_workers,
            accelerator, progress: the budget, as ``run_medical_finetune`` (``crop``: 2D only).
        optimizer: ``adamw`` (every other row's) or ``sgd`` (released, momentum 0.9, constant lr).

    Returns:
        A :class:`~geocl.finetune.medical.MedicalFinetuneResult` (means over the test
        cases); ``out/metrics.json`` holds it with the run's settings.

    Raises:
        GeoclError: as ``run_medical_finetune``; a 3D run without ``patch_size`` or
            with a (2D) encoder checkpoint; fewer items than a batch takes.
    """
    start = time.perf_counter()
    subset_seed = seed if subset_seed is None else subset_seed
    out = check_finetune_folder(
        out,
        {
            "label_fraction": label_fraction,
            "seed": seed,
            "subset_seed": subset_seed,
            "spatial_dims": spatial_dims,
            **({"encoder_checkpoint": encoder_checkpoint} if encoder_checkpoint is not None else {"encoder": encoder}),
        },
    )
    if spatial_dims == 3 and patch_size is None:
        raise GeoclError(
            "3D FBA trains on patches: set it, e.g. [112, 112, 80] (the released left-atrium patch)",
            key="method.patch_size",
        )
    if spatial_dims == 3 and encoder_checkpoint is not None:
        raise GeoclError(
            "the 3D V-Net starts from random init (pretrain checkpoints hold 2D encoders); "
            "use spatial_dims 2 to start from one",
            key="method.init_checkpoint",
        )
    cases, splits, classes = read_cases(data, val_fraction, image_size)
    lightning.seed_everything(seed, workers=True, verbose=False)
    labelled, rest = label_budget_split(splits.train, splits.val, label_fraction, subset_seed, label_budget)
    unlabelled = [] if supervised_only else _without_labels(rest)
    num_classes = len(classes)
    spacing = tuple(spacing) if spacing else median_spacing(cases)
    preprocessing = Preprocessing(spacing, intensity)  # type: ignore[arg-type]
    labelled_bs = min(labelled_bs, batch_size)
    total_steps = max_epochs * steps_per_epoch
    if rampup_iterations is None:
        rampup_iterations = max(1, round(RAMP_END * total_steps / max(consistency_rampup, 1.0)))

    side: int | None = None
    if spatial_dims == 2:
        train: Dataset[dict[str, Any]] = NiftiSliceDataset(
            labelled,
            preprocessing,
            slice_axis=slice_axis,
            image_size=image_size,
            with_mask=True,
            classes=classes,
            multiple=SIDE_MULTIPLE,
        )
        side = train.image_size  # type: ignore[attr-defined]
        other: Dataset[dict[str, Any]] | None = (
            NiftiSliceDataset(unlabelled, preprocessing, slice_axis=slice_axis, image_size=side) if unlabelled else None
        )
        val: Dataset[dict[str, Any]] = CaseSlices(
            NiftiSliceDataset(
                splits.val, preprocessing, slice_axis=slice_axis, image_size=side, with_mask=True, classes=classes
            )
        )
        patch: tuple[int, ...] | None = (min(crop, side),) * 2
        network: dict[str, Any] = {"encoder": encoder, "decoder_channels": decoder_channels}
    else:
        patch = tuple(int(s) for s in patch_size)  # type: ignore[union-attr]
        # a pool of distinct patches as large as the budget draws: no patch is seen twice
        draws = total_steps * batch_size
        train = NiftiVolumeDataset(
            labelled,
            preprocessing,
            patch,
            foreground_fraction=foreground_fraction,
            samples_per_case=math.ceil(draws / len(labelled)),
            seed=seed,
            classes=classes,
        )
        other = (
            None
            if not unlabelled
            else NiftiVolumeDataset(
                unlabelled,
                preprocessing,
                patch,
                foreground_fraction=0.0,
                samples_per_case=math.ceil(draws / len(unlabelled)),
                seed=seed,
            )
        )
        val = WholeVolumes(splits.val, preprocessing, classes)
        network = {"width": width, "depth": depth, "dropout": dropout}
    settings = {
        "spacing": list(preprocessing.spacing),
        "slice_axis": slice_axis,
        "intensity": intensity,
        "image_size": side,
        "patch_size": list(patch) if spatial_dims == 3 else None,
    }
    pretrained = read_pretrain_checkpoint(encoder_checkpoint) if encoder_checkpoint is not None else None
    if pretrained is not None:
        encoder = pretrained["meta"]["encoder"]
        network["encoder"] = encoder
    meta: dict[str, Any] = {
        "arch": f"fba-{'unet' if spatial_dims == 2 else 'vnet'}",
        "in_chans": 1,
        "classes": list(classes),
        "encoder": encoder if spatial_dims == 2 else None,
        "encoder_checkpoint": str(encoder_checkpoint) if encoder_checkpoint else None,
        MEDICAL_KEY: settings,
    }
    module = SemiSupervisedSegmenter(
        spatial_dims,
        1,
        num_classes,
        decoders=decoders,
        labelled_bs=labelled_bs,
        supervised_only=supervised_only,
        contrast_mode=contrast_mode,
        contrast_weight=contrast_weight,
        consistency=consistency,
        consistency_rampup=consistency_rampup,
        rampup_iterations=rampup_iterations,
        patch_size=patch,
        optimizer=optimizer,
        lr=lr,
        meta=meta,
        val_per_case=True,
        **network,
        **dict(segmenter_options or {}),
    )
    if pretrained is not None:
        load_pretrained_encoder(module.network, encoder_checkpoint, 1, loaded=pretrained)  # type: ignore[arg-type]
        meta["pretrain_method"] = pretrained["meta"]["method"]
    trainer = fit_semi_supervised(
        module,
        train,
        other,
        out=out,
        batch_size=batch_size if other is not None else labelled_bs,
        val=val,
        max_epochs=max_epochs,
        steps_per_epoch=steps_per_epoch,
        val_every=val_every,
        patience=patience,
        monitor="val/dice",
        seed=seed,
        num_workers=num_workers,
        accelerator=accelerator,
        progress=progress,
    )
    best = trainer.checkpoint_callback
    checkpoint = out / "checkpoints" / "last.ckpt"
    if best is not None and best.best_model_path:
        checkpoint = Path(best.best_model_path)
    if not checkpoint.exists():
        trainer.save_checkpoint(checkpoint)
    module.load_state_dict(read_checkpoint(checkpoint)["state_dict"])  # torch.load(weights_only=True)

    predictor = SemiSupervisedVolumePredictor(
        module, preprocessing, slice_axis=slice_axis, window=side, classes=classes
    )
    rows = []
    for index, case in enumerate(splits.test):
        picture = out / "plots" / f"{case.id}.png" if index < pictures else None
        prediction = out / "predictions" / f"{case.id}.nii.gz"
        metrics = score_case(predictor, case, prediction, picture)  # type: ignore[arg-type]
        rows.append(case_row(case.id, metrics))
    write_cases_csv(out / CASES_FILE, rows)
    means = {name: float(np.mean([row[name] for row in rows])) for name in METRICS}
    val_dice = best.best_model_score if best is not None else None
    result = MedicalFinetuneResult(
        # the checkpoint is chosen by val Dice (the released criterion): its val mIoU is not kept
        **means,
        val_miou=math.nan,
        checkpoint=checkpoint,
        out=out,
        labelled_cases=[case.id for case in labelled],
        cases=rows,
    )
    record = {
        **means,
        "distance_unit": "mm",
        "val_dice": float(val_dice) if val_dice is not None else math.nan,
        "classes": meta["classes"],
        "label_fraction": label_fraction,
        "seed": seed,
        "subset_seed": subset_seed,
        "labelled_cases": result.labelled_cases,
        "unlabelled_cases": [case.id for case in unlabelled],
        "test_cases": [case.id for case in splits.test],
        "val_cases": [case.id for case in splits.val],
        "supervised_only": supervised_only,
        "decoders": decoders,
        "spatial_dims": spatial_dims,
        "label_budget": label_budget,
        "val_scored": "per case",
        "encoder": meta["encoder"],
        "encoder_checkpoint": meta["encoder_checkpoint"],
        "arch": meta["arch"],
        "spacing": list(preprocessing.spacing),
        "checkpoint": str(checkpoint),
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_result(out, record)
    return result
