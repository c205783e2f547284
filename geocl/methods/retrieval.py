"""Text -> tile retrieval (Dental CLAIRES adapted to satellite tiles): a dual encoder trained contrastively.

After Kabir et al., "Dental CLAIRES: Contrastive LAnguage Image REtrieval Search for
Dental Research" (AMIA 2023 Informatics Summit, arXiv 2306.15651), of which only the
abstract is public: a dual encoder trained so that true image-text pairs score high and
random in-batch pairs low. Where it is silent, values marked [R] come from a public CLIP
recipe with the encoder layout CLAIRES names (ResNet-50 and DistilBERT with projection
heads, github.com/moein-shariatnia/OpenAI-CLIP), not from CLAIRES itself.
Assembled from small parts:

* image tower: the recipe's encoder (``self.encoder``, what every downstream task
  loads), optionally initialised from a pretrain checkpoint of any method
  (``init_checkpoint``), then :class:`~geocl.retrieval.model.ProjectionHead`;
* text tower: :class:`~geocl.retrieval.model.TextTower`, a small Transformer trained from
  scratch on the captions' vocabulary (nothing downloaded);
* captions: :mod:`geocl.retrieval.captions` (template captions from the tile masks, the
  user's CSV, or class names for natural images); each step draws one of each tile's
  captions;
* loss: :class:`~geocl.losses.multi_positive.MultiPositiveInfoNCELoss` over the batch,
  captions with the same attribute set being positives of each other's images::

      L = s * T V^T  (cosines, s = exp(min(log_scale, log 100)))
      loss = 1/2 [ mean_m -sum_n Y_mn log softmax_n(L_m.) + mean_n -sum_m Y_nm log softmax_m(L_.n) ]

The abstract leaves the loss, the similarity and what trains open; the readings taken
are: the multi-positive in-batch InfoNCE (captions repeat among tiles); cosine similarity
with a learnable temperature, initialised at 0.07 and clamped to a logit scale of at
most 100, as CLIP does (Radford et al., arXiv 2103.00020; ``learnable_temperature:
false`` fixes it; ``temperature: 1.0`` with it is the [R] setting, as an ablation);
everything trains, the image encoder at ``image_lr_scale`` times the base learning rate
([R]: 1e-4 against 1e-3 for the heads); the text encoder at ``text_lr_scale`` times it
(1.0: it starts from scratch, unlike [R]'s pretrained DistilBERT at 1e-5).

Views: one augmented view a tile (``augment``); overhead tiles have no orientation, so
flips and quarter turns stay on, but the crop should keep the whole tile
(``augment.scale: [1.0, 1.0]`` in ``recipes/retrieval.yaml``): a caption describes the
whole tile, and a crop could cut away the very classes it names.

Determinism: the caption drawn for a tile at a step comes from torch's global
generator, which the base seeds from (seed, step), so a resumed run draws the same
captions. The vocabulary is built from the training captions before training (sorted
words), stored in the checkpoint, and checked on resume.

Shapes: images ``[B, C, H, W]`` -> views ``[B, C, S, S]`` -> ``[B, embed_dim]``; captions
-> ids ``[B, L]`` -> ``[B, embed_dim]``; logits ``[B, B]``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from geocl.errors import GeoclError
from geocl.losses.multi_positive import MultiPositiveInfoNCELoss
from geocl.methods.base import PretrainMethod
from geocl.methods.registry import register_method
from geocl.retrieval.captions import CaptionConfig, CaptionSet, dataset_captions, grammar_texts
from geocl.retrieval.model import RETRIEVAL_KEY, ProjectionHead, TextTower
from geocl.retrieval.text import WordTokenizer

#: Largest logit scale (CLIP's clamp, Radford et al., arXiv 2103.00020).
MAX_LOGIT_SCALE = 100.0


@register_method("retrieval")
class Retrieval(PretrainMethod):
    """Dual encoder for text -> tile retrieval (CPU-sized defaults; see the module docstring).

    Args:
        encoder, in_chans, **common: see :class:`~geocl.methods.base.PretrainMethod`.
        init_checkpoint: a pretrain checkpoint of any method to start the image encoder
            from ("" = the recipe's initialisation); its encoder and band count must be the recipe's.
        embed_dim: size of the shared space ([R]: 256).
        text_width: width of the text encoder.
        text_layers: Transformer blocks of the text encoder (0 = bag of words).
        text_heads: attention heads (must divide ``text_width``).
        max_tokens: longest caption or query, words.
        vocab_capacity: most distinct words (rows of the word embedding).
        dropout: dropout of the heads and text blocks ([R]: 0.1).
        temperature: initial (or fixed) softmax temperature.
        learnable_temperature: learn the temperature (as CLIP), clamped at scale 100.
        image_lr_scale: learning rate of the image encoder, times ``optimizer.lr``.
        text_lr_scale: learning rate of the text encoder, times ``optimizer.lr``.
        captions: how tiles are captioned (:class:`~geocl.retrieval.captions.CaptionConfig`).

    Attributes:
        image_head: ``[B, D]`` -> ``[B, embed_dim]``.
        text: the text tower.
        log_scale: log of the logit scale (a parameter when learnable).
        tokenizer: the vocabulary, built from the training captions (None before).
    """

    def __init__(
        self,
        encoder: str = "resnet18",
        in_chans: int = 3,
        *,
        init_checkpoint: str = "",
        embed_dim: Annotated[int, Field(ge=1)] = 256,
        text_width: Annotated[int, Field(ge=1)] = 128,
        text_layers: Annotated[int, Field(ge=0)] = 2,
        text_heads: Annotated[int, Field(ge=1)] = 4,
        max_tokens: Annotated[int, Field(ge=1)] = 48,
        vocab_capacity: Annotated[int, Field(ge=2)] = 2048,
        dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1,
        temperature: Annotated[float, Field(gt=0.01)] = 0.07,
        learnable_temperature: bool = True,
        image_lr_scale: Annotated[float, Field(ge=0.0)] = 0.1,
        text_lr_scale: Annotated[float, Field(gt=0.0)] = 1.0,
        captions: CaptionConfig = CaptionConfig(),
        **common: Any,
    ) -> None:
        super().__init__(encoder, in_chans, **common)
        params = self.params
        self.image_head = ProjectionHead(self.encoder.num_features, params.embed_dim, params.dropout)
        self.text = TextTower(
            params.vocab_capacity,
            params.embed_dim,
            width=params.text_width,
            layers=params.text_layers,
            heads=params.text_heads,
            max_tokens=params.max_tokens,
            dropout=params.dropout,
        )
        self.log_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / params.temperature)), requires_grad=params.learnable_temperature
        )
        self.criterion = MultiPositiveInfoNCELoss(gather_distributed=True)
        self.tokenizer: WordTokenizer | None = None
        self.caption_set: CaptionSet | None = None
        self._stored_tokenizer: dict[str, Any] | None = None
        self._captions_by_key: dict[int, list[tuple[str, int]]] = {}
        if params.init_checkpoint:
            self._initialise_encoder(params.init_checkpoint)

    # ------------------------------------------------------------------ parts

    def _initialise_encoder(self, path: str) -> None:
        """Copy a pretrain checkpoint's encoder weights into ``self.encoder`` (any method)."""
        from geocl.models.checkpoints import read_pretrain_checkpoint
        from geocl.models.encoders import timm_name

        try:  # read with torch.load(weights_only=True): nothing in it is unpickled
            loaded = read_pretrain_checkpoint(path)
        except GeoclError as error:  # the same message, naming the recipe key that gave the file
            message = str(error).removeprefix(f"{error.path}: ") if error.path else str(error)
            raise GeoclError(message, path=error.path or path, key="method.init_checkpoint") from None
        meta = loaded["meta"]
        if int(meta["in_chans"]) != self.in_chans:
            raise GeoclError(
                f"was pretrained on {meta['in_chans']} bands, the data has {self.in_chans}",
                path=path,
                key="method.init_checkpoint",
            )
        if timm_name(str(meta["encoder"])) != timm_name(self.encoder_name):
            raise GeoclError(
                f"holds a {meta['encoder']!r} encoder, the recipe builds {self.encoder_name!r}; set encoder.name to it",
                path=path,
                key="method.init_checkpoint",
            )
        try:
            self.encoder.body.load_state_dict(loaded["encoder_state"], strict=True)
        except RuntimeError as error:
            raise GeoclError(
                f"encoder weights do not fit: {str(error).splitlines()[0]}", path=path, key="method.init_checkpoint"
            ) from None

    def logit_scale(self) -> Tensor:
        """``s = exp(log_scale)``, at most :data:`MAX_LOGIT_SCALE`."""
        return self.log_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()

    def embed_images(self, images: Tensor) -> Tensor:
        """L2-normalised image embeddings: ``[B, C, S, S]`` -> ``[B, embed_dim]``."""
        return F.normalize(self.image_head(self.encoder(images)), dim=1)

    def embed_texts(self, ids: Tensor, mask: Tensor) -> Tensor:
        """L2-normalised text embeddings: ids and mask ``[B, L]`` -> ``[B, embed_dim]``."""
        return F.normalize(self.text(ids, mask), dim=1)

    def contrast(self, images: Tensor, ids: Tensor, mask: Tensor, groups: Tensor) -> Tensor:
        """The multi-positive loss of a batch of views and their captions."""
        return self.criterion(self.embed_texts(ids, mask), self.embed_images(images), groups, self.logit_scale())

    # ------------------------------------------------------------- captions

    def fit_captions(self, dataset: Any) -> CaptionSet:
        """Caption the training items and build the vocabulary (the same for the same data).

        Raises:
            GeoclError: no item has a caption; a vocabulary larger than ``vocab_capacity``;
                one that differs from the checkpoint's being resumed.
        """
        params = self.params
        captions = dataset_captions(dataset, params.captions)
        if not any(captions.captions):
            raise GeoclError("no training tile has a caption (every tile is unlabelled)", key="method.captions")
        texts = captions.texts() + (grammar_texts(captions.class_names) if captions.templated else [])
        self.tokenizer = WordTokenizer.fit(
            texts, capacity=params.vocab_capacity, synonyms=params.captions.synonyms, max_tokens=params.max_tokens
        )
        self._check_stored_tokenizer()
        groups = captions.groups()
        keys = _item_keys(dataset)
        self._captions_by_key = {
            key: [(caption.text, groups[caption.attributes]) for caption in item]
            for key, item in zip(keys, captions.captions, strict=True)
        }
        self.caption_set = captions
        return captions

    def caption_batch(self, keys: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One caption for each item of a batch, drawn from torch's generator.

        The full caption (a tile's first) is drawn at half of the draws, one of the
        others uniformly otherwise, so that the full description, what evaluation
        queries with, stays as frequent as all the statements together.

        Args:
            keys: ``[B]`` the items' ``index`` values.

        Returns:
            (ids ``[B, L]``, mask ``[B, L]``, equivalence classes ``[B]``) on the module's device.
        """
        if self.tokenizer is None:
            raise RuntimeError("fit_captions must run before training")
        draws = torch.randint(0, 2**31 - 1, (len(keys),))
        texts, groups = [], []
        for key, draw in zip(keys.tolist(), draws.tolist(), strict=True):
            options = self._captions_by_key[int(key)]
            # the full caption (first) at half of the draws, one of the statements otherwise
            choice = 0 if len(options) == 1 or draw % 2 == 0 else 1 + (draw // 2) % (len(options) - 1)
            text, group = options[choice]
            texts.append(text)
            groups.append(group)
        ids, mask = self.tokenizer.encode(texts)
        return ids.to(self.device), mask.to(self.device), torch.tensor(groups, device=self.device)

    # --------------------------------------------------------------- hooks

    def check_train_data(self, dataset: Any) -> None:
        """Caption the training data now, so that a tile set without masks fails before training."""
        self.fit_captions(dataset)

    def train_loader(self, data: Any) -> Any:
        """The plain loader over the captioned items (items without a caption left out)."""
        if self.caption_set is None:
            self.fit_captions(data.dataset)
        assert self.caption_set is not None
        captioned = [item for item, captions in enumerate(self.caption_set.captions) if captions]
        if len(captioned) == len(self.caption_set.captions):
            return data.loader(data.dataset)
        from torch.utils.data import Subset

        return data.loader(Subset(data.dataset, captioned))

    # ------------------------------------------------------------- training

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        views = self.augmentation(batch["image"])
        ids, mask, groups = self.caption_batch(batch["index"])
        loss = self.check_finite(self.contrast(views, ids, mask, groups))
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True, batch_size=len(views))
        self.log("train/logit_scale", self.logit_scale().detach(), on_step=False, on_epoch=True, batch_size=len(views))
        return loss

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimizer groups: image encoder, text encoder, and the rest (heads, temperature) at the base rate.

        The base's optimizer and schedule train them, with one rate a part (everything trains,
        at the rates of the module docstring: CLAIRES does not say what it froze).
        """
        lr = self.optimizer_config.lr
        params = self.params
        image = [p for p in self.encoder.parameters() if p.requires_grad]
        text = [p for p in self.text.encoder.parameters() if p.requires_grad]
        taken = {id(p) for p in image + text}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in taken]
        groups = [
            {"params": image, "lr": lr * params.image_lr_scale},
            {"params": text, "lr": lr * params.text_lr_scale},
            {"params": rest, "lr": lr},
        ]
        return [group for group in groups if group["params"]]

    # ----------------------------------------------------------- checkpoint

    def retrieval_settings(self) -> dict[str, Any]:
        """The ``geocl_retrieval`` checkpoint entry: tower sizes, tokenizer, captions, view size."""
        params = self.params
        return {
            "towers": {
                "embed_dim": params.embed_dim,
                "text_width": params.text_width,
                "text_layers": params.text_layers,
                "text_heads": params.text_heads,
                "max_tokens": params.max_tokens,
                "vocab_capacity": params.vocab_capacity,
                "dropout": params.dropout,
            },
            "tokenizer": self.tokenizer.state() if self.tokenizer is not None else None,
            "captions": params.captions.model_dump(mode="json"),
            "class_names": list(self.caption_set.class_names) if self.caption_set is not None else [],
            "view_size": self.view_size,
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[RETRIEVAL_KEY] = self.retrieval_settings()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored = (checkpoint.get(RETRIEVAL_KEY) or {}).get("tokenizer")
        self._stored_tokenizer = stored
        if self.tokenizer is None and stored is not None:
            self.tokenizer = WordTokenizer.from_state(stored)
        self._check_stored_tokenizer()

    def _check_stored_tokenizer(self) -> None:
        """A resumed run must read its captions with the vocabulary it was trained with."""
        stored, now = self._stored_tokenizer, self.tokenizer
        if stored is None or now is None or self.caption_set is None:
            return
        if list(stored["vocabulary"]) != now.vocabulary:
            raise GeoclError(
                "the captions of the training data changed since the checkpoint being resumed (another vocabulary); "
                "point data at the data it was trained on, or start a new run",
                key="method.captions",
            )


def _item_keys(dataset: Any) -> list[int]:
    """The ``index`` value each item of a dataset puts in its batches (tile-index rows for tile sets)."""
    rows = getattr(dataset, "rows", None)
    if rows is not None:
        return [int(row) for row in rows]
    return list(range(len(dataset)))
