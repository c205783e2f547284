"""Encoders looked up by name in timm's registry, built for any input band count.

A recipe says ``encoder: {name: resnet18}``; smp-style ``tu-resnet18`` names are
accepted too (the same timm model), so a checkpoint's encoder loads into a
segmentation-models-pytorch ``tu-`` encoder for finetuning.

Vision transformers are encoders too: ``encoder: {name: vit_tiny_patch16_224, args:
{patch_size: 8, img_size: 64, dynamic_img_size: true}}`` passes ``args`` to
``timm.create_model``, so one registered architecture serves small tiles with a small
patch (the token count, not the name's 16 px / 224 px, is what matters on 64 px tiles).
A ViT's token output ``[B, T, D]`` is turned into the same two views a CNN gives: a
spatial map of its patch tokens and one vector (its class token).

An encoder starts from random weights, or from the weights ``encoder.weights`` names (a
TorchGeo weights name, a timm tag or a file; ``encoder.pretrained: true`` is short for
the encoder's default timm tag), read from the local cache and fitted to the band
count by the rule stated in :mod:`geocl.models.weights`. Nothing is downloaded.

The encoder a pretraining checkpoint trained (any method, online or momentum copy) is
rebuilt here too (:func:`load_checkpoint_encoder`), from the checkpoint's ``geocl``
entry, read by :mod:`geocl.models.checkpoints`: evaluation, SPPS mining and retrieval
load encoders through it.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any, cast

import timm
from torch import Tensor, nn

from geocl.errors import GeoclError
from geocl.models.checkpoints import pretrained_encoder_args, read_pretrain_checkpoint
from geocl.models.weights import load_starting_weights, starting_weights_name

if TYPE_CHECKING:

    class TimmBody(nn.Module):
        """What geocl reads of a timm model beyond ``nn.Module`` (timm's conventions, for the type checker)."""

        num_features: int
        num_prefix_tokens: int  # token models (ViTs) only

        def forward_features(self, x: Tensor) -> Tensor: ...


#: ``timm.create_model`` arguments the encoder sets itself; recipe ``encoder.args`` may not.
RESERVED_ARGS = ("in_chans", "num_classes", "global_pool", "pretrained")


@cache
def _timm_names() -> frozenset[str]:
    return frozenset(timm.list_models())


def timm_name(name: str) -> str:
    """The timm model name behind an encoder name (``tu-`` prefix removed).

    Raises:
        GeoclError: if timm has no such model, with the closest names.
    """
    model = name.removeprefix("tu-")
    if model not in _timm_names():
        close = difflib.get_close_matches(model, sorted(_timm_names()), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise GeoclError(f"unknown encoder {name!r} (not a timm model){hint}", key="encoder.name")
    return model


def is_vision_transformer(name: str) -> bool:
    """Whether a timm name is a plain ViT (a token grid with prefix tokens), told without building it.

    The model's timm module decides: ``vision_transformer`` and ``deit`` models give
    ``[B, prefix + h*w, D]`` tokens and support ``forward_intermediates`` (what smp's DPT
    decoder reads).
    """
    module = timm.models.model_entrypoint(timm_name(name)).__module__
    return module.rsplit(".", 1)[-1] in ("vision_transformer", "deit")


def timm_arguments(args: Mapping[str, Any] | None) -> dict[str, Any]:
    """Recipe ``encoder.args`` as plain ``timm.create_model`` keyword arguments.

    Lists (also OmegaConf's) become tuples: YAML has no tuples, and timm wants ``img_size``
    as an int or a pair.

    Raises:
        GeoclError: for a key the encoder sets itself (see :data:`RESERVED_ARGS`).
    """
    plain: dict[str, Any] = {}
    for key, value in dict(args or {}).items():
        if key in RESERVED_ARGS:
            raise GeoclError(
                f"{key!r} is set by geocl (band count, no classifier, pooling), not by encoder.args",
                key=f"encoder.args.{key}",
            )
        plain[str(key)] = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else value
    return plain


class Encoder(nn.Module):
    """A timm backbone that exposes its last spatial feature map and a pooled vector.

    Args:
        name: timm model name (or smp ``tu-`` name).
        in_chans: number of input bands.
        pretrained: start from timm's default pretrained weights of ``name``: short for
            ``weights=<its default tag>`` (read from the local cache, never downloaded).
        args: further ``timm.create_model`` keyword arguments (e.g. a ViT's
            ``patch_size``, ``img_size``, ``dynamic_img_size``).
        weights: the weights to start from (a TorchGeo weights name, a timm pretrained
            tag or a file, see :mod:`geocl.models.weights`); '' for random init.

    Attributes:
        body: the timm model without classifier and pooling.
        num_features: channels D of the feature map and of the pooled vector.
        args: the keyword arguments the body was built with (plain values).
        patch_size: a ViT's patch side in px; None for a CNN.
        starting_weights: what the body started from (plain data: weights name, file,
            SHA-256, band counts and mapping), None for random init; checkpoints keep it.

    Raises:
        GeoclError: an unknown encoder or argument; ``pretrained`` and ``weights`` both
            given; weights that are not in the cache or do not fit.
    """

    def __init__(
        self,
        name: str,
        in_chans: int,
        pretrained: bool = False,
        args: Mapping[str, Any] | None = None,
        weights: str = "",
    ) -> None:
        super().__init__()
        self.name = name
        self.in_chans = in_chans
        self.args = timm_arguments(args)
        architecture = timm_name(name)
        start = starting_weights_name(architecture, pretrained, weights)
        try:
            body = timm.create_model(architecture, in_chans=in_chans, num_classes=0, global_pool="", **self.args)
        except TypeError as error:  # timm passes unknown keywords down to the model class
            raise GeoclError(f"encoder {name!r} does not take these arguments: {error}", key="encoder.args") from None
        self.body = cast("TimmBody", body)
        self.starting_weights: dict[str, Any] | None = None
        if start:
            key = "encoder.weights" if weights else "encoder.pretrained"
            self.starting_weights = load_starting_weights(self.body, start, architecture, in_chans, key=key)
        self.num_features: int = self.body.num_features
        patch = getattr(getattr(self.body, "patch_embed", None), "patch_size", None)
        self.is_token_model = hasattr(self.body, "num_prefix_tokens") and patch is not None
        self.patch_size: int | None = None
        if self.is_token_model and patch is not None:
            if patch[0] != patch[1]:
                raise GeoclError(f"need square patches, got {tuple(patch)}", key="encoder.args.patch_size")
            self.patch_size = int(patch[0])

    def _tokens_to_map(self, tokens: Tensor, size: tuple[int, int]) -> Tensor:
        """Patch tokens ``[B, prefix + h*w, D]`` of images ``size`` (H, W) -> ``[B, D, h, w]``."""
        assert self.patch_size is not None
        h, w = size[0] // self.patch_size, size[1] // self.patch_size
        patches = tokens[:, self.body.num_prefix_tokens :]
        if patches.shape[1] != h * w:
            raise GeoclError(
                f"encoder {self.name!r} gave {patches.shape[1]} patch tokens for {size[0]}x{size[1]} px "
                f"(expected {h}x{w}; image sides must be multiples of the patch size {self.patch_size})",
                key="encoder.args",
            )
        return patches.transpose(1, 2).reshape(len(tokens), -1, h, w)

    def feature_map(self, images: Tensor) -> Tensor:
        """Last feature map: ``[B, C, H, W]`` -> ``[B, D, h, w]``.

        h = H / 32 for a ResNet; h = H / patch for a ViT (its patch tokens on their
        grid, prefix tokens such as CLS dropped).
        """
        features = self.body.forward_features(images)
        if self.is_token_model and features.ndim == 3:
            return self._tokens_to_map(features, (images.shape[-2], images.shape[-1]))
        if features.ndim != 4:
            raise GeoclError(
                f"encoder {self.name!r} gives no spatial feature map (shape {tuple(features.shape)})",
                key="encoder.name",
            )
        return features

    @staticmethod
    def pool(features: Tensor) -> Tensor:
        """Global average pooling: ``[B, D, h, w]`` -> ``[B, D]``."""
        return features.mean(dim=(2, 3))

    def forward(self, images: Tensor) -> Tensor:
        """Representation ``[B, C, H, W]`` -> ``[B, D]``.

        A CNN's feature map, average-pooled; a ViT's class token after the final norm
        (timm's ``global_pool="token"`` pre-logits), or the mean of its patch tokens when
        it has no class token (timm's ``"avg"`` without ``fc_norm``).
        """
        if not self.is_token_model:
            return self.pool(self.feature_map(images))
        tokens = self.body.forward_features(images)
        if getattr(self.body, "has_class_token", self.body.num_prefix_tokens > 0):
            return tokens[:, 0]
        return tokens[:, self.body.num_prefix_tokens :].mean(dim=1)


def create_encoder(
    name: str, in_chans: int, pretrained: bool = False, args: Mapping[str, Any] | None = None, weights: str = ""
) -> Encoder:
    """Build an :class:`Encoder` (see its arguments)."""
    if in_chans < 1:
        raise GeoclError(f"need at least one input band, got {in_chans}", key="encoder.in_chans")
    return Encoder(name, in_chans, pretrained, args, weights)


def evaluation_encoder(name: str, in_chans: int, args: Mapping[str, Any] | None = None) -> Encoder:
    """A randomly initialised encoder as evaluation builds it (the caller seeds torch).

    A ViT gets ``dynamic_img_size`` (same weights, position embedding interpolated), so
    it embeds whole images even when it was pretrained on smaller views.
    """
    args = dict(args or {})
    if is_vision_transformer(name):
        args["dynamic_img_size"] = True
    return create_encoder(name, in_chans, args=args)


def load_checkpoint_encoder(
    path: str | os.PathLike[str], momentum_encoder: bool = False
) -> tuple[Encoder, dict[str, Any]]:
    """The encoder a pretraining checkpoint trained (any method), in eval mode on the CPU.

    Args:
        path: the checkpoint.
        momentum_encoder: the method's momentum (EMA) encoder instead of the online one.

    Returns:
        (encoder, the checkpoint's ``geocl`` entry: recipe, band statistics, names...).

    Raises:
        GeoclError: naming the file if it is not a geocl pretrain checkpoint or its
            weights do not fit the encoder it names.
    """
    loaded = read_pretrain_checkpoint(path, momentum_encoder)
    meta = loaded["meta"]
    encoder = evaluation_encoder(str(meta["encoder"]), int(meta["in_chans"]), pretrained_encoder_args(meta))
    try:
        encoder.body.load_state_dict(loaded["encoder_state"], strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise GeoclError(f"encoder weights do not fit {meta['encoder']!r}: {first}", path=path) from None
    return encoder.eval(), meta
