"""MoCo v2: a momentum key encoder and a queue of past keys as negatives.

Assembled from lightly's parts (He et al., CVPR 2020; Chen et al., arXiv 2003.04297):
the projection head is ``MoCoProjectionHead`` (Linear-ReLU-Linear), the key network
is an exponential moving average of the query network (``update_momentum``, its
parameters frozen with ``deactivate_requires_grad``), and the loss is lightly's
``NTXentLoss(memory_bank_size=(queue_size, output_dim))``: query q_i against its key
k_i and the queue Q, -log exp(q_i·k_i/τ) / (exp(q_i·k_i/τ) + Σ_j exp(q_i·Q_j/τ)),
after which the keys are enqueued.

On N devices lightly gathers the keys of all devices before enqueueing them
(``gather_distributed=True``), in rank order, so every device holds the queue one
device would hold with the concatenated batch; each device's loss averages its own
queries, and the mean over devices (what DDP's gradient averaging optimises) is the
one-device loss. With ``symmetric`` one step enqueues the keys of both directions,
device by device, so the queue holds the same keys in a different order than on one
device: losses agree up to float rounding as long as ``queue_size`` is a multiple of
the keys enqueued per step (lightly drops the keys that do not fit before the queue
wraps around, and which keys those are depends on the order).

``shuffle_bn`` (MoCo's "shuffling BN") passes the keys through the key encoder in an
order shuffled across devices, so that BatchNorm statistics cannot tell a query's
positive apart; on one device BatchNorm statistics do not depend on the order and the
shuffle is skipped.

With ``spps.enabled`` semantic positive pairs join the ordinary ones as in
:mod:`geocl.methods.simclr`; the key encoder (the EMA network) mines them.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from lightly.models.modules import MoCoProjectionHead
from lightly.models.utils import batch_shuffle, batch_unshuffle, update_momentum
from lightly.utils import dist
from lightly.utils.scheduler import cosine_schedule
from pydantic import Field
from torch import Tensor

from geocl.data.semantic_pairs import pair_views
from geocl.errors import GeoclError
from geocl.losses import NTXentLoss
from geocl.methods.base import PretrainMethod
from geocl.methods.registry import register_method
from geocl.methods.simclr import log_semantic_fraction
from geocl.methods.spps import SemanticPairsHost, SemanticPairsPlugin
from geocl.models import Encoder, frozen_copy
from geocl.sampling.semantic_pairs import SPPSConfig

#: Checkpoint key of the queue (lightly keeps it in a non-persistent buffer, outside the state dict).
QUEUE_CHECKPOINT_KEY = "geocl_moco_queue"


@register_method("moco")
class MoCo(SemanticPairsHost, PretrainMethod):
    """MoCo v2 on multi-band tiles (CPU-sized defaults; MoCo v2's in ``recipes/paper/moco.yaml``).

    Args:
        encoder, in_chans, **common: see :class:`~geocl.methods.base.PretrainMethod`.
        temperature: InfoNCE temperature τ (MoCo v2: 0.2).
        hidden_dim: projection head hidden width (MoCo v2: 2048).
        output_dim: embedding size (MoCo v2: 128).
        queue_size: negatives kept in the queue (MoCo v2: 65536); keep it a multiple of
            the keys enqueued per step and well below the number of training images,
            or the queue holds keys of the very image a query comes from.
        momentum: EMA momentum m of the key network (MoCo v2: 0.999; short runs need less).
        momentum_schedule: raise the momentum from ``momentum`` to 1 along a cosine over the run.
        symmetric: also contrast queries of view 2 with keys of view 1 (loss = mean of both).
        shuffle_bn: shuffle the key batch across devices for the key encoder (MoCo's shuffling BN).
        spps: semantic positive pairs (off by default).

    Attributes:
        head: query projection head ``[B, D]`` -> ``[B, output_dim]``.
        key_encoder: EMA copy of ``encoder`` (no gradients).
        key_head: EMA copy of ``head`` (no gradients).
        criterion: lightly's NT-Xent with the queue as its memory bank.
    """

    momentum_encoder_attribute = "key_encoder"

    def __init__(
        self,
        encoder: str = "resnet18",
        in_chans: int = 3,
        *,
        temperature: Annotated[float, Field(gt=0)] = 0.2,
        hidden_dim: Annotated[int, Field(ge=1)] = 512,
        output_dim: Annotated[int, Field(ge=1)] = 128,
        # at least 1: lightly reads 0 as "no memory bank", which would silently make this SimCLR
        queue_size: Annotated[int, Field(ge=1)] = 128,
        momentum: Annotated[float, Field(ge=0.0, le=1.0)] = 0.99,
        momentum_schedule: bool = False,
        symmetric: bool = False,
        shuffle_bn: bool = True,
        spps: SPPSConfig = SPPSConfig(),
        **common: Any,
    ) -> None:
        super().__init__(encoder, in_chans, **common)
        params = self.params
        self.head = MoCoProjectionHead(self.encoder.num_features, params.hidden_dim, params.output_dim)
        self.key_encoder = frozen_copy(self.encoder)
        self.key_head = frozen_copy(self.head)
        self.criterion = NTXentLoss(
            temperature=params.temperature,
            memory_bank_size=(params.queue_size, params.output_dim),
            gather_distributed=True,
        )
        self.spps = SemanticPairsPlugin(params.spps, self.view_size)

    @property
    def semantic_encoder(self) -> Encoder:
        """The encoder that mines semantic pairs from this run (SPPS): the EMA one."""
        return self.key_encoder

    @property
    def queue(self) -> Tensor:
        """The queue of past keys, ``[queue_size, output_dim]`` (L2-normalised rows)."""
        return self.criterion.memory_bank.bank

    def momentum_at(self, step: int) -> float:
        """Key-network momentum at an optimizer step (constant, or cosine from ``momentum`` to 1)."""
        params = self.params
        if not params.momentum_schedule:
            return float(params.momentum)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        # lightly's cosine ends at step total - 1, the last optimizer step
        return float(cosine_schedule(min(step, total - 1), total, float(params.momentum), 1.0))

    @torch.no_grad()
    def update_key_network(self, momentum: float) -> None:
        """θ_k <- m·θ_k + (1 - m)·θ_q for the encoder and the head."""
        update_momentum(self.encoder, self.key_encoder, momentum)
        update_momentum(self.head, self.key_head, momentum)

    def query(self, views: Tensor) -> Tensor:
        """Queries: ``[B, C, S, S]`` -> ``[B, output_dim]`` (not normalised; the loss normalises)."""
        return self.head(self.encoder(views))

    @torch.no_grad()
    def key(self, views: Tensor) -> Tensor:
        """Keys from the EMA network: ``[B, C, S, S]`` -> ``[B, output_dim]``, without graph."""
        distributed = self.params.shuffle_bn and dist.world_size() > 1
        if distributed:
            views, order = batch_shuffle(views, distributed=True)
        keys = self.key_head(self.key_encoder(views))
        if distributed:
            keys = batch_unshuffle(keys, order, distributed=True)
        return keys

    def contrast(self, view_a: Tensor, view_b: Tensor) -> Tensor:
        """InfoNCE of queries of ``view_a`` against keys of ``view_b`` and the queue, then enqueue the keys.

        With ``symmetric`` the two directions go through one loss call, so both see the
        queue as it was before this step and a view's own key is never its negative.
        """
        if self.params.symmetric:
            queries = torch.cat([self.query(view_a), self.query(view_b)])
            keys = torch.cat([self.key(view_b), self.key(view_a)])
        else:
            queries, keys = self.query(view_a), self.key(view_b)
        return self.criterion(queries, keys)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        self.update_key_network(self.momentum_at(self.global_step))
        view_a, view_b = pair_views(self.views, batch)
        loss = self.check_finite(self.contrast(view_a, view_b))
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True, batch_size=len(view_a))
        log_semantic_fraction(self, batch)
        return loss

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        bank = self.criterion.memory_bank
        # a resumed run must contrast against the same queue as the uninterrupted one
        checkpoint[QUEUE_CHECKPOINT_KEY] = {"bank": bank.bank.detach().cpu(), "pointer": bank.bank_ptr.detach().cpu()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored = checkpoint.get(QUEUE_CHECKPOINT_KEY)
        if stored is None:
            return
        bank = self.criterion.memory_bank
        if tuple(stored["bank"].shape) != tuple(bank.bank.shape):
            raise GeoclError(
                f"checkpoint queue has shape {tuple(stored['bank'].shape)}, this run {tuple(bank.bank.shape)}",
                key="method.queue_size",
            )
        bank.bank.copy_(stored["bank"])
        bank.bank_ptr.copy_(stored["pointer"])
