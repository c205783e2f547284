"""SPPS semantic sampler: pairs of different images a frozen encoder finds alike.

Alkhalefi et al., "Semantic Positive Pairs for Enhancing Visual Representation
Learning of Instance Discrimination Methods" (arXiv 2306.16122). The sampler embeds
the un-augmented training images with a frozen encoder, keeps for every image its
top-k most cosine-similar other images whose similarity is at least
``min_similarity``, and returns the kept pairs in both orders. A host method (SimCLR, MoCo) then trains on them exactly as on its
ordinary positive pairs (see :mod:`geocl.data.semantic_pairs`).

Only the paper's abstract was readable, which leaves these choices open; the readings
taken:

* Which encoder, when (the abstract: a pre-trained self-supervised model on the
  original, un-augmented images, before the main training): mined once, from a
  frozen encoder in eval mode without gradients; the encoder is a given pretrain checkpoint (``checkpoint``), or else the
  run's own encoder after ``warmup_epochs`` epochs of the host method (the EMA key
  encoder for MoCo). ``refresh_epochs`` optionally mines again every E epochs.
* Selection rule (top-k, a threshold or both: not stated): top-k ∩ (cosine >=
  ``min_similarity``), made symmetric: when n chooses m, both (n, m) and (m, n) are pairs. So an image may have more than k
  partners (others chose it); ``mutual`` keeps only pairs both sides chose, which
  bounds every image's partners by k.
* Remote sensing: neighbouring tiles look alike because they overlap or touch the
  same field. Candidates whose footprints overlap, or lie closer than ``buffer`` map
  units, are removed before the top-k, so an image's best *admissible* neighbours
  are kept. Images without footprints (natural images) skip this rule.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch.utils.data import Dataset

from geocl.errors import GeoclError
from geocl.io import atomic_path
from geocl.models.embedding import embed_dataset

#: Header of the pairs CSV written to ``OUT/spps/``.
PAIR_COLUMNS = ("anchor", "partner", "similarity", "anchor_name", "partner_name")


class SPPSConfig(BaseModel):
    """Parameters of the ``spps`` section of a host method (``method.spps``).

    Attributes:
        enabled: train on semantic positive pairs too (off: the host method unchanged).
        k: candidate partners per image (small, 1-5, keeps pairs pure).
        min_similarity: smallest cosine similarity of a kept pair (high, for purity).
        mutual: keep only pairs both images chose (every image then has at most k partners).
        warmup_epochs: epochs of the plain host method before the run's own encoder
            mines the pairs (ignored when ``checkpoint`` is given: mining then starts at
            epoch 0).
        checkpoint: a geocl pretrain checkpoint whose encoder mines the pairs ("" = the
            run's own encoder after ``warmup_epochs``).
        buffer: remove candidate partners whose tile footprint overlaps the anchor's or
            lies closer than this distance, in map units of the tiles' CRS.
        refresh_epochs: mine again with the run's current encoder every this many
            epochs after the first mining (0 = mine once).
        fixed_epoch_length: keep an epoch at as many items as the plain dataset,
            ``semantic_fraction`` of them semantic pairs and the rest ordinary items,
            drawn (seeded by epoch) without replacement (the paper does not say how the
            added pairs change an epoch; read as pairs subsampled to a fixed fraction),
            so the learning-rate and momentum schedules, sized from the first epoch, end
            with the run; false: epochs hold every ordinary and semantic item and grow by
            the pair count (the other reading), and those schedules end early.
        semantic_fraction: share of semantic pairs in a fixed-length epoch.
        batch_size: images per forward pass while embedding the dataset.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    enabled: bool = False
    k: int = Field(default=1, ge=1)
    min_similarity: float = Field(default=0.8, ge=-1.0, le=1.0, description="a cosine similarity in [-1, 1]")
    mutual: bool = False
    warmup_epochs: int = Field(default=1, ge=0)
    checkpoint: str = ""
    buffer: float = Field(default=0.0, ge=0, description="map units")
    refresh_epochs: int = Field(default=0, ge=0, description="0 = mine once")
    fixed_epoch_length: bool = True
    semantic_fraction: float = Field(default=0.25, ge=0.0, le=1.0)
    batch_size: int = Field(default=64, ge=1)

    @property
    def first_epoch(self) -> int:
        """The epoch from which semantic pairs are trained on."""
        return 0 if self.checkpoint else self.warmup_epochs

    def mining_epoch(self, epoch: int) -> int | None:
        """The epoch whose start mined the pairs used in ``epoch`` (None: no pairs yet)."""
        first = self.first_epoch
        if not self.enabled or epoch < first:
            return None
        if self.refresh_epochs == 0:
            return first
        return first + (epoch - first) // self.refresh_epochs * self.refresh_epochs


@dataclass
class SemanticPairs:
    """Ordered pairs (anchor, partner) of dataset positions; each pair appears in both orders.

    Attributes:
        pairs: ``[P, 2]`` long, sorted by anchor then partner; never ``n == m``.
        similarity: ``[P]`` cosine similarity of each pair.
    """

    pairs: Tensor
    similarity: Tensor

    def __len__(self) -> int:
        return len(self.pairs)

    def partners(self, anchor: int) -> list[int]:
        """Partners of one dataset position."""
        return self.pairs[self.pairs[:, 0] == anchor, 1].tolist()

    def save_csv(self, path: str | os.PathLike[str], names: Sequence[str] | None = None) -> None:
        """Write the pairs (and, if given, the images' names) as CSV, atomically."""
        with atomic_path(path) as temp, open(temp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(PAIR_COLUMNS)
            for (anchor, partner), similarity in zip(self.pairs.tolist(), self.similarity.tolist(), strict=True):
                labels = (names[anchor], names[partner]) if names is not None else ("", "")
                writer.writerow((anchor, partner, repr(similarity), *labels))

    @classmethod
    def load_csv(cls, path: str | os.PathLike[str]) -> SemanticPairs:
        """Read pairs written by :meth:`save_csv`."""
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        except OSError as exc:
            raise GeoclError(f"cannot read semantic pairs: {exc.strerror or exc}", path=path) from None
        pairs = torch.tensor([(int(row["anchor"]), int(row["partner"])) for row in rows], dtype=torch.long)
        similarity = torch.tensor([float(row["similarity"]) for row in rows], dtype=torch.float32)
        return cls(pairs.reshape(-1, 2), similarity)


def footprint_conflicts(bounds_a: Tensor, bounds_b: Tensor, buffer: float) -> Tensor:
    """Which footprints overlap or lie closer than ``buffer``.

    Args:
        bounds_a: ``[A, 4]`` boxes (xmin, ymin, xmax, ymax).
        bounds_b: ``[B, 4]`` boxes.
        buffer: distance in map units below which two disjoint boxes still conflict.

    Returns:
        ``[A, B]`` bool. Boxes that only touch (shared edge) overlap in no area and
        conflict only when ``buffer > 0``.
    """
    a = bounds_a.double()[:, None, :]
    b = bounds_b.double()[None, :, :]
    # per axis: the gap between the boxes, negative where their extents overlap
    gap_x = torch.maximum(b[..., 0] - a[..., 2], a[..., 0] - b[..., 2])
    gap_y = torch.maximum(b[..., 1] - a[..., 3], a[..., 1] - b[..., 3])
    overlap = (gap_x < 0) & (gap_y < 0)
    distance = torch.hypot(gap_x.clamp(min=0), gap_y.clamp(min=0))
    return overlap | (distance < buffer)


def mine_pairs(
    embeddings: Tensor,
    k: int,
    min_similarity: float,
    *,
    bounds: Tensor | None = None,
    buffer: float = 0.0,
    mutual: bool = False,
    block_size: int = 1024,
) -> SemanticPairs:
    """Semantic positive pairs from embeddings (the paper's semantic sampler on frozen embeddings).

    Similarities are computed ``block_size`` rows at a time, so memory stays
    ``O(block_size x N)`` rather than ``O(N²)``.

    Args:
        embeddings: ``[N, D]``, one row per image (normalised here).
        k: candidates per image.
        min_similarity: smallest cosine similarity kept.
        bounds: ``[N, 4]`` footprints, or None (no footprint rule).
        buffer: footprint buffer (see :func:`footprint_conflicts`).
        mutual: keep a pair only if each image chose the other.
        block_size: rows of the similarity matrix computed at once.

    Returns:
        :class:`SemanticPairs`, symmetric and without self-pairs.
    """
    z = F.normalize(embeddings.detach().float(), dim=1)
    n = len(z)
    take = min(k, n - 1)
    if take < 1:
        return SemanticPairs(torch.empty(0, 2, dtype=torch.long), torch.empty(0))
    chosen: dict[tuple[int, int], float] = {}
    for start in range(0, n, block_size):
        rows = torch.arange(start, min(start + block_size, n))
        similarity = z[rows] @ z.T
        excluded = torch.zeros_like(similarity, dtype=torch.bool)
        excluded[torch.arange(len(rows)), rows] = True
        if bounds is not None:
            excluded |= footprint_conflicts(bounds[rows], bounds, buffer)
        similarity = similarity.masked_fill(excluded, float("-inf"))
        values, partners = similarity.topk(take, dim=1)
        keep = values >= min_similarity  # -inf (excluded) never passes
        anchors = rows[:, None].expand_as(partners)[keep].tolist()
        for row, partner, value in zip(anchors, partners[keep].tolist(), values[keep].tolist(), strict=True):
            chosen[(row, partner)] = value
    pairs: dict[tuple[int, int], float] = {}
    for (anchor, partner), value in chosen.items():
        if mutual and (partner, anchor) not in chosen:
            continue
        pairs[(anchor, partner)] = value
        pairs.setdefault((partner, anchor), value)
    ordered = sorted(pairs)
    return SemanticPairs(
        torch.tensor(ordered, dtype=torch.long).reshape(-1, 2),
        torch.tensor([pairs[pair] for pair in ordered], dtype=torch.float32),
    )


class SemanticPairSampler:
    """The Semantic Sampler: frozen encoder + cosine top-k ∩ threshold (+ footprint rule).

    Args:
        config: the ``method.spps`` parameters.
        size: side to which images are resized before embedding (the run's view size).
    """

    def __init__(self, config: SPPSConfig, size: int | None = None) -> None:
        self.config = config
        self.size = size

    def embed(self, encoder: nn.Module, dataset: Dataset[dict[str, Any]]) -> tuple[Tensor, Tensor | None]:
        """L2-normalised embeddings ``[N, D]`` of the un-augmented images (frozen encoder, eval
        mode, resized to the view size) and their footprints ``[N, 4]`` (None without bounds)."""
        features, fields = embed_dataset(
            encoder, dataset, batch_size=self.config.batch_size, size=self.size, collect=("bounds",)
        )
        if len(features) == 0:
            raise GeoclError("no images to mine semantic pairs from", key="data.split")
        bounds = fields.get("bounds")
        return F.normalize(features, dim=1), bounds.double() if bounds is not None else None

    def __call__(self, encoder: nn.Module, dataset: Dataset[dict[str, Any]]) -> SemanticPairs:
        """Mine the pairs of ``dataset`` with ``encoder`` (deterministic for a fixed encoder)."""
        embeddings, bounds = self.embed(encoder, dataset)
        return mine_pairs(
            embeddings,
            self.config.k,
            self.config.min_similarity,
            bounds=bounds,
            buffer=self.config.buffer,
            mutual=self.config.mutual,
        )
