"""Soft-target InfoNCE: cross-entropy between a target distribution over keys and the softmax of similarities.

For L2-normalised queries ``q_i`` (this device's N rows) and keys ``k_j`` gathered from
all devices (``G = N * world`` rows, without gradient), and targets ``Y [N, G]`` whose rows
sum to 1::

    CE(q, k, Y) = -(1/N) sum_i sum_j Y_ij log softmax_j(q_i . k_j / tau)

With one-hot targets this is MoCo v3's InfoNCE; PatchMix uses soft targets that say how
much of each key image a (mixed) query contains (:mod:`geocl.transforms.patchmix`).

DDP: keys are stop-grad, so the gradient of a device's loss only flows into its own
queries; each device averages over its own N queries, and DDP's gradient averaging then
gives the gradient of the mean over all ``G`` queries, i.e. one process on the whole batch.
Column ``rank * N + j`` of ``Y`` is key ``j`` of device ``rank`` (lightly's gather order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.utils import dist
from torch import Tensor, nn


class SoftTargetInfoNCELoss(nn.Module):
    """Soft-target InfoNCE against keys gathered from all devices.

    Args:
        temperature: tau (PatchMix's released code: 0.2).
        gather_distributed: gather keys from all processes when torch.distributed is
            initialised (targets then have ``N * world`` columns).

    Shape:
        - queries: ``[N, D]`` (normalised here).
        - keys: ``[N, D]`` (normalised and detached here).
        - targets: ``[N, N * world]``, rows summing to 1.
        - Output: scalar.
    """

    def __init__(self, temperature: float = 0.2, gather_distributed: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}"

    def forward(self, queries: Tensor, keys: Tensor, targets: Tensor) -> Tensor:
        queries = F.normalize(queries, dim=1)
        keys = F.normalize(keys.detach(), dim=1)
        if self.gather_distributed and dist.world_size() > 1:
            keys = torch.cat(dist.gather(keys), dim=0)
        if targets.shape != (len(queries), len(keys)):
            raise ValueError(
                f"targets of shape {tuple(targets.shape)} do not match {len(queries)} queries x {len(keys)} keys"
            )
        logits = queries @ keys.T / self.temperature
        return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
