"""SPPS as a plug-in on SimCLR and MoCo: off means the base method exactly; smoke runs mine after a warm-up."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

import geocl.methods  # noqa: F401  (registers the methods)
from geocl.data.natural_toy import write_toy_cifar
from geocl.data.semantic_pairs import SemanticPairDataset, pair_views
from geocl.data.tile_dataset import TileDataset
from geocl.errors import GeoclError
from geocl.methods import GraSS, MoCo, SimCLR, build_method, load_recipe
from geocl.methods.moco import QUEUE_CHECKPOINT_KEY
from geocl.sampling.semantic_pairs import SemanticPairs, SemanticPairSampler, SPPSConfig, footprint_conflicts
from geocl.training.pretrain import run_pretrain
from tests.conftest import write_recipe

BAND_STATS = {"mean": [0.0] * 4, "std": [1.0] * 4}
HEADS = {"hidden_dim": 16, "output_dim": 8}
SPPS_OFF = {"enabled": False, "k": 3, "min_similarity": 0.1, "warmup_epochs": 0, "buffer": 5.0}
# every tile finds a partner (any similarity), but never one of its neighbours (64 m tiles)
SPPS_ON = {"enabled": True, "k": 1, "min_similarity": -1.0, "warmup_epochs": 1, "buffer": 70.0, "batch_size": 16}


def _model(cls: type, folder: Path, method: dict) -> SimCLR | MoCo:
    recipe = load_recipe(write_recipe(folder, folder / "tiles", {**HEADS, **method}))
    torch.manual_seed(0)
    return build_method(recipe, 4, BAND_STATS)


def _step(model: SimCLR | MoCo, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """What training_step computes (without a trainer to log to), and the gradients."""
    torch.manual_seed(5)
    if isinstance(model, MoCo):
        model.update_key_network(0.9)
    loss = model.contrast(*pair_views(model.views, batch))
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize(("cls", "name"), [(SimCLR, "simclr"), (MoCo, "moco")])
def test_spps_off_is_the_base_method_exactly(tmp_path: Path, cls: type, name: str) -> None:
    images = torch.randn(6, 4, 40, 40, generator=torch.Generator().manual_seed(3))
    base_loss, base_grads = _step(_model(cls, tmp_path / "a", {"name": name}), {"image": images})
    off_loss, off_grads = _step(_model(cls, tmp_path / "b", {"name": name, "spps": SPPS_OFF}), {"image": images})
    assert torch.isfinite(base_loss) and torch.equal(base_loss, off_loss)
    assert len(base_grads) == len(off_grads) > 0
    assert all(torch.equal(a, b) for a, b in zip(base_grads, off_grads, strict=True))
    # ordinary items of the pair dataset (image_pair = image) train exactly like plain tiles
    ordinary = {"image": images, "image_pair": images}
    ordinary_loss, ordinary_grads = _step(_model(cls, tmp_path / "c", {"name": name}), ordinary)
    assert torch.equal(base_loss, ordinary_loss)
    assert all(torch.equal(a, b) for a, b in zip(base_grads, ordinary_grads, strict=True))


@pytest.mark.parametrize("name", ["simclr", "moco"])
def test_a_run_with_spps_off_is_the_base_run_exactly(tmp_path: Path, tiny_tiles: Path, name: str) -> None:
    """End to end (data module, loader, steps): same losses and weights as the base recipe."""
    budget = {"trainer": {"max_epochs": 2, "limit_train_batches": 2}}
    base_method = {"name": name, **HEADS, **({"queue_size": 32} if name == "moco" else {})}
    base = run_pretrain(load_recipe(write_recipe(tmp_path / "base", tiny_tiles, base_method, **budget)))
    # mining would start at epoch 0 if SPPS were on: off must ignore every other setting
    off_method = {**base_method, "spps": {**SPPS_OFF, "warmup_epochs": 0}}
    off = run_pretrain(load_recipe(write_recipe(tmp_path / "off", tiny_tiles, off_method, **budget)))
    assert base.global_step == off.global_step == 4 and base.final_loss == off.final_loss
    base_state = torch.load(base.checkpoint, weights_only=False)["state_dict"]
    off_state = torch.load(off.checkpoint, weights_only=False)["state_dict"]
    assert base_state.keys() == off_state.keys()
    assert all(torch.equal(base_state[key], off_state[key]) for key in base_state)
    assert not (off.out / "spps").exists()


def test_semantic_pairs_change_the_positives(tmp_path: Path) -> None:
    images = torch.randn(6, 4, 40, 40, generator=torch.Generator().manual_seed(3))
    partners = images[[3, 4, 5, 0, 1, 2]]
    base_loss, _ = _step(_model(SimCLR, tmp_path / "a", {"name": "simclr"}), {"image": images})
    pair_loss, _ = _step(_model(SimCLR, tmp_path / "b", {"name": "simclr"}), {"image": images, "image_pair": partners})
    assert not torch.equal(base_loss, pair_loss)


def test_grass_refuses_spps_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(GeoclError, match=r"method\.spps\.enabled"):
        _model(GraSS, tmp_path, {"name": "grass", "spps": {"enabled": True}})


def test_a_typo_inside_method_spps_fails_before_training_naming_the_key(tmp_path: Path) -> None:
    method = {"name": "simclr", "spps": {"enabled": True, "min_similarty": 0.9}}
    path = write_recipe(tmp_path, tmp_path / "tiles", method)
    with pytest.raises(GeoclError, match=r"method\.spps\.min_similarty.*did you mean 'method\.spps\.min_similarity'"):
        load_recipe(path)


# ------------------------------------------------------------------ smoke runs

BUDGET = {"trainer": {"max_epochs": 2, "limit_train_batches": 2}}


def _logged(run: Path, column: str) -> pd.DataFrame:
    frames = [pd.read_csv(path) for path in sorted((run / "logs").glob("version_*/metrics.csv"))]
    metrics = pd.concat(frames)
    return metrics.dropna(subset=[column]) if column in metrics else metrics.iloc[:0]


def test_moco_runs_and_its_checkpoint_mines_the_pairs_of_a_later_run(tmp_path: Path, tiny_tiles: Path) -> None:
    one_epoch = {"trainer": {"max_epochs": 1, "limit_train_batches": 2}}
    method = {"name": "moco", **HEADS, "queue_size": 32}
    result = run_pretrain(load_recipe(write_recipe(tmp_path / "moco", tiny_tiles, method, **one_epoch)))
    assert result.global_step == 2 and result.final_loss == result.final_loss  # not NaN
    checkpoint = torch.load(result.checkpoint, weights_only=False)
    assert int(checkpoint[QUEUE_CHECKPOINT_KEY]["pointer"]) == 16  # 2 steps x 8 keys
    assert any(key.startswith("encoder.") for key in checkpoint["state_dict"])
    assert _logged(result.out, "train/semantic_fraction").empty
    assert not (result.out / "spps").exists()

    # a later SimCLR run mines with that checkpoint's encoder before its first epoch
    spps = {**SPPS_ON, "checkpoint": str(result.checkpoint), "warmup_epochs": 5}
    method = {"name": "simclr", **HEADS, "spps": spps}
    later = run_pretrain(load_recipe(write_recipe(tmp_path / "spps", tiny_tiles, method, **one_epoch)))
    mined = SemanticPairs.load_csv(later.out / "spps" / "pairs_epoch000.csv")
    encoder = build_method(load_recipe(result.out / "config.yaml"), 4, BAND_STATS).encoder
    state = checkpoint["state_dict"]
    encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")})
    tiles = TileDataset(tiny_tiles, "train", progress=False)
    expected = SemanticPairSampler(SPPSConfig(**spps), size=32)(encoder, tiles)
    assert len(expected) > 0 and torch.equal(mined.pairs, expected.pairs)
    assert _logged(later.out, "train/semantic_fraction")["epoch"].tolist() == [0]


def test_a_vit_checkpoint_mines_the_pairs_with_its_own_patch_grid(tmp_path: Path, tiny_tiles: Path) -> None:
    vit = {"name": "test_vit", "args": {"patch_size": 8, "img_size": 32}}
    one_epoch = {"trainer": {"max_epochs": 1, "limit_train_batches": 1}}
    method = {"name": "patchmix", "proj_hidden_dim": 16, "proj_output_dim": 8, "pred_hidden_dim": 16}
    result = run_pretrain(load_recipe(write_recipe(tmp_path / "vit", tiny_tiles, method, encoder=vit, **one_epoch)))

    spps = {**SPPS_ON, "checkpoint": str(result.checkpoint), "warmup_epochs": 5}
    later = run_pretrain(
        load_recipe(write_recipe(tmp_path / "spps", tiny_tiles, {"name": "simclr", **HEADS, "spps": spps}, **one_epoch))
    )
    assert len(SemanticPairs.load_csv(later.out / "spps" / "pairs_epoch000.csv")) > 0


@pytest.mark.parametrize("name", ["simclr", "moco"])
def test_spps_mines_after_the_warmup_epoch_and_trains_on_pairs(tmp_path: Path, tiny_tiles: Path, name: str) -> None:
    method = {"name": name, **HEADS, "spps": SPPS_ON, **({"queue_size": 32} if name == "moco" else {})}
    budget = {"trainer": {"max_epochs": 2, "limit_train_batches": 1.0}, "data": {"batch_size": 16}}
    result = run_pretrain(load_recipe(write_recipe(tmp_path, tiny_tiles, method, **budget)))
    tiles = TileDataset(tiny_tiles, "train", progress=False)
    assert result.global_step == 2 * (len(tiles) // 16)  # epochs keep the tile count (fixed_epoch_length)
    assert sorted(p.name for p in (result.out / "spps").iterdir()) == ["pairs_epoch001.csv"]
    pairs = SemanticPairs.load_csv(result.out / "spps" / "pairs_epoch001.csv")
    assert len(pairs) >= len(tiles)  # every tile chose one partner; pairs come in both orders
    assert (pairs.pairs[:, 0] != pairs.pairs[:, 1]).all()
    bounds = tiles.bounds[tiles.rows]
    conflicts = footprint_conflicts(bounds, bounds, SPPS_ON["buffer"])
    assert not conflicts[pairs.pairs[:, 0], pairs.pairs[:, 1]].any()
    semantic = _logged(result.out, "train/semantic_fraction")
    assert semantic["epoch"].tolist() == [1]  # epoch 0 is the plain host method
    assert 0 < semantic["train/semantic_fraction"].iloc[0] <= 1


def test_resumed_spps_run_reads_its_pairs_back_instead_of_mining_again(
    tmp_path: Path, tiny_tiles: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    method = {"name": "moco", **HEADS, "queue_size": 32, "spps": SPPS_ON}
    path = write_recipe(tmp_path, tiny_tiles, method, **BUDGET)
    run_pretrain(load_recipe(path))
    written = (tmp_path / "run" / "spps" / "pairs_epoch001.csv").read_text()

    def refuse(*_args: object) -> None:
        raise AssertionError("mined again on resume")

    monkeypatch.setattr(SemanticPairSampler, "__call__", refuse)
    extended = run_pretrain(load_recipe(path, ["trainer.max_epochs=3"]), resume=True)
    assert extended.global_step == 6
    assert (tmp_path / "run" / "spps" / "pairs_epoch001.csv").read_text() == written
    assert _logged(extended.out, "train/semantic_fraction")["epoch"].tolist() == [1, 2]


def test_pair_dataset_over_tiles_keeps_the_first_tiles_footprint(tiny_tiles: Path) -> None:
    tiles = TileDataset(tiny_tiles, "train", progress=False)
    dataset = SemanticPairDataset(tiles, torch.tensor([[0, 5], [5, 0]]))
    item = dataset[len(tiles)]
    assert torch.equal(item["bounds"], tiles[0]["bounds"]) and torch.equal(item["image_pair"], tiles[5]["image"])


def test_spps_on_natural_images_mines_without_footprints(tmp_path: Path) -> None:
    cifar = write_toy_cifar(tmp_path / "cifar", num_classes=4, per_class=8, test_per_class=3, train_batches=2)
    method = {"name": "moco", **HEADS, "queue_size": 32, "spps": SPPS_ON}
    path = write_recipe(tmp_path, tmp_path, method, **BUDGET)
    recipe = load_recipe(path, ["data.format=cifar", f"data.path={cifar}", "data.tiles=''"])
    result = run_pretrain(recipe)
    pairs = SemanticPairs.load_csv(result.out / "spps" / "pairs_epoch001.csv")
    assert result.global_step == 4 and len(pairs) >= 32  # every image has a partner, none excluded by place
    assert _logged(result.out, "train/semantic_fraction")["epoch"].tolist() == [1]
