"""What every pretraining method shares: encoder, views, optimiser, checkpoint contents.

A method is a Lightning module that trains ``self.encoder`` (a
:class:`~geocl.models.Encoder`); finetuning, prediction and comparison load any
method's checkpoint the same way through that attribute and the ``geocl`` entry
the checkpoint carries (recipe, band count and statistics, encoder and method
names, library versions).
"""

from __future__ import annotations

import math
from importlib.metadata import version
from typing import Any

import lightning
import torch
from lightly.utils.lars import LARS
from lightly.utils.scheduler import CosineWarmupScheduler
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from geocl.errors import GeoclError
from geocl.models import create_encoder
from geocl.transforms import MultiBandViewAugmentation, TwoViews

#: Checkpoint key under which geocl stores what is needed to use a checkpoint alone.
CHECKPOINT_KEY = "geocl"


def library_versions() -> dict[str, str]:
    """Versions of the libraries a checkpoint depends on."""
    names = ("geocl", "torch", "timm", "lightly", "lightning", "kornia", "torchgeo")
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except Exception:  # a library missing from the metadata must not break saving
            found[name] = "unknown"
    return found


class PretrainMethod(lightning.LightningModule):
    """Base of all pretraining methods.

    Args:
        recipe: the resolved recipe (see :mod:`geocl.recipes`).
        in_chans: number of input bands.
        band_stats: per-band statistics of the training data (stored in checkpoints).

    Attributes:
        encoder: the network being pretrained (what downstream tasks load).
        momentum_encoder_attribute: name of the EMA copy of ``encoder`` in methods that
            keep one (None otherwise); stored in checkpoints so that evaluation can use
            it (``geocl evaluate --momentum-encoder``, as the PatchMix spec evaluates).
        views: two-view augmentation of a batch ``[B, C, H, W]``.
    """

    momentum_encoder_attribute: str | None = None

    def __init__(self, recipe: DictConfig | dict[str, Any], in_chans: int, band_stats: dict[str, Any]) -> None:
        super().__init__()
        container = recipe if isinstance(recipe, dict) else OmegaConf.to_container(recipe, resolve=True)
        self.save_hyperparameters({"recipe": container, "in_chans": in_chans, "band_stats": band_stats})
        self.recipe = OmegaConf.create(container)
        self.in_chans = in_chans
        self.band_stats = band_stats
        self.encoder = create_encoder(
            self.recipe.encoder.name, in_chans, self.recipe.encoder.pretrained, self.recipe.encoder.get("args")
        )
        augment = OmegaConf.to_container(self.recipe.augment, resolve=True) or {}
        self.augmentation = MultiBandViewAugmentation.from_config(self.recipe.data.view_size, augment)
        self.views = TwoViews(self.augmentation)

    @property
    def method_name(self) -> str:
        """Registry name of the method."""
        return str(self.recipe.method.name)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Augmentations draw from torch's global generator; seeding it from the step
        # makes a resumed run draw exactly what the uninterrupted run drew.
        world, rank = self.trainer.world_size, self.trainer.global_rank
        torch.manual_seed(int(self.recipe.seed) * 1_000_003 + self.global_step * world + rank)

    def check_finite(self, loss: Tensor) -> Tensor:
        """Stop with a clear error on a NaN or infinite loss (the last good checkpoint stays)."""
        if not torch.isfinite(loss):
            where = self.trainer.checkpoint_callback.dirpath if self.trainer.checkpoint_callback else "the run folder"
            raise GeoclError(
                f"loss became {loss.item()} at epoch {self.current_epoch}, step {self.global_step}; "
                f"training stopped, the last good checkpoint is kept in {where} "
                "(lower optimizer.lr or check the data)",
                key="optimizer.lr",
            )
        return loss

    def configure_optimizers(self) -> Any:
        config = self.recipe.optimizer
        params = [p for p in self.parameters() if p.requires_grad]
        if config.name == "sgd":
            optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        elif config.name == "adamw":
            optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        else:
            optimizer = LARS(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        if self.recipe.scheduler.name == "none":
            return optimizer
        total = self.trainer.estimated_stepping_batches
        steps_per_epoch = max(1, math.ceil(total / max(1, self.trainer.max_epochs or 1)))
        warmup = int(self.recipe.scheduler.warmup_epochs * steps_per_epoch)
        scheduler = CosineWarmupScheduler(optimizer, warmup_epochs=warmup, max_epochs=int(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "recipe": OmegaConf.to_container(self.recipe, resolve=True),
            "method": self.method_name,
            "encoder": self.recipe.encoder.name,
            "in_chans": self.in_chans,
            "band_stats": self.band_stats,
            "encoder_attribute": "encoder",
            "momentum_encoder_attribute": self.momentum_encoder_attribute,
            "versions": library_versions(),
        }
