"""SPPS as a plug-in of a host method (SimCLR, MoCo): when to mine, and the epoch's loader.

SPPS: Alkhalefi, Leontidis and Zhong, "Semantic Positive Pairs for Enhancing Visual
Representation Learning of Instance Discrimination Methods" (arXiv 2306.16122). The
sampler itself (frozen embeddings, top-k ∩ threshold, footprint rule) is
:class:`~geocl.sampling.semantic_pairs.SemanticPairSampler` and the pair dataset
:class:`~geocl.data.semantic_pairs.SemanticPairDataset`.

The paper's abstract does not say whether the pairs are mined again during training,
nor how the added pairs change an epoch; the readings taken are: mined once, and
optionally again every ``refresh_epochs``; an epoch keeps the plain dataset's length,
a fixed fraction of it semantic pairs (``fixed_epoch_length``).

From the mining epoch on (``warmup_epochs``, or 0 with ``checkpoint``) the training
images are wrapped in a pair dataset, of which an epoch draws as many items as there
are images (unless ``fixed_epoch_length`` is false). The main process mines the pairs
once per mining epoch (``refresh_epochs``) into ``OUT/spps/pairs_epochNNN.csv``; every
process reads that file, so all devices train on the same pairs, and a resumed run
reads it back instead of mining with a later encoder. The order stays a function of
(seed, epoch).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from geocl.data.semantic_pairs import SemanticPairDataset, fixed_length_epoch
from geocl.data.tile_dataset import TileDataset
from geocl.errors import GeoclError
from geocl.models import Encoder, load_checkpoint_encoder
from geocl.sampling.semantic_pairs import SemanticPairs, SemanticPairSampler, SPPSConfig


class SemanticPairsPlugin:
    """The SPPS part of a host method.

    Args:
        config: the host's ``spps`` parameters.
        view_size: side to which images are resized before embedding (the run's view size).
    """

    def __init__(self, config: SPPSConfig, view_size: int) -> None:
        self.config = config
        self.view_size = view_size
        self._pairs: tuple[int, SemanticPairs] | None = None  # (mining epoch, pairs) last used

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def loader(self, encoder: Encoder, data: Any) -> DataLoader[Any] | None:
        """The epoch's loader over ordinary and semantic pairs, or None before the first mining.

        Args:
            encoder: the run's encoder that mines (the EMA one where the host has it).
            data: the run's :class:`~geocl.training.data.PretrainData`.
        """
        trainer = data.trainer
        epoch = trainer.current_epoch
        mining_epoch = self.config.mining_epoch(epoch)
        if mining_epoch is None:
            return None
        pairs = SemanticPairDataset(data.dataset, self._semantic_pairs(encoder, data, mining_epoch).pairs)
        if not self.config.fixed_epoch_length:
            return data.loader(pairs)
        seed = int(data.seed) * 1_000_003 + epoch
        return data.loader(fixed_length_epoch(pairs, len(data.dataset), seed, self.config.semantic_fraction))

    def _semantic_pairs(self, encoder: Encoder, data: Any, mining_epoch: int) -> SemanticPairs:
        """The pairs mined at the start of ``mining_epoch``: kept, read back, or mined now."""
        if self._pairs is not None and self._pairs[0] == mining_epoch:
            return self._pairs[1]
        trainer = data.trainer
        path = data.out / "spps" / f"pairs_epoch{mining_epoch:03d}.csv"
        resuming = trainer.ckpt_path is not None
        if trainer.is_global_zero and not (resuming and path.exists()):
            config = self.config
            from_checkpoint = bool(config.checkpoint) and mining_epoch == config.first_epoch
            miner = self._checkpoint_encoder(config.checkpoint, data.dataset) if from_checkpoint else encoder
            miner.to(trainer.lightning_module.device)
            pairs = SemanticPairSampler(config, size=self.view_size)(miner, data.dataset)
            pairs.save_csv(path, names=_tile_names(data.dataset))
            source = config.checkpoint if from_checkpoint else "the run's encoder"
            rank_zero_info(
                f"SPPS: {len(pairs)} semantic pairs among {len(data.dataset)} tiles from {source} "
                f"at epoch {mining_epoch} -> {path}"
            )
        trainer.strategy.barrier("geocl-spps-pairs")
        pairs = SemanticPairs.load_csv(path)
        self._pairs = (mining_epoch, pairs)
        return pairs

    @staticmethod
    def _checkpoint_encoder(path: str, dataset: Any) -> Encoder:
        """The (online) encoder of a geocl pretrain checkpoint, for mining, built with its recipe's timm arguments."""
        encoder, meta = load_checkpoint_encoder(path)
        if int(meta["in_chans"]) != dataset.band_count:
            raise GeoclError(
                f"checkpoint encoder takes {meta['in_chans']} bands, the tiles have {dataset.band_count}",
                key="method.spps.checkpoint",
            )
        return encoder


class SemanticPairsHost:
    """Mixin of a host method with a ``spps`` plug-in and a ``semantic_encoder`` that mines.

    Supplies the method hooks of :class:`~geocl.methods.base.PretrainMethod`: the pair
    loader from the mining epoch on, rebuilt every epoch while SPPS is on.
    """

    spps: SemanticPairsPlugin

    @property
    def semantic_encoder(self) -> Encoder:
        """The encoder that mines the pairs (each host says which)."""
        raise NotImplementedError

    def train_loader(self, data: Any) -> DataLoader[Any] | None:
        return self.spps.loader(self.semantic_encoder, data) if self.spps.enabled else None

    @property
    def reloads_data_every_epoch(self) -> bool:
        return self.spps.enabled


def _tile_names(dataset: Any) -> list[str] | None:
    """Tile file names for the pairs CSV (natural-image datasets have none)."""
    if not isinstance(dataset, TileDataset):
        return None
    paths = dataset.index["path"].to_numpy()
    return [str(paths[row]) for row in dataset.rows]
