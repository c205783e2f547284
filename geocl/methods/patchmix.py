"""PatchMix: contrastive ViT pretraining with token-mixed images and soft targets.

Shen et al., "Inter-Instance Similarity Modeling for Contrastive Learning" (arXiv
2306.12243), and its released code (github.com/visresearch/patchmix). A MoCo-v3-style learner: an online ViT
(``self.encoder``) with projector and predictor, and a momentum copy of ViT + projector
that gives the keys. Each step draws two views ``x1, x2`` and mixes each at token
granularity (:class:`~geocl.transforms.PatchMix`); the soft targets say how much of each
key image a query holds. With ``CE`` the soft-target InfoNCE
(:class:`~geocl.losses.SoftTargetInfoNCELoss`, tau = 0.2)::

    L = CE(q(x1), k(x2), Y_src) + 1/2 CE(q(x~2), k(x1), Y_mix) + 1/2 CE(q(x~2), k(x~1), Y_mm)

Where the paper (arXiv 2306.12243) leaves the details to its code, the readings taken
are: ``num_mix`` is a list, one m drawn per step (default ``[2]``, the released configs);
the contrasts are asymmetric as in the code (only ``x1`` and ``x~2`` go through the
online network); the 1/2 weights are the code's (``mix_weight``, ``mixed_pair_weight``);
images are mixed within each device's batch while keys (negatives) are gathered from all
devices, as in the code, so with several devices the mixed terms differ from one device
holding the whole batch (``L_src`` is identical); the momentum encoder is on by default
(``momentum_encoder: false`` uses the online network, detached, for the keys, as the
ViT-T CIFAR config does); the momentum follows the cosine schedule
``m_t = 1 - (1 - m0)(1 + cos(pi t / T)) / 2`` per optimizer step, applied before the
forward (lightly's ``cosine_schedule``, which divides by ``T - 1`` so that m reaches 1 at
the last step; the code's loop changes it once an epoch only, by a shadowed index).
Multi-crop (ImageNet only in the paper) is left out, as in the released CIFAR configs,
which suit small tiles. Finetuning loads the online encoder (``encoder.*``), as for every
geocl method; the paper evaluates the momentum encoder, kept as ``key_encoder.*``.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from lightly.models.modules import BYOLPredictionHead, MoCoProjectionHead
from lightly.models.utils import update_momentum
from lightly.utils import dist
from lightly.utils.scheduler import cosine_schedule
from pydantic import Field
from torch import Tensor, nn

from geocl.errors import GeoclError
from geocl.losses import SoftTargetInfoNCELoss
from geocl.methods.base import PretrainMethod
from geocl.methods.registry import register_method
from geocl.models import frozen_copy
from geocl.transforms import MultiBandViewAugmentation, TwoViews
from geocl.transforms import PatchMix as PatchMixer
from geocl.transforms.patchmix import instance_targets, mix_targets, mixed_pair_targets


def patchmix_projector(input_dim: int, hidden_dim: int, output_dim: int) -> nn.Module:
    """MoCo v3's projector: 3 linear layers with BN, the last BN without affine parameters."""
    head = MoCoProjectionHead(input_dim, hidden_dim, output_dim, num_layers=3, batch_norm=True)
    # MoCo v3 (and PatchMix) end on a plain standardisation; lightly's last BN is affine
    head.layers[-1] = nn.BatchNorm1d(output_dim, affine=False)
    return head


