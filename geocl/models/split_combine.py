"""Split-encode-combine (Fast-MoCo): local targets from tiles of a view.

A view is cut into ``s x s`` non-overlapping tiles, the tiles are encoded as one batch,
and the tile features of each image are averaged over every ``combs``-subset of its
tiles. Each subset ("combination") stands for a partial view of the scene; with
``s = 2, combs = 2`` an image yields C(4, 2) = 6 combined features.

Layout (as MNCLGLF's released code groups them, Li et al., arXiv 2306.15930):
everything is kept in blocks of B rows, so block ``k`` holds the same tile (or the same
combination) for every image. Tiles are numbered column-major: tile ``k = col * s +
row``, and tile ``k`` of image ``i`` sits at row ``k * B + i``. Combinations follow
:func:`itertools.combinations` order of the tile numbers.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor


def num_combinations(splits: int, combs: int) -> int:
    """How many combined features an image gives: C(splits², combs)."""
    return math.comb(splits * splits, combs)


def split_tiles(images: Tensor, splits: int) -> Tensor:
    """Cut every image into ``splits x splits`` tiles, one block of B rows per tile.

    Args:
        images: ``[B, C, H, W]`` with H and W divisible by ``splits``.
        splits: tiles per side s.

    Returns:
        ``[s² B, C, H / s, W / s]``; row ``k * B + i`` is tile ``k = col * s + row`` of image ``i``.

    Raises:
        ValueError: H or W not divisible by ``splits``.
    """
    batch, channels, height, width = images.shape
    if height % splits or width % splits:
        raise ValueError(f"cannot split {height} x {width} px into {splits} x {splits} equal tiles")
    h, w = height // splits, width // splits
    tiles = images.reshape(batch, channels, splits, h, splits, w)
    # (B, C, row, h, col, w) -> (col, row, B, C, h, w): column-major tile blocks
    return tiles.permute(4, 2, 0, 1, 3, 5).reshape(splits * splits * batch, channels, h, w)


def tile_combinations(num_tiles: int, combs: int, device: torch.device | None = None) -> Tensor:
    """Tile numbers of every ``combs``-subset of ``num_tiles`` tiles: ``[C(num_tiles, combs), combs]`` long."""
    subsets = list(itertools.combinations(range(num_tiles), combs))
    return torch.tensor(subsets, dtype=torch.long, device=device).reshape(len(subsets), combs)


def combine_tiles(features: Tensor, num_tiles: int, combs: int) -> Tensor:
    """Mean of the tile features over every ``combs``-subset of each image's tiles.

    Args:
        features: ``[num_tiles * B, D]`` tile features in the layout of :func:`split_tiles`.
        num_tiles: tiles per image (s²).
        combs: tiles per combination, ``1 <= combs <= num_tiles``.

    Returns:
        ``[K * B, D]`` with K = C(num_tiles, combs); block ``j`` (rows ``j * B`` to
        ``(j + 1) * B``) is combination ``j`` of :func:`tile_combinations` for every image.
    """
    if not 1 <= combs <= num_tiles:
        raise ValueError(f"combs must be in [1, {num_tiles}], got {combs}")
    if features.shape[0] % num_tiles:
        raise ValueError(f"{features.shape[0]} rows are not {num_tiles} tile blocks")
    blocks = features.reshape(num_tiles, features.shape[0] // num_tiles, *features.shape[1:])
    subsets = tile_combinations(num_tiles, combs, features.device)
    combined = blocks[subsets].mean(dim=1)  # [K, combs, B, D] -> [K, B, D]
    return combined.reshape(-1, *features.shape[1:])
