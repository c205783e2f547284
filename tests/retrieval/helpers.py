"""Tiny retrieval recipes and checkpoints shared by the retrieval, method and evaluation tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tests.conftest import write_recipe

#: A CPU-tiny dual encoder (the test_resnet image encoder of write_recipe, 32 px views).
TINY_METHOD: dict[str, Any] = {
    "name": "retrieval",
    "embed_dim": 16,
    "text_width": 16,
    "text_layers": 1,
    "text_heads": 2,
    "dropout": 0.0,
}
#: A caption describes the whole tile: no crop.
WHOLE_TILE = {"scale": [1.0, 1.0], "ratio": [1.0, 1.0]}


def write_retrieval_recipe(folder: Path, tiles: Path, **method: Any) -> Path:
    """A tiny retrieval recipe over ``tiles`` (2 epochs of 3 batches of 8)."""
    return write_recipe(folder, tiles, {**TINY_METHOD, **method}, augment=WHOLE_TILE)


def untrained_checkpoint(folder: Path, tiles: Path, **method: Any) -> Path:
    """A checkpoint of the retrieval method as ``geocl pretrain`` would write it, before any step.

    The towers are seeded, the vocabulary is fitted to the train tiles' captions; what
    index, search and the page do with it does not depend on training.
    """
    import geocl.methods  # noqa: F401
    from geocl.data.tile_dataset import TileDataset
    from geocl.methods import build_method, load_recipe

    recipe = load_recipe(write_retrieval_recipe(folder, tiles, **method))
    train = TileDataset(tiles, "train", with_mask=False, progress=False)
    torch.manual_seed(0)
    model = build_method(recipe, train.band_count, train.metadata["band_stats"])
    model.check_train_data(train)
    checkpoint: dict[str, Any] = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    path = folder / "untrained.ckpt"
    torch.save(checkpoint, path)
    return path


class Payload:
    """Unpickled, it creates the file ``marker`` (what a crafted file could do with any code).

    ``torch.save`` of an object holding one writes a file whose ``torch.load(weights_only=False)``
    runs ``open(marker, "w")``.
    """

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))
