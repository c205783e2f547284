"""FBA's foreground/background contrast as a label-free pretraining of the encoder.

FBA-Net (Chung et al., MILLanD @ MICCAI 2023, arXiv 2306.15189) trains a segmenter from
few labels; its contrast term needs no label, so it can pretrain an encoder on its own,
as C2AM (Xie et al., CVPR 2022, arXiv 2203.13505), whose pull/push losses FBA took, does.
This method is that pretraining; :mod:`geocl.methods.fba` stays the paper's
semi-supervised protocol. It writes a checkpoint like every other method (the encoder
under ``encoder``), so ``geocl compare`` puts it beside SimCLR and GraSS under the
finetune and frozen protocols.

One step, for a batch of B tiles (:class:`~geocl.losses.fba.FeaturePoolContrast`)::

    x1, x2 = two augmented views of each tile                 (the base's view pipeline)
    F      = encoder.feature_map([x1; x2])                    [2B, D, h, w]
    a      = sigmoid(BN(Conv1x1(F)))                          [2B, 1, h, w]  the fg/bg split
    fg, bg = ReLU(W pool_a(F)), ReLU(W pool_(1-a)(F))         [2B, dim] each, one bias-free W
    loss   = NT-Xent(fg[x1] <-> fg[x2]; other fg, every bg)   pretext: instance (the default)
    loss   = Lmax(fg) + Lmax(bg) + Lmin(fg, bg)               pretext: batch, FBA's terms over all 2B views

Where the split comes from without labels: the network's own activation map ``a``, as
in FBA-Net (arXiv 2306.15189), whose map is a learned head on the decoder's logits;
with no decoder here, the head reads the encoder's last feature map (an adaptation of
FBA-Net, not its released form). Nothing names the foreground: the map learns to
separate what differs inside a tile in the same way across tiles.

Why it cannot collapse (the failure of the released binary term, which its free
projection biases satisfy at no cost): fg and bg share one projection without bias, so
they differ only through the features they pool. A uniform map (no split) or a constant
feature map (a collapsed encoder) makes the two pooled vectors equal, cosine 1: the
largest push loss, not the smallest; a zero embedding has cosine 0 with everything, the
largest pull loss. Two views of a tile join the batch as separate items, so the pull
terms also draw a tile's views together.

The released mutual consistency does not apply: it ties several decoders' predictions,
and this pretraining has one head and no decoder.

Two pretexts use that split. ``pretext: batch`` is FBA-Net's terms over the batch, as
above: it asks only that foregrounds resemble foregrounds, is solved within a few hundred
steps, and at 3,000 steps its encoder is no better than a random one under a frozen probe.
``pretext: instance``, the default, is geocl's, not FBA-Net's: it keeps the map, the
pooling and the projection, and makes the two views of one tile pick each other's
foreground out of every other foreground and every background of the batch
(:func:`~geocl.losses.fba.instance_foreground_contrast`, NT-Xent at ``temperature``): the
split must now carry what tells one tile from another. A uniform map still loses, because
a view's own background is a negative as close as its positive could be. It is the
default because it is the one that pays: on the landscape's tiles it beat a random encoder
at 500 and 1,000 steps under the frozen probe and, at 1,000, finetuned too (the FBA page
of the documentation has the tables), where the batch pretext lost to a random encoder at
300 and 3,000 steps.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from geocl.errors import GeoclError
from geocl.losses.fba import (
    ALPHA_MAX,
    ALPHA_MIN,
    FeaturePoolContrast,
    clamped_cosine,
    foreground_background_contrast,
    instance_foreground_contrast,
)
from geocl.methods.base import PretrainMethod
from geocl.methods.registry import register_method


@register_method("fba-pretrain")
class FBAPretrain(PretrainMethod):
    """FBA's fg/bg contrast, without labels, pretraining the encoder (module docstring).

    Args:
        encoder, in_chans, **common: see :class:`~geocl.methods.base.PretrainMethod`.
        embedding_dim: contrast embedding size (released: 128).
        alpha_max: rank-weight exponent of the pull terms of the batch pretext (released: 0.25).
        alpha_min: rank-weight exponent of the push term of the batch pretext (released: 2.5).
        pretext: ``instance``, the two views' foregrounds as the only positives (the default),
            or ``batch``, FBA-Net's terms over the batch (module docstring).
        temperature: NT-Xent temperature of the instance pretext.

    Attributes:
        contrast: the activation-map head, the projection and the loss.

    Any encoder with a feature map serves (a ViT's patch tokens on their grid), at views
    large enough for a map of several positions (natural 32 px images are not: a ResNet's
    map is then 1 x 1, with nothing to split).

    Raises:
        GeoclError: (first step) a feature map of one position (key ``data.view_size``).
    """

    def __init__(
        self,
        encoder: str = "resnet18",
        in_chans: int = 3,
        *,
        embedding_dim: Annotated[int, Field(ge=1)] = 128,
        alpha_max: Annotated[float, Field(ge=0)] = ALPHA_MAX,
        alpha_min: Annotated[float, Field(ge=0)] = ALPHA_MIN,
        pretext: Literal["batch", "instance"] = "instance",
        temperature: Annotated[float, Field(gt=0)] = 0.1,
        **common: Any,
    ) -> None:
        super().__init__(encoder, in_chans, **common)
        params = self.params
        self.contrast = FeaturePoolContrast(
            self.encoder.num_features, params.embedding_dim, 2, alpha_max=params.alpha_max, alpha_min=params.alpha_min
        )

    def loss_terms(self, views: Tensor) -> dict[str, Tensor]:
        """The loss and what it is made of for a batch of views ``[N, C, S, S]`` (N >= 2; the
        instance pretext: the first views of N / 2 tiles, then their second views).

        Returns:
            ``loss``, ``fg_bg_similarity`` (mean clamped cosine between fg and bg: 1 would
            be no split) and ``map_mean`` (mean of the activation map).
        """
        features = self.encoder.feature_map(views)
        if features.shape[2:].numel() < 2:
            raise GeoclError(
                f"FBA pretraining splits the encoder's last feature map into foreground and background, but "
                f"{views.shape[-1]} px views give a map of one position ({self.encoder_name}); use views of at "
                "least 64 px (a ResNet's map is the view / 32 a side)",
                key="data.view_size",
            )
        foreground, background, activation = self.contrast.embed(features)
        if self.params.pretext == "instance":
            loss = instance_foreground_contrast(foreground, background, self.params.temperature)
        else:
            loss = foreground_background_contrast(
                foreground, background, self.contrast.alpha_max, self.contrast.alpha_min
            )
        return {
            "loss": loss,
            "fg_bg_similarity": clamped_cosine(foreground, background).diagonal().mean().detach(),
            "map_mean": activation.mean().detach(),
        }

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        view_a, view_b = self.views(batch["image"])
        terms = self.loss_terms(torch.cat([view_a, view_b]))  # both views of every tile: [2B, C, S, S]
        loss = self.check_finite(terms["loss"])
        size = len(view_a)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True, batch_size=size)
        for name in ("fg_bg_similarity", "map_mean"):
            self.log(f"train/{name}", terms[name], on_step=True, on_epoch=False, batch_size=size)
        return loss


__all__ = ["FBAPretrain"]
