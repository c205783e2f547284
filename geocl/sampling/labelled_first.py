"""Labelled-first batches for semi-supervised training: the first ``labelled_bs`` items carry masks.

A semi-supervised step (FBA-Net, MC-Net+, UA-MT: their ``TwoStreamBatchSampler``)
draws ``labelled_bs`` labelled and ``batch_size - labelled_bs`` unlabelled samples and
stacks them labelled first, so the supervised loss reads ``batch[:labelled_bs]`` and
the label-free terms the whole batch.

Rule (as released): labelled indices are visited in one random order after another
(without replacement within a pass), unlabelled indices likewise, each stream on its
own; a batch takes the next ``labelled_bs`` of one and the next
``batch_size - labelled_bs`` of the other. An epoch is one pass over the labelled
indices (``len(labelled) // labelled_bs`` batches, the rest dropped) unless
``num_batches`` fixes it (with few labels a pass is one or two batches). Orders come
from a seeded ``torch.Generator``, so a run is reproducible; successive epochs differ.
One process: under DDP every rank would draw the same batches.

Datasets: the labelled and unlabelled datasets are concatenated (labelled first), so
batch indices address :class:`torch.utils.data.ConcatDataset` ``[labelled, unlabelled]``;
:func:`collate_labelled_first` stacks ``image`` of all items and ``mask`` of the
labelled ones.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from geocl.errors import GeoclError


class _Stream:
    """Indices in one shuffled pass after another, drawn ``count`` at a time."""

    def __init__(self, indices: Sequence[int], generator: torch.Generator) -> None:
        self.indices = torch.as_tensor(list(indices), dtype=torch.long)
        self.generator = generator
        self.pending: list[int] = []

    def take(self, count: int) -> list[int]:
        while len(self.pending) < count:
            order = torch.randperm(len(self.indices), generator=self.generator)
            self.pending += self.indices[order].tolist()
        taken, self.pending = self.pending[:count], self.pending[count:]
        return taken


class LabelledFirstBatchSampler(Sampler[list[int]]):
    """Batches of ``labelled_bs`` labelled indices followed by ``batch_size - labelled_bs`` unlabelled ones.

    Args:
        labelled: indices of labelled samples.
        unlabelled: indices of unlabelled samples (may be empty when ``labelled_bs == batch_size``).
        batch_size: items per batch.
        labelled_bs: labelled items per batch, at the front (1 .. ``batch_size``).
        num_batches: batches per epoch; None: one pass over ``labelled`` (as released).
        seed: seed of the orders.

    Raises:
        GeoclError: ``labelled_bs`` out of range, or fewer labelled (unlabelled) indices
            than one batch takes of them (a batch would repeat a sample).
    """

    def __init__(
        self,
        labelled: Sequence[int],
        unlabelled: Sequence[int],
        batch_size: int,
        labelled_bs: int,
        *,
        num_batches: int | None = None,
        seed: int = 0,
    ) -> None:
        if not 1 <= labelled_bs <= batch_size:
            raise GeoclError(f"must be between 1 and batch_size ({batch_size}), got {labelled_bs}", key="labelled_bs")
        unlabelled_bs = batch_size - labelled_bs
        if len(labelled) < labelled_bs:
            raise GeoclError(
                f"{labelled_bs} labelled samples per batch but only {len(labelled)} labelled samples", key="labelled_bs"
            )
        if len(unlabelled) < unlabelled_bs:
            raise GeoclError(
                f"{unlabelled_bs} unlabelled samples per batch but only {len(unlabelled)} unlabelled samples",
                key="batch_size",
            )
        if num_batches is not None and num_batches < 1:
            raise GeoclError(f"must be at least 1, got {num_batches}", key="num_batches")
        self.labelled_bs, self.unlabelled_bs = labelled_bs, unlabelled_bs
        self.num_batches = num_batches if num_batches is not None else len(labelled) // labelled_bs
        generator = torch.Generator().manual_seed(seed)
        self._labelled = _Stream(labelled, generator)
        self._unlabelled = _Stream(unlabelled, generator)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        # an epoch starts a fresh labelled pass (as released); the unlabelled stream runs on
        self._labelled.pending = []
        for _ in range(self.num_batches):
            yield self._labelled.take(self.labelled_bs) + self._unlabelled.take(self.unlabelled_bs)


def collate_labelled_first(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack a labelled-first list of sample dicts into ``{"image": [B, ...], "mask": [L, ...]}``.

    ``mask`` is left out when no sample has one; other keys (``bounds``, ``crs``...)
    are dropped.

    Raises:
        ValueError: a sample with a mask after one without (not labelled first).
    """
    labelled = [("mask" in sample) for sample in samples]
    count = sum(labelled)
    if any(labelled[count:]):
        raise ValueError("labelled samples must come first in a batch")
    batch: dict[str, Any] = {"image": torch.stack([sample["image"] for sample in samples])}
    if count:
        batch["mask"] = torch.stack([sample["mask"] for sample in samples[:count]])
    return batch


def labelled_first_loader(
    labelled: Dataset[dict[str, Any]],
    unlabelled: Dataset[dict[str, Any]] | None,
    *,
    batch_size: int,
    labelled_bs: int,
    num_batches: int | None = None,
    seed: int = 0,
    num_workers: int = 0,
) -> DataLoader[dict[str, Any]]:
    """A DataLoader of labelled-first batches over a labelled and an unlabelled dataset.

    Args:
        labelled: samples with ``image`` and ``mask``.
        unlabelled: samples with ``image`` (a ``mask`` there is ignored), or None when
            ``labelled_bs == batch_size``.
        batch_size, labelled_bs, num_batches, seed: see :class:`LabelledFirstBatchSampler`.
        num_workers: DataLoader workers.
    """
    labelled_count = len(labelled)  # type: ignore[arg-type]  # torch's Dataset declares no __len__; map-style ones have it
    parts: list[Dataset[dict[str, Any]]] = [labelled]
    unlabelled_indices: list[int] = []
    if unlabelled is not None and batch_size > labelled_bs:
        parts.append(_WithoutMask(unlabelled))
        unlabelled_indices = list(range(labelled_count, labelled_count + len(unlabelled)))  # type: ignore[arg-type]  # as above
    sampler = LabelledFirstBatchSampler(
        range(labelled_count), unlabelled_indices, batch_size, labelled_bs, num_batches=num_batches, seed=seed
    )
    return DataLoader(
        ConcatDataset(parts), batch_sampler=sampler, collate_fn=collate_labelled_first, num_workers=num_workers
    )


class _WithoutMask(Dataset[dict[str, Any]]):
    """A dataset's samples with any ``mask`` removed (an unlabelled view of labelled data)."""

    def __init__(self, dataset: Dataset[dict[str, Any]]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]  # torch's Dataset declares no __len__; map-style ones have it

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = dict(self.dataset[index])
        sample.pop("mask", None)
        return sample
