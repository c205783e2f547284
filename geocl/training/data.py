"""Pretraining data: tiles in a seeded order, or GraSS regions drawn at scene scale."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, DistributedSampler
from torchgeo.datasets import stack_samples

from geocl.data.normalize import BandNormalizer
from geocl.data.scene import SceneImage
from geocl.data.tile_dataset import TileDataset
from geocl.sampling.geo_sampler import GradientRegionSampler
from geocl.training.region_maps import write_tile_maps


class PretrainData(lightning.LightningDataModule):
    """Train loader of a pretraining run.

    Tiles come in an order that is a function of (seed, epoch) and the device's rank
    (a :class:`~torch.utils.data.DistributedSampler`, also on one device, whose
    ``set_epoch`` Lightning calls), so a resumed run sees the same batches.

    With GraSS ``stage2_sampling: geo``, every stage-2 epoch first writes the gradient
    region maps of all train tiles (``OUT/maps/epochNNN/``) with the current encoder,
    then draws regions from them with :class:`~geocl.sampling.GradientRegionSampler`
    over the tile mosaic (a TorchGeo dataset).

    Args:
        recipe: the run's recipe.
        tiles: the train tiles.
        out: the run folder.
    """

    def __init__(self, recipe: DictConfig, tiles: TileDataset, out: Path) -> None:
        super().__init__()
        self.recipe = recipe
        self.tiles = tiles
        self.out = out

    @property
    def geo_sampling(self) -> bool:
        """Whether stage 2 draws regions with the GeoSampler."""
        method = self.recipe.method
        return method.name == "grass" and method.stage2_sampling == "geo"

    def train_dataloader(self) -> DataLoader:
        model = self.trainer.lightning_module
        if self.geo_sampling and model.in_stage2:
            return self._region_loader(model)
        return self._tile_loader()

    def _loader_options(self) -> dict[str, Any]:
        workers = int(self.recipe.data.num_workers)
        return {
            "batch_size": int(self.recipe.data.batch_size),
            "num_workers": workers,
            "pin_memory": torch.cuda.is_available(),
            "persistent_workers": False,
        }

    def _tile_loader(self) -> DataLoader:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(
            self.tiles, num_replicas=world, rank=rank, shuffle=True, seed=int(self.recipe.seed)
        )
        batch = int(self.recipe.data.batch_size)
        return DataLoader(self.tiles, sampler=sampler, drop_last=len(sampler) >= batch, **self._loader_options())

    def _region_loader(self, model: Any) -> DataLoader:
        epoch = self.trainer.current_epoch
        folder = self.out / "maps" / f"epoch{epoch:03d}"
        if self.trainer.is_global_zero:
            write_tile_maps(model, self.tiles, range(len(self.tiles)), folder)
        self.trainer.strategy.barrier("geocl-region-maps")
        method = self.recipe.method
        size = method.region_size or self.tiles.tile_size // 2
        normalizer = BandNormalizer.from_metadata(self.tiles.metadata)
        scene = SceneImage(self.tiles.root / "images", transforms=normalizer.sample_transform)
        world, rank = self.trainer.world_size, self.trainer.global_rank
        length = (method.regions_per_epoch or len(self.tiles)) // world
        sampler = GradientRegionSampler(
            folder, size=size, length=length, crs=scene.crs,
            generator=int(self.recipe.seed) * 1_000_003 + epoch * world + rank,
        )
        batch = int(self.recipe.data.batch_size)
        return DataLoader(
            scene, sampler=sampler, collate_fn=stack_samples, drop_last=length >= batch, **self._loader_options()
        )
