"""A tiny tile set and recipe for end-to-end pretraining tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from geocl.data.synthetic import make_scene
from geocl.data.tiler import TilingOptions, tile_scene


@pytest.fixture(scope="session")
def tiny_tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48-ish 64 px tiles of a 512 px embedded scene."""
    root = tmp_path_factory.mktemp("tiny")
    scene = make_scene(root / "scene", size=512, seed=0)
    out = root / "tiles"
    tile_scene(scene.image, out, mask=scene.mask, options=TilingOptions(size=64, stride=64, max_nodata=0.3, split_block=128), progress=False)
    return out


def write_recipe(folder: Path, tiles: Path, method: dict, **sections: dict) -> Path:
    """A tiny recipe (test_resnet encoder, 32 px views, batch 8) as YAML."""
    recipe = {
        "name": method["name"],
        "out": str(folder / "run"),
        "seed": 0,
        "data": {"tiles": str(tiles), "batch_size": 8, "num_workers": 0, "view_size": 32},
        "encoder": {"name": "test_resnet"},
        "method": method,
        "optimizer": {"name": "adamw", "lr": 0.001},
        "trainer": {"max_epochs": 2, "accelerator": "cpu", "log_every_n_steps": 1, "limit_train_batches": 3},
    }
    for name, values in sections.items():
        recipe.setdefault(name, {}).update(values)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path
