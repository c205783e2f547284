"""PatchMix: mix a batch at ViT-token granularity and derive the soft contrastive targets.

PatchMix (Shen et al., "Inter-Instance Similarity Modeling for Contrastive Learning",
arXiv 2306.12243, and its released code, github.com/visresearch/patchmix) cuts every
image of a batch ``[N, C, H, W]`` into the ``T = (H/p) * (W/p)`` tokens of a ViT with patch
side ``p``, splits the token *positions* into ``m`` random groups (one partition per call,
shared by the whole batch) and fills group ``j`` of mixed image ``g`` from batch image
``(g + j) mod N``. A token keeps its position, so every token of a mixed image comes from
exactly one source, recorded in an integer source map ``src [N, T]``. Everything the
contrasts need follows from that map:

* ``lambda_g(s)``: the fraction of the tokens of mixed image ``g`` taken from image ``s``
  (:func:`source_proportions`);
* ``Y_src`` (one-hot), ``Y_mix[g, s] = lambda_g(s)`` and
  ``Y_mm[g, h] = sum_s lambda_g(s) * lambda_h(s)`` (:func:`instance_targets`,
  :func:`mix_targets`, :func:`mixed_pair_targets`), as dense ``[N, G]`` matrices whose
  columns are the keys gathered from all devices (``G = N * world``; this device's keys
  sit at columns ``rank * N ...``).

Where the paper (arXiv 2306.12243) leaves the details to its code, the readings taken
are: partners are the cyclic batch neighbours, as in the code, which is a random pairing
under the loader's shuffle; one partition per call, so two views mixed by two calls share
their source lists but not their token positions; with ``T mod m != 0`` the
``T - m * floor(T/m)`` leftover positions stay with the anchor (as in the code) but the
targets use the exact token fractions, never a nominal ``1/m``; targets come from the
source map by summation, so they would stay correct if sources coincided, and a batch
must still hold ``N >= 2m - 1`` images so that the ``2m - 1`` images a mixed-to-mixed
target spans are distinct (the code's scatter silently overwrote there).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from geocl.errors import GeoclError


def to_tokens(images: Tensor, patch: int) -> Tensor:
    """Cut images into non-overlapping patches in row-major grid order.

    Args:
        images: ``[N, C, H, W]`` with H and W multiples of ``patch``.
        patch: patch side p in px.

    Returns:
        ``[N, T, C * p * p]`` with ``T = (H/p) * (W/p)``; token ``t`` is grid cell
        ``(t // (W/p), t % (W/p))``, the order of a timm ViT's patch tokens.
    """
    n, c, height, width = images.shape
    h, w = height // patch, width // patch
    grid = images.reshape(n, c, h, patch, w, patch).permute(0, 2, 4, 1, 3, 5)
    return grid.reshape(n, h * w, c * patch * patch)


def from_tokens(tokens: Tensor, channels: int, size: tuple[int, int], patch: int) -> Tensor:
    """Inverse of :func:`to_tokens`: ``[N, T, C * p * p]`` -> ``[N, C, H, W]``."""
    n = tokens.shape[0]
    h, w = size[0] // patch, size[1] // patch
    grid = tokens.reshape(n, h, w, channels, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(n, channels, size[0], size[1])


def position_groups(
    num_tokens: int, num_mix: int, generator: torch.Generator | None = None, device: torch.device | None = None
) -> Tensor:
    """A random partition of token positions into ``num_mix`` groups of ``floor(T/m)``.

    Positions ``perm[j*S : (j+1)*S]`` of a random permutation form group j
    (``S = floor(T/m)``); the ``T - m*S`` leftover positions join group 0, the anchor's.

    Returns:
        ``[T]`` long: the group of every token position.
    """
    size = num_tokens // num_mix
    order = torch.randperm(num_tokens, generator=generator, device=device)
    ranks = torch.arange(num_tokens, device=device) // size
    groups = torch.empty(num_tokens, dtype=torch.long, device=device)
    groups[order] = torch.where(ranks < num_mix, ranks, torch.zeros_like(ranks))
    return groups


@dataclass
class MixedBatch:
    """A patch-mixed batch.

    Attributes:
        images: ``[N, C, H, W]`` mixed images.
        sources: ``[N, T]`` long; ``sources[g, t]`` is the batch index of the image that
            token ``t`` of mixed image ``g`` was taken from.
    """

    images: Tensor
    sources: Tensor


class PatchMix(nn.Module):
    """Token-level mixing of a batch with its cyclic neighbours.

    Args:
        patch_size: mixing granularity p in px (the ViT's patch side, so that every
            token the ViT sees has one source).
        num_mix: default number of sources m per mixed image (1 = no mixing).

    Raises:
        GeoclError: a non-positive patch size or m (key ``method.num_mix``).

    Shape:
        - Input: ``[N, C, H, W]``, H and W multiples of ``patch_size``, ``N >= 2m - 1``.
        - Output: :class:`MixedBatch` (images ``[N, C, H, W]``, sources ``[N, T]``).
    """

    def __init__(self, patch_size: int, num_mix: int = 2) -> None:
        super().__init__()
        if patch_size < 1:
            raise GeoclError(f"patch size must be >= 1, got {patch_size}", key="encoder.args.patch_size")
        _check_num_mix(num_mix)
        self.patch_size = patch_size
        self.num_mix = num_mix

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, num_mix={self.num_mix}"

    def forward(
        self, images: Tensor, num_mix: int | None = None, generator: torch.Generator | None = None
    ) -> MixedBatch:
        """Mix a batch (one fresh partition of positions per call).

        Args:
            images: ``[N, C, H, W]``.
            num_mix: m for this call (default: the module's), so two views can share a
                per-step choice.
            generator: random generator of the partition (default: torch's global one).
        """
        m = self.num_mix if num_mix is None else num_mix
        _check_num_mix(m)
        n, c, height, width = images.shape
        p = self.patch_size
        if height % p or width % p:
            raise GeoclError(f"view of {height}x{width} px does not split into {p} px tokens", key="data.view_size")
        if n < 2 * m - 1:
            raise GeoclError(
                f"mixing {m} images needs batches of at least {2 * m - 1} (got {n})", key="data.batch_size"
            )
        tokens = to_tokens(images, p)
        if tokens.shape[1] < m:
            raise GeoclError(f"{tokens.shape[1]} tokens cannot be split among {m} images", key="method.num_mix")
        groups = position_groups(tokens.shape[1], m, generator, images.device)
        anchors = torch.arange(n, device=images.device)
        sources = (anchors[:, None] + groups[None, :]) % n
        positions = torch.arange(tokens.shape[1], device=images.device)
        mixed = tokens[sources, positions[None, :]]
        return MixedBatch(from_tokens(mixed, c, (height, width), p), sources)


def _check_num_mix(num_mix: int) -> None:
    if isinstance(num_mix, bool) or not isinstance(num_mix, int) or num_mix < 1:
        raise GeoclError(f"number of mixed images must be an integer >= 1, got {num_mix!r}", key="method.num_mix")


def source_proportions(sources: Tensor, num_images: int | None = None) -> Tensor:
    """Fractions ``lambda_g(s)`` of the tokens of each mixed image coming from each source.

    Args:
        sources: ``[N, T]`` source map.
        num_images: number of possible sources (default N).

    Returns:
        ``[N, num_images]`` float; rows sum to 1.
    """
    n, t = sources.shape
    counts = torch.zeros(n, num_images or n, device=sources.device)
    counts.scatter_add_(1, sources, torch.ones_like(sources, dtype=counts.dtype))
    return counts / t


def dense_targets(local: Tensor, rank: int, world_size: int) -> Tensor:
    """Place ``[N, N]`` targets over this device's keys at columns ``rank * N`` of ``[N, N * world]``."""
    n = local.shape[1]
    dense = local.new_zeros(local.shape[0], n * world_size)
    dense[:, rank * n : (rank + 1) * n] = local
    return dense


def instance_targets(
    batch_size: int, rank: int = 0, world_size: int = 1, device: torch.device | None = None, smoothing: float = 0.0
) -> Tensor:
    """``Y_src``: one-hot at each query's own key, ``[N, N * world]``, optionally label-smoothed.

    With smoothing eps over the G = N * world keys (the released code's one-hot helper):
    off-value eps / G, on-value 1 - eps + eps / G; rows still sum to 1.
    """
    targets = dense_targets(torch.eye(batch_size, device=device), rank, world_size)
    if smoothing:
        targets = targets * (1.0 - smoothing) + smoothing / targets.shape[1]
    return targets


def mix_targets(sources: Tensor, rank: int = 0, world_size: int = 1) -> Tensor:
    """``Y_mix[g, s] = lambda_g(s)``: mixed queries against the keys of the unmixed images, ``[N, N * world]``."""
    return dense_targets(source_proportions(sources), rank, world_size)


def mixed_pair_targets(query_sources: Tensor, key_sources: Tensor, rank: int = 0, world_size: int = 1) -> Tensor:
    """``Y_mm[g, h] = sum_s lambda_g(s) * lambda_h(s)``: mixed queries against mixed keys.

    Args:
        query_sources: ``[N, T]`` source map of the mixed queries' batch.
        key_sources: ``[N, T]`` source map of the mixed keys' batch (another call of
            :class:`PatchMix` on the other view: same source lists, other positions).

    Returns:
        ``[N, N * world]``; with the cyclic scheme and ``T mod m = 0`` row g holds
        ``(m - |d|) / m**2`` at column ``(g + d) mod N``. Rows sum to 1.
    """
    overlap = source_proportions(query_sources) @ source_proportions(key_sources).T
    return dense_targets(overlap, rank, world_size)
