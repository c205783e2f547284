"""SimCLR: instance discrimination with NT-Xent over in-batch negatives.

The baseline of every comparison and stage 1 of GraSS. Negatives are gathered
across devices (lightly's ``NTXentLoss(gather_distributed=True)``), so a run on N
devices sees the same negatives as one device with the whole batch.

With ``spps.enabled`` (SPPS, Alkhalefi et al., arXiv 2306.16122) the loader also yields
semantic pairs (x_n, x_m) mined by a frozen encoder; view 1 comes from ``image`` and
view 2 from ``image_pair``. The paper's abstract says the pairs are integrated with the
ordinary positive pairs without saying how; the reading taken is the simplest, extra
pairs through the unchanged NT-Xent loss. A partner that is also in the batch stays
among the negatives (lightly's loss takes no mask); with SPPS off the method is plain
SimCLR, step for step.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field
from torch import Tensor

from geocl.data.semantic_pairs import pair_views
from geocl.losses import NTXentLoss
from geocl.methods.base import PretrainMethod
from geocl.methods.registry import register_method
from geocl.methods.spps import SemanticPairsHost, SemanticPairsPlugin
from geocl.models import Encoder, projection_head
from geocl.sampling.semantic_pairs import SPPSConfig


@register_method("simclr")
class SimCLR(SemanticPairsHost, PretrainMethod):
    """SimCLR on multi-band tiles.

    Args:
        encoder, in_chans, **common: see :class:`~geocl.methods.base.PretrainMethod`.
        temperature: NT-Xent temperature (GraSS, arXiv 2306.15868, released config: 0.5).
        hidden_dim: projection head hidden width.
        output_dim: embedding size (GraSS: 128).
        head_batch_norm: BatchNorm in the head (GraSS: none; its head is read as SimCLR's
            Linear-ReLU-Linear, the intent its config states, though the released code
            drops the ReLU).
        spps: semantic positive pairs (off by default; a :class:`SPPSConfig` or a mapping).
    """

    def __init__(
        self,
        encoder: str = "resnet18",
        in_chans: int = 3,
        *,
        temperature: Annotated[float, Field(gt=0)] = 0.5,
        hidden_dim: Annotated[int, Field(ge=1)] = 512,
        output_dim: Annotated[int, Field(ge=1)] = 128,
        head_batch_norm: bool = False,
        spps: SPPSConfig = SPPSConfig(),
        **common: Any,
    ) -> None:
        super().__init__(encoder, in_chans, **common)
        params = self.params
        self.head = projection_head(
            self.encoder.num_features, params.hidden_dim, params.output_dim, params.head_batch_norm
        )
        self.criterion = NTXentLoss(temperature=params.temperature, gather_distributed=True)
        self.spps = SemanticPairsPlugin(params.spps, self.view_size)

    @property
    def semantic_encoder(self) -> Encoder:
        """The encoder that mines semantic pairs from this run (SPPS)."""
        return self.encoder

    def embed(self, views: Tensor) -> Tensor:
        """Projection of views: ``[B, C, S, S]`` -> ``[B, output_dim]``."""
        return self.head(self.encoder(views))

    def contrast(self, view_a: Tensor, view_b: Tensor) -> Tensor:
        """NT-Xent between two aligned batches of views (positives: same row)."""
        return self.criterion(self.embed(view_a), self.embed(view_b))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        view_a, view_b = pair_views(self.views, batch)
        loss = self.check_finite(self.contrast(view_a, view_b))
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True, batch_size=len(view_a))
        log_semantic_fraction(self, batch)
        return loss


def log_semantic_fraction(method: PretrainMethod, batch: dict[str, Any]) -> None:
    """Log the share of semantic pairs in a batch (only batches from the SPPS dataset have one)."""
    if "semantic" in batch:
        semantic = batch["semantic"].float()
        method.log(
            "train/semantic_fraction",
            semantic.mean(),
            on_step=False,
            on_epoch=True,
            sync_dist=True,
            batch_size=len(semantic),
        )
