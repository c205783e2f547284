"""The items of a semi-supervised (FBA) training: augmented crops, labelled-first loaders, whole cases.

* :func:`random_crop` and :func:`rot_flip`: the per-item training augmentation of
  :class:`~geocl.finetune.semi_supervised_module.SemiSupervisedSegmenter` (a random crop
  or pad to the patch, then the released ``RandomRotFlip``);
* :func:`semi_supervised_loaders`: the labelled-first train loader
  (:mod:`geocl.sampling.labelled_first`) and the val loader of a training, as every
  semi-supervised data adapter gives them to the downstream skeleton
  (:func:`geocl.finetune.downstream.run_downstream`);
* :class:`CaseSlices` and :func:`case_dice`: validation by case, as the test scores cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from geocl.data.tile_dataset import IGNORE_INDEX
from geocl.errors import GeoclError
from geocl.finetune.downstream import TrainingBudget
from geocl.finetune.semi_supervised_config import SemiSupervisedConfig
from geocl.sampling.labelled_first import labelled_first_loader

__all__ = ["CaseSlices", "case_dice", "check_patch", "random_crop", "rot_flip", "semi_supervised_loaders"]


def check_patch(patch_size: Sequence[int] | None, spatial_dims: int, depth: int) -> tuple[int, ...] | None:
    """A training patch as a tuple of ``spatial_dims`` sides (3D: multiples of the V-Net's ``2**(depth-1)``).

    Raises:
        GeoclError: a patch of the wrong length, a side below 1, or (3D) a side the V-Net cannot halve.
    """
    if patch_size is None:
        return None
    patch = tuple(int(side) for side in patch_size)
    if len(patch) != spatial_dims or min(patch) < 1:
        raise GeoclError(f"needs {spatial_dims} positive sides, got {list(patch_size)}", key="patch_size")
    multiple = 2 ** (depth - 1)
    if spatial_dims == 3 and any(side % multiple for side in patch):
        raise GeoclError(
            f"V-Net of depth {depth} needs sides that are multiples of {multiple}, got {list(patch)}", key="patch_size"
        )
    return patch


def random_crop(
    image: Tensor, mask: Tensor | None, size: tuple[int, ...], ignore_index: int
) -> tuple[Tensor, Tensor | None]:
    """A random window of ``size`` over the spatial axes; sides that are too short are padded first.

    Padding: image 0, mask ``ignore_index``, split around the item.

    Shape: image ``[C, *S]``, mask ``[*S]`` or None -> image ``[C, *size]``, mask ``[*size]`` or None.
    """
    sides = image.shape[1:]
    short = [max(0, want - have) for want, have in zip(size, sides, strict=True)]
    if any(short):
        # F.pad counts from the last axis: (before, after) pairs, padding split around the item
        padding = [amount for gap in reversed(short) for amount in (gap // 2, gap - gap // 2)]
        image = F.pad(image, padding, value=0.0)
        mask = None if mask is None else F.pad(mask, padding, value=ignore_index)
    starts = [int(torch.randint(0, have - want + 1, ())) for want, have in zip(size, image.shape[1:], strict=True)]
    window = tuple(slice(start, start + want) for start, want in zip(starts, size, strict=True))
    return image[(slice(None), *window)], None if mask is None else mask[window]


def rot_flip(image: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """A random quarter turn in the in-plane axes, then a flip of one of them (released ``RandomRotFlip``).

    The in-plane axes are the first two spatial ones: X and Y of ``[C, X, Y, Z]`` volume
    patches (the axial plane of RAS volumes, :mod:`geocl.data.medical.nifti`; Z, the slice
    axis, is never turned nor flipped), H and W of ``[C, H, W]`` tiles and slices (D4).
    Released: ``np.rot90(image, k)``, k uniform in 0..3, over the axes (X, Y), then
    ``np.flip`` of axis X or Y. A plane that is not square turns by 0 or 2 quarters only
    (so the patch keeps its shape; our addition).

    Shape: image ``[C, *S]`` (S of 2 or 3 sides), mask ``[*S]`` or None -> the same.
    """
    spatial = image.dim() - 1
    first = -spatial  # X (3D) or H (2D)
    plane = (first, first + 1)
    square = image.shape[plane[0]] == image.shape[plane[1]]
    turns = int(torch.randint(0, 4, ())) if square else 2 * int(torch.randint(0, 2, ()))
    axis = first + int(torch.randint(0, 2, ()))
    image = torch.rot90(image, turns, plane).flip(axis)
    if mask is not None:  # axes counted from the end: the same for the mask
        mask = torch.rot90(mask, turns, plane).flip(axis)
    return image, mask


def case_dice(prediction: Tensor, mask: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> float:
    """Dice of one case, the mean over its foreground classes, as the test scores a case.

    ``2 |P_k ∩ G_k| / (|P_k| + |G_k|)`` per class ``k >= 1`` over the pixels whose mask is
    not ``ignore_index``; 1 when class k is in neither, as
    :func:`geocl.finetune.volume_metrics.case_metrics` counts it.

    Shape: prediction and mask ``[*S]`` class indices (one case: a volume or its stack of slices).
    """
    valid = mask != ignore_index
    scores = []
    for k in range(1, num_classes):
        predicted, reference = (prediction == k) & valid, (mask == k) & valid
        total = int(predicted.sum()) + int(reference.sum())
        scores.append(1.0 if total == 0 else 2.0 * int((predicted & reference).sum()) / total)
    return float(np.mean(scores))


class CaseSlices(Dataset[dict[str, Any]]):
    """The slices of a slice dataset grouped by case: one item a case, for per-case validation.

    Args:
        slices: a dataset whose samples carry ``case`` (e.g.
            :class:`~geocl.data.medical.nifti.NiftiSliceDataset`), in case order.

    Samples: ``image`` ``[S, C, H, W]`` (the case's S slices), ``mask`` ``[S, H, W]``, ``case``.
    """

    def __init__(self, slices: Dataset[dict[str, Any]]) -> None:
        self.slices = slices
        self.groups: dict[str, list[int]] = {}
        index = getattr(slices, "index", None)
        volumes = getattr(slices, "volumes", None)
        for item in range(_length(slices)):
            case = (
                volumes[index[item][0]].case.id if index is not None and volumes is not None else slices[item]["case"]
            )
            self.groups.setdefault(str(case), []).append(item)
        self.cases = list(self.groups)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, item: int) -> dict[str, Any]:
        samples = [self.slices[i] for i in self.groups[self.cases[item]]]
        return {
            "image": torch.stack([s["image"] for s in samples]),
            "mask": torch.stack([s["mask"] for s in samples]),
            "case": self.cases[item],
        }


def _length(dataset: Dataset[Any]) -> int:
    """A map-style dataset's length (``Dataset`` declares no ``__len__``; every dataset here has one)."""
    size = getattr(dataset, "__len__", None)
    if size is None:
        raise TypeError(f"{type(dataset).__name__} has no length")
    return int(size())


def semi_supervised_loaders(
    config: SemiSupervisedConfig,
    spatial_dims: int,
    labelled: Dataset[dict[str, Any]],
    unlabelled: Dataset[dict[str, Any]] | None,
    val: Dataset[dict[str, Any]] | None,
    budget: TrainingBudget,
    seed: int,
) -> tuple[DataLoader[dict[str, Any]], DataLoader[dict[str, Any]] | None]:
    """The labelled-first train loader and the val loader of a semi-supervised training.

    A step takes ``batch_size`` items, ``config.labelled_bs`` labelled ones first
    (:func:`~geocl.sampling.labelled_first.labelled_first_loader`, ``steps_per_epoch``
    batches an epoch, orders drawn with ``seed``); with ``supervised_only``, or without
    unlabelled items, ``labelled_bs`` labelled items alone. Val items go one at a time
    where they may differ in size (volumes; whole cases with ``val_per_case``), else in
    batches of ``batch_size``.

    Args:
        config: the module's settings (``labelled_bs``, ``supervised_only``, ``val_per_case``).
        spatial_dims: 2 or 3.
        labelled: samples with ``image`` and ``mask``.
        unlabelled: samples with ``image``, or None.
        val: validation samples with masks, or None (no validation).
        budget: batch size, steps and workers.
        seed: seed of the batch orders (the caller seeds the weights).
    """
    labelled_bs = int(config.labelled_bs)
    semi = not config.supervised_only and unlabelled is not None and _length(unlabelled) > 0
    loader = labelled_first_loader(
        labelled,
        unlabelled if semi else None,
        batch_size=budget.batch_size if semi else labelled_bs,
        labelled_bs=labelled_bs,
        num_batches=budget.steps_per_epoch,
        seed=seed,
        num_workers=budget.num_workers,
    )
    # volumes and cases (per-case validation) may differ in size: one at a time; slices and tiles in batches
    val_batch = 1 if spatial_dims == 3 or config.val_per_case else budget.batch_size
    val_loader = None if val is None else DataLoader(val, batch_size=val_batch, num_workers=budget.num_workers)
    return loader, val_loader