@register_method("patchmix")
class PatchMix(PretrainMethod):
    """PatchMix on multi-band tiles (CPU-sized defaults; the paper's in ``recipes/paper/patchmix.yaml``).

    Args:
        encoder, in_chans, **common: see :class:`~geocl.methods.base.PretrainMethod`
            (the encoder must be a ViT; ``view_size`` a multiple of its patch).
        temperature: tau of the soft-target InfoNCE (released code: 0.2).
        num_mix: numbers of images m mixed into one; one is drawn per step (released code: [2]).
        mix_weight: weight of the mixed-query/original-key contrast (released code: 0.5).
        mixed_pair_weight: weight of the mixed/mixed contrast (released code: 0.5).
        proj_hidden_dim: projector hidden width (released code: 4096).
        proj_output_dim: embedding size (released code: 256).
        pred_hidden_dim: predictor hidden width (released code: 4096).
        momentum_encoder: keys from a momentum copy of encoder + projector (released code: on for ViT-S/B).
        momentum: start value m0 of the cosine momentum schedule, which ends at 1 (released code: 0.996).
        asymmetric_blur: blur view 1 always and view 2 with p = 0.1 (the released code's
            BYOL-style asymmetry); off = both views use ``augment.blur_p``.
        label_smoothing: label smoothing eps of the instance target Y_src (off-value eps/G
            over the G keys); 0.1 is the default of the released code's ``PatchMixer``
            (its configs do not override it).

    Attributes:
        projector, predictor: online heads (``[B, D] -> [B, out]``).
        key_encoder, key_projector: momentum copies (None with ``momentum_encoder: false``).
        mixer: the token-level mixing of a batch.
        criterion: soft-target InfoNCE with keys gathered across devices.
    """

    momentum_encoder_attribute = "key_encoder"

    def __init__(
        self,
        encoder: str = "vit_tiny_patch16_224",
        in_chans: int = 3,
        *,
        temperature: Annotated[float, Field(gt=0)] = 0.2,
        num_mix: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)] = [2],  # noqa: B006 (validated, copied)
        mix_weight: Annotated[float, Field(ge=0)] = 0.5,
        mixed_pair_weight: Annotated[float, Field(ge=0)] = 0.5,
        proj_hidden_dim: Annotated[int, Field(ge=1)] = 512,
        proj_output_dim: Annotated[int, Field(ge=1)] = 128,
        pred_hidden_dim: Annotated[int, Field(ge=1)] = 512,
        momentum_encoder: bool = True,
        momentum: Annotated[float, Field(ge=0.0, le=1.0)] = 0.996,
        asymmetric_blur: bool = False,
        label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1,
        **common: Any,
    ) -> None:
        super().__init__(encoder, in_chans, **common)
        params = self.params
        patch = self.encoder.patch_size
        if patch is None:
            raise GeoclError(
                f"PatchMix mixes ViT tokens and needs a ViT encoder (e.g. vit_tiny_patch16_224), got {encoder!r}",
                key="encoder.name",
            )
        if self.view_size % patch:
            raise GeoclError(f"views of {self.view_size} px do not split into {patch} px patches", key="data.view_size")
        self.num_mix = [int(m) for m in params.num_mix]
        if params.asymmetric_blur:
            self.views = TwoViews(
                MultiBandViewAugmentation.from_config(self.view_size, {**self.augment_args, "blur_p": 1.0}),
                MultiBandViewAugmentation.from_config(self.view_size, {**self.augment_args, "blur_p": 0.1}),
            )

        self.projector = patchmix_projector(self.encoder.num_features, params.proj_hidden_dim, params.proj_output_dim)
        self.predictor = BYOLPredictionHead(params.proj_output_dim, params.pred_hidden_dim, params.proj_output_dim)
        self.key_encoder: nn.Module | None = None
        self.key_projector: nn.Module | None = None
        if params.momentum_encoder:
            self.key_encoder = frozen_copy(self.encoder)
            self.key_projector = frozen_copy(self.projector)
        self.mixer = PatchMixer(patch, self.num_mix[0])
        self.criterion = SoftTargetInfoNCELoss(temperature=params.temperature, gather_distributed=True)

    def on_fit_start(self) -> None:
        batch = getattr(self.datamodule, "batch_size", None)
        needed = 2 * max(self.num_mix) - 1
        if batch is not None and batch < needed:
            raise GeoclError(
                f"mixing {max(self.num_mix)} images needs batches of at least {needed}", key="data.batch_size"
            )

    def query(self, views: Tensor) -> Tensor:
        """Online embedding: ``[B, C, S, S]`` -> ``[B, out]`` (encoder, projector, predictor)."""
        return self.predictor(self.projector(self.encoder(views)))

    @torch.no_grad()
    def key(self, views: Tensor) -> Tensor:
        """Key embedding without graph: ``[B, C, S, S]`` -> ``[B, out]`` (momentum or detached online net)."""
        if self.key_encoder is None or self.key_projector is None:
            return self.projector(self.encoder(views))
        return self.key_projector(self.key_encoder(views))

    def momentum_at(self, step: int, total_steps: int) -> float:
        """Cosine momentum from m0 at step 0 to 1 at the last step (lightly's ``cosine_schedule``)."""
        return cosine_schedule(step, total_steps, self.params.momentum, 1.0)

    @torch.no_grad()
    def update_key_network(self, momentum: float) -> None:
        """EMA step of the key network: ``theta_k <- m theta_k + (1 - m) theta_q``."""
        if self.key_encoder is None or self.key_projector is None:
            return
        update_momentum(self.encoder, self.key_encoder, momentum)
        update_momentum(self.projector, self.key_projector, momentum)

    def draw_num_mix(self) -> int:
        """m for this step, uniformly among ``num_mix``; the same on every device (seeded by seed and step)."""
        if len(self.num_mix) == 1:
            return self.num_mix[0]
        generator = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + self.global_step)
        return self.num_mix[int(torch.randint(len(self.num_mix), (), generator=generator))]

    def losses(self, view_a: Tensor, view_b: Tensor, num_mix: int | None = None) -> dict[str, Tensor]:
        """The three contrasts of one step and their weighted sum.

        Args:
            view_a, view_b: two augmented views ``[N, C, S, S]`` (row i of both: tile i).
            num_mix: m (default: drawn with :meth:`draw_num_mix`).

        Returns:
            ``{"loss", "loss_src", "loss_mix", "loss_mm"}``, scalars; only ``loss`` is trained on.
        """
        m = self.draw_num_mix() if num_mix is None else num_mix
        mixed_a = self.mixer(view_a, m)
        mixed_b = self.mixer(view_b, m)
        rank, world = dist.rank(), dist.world_size()
        q_a, q_mixed_b = self.query(view_a), self.query(mixed_b.images)
        k_a, k_b, k_mixed_a = self.key(view_a), self.key(view_b), self.key(mixed_a.images)
        y_src = instance_targets(len(view_a), rank, world, device=view_a.device, smoothing=self.params.label_smoothing)
        y_mix = mix_targets(mixed_b.sources, rank, world)
        y_mm = mixed_pair_targets(mixed_b.sources, mixed_a.sources, rank, world)
        parts = {
            "loss_src": self.criterion(q_a, k_b, y_src),
            "loss_mix": self.criterion(q_mixed_b, k_a, y_mix),
            "loss_mm": self.criterion(q_mixed_b, k_mixed_a, y_mm),
        }
        params = self.params
        total = parts["loss_src"] + params.mix_weight * parts["loss_mix"] + params.mixed_pair_weight * parts["loss_mm"]
        return {"loss": total, **parts}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        view_a, view_b = self.views(batch["image"])
        momentum = self.momentum_at(self.global_step, int(self.trainer.estimated_stepping_batches))
        self.update_key_network(momentum)
        losses = self.losses(view_a, view_b)
        loss = self.check_finite(losses["loss"])
        n = len(view_a)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True, batch_size=n)
        for name in ("loss_src", "loss_mix", "loss_mm"):
            self.log(f"train/{name}", losses[name], on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
        self.log("train/momentum", momentum, on_step=True, on_epoch=False, batch_size=n)
        return loss
