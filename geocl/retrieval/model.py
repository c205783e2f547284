"""The two towers of the dual encoder, and reading them back from a retrieval checkpoint.

Image tower: any geocl encoder (``[B, C, H, W]`` -> ``[B, D]``) + a projection head.
Text tower: :class:`~geocl.retrieval.text.TextEncoder` + a projection head. Both heads map
into the shared space of ``embed_dim``; similarities are cosines (as in CLIP, Radford et
al., arXiv 2103.00020: CLAIRES, arXiv 2306.15651, does not say), so embeddings are L2-normalised before they are compared or indexed.

The projection head is that of a public CLIP recipe with the ResNet-50 + DistilBERT
layout CLAIRES names ([R], github.com/moein-shariatnia/OpenAI-CLIP, ``modules.py``)::

    h = W1 x;   z = LayerNorm(h + Dropout(W2 GELU(h)))

:func:`load_towers` rebuilds both towers from a checkpoint of the ``retrieval`` method
without Lightning (``geocl index`` and ``geocl search`` start fast): the checkpoint's
``geocl_retrieval`` entry holds the tower sizes and the tokenizer, its ``state_dict``
the weights under ``encoder.body.``, ``image_head.``, ``text.``. Checkpoints are read by
:func:`geocl.finetune.model.read_checkpoint`: ``torch.load(weights_only=True)``, nothing
unpickled (a checkpoint may come from anywhere).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geocl.errors import GeoclError
from geocl.retrieval.text import TextEncoder, WordTokenizer

if TYPE_CHECKING:  # timm is imported when an image tower is built, not for text queries
    from geocl.models import Encoder

#: Checkpoint key of what the retrieval method adds (tower sizes, tokenizer, caption settings).
RETRIEVAL_KEY = "geocl_retrieval"


class ProjectionHead(nn.Module):
    """``h = W1 x; z = LayerNorm(h + Dropout(W2 GELU(h)))`` ([R] ``modules.py``, see the module docstring).

    Shape:
        - Input: ``[B, in_dim]``.
        - Output: ``[B, out_dim]`` (not normalised).
    """

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.projection = nn.Linear(in_dim, out_dim)
        self.fc = nn.Linear(out_dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, features: Tensor) -> Tensor:
        projected = self.projection(features)
        return self.norm(projected + self.dropout(self.fc(F.gelu(projected))))


class TextTower(nn.Module):
    """Word ids -> shared space: :class:`TextEncoder` then :class:`ProjectionHead`.

    Args:
        vocab_capacity, width, layers, heads, max_tokens, dropout: see :class:`TextEncoder`.
        embed_dim: size of the shared space.
    """

    def __init__(
        self,
        vocab_capacity: int,
        embed_dim: int,
        *,
        width: int = 128,
        layers: int = 2,
        heads: int = 4,
        max_tokens: int = 48,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.encoder = TextEncoder(vocab_capacity, width, layers, heads, max_tokens, dropout)
        self.head = ProjectionHead(width, embed_dim, dropout)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """``[B, L]`` ids and mask -> ``[B, embed_dim]`` (not normalised)."""
        return self.head(self.encoder(ids, mask))


class ImageTower(nn.Module):
    """Images -> shared space: a geocl :class:`~geocl.models.Encoder` then a :class:`ProjectionHead`."""

    def __init__(self, encoder: Encoder, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, images: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, embed_dim]`` (not normalised)."""
        return self.head(self.encoder(images))


@dataclass
class Towers:
    """Both towers of a retrieval checkpoint, in eval mode on the CPU.

    Attributes:
        image: the image tower.
        text: the text tower.
        tokenizer: the words the text tower knows.
        view_size: side in px the images were trained at (index at this size).
        in_chans: band count of the images.
        settings: the checkpoint's ``geocl_retrieval`` entry.
        meta: the checkpoint's ``geocl`` entry (recipe, band statistics...).
    """

    image: ImageTower
    text: TextTower
    tokenizer: WordTokenizer
    view_size: int
    in_chans: int
    settings: dict[str, Any]
    meta: dict[str, Any]

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> Tensor:
        """L2-normalised text embeddings ``[B, embed_dim]``.

        Raises:
            QueryError: a text the tokenizer refuses.
        """
        ids, mask = self.tokenizer.encode(texts)
        return F.normalize(self.text(ids, mask), dim=1)

    @torch.no_grad()
    def embed_images(self, images: Tensor) -> Tensor:
        """L2-normalised image embeddings ``[B, embed_dim]`` of normalised images, resized to ``view_size``."""
        if tuple(images.shape[-2:]) != (self.view_size, self.view_size):
            images = F.interpolate(
                images, size=(self.view_size, self.view_size), mode="bilinear", align_corners=False, antialias=True
            )
        return F.normalize(self.image(images), dim=1)


def text_tower_from(settings: dict[str, Any]) -> TextTower:
    """An untrained text tower of the sizes a ``geocl_retrieval`` entry records."""
    towers = settings["towers"]
    return TextTower(
        int(towers["vocab_capacity"]),
        int(towers["embed_dim"]),
        width=int(towers["text_width"]),
        layers=int(towers["text_layers"]),
        heads=int(towers["text_heads"]),
        max_tokens=int(towers["max_tokens"]),
        dropout=float(towers["dropout"]),
    )


def _part(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}


def load_towers(path: str | os.PathLike[str]) -> Towers:
    """Both towers of a ``retrieval`` checkpoint.

    Raises:
        GeoclError: naming the file when it is not a checkpoint of the retrieval method
            or its weights do not fit.
    """
    from geocl.models.checkpoints import pretrained_encoder_args, read_checkpoint
    from geocl.models.encoders import evaluation_encoder

    checkpoint = read_checkpoint(path)  # torch.load(weights_only=True): nothing unpickled
    settings = checkpoint.get(RETRIEVAL_KEY)
    meta = checkpoint.get("geocl")
    if (
        not isinstance(settings, dict)
        or not isinstance(meta, dict)
        or not isinstance(checkpoint.get("state_dict"), dict)
    ):
        raise GeoclError(
            "not a checkpoint of the retrieval method (train one with `geocl pretrain recipes/retrieval.yaml`)",
            path=path,
        )
    state = checkpoint["state_dict"]
    try:
        encoder = evaluation_encoder(str(meta["encoder"]), int(meta["in_chans"]), pretrained_encoder_args(meta))
        towers = settings["towers"]
        image = ImageTower(
            encoder, ProjectionHead(encoder.num_features, int(towers["embed_dim"]), float(towers["dropout"]))
        )
        text = text_tower_from(settings)
        tokenizer = WordTokenizer.from_state(settings["tokenizer"])
        view_size = int(settings["view_size"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise GeoclError(
            f"not a checkpoint of the retrieval method (its description is incomplete: {type(error).__name__} {error})",
            path=path,
        ) from None
    try:
        encoder.body.load_state_dict(_part(state, "encoder.body."), strict=True)
        image.head.load_state_dict(_part(state, "image_head."), strict=True)
        text.load_state_dict(_part(state, "text."), strict=True)
    except RuntimeError as error:
        raise GeoclError(
            f"weights do not fit the towers it describes: {str(error).splitlines()[0]}", path=path
        ) from None
    return Towers(image.eval(), text.eval(), tokenizer, view_size, int(meta["in_chans"]), settings, meta)
