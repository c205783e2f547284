"""MNCLGLF: multi-network contrastive learning on global and local representations.

Li, Long and Li, "Multi-network Contrastive Learning Based on Global and Local
Representations" (arXiv 2306.15930), and its released code (github.com/liweiquan39/MNCLGLF).
Three views x1, x2, x3 of each tile go through three networks:

* online (trained by the optimiser): encoder f, projector g, predictor q, giving
  predictions ``p_i = q(g(f(x_i)))``;
* momentum: EMA copies of f and g (updated every step, before any target is computed)
  giving ``j1, j3``, each replaced by its cosine nearest neighbour in a FIFO support
  queue (lightly's ``NNMemoryBankModule``); both look-ups see the queue before ``j3``
  is enqueued;
* stop-gradient: the online f and g run without gradient on ``s x s`` tiles of x1 and
  x2, tile features averaged over every ``combs``-subset of tiles
  (:mod:`geocl.models.split_combine`) before g, giving local targets ``c(x1), c(x2)``.

Loss: ``L = L_local + a * L_global`` with
``L_local = ½ [InfoNCE(p2, c(x1)) + InfoNCE(p1, c(x2))]`` (mean over combinations, so
``1/12`` of the sum for 6 combinations) and
``L_global = ½ NTX(NN(j3), p1) + ½ NTX(NN(j1), p3)`` (lightly's NT-Xent).

Where the paper's figure and the released code disagree or the code only fits one
device, the readings taken are: the predictions keep their gradient in ``L_local`` (the
figure stops the gradient only at the targets; the code detaches the predictions too,
which leaves ``L_local`` without any gradient); both losses gather across devices and
offset the positives by ``rank * B``; the stop-gradient network is the online network
(shared weights, as in the code); only ``j3`` is enqueued (as in the code); tile and
combination blocks as in :mod:`geocl.models.split_combine`. The queue is filled with
the targets of all devices, so every device holds the queue one device would hold with
the whole batch.

BatchNorm in the tile pass (``tile_batch_norm``): ``batch`` (default) normalises tiles
and combinations with their own batch statistics, as the released code does, but
leaves the running statistics alone, so that what finetuning inherits describes whole
views and not a mix of views and quarter-size tiles; ``eval`` uses the running
statistics (they lag behind early in training and describe full views, not tiles);
``train`` is the released behaviour (tile statistics enter the running statistics).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

import torch
from lightly.models.modules import BYOLPredictionHead, MoCoProjectionHead, NNMemoryBankModule
from lightly.models.utils import update_momentum
from lightning.pytorch.utilities import rank_zero_warn
from pydantic import Field
from torch import Tensor, nn

from geocl.errors import GeoclError
from geocl.losses import LocalInfoNCELoss, NTXentLoss
from geocl.methods.base import PretrainMethod
from geocl.methods.registry import register_method
from geocl.models import combine_tiles, frozen_copy, split_tiles


@contextmanager
def tile_batch_norm(modules: list[nn.Module], mode: str) -> Iterator[None]:
    """Run the BatchNorm layers of ``modules`` in ``mode`` (see the module docstring) for a while."""
    norms = [m for module in modules for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(norm.training, norm.track_running_stats) for norm in norms]
    for norm in norms:
        if mode == "eval":
            norm.eval()
        elif mode == "batch":
            # in train mode without tracking, BatchNorm uses batch statistics and updates nothing
            norm.track_running_stats = False
    try:
        yield
    finally:
        for norm, (training, tracking) in zip(norms, saved, strict=True):
            norm.train(training)
            norm.track_running_stats = tracking


@register_method("multinet")
class MultiNet(PretrainMethod):
    """MNCLGLF on multi-band tiles (CPU-sized widths; the released code's values in brackets).

    Args:
        encoder, in_chans, **common: see :class:`~geocl.methods.base.PretrainMethod`.
        hidden_dim: projector hidden width (released code: 2048).
        output_dim: projection, prediction and queue width (released code: 2048).
        predictor_hidden_dim: predictor hidden width (released code: 512).
        momentum: EMA momentum m of the momentum network (released code: 0.99, constant).
        splits: tiles per side s of the local views (released code: 2); must divide ``data.view_size``.
        combs: tiles averaged per local target (released code: 2, giving C(4, 2) = 6 targets).
        queue_size: rows of the nearest-neighbour support queue (released code: 16384 for
            50k-100k images); keep it well below the number of train tiles.
        local_temperature: temperature T of the local InfoNCE (released code: 1.0).
        global_temperature: temperature T' of the global NT-Xent (released code: 1.0).
        global_weight: weight a of the global term (released code: 6).
        tile_batch_norm: BatchNorm of the tile pass: batch, eval or train (module docstring).
    """

    momentum_encoder_attribute = "momentum_encoder"

    def __init__(
        self,
        encoder: str = "resnet18",
        in_chans: int = 3,
        *,
        hidden_dim: Annotated[int, Field(ge=1)] = 1024,
        output_dim: Annotated[int, Field(ge=1)] = 256,
        predictor_hidden_dim: Annotated[int, Field(ge=1)] = 512,
        momentum: Annotated[float, Field(ge=0.0, le=1.0)] = 0.99,
        splits: Annotated[int, Field(ge=1)] = 2,
        combs: Annotated[int, Field(ge=1)] = 2,
        queue_size: Annotated[int, Field(ge=1)] = 1024,
        local_temperature: Annotated[float, Field(gt=0)] = 1.0,
        global_temperature: Annotated[float, Field(gt=0)] = 1.0,
        global_weight: Annotated[float, Field(ge=0)] = 6.0,
        tile_batch_norm: Literal["batch", "eval", "train"] = "batch",
        **common: Any,
    ) -> None:
        super().__init__(encoder, in_chans, **common)
        params = self.params
        if self.view_size % params.splits:
            raise GeoclError(
                f"data.view_size {self.view_size} px is not divisible into {params.splits} x {params.splits} tiles",
                key="method.splits",
            )
        if params.combs > params.splits**2:
            raise GeoclError(f"must be in [1, splits² = {params.splits**2}], got {params.combs}", key="method.combs")
        self.projector = MoCoProjectionHead(
            self.encoder.num_features, params.hidden_dim, params.output_dim, num_layers=3, batch_norm=True
        )
        self.predictor = BYOLPredictionHead(params.output_dim, params.predictor_hidden_dim, params.output_dim)
        self.momentum_encoder = frozen_copy(self.encoder)
        self.momentum_projector = frozen_copy(self.projector)
        self.support = NNMemoryBankModule(size=(params.queue_size, params.output_dim))
        self.support.gather_distributed = True
        # lightly keeps the queue out of the state dict; a resumed run must continue with it
        self.support.register_buffer("bank", self.support.bank, persistent=True)
        self.support.register_buffer("bank_ptr", self.support.bank_ptr, persistent=True)
        self.local_criterion = LocalInfoNCELoss(temperature=params.local_temperature, gather_distributed=True)
        self.global_criterion = NTXentLoss(temperature=params.global_temperature, gather_distributed=True)

    def on_fit_start(self) -> None:
        tiles = getattr(self.datamodule, "dataset", None)
        size = int(self.params.queue_size)
        if tiles is not None and size >= len(tiles):
            rank_zero_warn(
                f"method.queue_size: the support queue ({size} rows) holds at least the whole train set "
                f"({len(tiles)} tiles), so nearest neighbours are stale views of the same tiles; "
                "keep it well below the number of tiles"
            )

    def predictions(self, views: Tensor) -> Tensor:
        """Online predictions: ``[B, C, S, S]`` -> ``[B, output_dim]``."""
        return self.predictor(self.projector(self.encoder(views)))

    @torch.no_grad()
    def local_targets(self, views: Tensor) -> Tensor:
        """Stop-gradient local targets: ``[B, C, S, S]`` -> ``[K * B, output_dim]``, K = C(s², combs).

        Block ``k`` (rows ``k * B`` to ``(k + 1) * B``) is combination ``k`` of every image.
        """
        params = self.params
        tiles = split_tiles(views, params.splits)
        with tile_batch_norm([self.encoder, self.projector], params.tile_batch_norm):
            combined = combine_tiles(self.encoder(tiles), params.splits**2, params.combs)
            return self.projector(combined)

    @torch.no_grad()
    def global_targets(self, view_1: Tensor, view_3: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest neighbours in the queue of the momentum embeddings ``j1, j3``; then ``j3`` is enqueued.

        Returns:
            ``NN(j1), NN(j3)``, each ``[B, output_dim]`` rows of the queue.
        """
        j1 = self.momentum_projector(self.momentum_encoder(view_1))
        j3 = self.momentum_projector(self.momentum_encoder(view_3))
        neighbour_1 = self.support(j1, update=False)
        neighbour_3 = self.support(j3, update=True)  # looks up before it enqueues
        return neighbour_1, neighbour_3

    def update_momentum_network(self) -> None:
        """One EMA step of the momentum encoder and projector (the predictor has no copy)."""
        momentum = float(self.params.momentum)
        update_momentum(self.encoder, self.momentum_encoder, m=momentum)
        update_momentum(self.projector, self.momentum_projector, m=momentum)

    def local_loss(self, p1: Tensor, p2: Tensor, targets_1: Tensor, targets_2: Tensor) -> Tensor:
        """``½ [InfoNCE(p2, c(x1)) + InfoNCE(p1, c(x2))]``: cross-view, mean over combinations."""
        return 0.5 * (self.local_criterion(p2, targets_1) + self.local_criterion(p1, targets_2))

    def global_loss(self, p1: Tensor, p3: Tensor, neighbour_1: Tensor, neighbour_3: Tensor) -> Tensor:
        """``½ NTX(NN(j3), p1) + ½ NTX(NN(j1), p3)``: cross-view against the momentum network's neighbours."""
        return 0.5 * (self.global_criterion(neighbour_3, p1) + self.global_criterion(neighbour_1, p3))

    def losses(self, view_1: Tensor, view_2: Tensor, view_3: Tensor) -> tuple[Tensor, Tensor]:
        """``L_local`` and ``L_global`` of three aligned batches of views (the momentum network is updated first)."""
        self.update_momentum_network()
        p1, p2, p3 = self.predictions(view_1), self.predictions(view_2), self.predictions(view_3)
        local = self.local_loss(p1, p2, self.local_targets(view_1), self.local_targets(view_2))
        neighbour_1, neighbour_3 = self.global_targets(view_1, view_3)
        return local, self.global_loss(p1, p3, neighbour_1, neighbour_3)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        view_1, view_2 = self.views(batch["image"])
        view_3 = self.augmentation(batch["image"])
        local, global_ = self.losses(view_1, view_2, view_3)
        loss = self.check_finite(local + self.params.global_weight * global_)
        n = len(view_1)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True, batch_size=n)
        self.log("train/loss_local", local, on_step=True, on_epoch=True, sync_dist=True, batch_size=n)
        self.log("train/loss_global", global_, on_step=True, on_epoch=True, sync_dist=True, batch_size=n)
        return loss
