"""Segmentation models (segmentation-models-pytorch) whose encoder can come from any pretrain checkpoint.

Or from named starting weights (a TorchGeo weights name, a timm tag, a file):
:func:`load_encoder_weights`, with the rules of :mod:`geocl.models.weights`.

smp's ``tu-<name>`` encoders wrap the same timm model geocl pretrains, with the same
parameter names, so a pretrained encoder loads key for key.

CNN encoders get a U-Net or DeepLabV3+. A plain ViT (e.g. a PatchMix checkpoint's) has no
multi-scale pyramid for those decoders to read, so it always gets smp's DPT (Ranftl et
al., "Vision Transformers for Dense Prediction"), see :class:`ViTSegmenter`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, cast

import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geocl.errors import GeoclError
from geocl.models.checkpoints import pretrained_encoder_args, read_pretrain_checkpoint
from geocl.models.encoders import is_vision_transformer, timm_arguments, timm_name
from geocl.models.weights import load_starting_weights

ARCHITECTURES = {"unet": smp.Unet, "deeplabv3plus": smp.DeepLabV3Plus}
#: Architecture names a ViT encoder accepts; all of them give :class:`ViTSegmenter` (DPT).
VIT_ARCHITECTURES = ("dpt", *ARCHITECTURES)


class ViTSegmenter(nn.Module):
    """smp's DPT decoder on a timm ViT built with the pretrained encoder's timm arguments.

    Why DPT: it is smp's decoder made for plain ViTs (it reassembles the tokens of four
    blocks into a four-level pyramid and fuses it up to full resolution), it builds its
    encoder with ``timm.create_model`` and passes extra keyword arguments through, so a
    ViT with a custom ``patch_size``/``img_size`` and any band count works offline, and its
    ``encoder.model`` is the same timm module (same parameter names) as a pretrain
    checkpoint's ``encoder.body``. The decoder widths are DPT-Base's
    (96, 192, 384, 768 and 256 fusion channels for a 768-wide ViT-B) scaled by the ViT
    width, which keeps the decoder of a ViT-Tiny small enough for the CPU.

    A ViT's weight shapes depend on its timm arguments (patch size, token grid), which
    only the pretrain checkpoint knows: the segmenter keeps them in its state dict
    (PyTorch's extra state) and rebuilds itself when a state dict made with other
    arguments is loaded, so a finetuned checkpoint loads back with
    ``load_from_checkpoint`` alone. ``dynamic_img_size`` is always on: finetuning crops
    and prediction windows are larger than the pretraining views.

    Args:
        encoder: timm (or smp ``tu-``) ViT name.
        in_chans: input bands.
        num_classes: output classes.
        encoder_args: ``timm.create_model`` arguments of the ViT (recipe ``encoder.args``).

    Shape:
        ``[B, C, H, W]`` -> logits ``[B, K, H, W]``, any H and W (padded inside to a
        multiple of 4 patches, which DPT's pyramid needs).
    """

    def __init__(
        self, encoder: str, in_chans: int, num_classes: int, encoder_args: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        self.encoder_name = timm_name(encoder)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.encoder_args: dict[str, Any] = {}
        self.net = self._build(self._normalised(encoder_args))

    @staticmethod
    def _normalised(args: dict[str, Any] | None) -> dict[str, Any]:
        return {**timm_arguments(args), "dynamic_img_size": True}

    def _build(self, args: dict[str, Any]) -> nn.Module:
        with torch.device("meta"):  # only the width is needed: no weights allocated
            timm_model = timm.create_model(self.encoder_name, in_chans=self.in_chans, num_classes=0, **args)
            width = cast(int, timm_model.num_features)  # timm models declare their feature width
        net = smp.DPT(
            encoder_name=f"tu-{self.encoder_name}",
            encoder_weights=None,
            in_channels=self.in_chans,
            classes=self.num_classes,
            decoder_intermediate_channels=[max(8, width * k // 8) for k in (1, 2, 4, 8)],
            decoder_fusion_channels=max(8, width // 3),
            num_classes=0,
            global_pool="",
            **args,
        )
        self.encoder_args = args
        return net

    def configure(self, encoder_args: dict[str, Any] | None) -> None:
        """Rebuild (new random weights) if ``encoder_args`` differ from the current ones."""
        args = self._normalised(encoder_args)
        if args != self.encoder_args:
            device = next(self.net.parameters()).device
            self.net = self._build(args).to(device).train(self.training)

    @property
    def encoder(self) -> nn.Module:
        """smp's ViT encoder; ``encoder.model`` is the timm ViT (as for smp ``tu-`` CNN encoders)."""
        return self.net.get_submodule("encoder")

    def forward(self, images: Tensor) -> Tensor:
        # DPT's pyramid goes down to half the token grid and fuses back up by doubling, so
        # the grid must be a multiple of 4 tokens: pad the edges (replicated) and crop back
        patch_size = cast(tuple[int, int], self.encoder.get_submodule("model.patch_embed").patch_size)
        multiple = 4 * int(patch_size[0])
        height, width = images.shape[-2:]
        pad_h, pad_w = -height % multiple, -width % multiple
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h), mode="replicate")
        return self.net(images)[..., :height, :width]

    def get_extra_state(self) -> dict[str, Any]:
        return {"encoder_args": dict(self.encoder_args)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        # called before the children are loaded, so they load into the rebuilt network
        self.configure(state["encoder_args"])


def build_segmenter(
    arch: str,
    encoder: str,
    in_chans: int,
    num_classes: int,
    encoder_args: dict[str, Any] | None = None,
    probe_stages: Sequence[int] | None = None,
) -> nn.Module:
    """An smp model with a timm encoder, randomly initialised (no download).

    Args:
        arch: ``unet`` or ``deeplabv3plus`` for CNN encoders, or ``linear`` for the frozen
            dense linear probe (:class:`~geocl.finetune.linear_probe.DenseLinearProbe`,
            CNN encoders); a ViT encoder always gets
            :class:`ViTSegmenter` (``dpt``; the CNN names are accepted for it, so the
            default ``unet`` works with any checkpoint).
        encoder: timm (or smp ``tu-``) encoder name.
        in_chans: input bands.
        num_classes: output classes.
        encoder_args: timm arguments of the encoder (recipe ``encoder.args``; a ViT's
            patch size and grid). :func:`load_pretrained_encoder` sets a ViT's from the
            checkpoint.
        probe_stages: ``linear`` only: the encoder stages the probe reads, 1 (stem, output
            stride 2) to 5 (deepest, stride 32); None: every stage
            (:data:`~geocl.finetune.linear_probe.DEFAULT_STAGES`).

    Raises:
        GeoclError: an unknown architecture, or one the encoder cannot have (key
            ``arch``); ``probe_stages`` with another architecture than ``linear``, or a
            stage the encoder does not have (key ``probe_stages``).
    """
    if probe_stages is not None and arch != "linear":
        raise GeoclError(f"applies to the dense linear probe only (arch linear), not to {arch}", key="probe_stages")
    if is_vision_transformer(encoder):
        if arch == "linear":
            raise GeoclError(
                f"the dense linear probe reads the stages of CNN encoders; {encoder!r} is a ViT: use the finetune protocol",
                key="arch",
            )
        if arch not in VIT_ARCHITECTURES:
            raise GeoclError(f"unknown architecture {arch!r}; choose from {', '.join(VIT_ARCHITECTURES)}", key="arch")
        return ViTSegmenter(encoder, in_chans, num_classes, encoder_args)
    if arch == "linear":
        from geocl.finetune.linear_probe import DenseLinearProbe

        return DenseLinearProbe(encoder, in_chans, num_classes, encoder_args, stages=probe_stages)
    if arch not in ARCHITECTURES:
        hint = " (dpt is for ViT encoders)" if arch == "dpt" else ""
        raise GeoclError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}{hint}", key="arch")
    return ARCHITECTURES[arch](
        encoder_name=f"tu-{timm_name(encoder)}",
        encoder_weights=None,
        in_channels=in_chans,
        classes=num_classes,
        **timm_arguments(encoder_args),
    )


