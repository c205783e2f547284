"""Pretraining data: tiles in a seeded order, GraSS regions drawn at scene scale, or SPPS pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning
import torch
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, DistributedSampler
from torchgeo.datasets import stack_samples

from geocl.data.normalize import BandNormalizer
from geocl.data.scene import SceneImage
from geocl.data.semantic_pairs import SemanticPairDataset, fixed_length_epoch
from geocl.data.tile_dataset import TileDataset
from geocl.errors import GeoclError
from geocl.evaluation.features import load_checkpoint_encoder
from geocl.models import Encoder
from geocl.sampling.geo_sampler import GradientRegionSampler
from geocl.sampling.semantic_pairs import SemanticPairs, SemanticPairSampler, SPPSConfig
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

    With ``method.spps.enabled``, from the mining epoch on (``spps.warmup_epochs``, or 0
    with ``spps.checkpoint``) the tiles are wrapped in a
    :class:`~geocl.data.semantic_pairs.SemanticPairDataset`, of which an epoch draws as
    many items as there are tiles (unless ``spps.fixed_epoch_length`` is false). The main
    process mines the pairs once per mining epoch (``spps.refresh_epochs``) into
    ``OUT/spps/pairs_epochNNN.csv``; every process reads that file, so all devices train
    on the same pairs, and a resumed run reads it back instead of mining with a later
    encoder. The order stays a function of (seed, epoch).

    Args:
        recipe: the run's recipe.
        tiles: the train tiles (or a natural-image dataset of :mod:`geocl.data.natural`).
        out: the run folder.
    """

    def __init__(self, recipe: DictConfig, tiles: TileDataset, out: Path) -> None:
        super().__init__()
        self.recipe = recipe
        self.tiles = tiles
        self.out = out
        self._pairs: tuple[int, SemanticPairs] | None = None  # (mining epoch, pairs) last used

    @property
    def geo_sampling(self) -> bool:
        """Whether stage 2 draws regions with the GeoSampler."""
        method = self.recipe.method
        return method.name == "grass" and method.stage2_sampling == "geo"

    @property
    def spps(self) -> SPPSConfig:
        """The method's semantic-pair parameters (defaults, i.e. off, for methods without them)."""
        return SPPSConfig.from_node(OmegaConf.select(self.recipe, "method.spps", default=None))

    @property
    def semantic_pairs(self) -> bool:
        """Whether SPPS adds semantic positive pairs during the run."""
        return self.spps.enabled

    @property
    def reloads_every_epoch(self) -> bool:
        """Whether the loader must be rebuilt every epoch (GraSS geo sampling or SPPS)."""
        return self.geo_sampling or self.semantic_pairs

    def train_dataloader(self) -> DataLoader:
        model = self.trainer.lightning_module
        if self.geo_sampling and model.in_stage2:
            return self._region_loader(model)
        epoch = self.trainer.current_epoch
        mining_epoch = self.spps.mining_epoch(epoch)
        if mining_epoch is None:
            return self._tile_loader(self.tiles)
        pairs = SemanticPairDataset(self.tiles, self._semantic_pairs(model, mining_epoch).pairs)
        if not self.spps.fixed_epoch_length:
            return self._tile_loader(pairs)
        seed = int(self.recipe.seed) * 1_000_003 + epoch
        return self._tile_loader(fixed_length_epoch(pairs, len(self.tiles), seed, self.spps.semantic_fraction))

    def _loader_options(self) -> dict[str, Any]:
        workers = int(self.recipe.data.num_workers)
        return {
            "batch_size": int(self.recipe.data.batch_size),
            "num_workers": workers,
            "pin_memory": torch.cuda.is_available(),
            "persistent_workers": False,
        }

    def _tile_loader(self, dataset: Any) -> DataLoader:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=int(self.recipe.seed))
        batch = int(self.recipe.data.batch_size)
        return DataLoader(dataset, sampler=sampler, drop_last=len(sampler) >= batch, **self._loader_options())

    def _semantic_pairs(self, model: Any, mining_epoch: int) -> SemanticPairs:
        """The pairs mined at the start of ``mining_epoch``: kept, read back, or mined now."""
        if self._pairs is not None and self._pairs[0] == mining_epoch:
            return self._pairs[1]
        path = self.out / "spps" / f"pairs_epoch{mining_epoch:03d}.csv"
        resuming = self.trainer.ckpt_path is not None
        if self.trainer.is_global_zero and not (resuming and path.exists()):
            config = self.spps
            from_checkpoint = bool(config.checkpoint) and mining_epoch == config.first_epoch
            encoder = self._checkpoint_encoder(config.checkpoint) if from_checkpoint else _run_encoder(model)
            encoder.to(model.device)
            pairs = SemanticPairSampler(config, size=int(self.recipe.data.view_size))(encoder, self.tiles)
            pairs.save_csv(path, names=self._tile_names())
            source = config.checkpoint if from_checkpoint else "the run's encoder"
            rank_zero_info(
                f"SPPS: {len(pairs)} semantic pairs among {len(self.tiles)} tiles from {source} "
                f"at epoch {mining_epoch} -> {path}"
            )
        self.trainer.strategy.barrier("geocl-spps-pairs")
        pairs = SemanticPairs.load_csv(path)
        self._pairs = (mining_epoch, pairs)
        return pairs

    def _checkpoint_encoder(self, path: str) -> Encoder:
        """The (online) encoder of a geocl pretrain checkpoint, for mining, built with its recipe's timm arguments."""
        encoder, meta = load_checkpoint_encoder(path)
        if int(meta["in_chans"]) != self.tiles.band_count:
            raise GeoclError(
                f"checkpoint encoder takes {meta['in_chans']} bands, the tiles have {self.tiles.band_count}",
                key="method.spps.checkpoint",
            )
        return encoder

    def _tile_names(self) -> list[str] | None:
        """Tile file names for the pairs CSV (natural-image datasets have none)."""
        if not isinstance(self.tiles, TileDataset):
            return None
        paths = self.tiles.index["path"].to_numpy()
        return [str(paths[row]) for row in self.tiles.rows]

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


def _run_encoder(model: Any) -> Encoder:
    """The run's encoder that mines pairs (the EMA one where the method has it)."""
    return getattr(model, "semantic_encoder", model.encoder)
