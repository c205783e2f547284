"""A dataset of ordinary and semantic positive pairs (SPPS, Alkhalefi et al., arXiv 2306.16122).

Items ``0 .. N-1`` are the base dataset's own items, the ordinary pairs (x_n, x_n);
items ``N .. N+P-1`` are the semantic pairs (x_n, x_m) mined by
:class:`~geocl.sampling.semantic_pairs.SemanticPairSampler` (its ``pairs`` tensor). Every item is the base
item of the first source (``image``, ``bounds``, ... of x_n) plus ``image_pair``, the
image of the second source; methods take view 1 from ``image`` and view 2 from
``image_pair`` and feed both through their unchanged loss. No code was released, so the
following are geocl's readings of the paper: a semantic pair is fed exactly like an
ordinary positive pair (the simplest reading of the abstract, which merges the semantic
pairs with the usual positive pairs, rather than extra positives per anchor). An epoch
holds N + P items (the epoch count stays, the step count grows), or, with
:func:`fixed_length_epoch`, N items of which a fixed fraction are semantic pairs (SPPS
subsampled to a fixed fraction). No partner masking: lightly's losses take no mask, so an
image and its partner can meet as negatives in one batch, as the host method would have
them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

Sample = dict[str, Any]


class SemanticPairDataset(Dataset[Sample]):
    """Ordinary items ∪ semantic pair items over a base dataset.

    Args:
        base: items with an ``image`` ``[C, H, W]`` (e.g. :class:`~geocl.data.tile_dataset.TileDataset`).
        pairs: ``[P, 2]`` long, semantic pairs (first, second) of base positions.

    Items carry, besides the base item of the first source:

    * ``image_pair``: ``[C, H, W]``, the second source's image (the same tensor for an ordinary item);
    * ``pair_index``: base position of the second source;
    * ``semantic``: whether the item is a semantic pair.
    """

    def __init__(self, base: Dataset[Sample], pairs: Tensor) -> None:
        self.base = base
        self.pairs = pairs.reshape(-1, 2).long()
        self._base_len = len(base)  # type: ignore[arg-type]
        if len(self.pairs) and int(self.pairs.max()) >= self._base_len:
            raise ValueError(f"pair index {int(self.pairs.max())} outside a dataset of {self._base_len} items")

    @property
    def semantic_count(self) -> int:
        """Number of semantic pair items."""
        return len(self.pairs)

    def __len__(self) -> int:
        return self._base_len + len(self.pairs)

    def sources(self, item: int) -> tuple[int, int]:
        """Base positions (first, second) of an item."""
        if not 0 <= item < len(self):
            raise IndexError(f"item {item} outside a dataset of {len(self)} items")
        if item < self._base_len:
            return item, item
        anchor, partner = self.pairs[item - self._base_len].tolist()
        return anchor, partner

    def __getitem__(self, item: int) -> Sample:
        first, second = self.sources(item)
        sample = dict(self.base[first])
        image: Tensor = sample["image"]
        sample["image_pair"] = image if first == second else self.base[second]["image"]
        sample["pair_index"] = second
        sample["semantic"] = torch.tensor(first != second)
        return sample


def pair_views(views: Any, batch: Sample) -> tuple[Tensor, Tensor]:
    """The two views of a batch: of ``image`` twice, or of ``image`` and ``image_pair``.

    Args:
        views: a :class:`~geocl.transforms.TwoViews` (its ``augment`` and ``augment_b``).
        batch: ``image`` ``[B, C, H, W]`` and, from a :class:`SemanticPairDataset`, ``image_pair``.

    Returns:
        ``(view_a, view_b)``; row i of both comes from item i's two sources. Without
        ``image_pair`` this is ``views(image)`` itself; with it the augmentations are
        drawn in the same order, so an all-ordinary batch gives the very same views.
    """
    pair = batch.get("image_pair")
    if pair is None:
        return views(batch["image"])
    second = views.augment if views.augment_b is None else views.augment_b
    return views.augment(batch["image"]), second(pair)


def fixed_length_epoch(
    dataset: SemanticPairDataset, length: int, seed: int, semantic_fraction: float
) -> Subset[Sample]:
    """An epoch of ``length`` items, ``semantic_fraction`` of them semantic pairs, a function of ``seed`` alone.

    Semantic items are drawn without replacement from the P pairs (all of them when
    fewer), ordinary items without replacement from the N base items for the rest, so
    an epoch keeps the host's step count and most of its instances.

    Args:
        dataset: the ordinary ∪ semantic items.
        length: items per epoch (the plain dataset's length keeps the steps per epoch).
        seed: e.g. a function of the run's seed and the epoch, so a resumed run draws the same.
        semantic_fraction: share of semantic items, in [0, 1].

    Returns:
        A :class:`~torch.utils.data.Subset` in ascending item order (the loader's sampler shuffles).
    """
    generator = torch.Generator().manual_seed(seed)
    base, semantic = len(dataset) - dataset.semantic_count, dataset.semantic_count
    length = min(length, len(dataset))
    n_semantic = min(semantic, round(semantic_fraction * length))
    n_ordinary = min(base, length - n_semantic)
    ordinary = torch.randperm(base, generator=generator)[:n_ordinary]
    pairs = base + torch.randperm(semantic, generator=generator)[:n_semantic]
    return Subset(dataset, torch.cat([ordinary, pairs]).sort().values.tolist())