def load_pretrained_encoder(
    model: nn.Module, path: str | os.PathLike[str], in_chans: int, loaded: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Copy a pretrain checkpoint's encoder weights into an smp model's ``tu-`` encoder.

    A :class:`ViTSegmenter` is first rebuilt with the timm arguments the checkpoint's
    recipe gave its encoder (patch size, token grid), so the weights fit shape for shape.

    Args:
        model: from :func:`build_segmenter`.
        path: a pretrain checkpoint.
        in_chans: band count of the data the model will see.
        loaded: :func:`read_pretrain_checkpoint` of ``path`` when the caller already
            read it (a checkpoint is large: read it once).

    Returns:
        The checkpoint's ``geocl`` entry.

    Raises:
        GeoclError: on a band-count or encoder mismatch, naming the checkpoint.
    """
    loaded = loaded if loaded is not None else read_pretrain_checkpoint(path)
    meta = loaded["meta"]
    if int(meta["in_chans"]) != in_chans:
        raise GeoclError(
            f"checkpoint was pretrained on {meta['in_chans']} bands but the data has {in_chans}", path=path
        )
    if isinstance(model, ViTSegmenter):
        model.configure(pretrained_encoder_args(meta))
    target = model.get_submodule("encoder.model")
    own = target.state_dict()
    missing = [key for key in own if key not in loaded["encoder_state"]]
    if missing:
        raise GeoclError(
            f"checkpoint encoder {meta['encoder']!r} does not fit this model's encoder "
            f"({len(missing)} missing weights, e.g. {missing[0]})",
            path=path,
        )
    target.load_state_dict({key: loaded["encoder_state"][key] for key in own}, strict=True)
    return meta


def load_encoder_weights(
    model: nn.Module, weights: str, encoder: str, in_chans: int, *, key: str = "encoder_weights"
) -> dict[str, Any]:
    """Start an smp model's ``tu-`` encoder from named weights (TorchGeo, timm or a file), read offline.

    The finetuning counterpart of recipe ``encoder.weights``: the same names, the same
    band-count rule and the same refusal to download, see :mod:`geocl.models.weights`.
    The decoder stays randomly initialised.

    Args:
        model: from :func:`build_segmenter` (a :class:`ViTSegmenter` already configured
            with the encoder's timm arguments).
        weights: a TorchGeo weights name, a timm pretrained tag or a weights file.
        encoder: the timm (or ``tu-``) encoder name the model was built with.
        in_chans: band count of the data the model will see.
        key: the option that gave ``weights`` (named in errors).

    Returns:
        The record of the weights (name, file, SHA-256, band mapping), for the checkpoint.

    Raises:
        GeoclError: see :func:`geocl.models.weights.resolve_weights` and
            :func:`geocl.models.weights.fit_weights`.
    """
    target = getattr(model.encoder, "model", None)  # smp's tu- encoder wraps the timm model
    assert isinstance(target, nn.Module), type(model.encoder)
    return load_starting_weights(target, weights, timm_name(encoder), in_chans, key=key)
