"""InfoNCE of predictions against blocks of local targets (MNCLGLF's local term).

For every block ``k`` of targets (one combination of tiles per image, see
:mod:`geocl.models.split_combine`), the logits are ``p · c_kᵀ / T`` over the batch and
the positive of image ``i`` is block ``k``'s row ``i``: a cross-entropy whose target is
the diagonal. The loss is the mean over blocks and images, so the released code's
``(1/12) Σ`` over 6 combinations and 2 directions is the mean of two calls.

Readings taken where MNCLGLF's figure and released code (Li et al., arXiv 2306.15930)
disagree or fit one device only: the predictions keep their gradient (only the targets
are stop-grad, as the figure marks them; the code detaches both, so the term would not
train anything); across devices the targets are gathered and the positive of local row ``i`` is global column
``rank * B + i``, so N devices compute what one device computes on the whole batch
(every device must hold the same B, as for lightly's NT-Xent).
"""

from __future__ import annotations

import torch
from lightly.utils import dist
from torch import Tensor, nn
from torch.nn import functional as F


class LocalInfoNCELoss(nn.Module):
    """Mean InfoNCE of predictions against each block of targets.

    Args:
        temperature: logits are divided by it (released code: 1.0).
        gather_distributed: take the other devices' targets as negatives too.

    Shape:
        - predictions: ``[B, D]`` (any scale; L2-normalised here).
        - targets: ``[K * B, D]``, K blocks of B rows, row ``k * B + i`` belonging to image ``i``.
        - Output: scalar, mean over the K blocks and the B predictions of this device.
    """

    def __init__(self, temperature: float = 1.0, gather_distributed: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, predictions: Tensor, targets: Tensor) -> Tensor:
        batch = predictions.shape[0]
        if targets.shape[0] % batch:
            raise ValueError(f"{targets.shape[0]} target rows are not blocks of {batch}")
        predictions = F.normalize(predictions, dim=1)
        # targets are stop-gradient (the paper's c_j); detached here so no caller can leak a gradient through them
        keys = F.normalize(targets.detach(), dim=1).reshape(-1, batch, targets.shape[1])  # [K, B, D]
        labels = torch.arange(batch, device=predictions.device)
        if self.gather_distributed and dist.world_size() > 1:
            # [world, K, B, D] -> [K, world * B, D]: every block sees all devices' images
            keys = torch.stack(dist.gather(keys.contiguous()), dim=1).flatten(1, 2)
            labels = labels + dist.rank() * batch
        logits = torch.einsum("nd,kmd->knm", predictions, keys) / self.temperature  # [K, B, world * B]
        return F.cross_entropy(logits.flatten(0, 1), labels.repeat(keys.shape[0]))
