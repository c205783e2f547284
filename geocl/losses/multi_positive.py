"""Multi-positive symmetric InfoNCE: CLIP's loss when several captions of a batch mean the same.

For L2-normalised text embeddings ``t_m`` and image embeddings ``v_n`` of one batch
(row m of both comes from item m), logits ``L = s * T V^T`` (``s`` = 1 / temperature,
row = text, column = image) and caption equivalence classes ``g_m`` (two captions are
equivalent when they have the same canonical attribute set)::

    Y_mn = [g_m == g_n] / |{n' : g_n' == g_m}|
    loss = 1/2 [ mean_m -sum_n Y_mn log softmax_n(L_m.)  +  mean_n -sum_m Y_nm log softmax_m(L_.n) ]

Dental CLAIRES (Kabir et al., AMIA 2023 Informatics Summit, arXiv 2306.15651) trains its
dual encoder so that true image-text pairs score high and random in-batch pairs low,
without giving the loss; it is read here as CLIP's symmetric InfoNCE (Radford et al.,
arXiv 2103.00020) in its multi-positive form, because template captions of tiles repeat
within a batch. Every row of ``Y`` sums to 1, and ``Y`` is symmetric because equivalence
is, so the image direction uses the same targets as the text direction. When all
captions of a batch differ ``Y`` is the identity and this is the one-hot CLIP loss
``1/2 [CE(L, arange) + CE(L^T, arange)]``; when two tiles share a caption neither is
pushed away from the other's caption as a negative.

DDP (``gather_distributed``): each device contrasts its own N texts with the images
of all devices and its own N images with the texts of all devices (lightly's
``dist.gather``, which passes gradients back to the device that made an embedding, as
lightly's ``NTXentLoss`` does), with targets over the gathered equivalence classes. Each
device averages over its own rows; DDP's mean of the device gradients is then the
gradient of the mean over the whole batch, i.e. of one process on the concatenated batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.utils import dist
from torch import Tensor, nn


def multi_positive_targets(row_groups: Tensor, column_groups: Tensor | None = None) -> Tensor:
    """Targets ``Y``: 1/|P_m| where the equivalence class of row m and column n agree, else 0.

    Args:
        row_groups: ``[M]`` integer equivalence class of each row's item.
        column_groups: ``[N]`` those of the columns (default: the rows').

    Returns:
        ``[M, N]`` float; each row sums to 1 (a row's own item must be among the columns).

    Raises:
        ValueError: a row without any positive column.
    """
    columns = row_groups if column_groups is None else column_groups
    same = (row_groups[:, None] == columns[None, :]).float()
    counts = same.sum(dim=1, keepdim=True)
    if bool((counts == 0).any()):
        raise ValueError("every row needs at least one positive column")
    return same / counts


class MultiPositiveInfoNCELoss(nn.Module):
    """Symmetric text-image InfoNCE with multi-positive targets (see the module docstring).

    Args:
        gather_distributed: contrast with the embeddings of all processes when
            torch.distributed is initialised.

    Shape:
        - text: ``[N, D]`` (normalised here).
        - image: ``[N, D]`` (normalised here); row m is the image of caption m.
        - groups: ``[N]`` integer equivalence class of each caption.
        - logit_scale: scalar tensor ``s`` = 1 / temperature (may carry a gradient).
        - Output: scalar.
    """

    def __init__(self, gather_distributed: bool = True) -> None:
        super().__init__()
        self.gather_distributed = gather_distributed

    def extra_repr(self) -> str:
        return f"gather_distributed={self.gather_distributed}"

    def forward(self, text: Tensor, image: Tensor, groups: Tensor, logit_scale: Tensor) -> Tensor:
        if not (len(text) == len(image) == len(groups)):
            raise ValueError(f"need as many texts, images and groups, got {len(text)}, {len(image)}, {len(groups)}")
        text = F.normalize(text, dim=1)
        image = F.normalize(image, dim=1)
        all_text, all_image, all_groups = text, image, groups
        if self.gather_distributed and dist.world_size() > 1:
            all_text = torch.cat(dist.gather(text), dim=0)
            all_image = torch.cat(dist.gather(image), dim=0)
            all_groups = torch.cat(dist.gather(groups), dim=0)
        targets = multi_positive_targets(groups, all_groups)
        text_to_image = logit_scale * text @ all_image.T  # [N, world * N]: own texts x all images
        image_to_text = logit_scale * image @ all_text.T  # [N, world * N]: own images x all texts
        text_loss = -(targets * F.log_softmax(text_to_image, dim=1)).sum(dim=1).mean()
        image_loss = -(targets * F.log_softmax(image_to_text, dim=1)).sum(dim=1).mean()
        return (text_loss + image_loss) / 2
