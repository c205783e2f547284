"""Pretraining data: the training images in a seeded order, or the loader the method asks for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler


class PretrainData(lightning.LightningDataModule):
    """Train loader of a pretraining run.

    Images come in an order that is a function of (seed, epoch) and the device's rank
    (a :class:`~torch.utils.data.DistributedSampler`, also on one device, whose
    ``set_epoch`` Lightning calls), so a resumed run sees the same batches.

    A method that trains on something else than the images in that order (crops drawn
    from maps, pairs of images, ...) returns its own loader from its ``train_loader``
    hook, built with :meth:`loader`; this module asks for it at every epoch when the
    method's ``reloads_data_every_epoch`` says so.

    Args:
        dataset: the training images (a dataset of dicts with an ``image`` ``[C, H, W]``).
        out: the run folder (where methods write what their loaders need).
        batch_size: images per batch (per device).
        num_workers: DataLoader worker processes.
        seed: seed of the order.
    """

    def __init__(
        self, dataset: Dataset[dict[str, Any]], out: Path, *, batch_size: int, num_workers: int, seed: int
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.out = Path(out)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed

    def train_dataloader(self) -> DataLoader[Any]:
        module: Any = self._trainer().lightning_module  # a PretrainMethod: its train_loader hook
        own = module.train_loader(self)
        # Workers that outlive the epoch: a small tile set makes one-step epochs, where
        # starting the workers anew cost more than the step (measured: 30 steps of 64-px
        # SimCLR on 48 tiles, 61 s with 2 fresh workers an epoch, 31 s with none). The
        # sampler stays in this process, so the order is still a function of (seed, epoch).
        persistent = self.num_workers > 0
        return own if own is not None else self.loader(self.dataset, persistent_workers=persistent)

    def _trainer(self) -> lightning.Trainer:
        if self.trainer is None:  # a bug: Lightning attaches the trainer before asking for loaders
            raise RuntimeError("PretrainData is used outside a Lightning trainer")
        return self.trainer

    def loader(self, dataset: Dataset[Any], sampler: Sampler[Any] | None = None, **options: Any) -> DataLoader[Any]:
        """A loader over ``dataset`` with this run's batch size and workers.

        Args:
            dataset: what to load.
            sampler: how to draw from it; default: shuffled by (seed, epoch), sharded by rank.
            options: further DataLoader arguments (e.g. ``collate_fn``, ``persistent_workers``).
        """
        if sampler is None:
            trainer = self._trainer()
            world, rank = trainer.world_size, trainer.global_rank
            sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
        return DataLoader(
            dataset,
            sampler=sampler,
            batch_size=self.batch_size,
            drop_last=len(sampler) >= self.batch_size,  # type: ignore[arg-type]
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            **{"persistent_workers": False, **options},
        )
