"""GraSS's box statistics: views warped with their labels, purity against random twins, nothing disturbed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import geocl.methods  # noqa: F401  (registers the methods)
from geocl.data.tile_dataset import IGNORE_INDEX, TileDataset
from geocl.methods import GraSS, build_method, load_recipe
from geocl.methods.grass_boxes import BoxStatistics, _labelled_views, box_statistics, describe_box_statistics
from geocl.methods.grass_maps import BOX_STATISTICS
from geocl.training.pretrain import run_pretrain
from tests.conftest import write_recipe


def _grass(tmp_path: Path, tiles: Path, **method: object) -> GraSS:
    params = {"name": "grass", "hidden_dim": 16, "output_dim": 8, **method}
    recipe = load_recipe(write_recipe(tmp_path, tiles, params))
    dataset = TileDataset(tiles, "train", progress=False)
    torch.manual_seed(0)
    return build_method(recipe, dataset.band_count, dataset.metadata["band_stats"])


def test_labels_follow_their_pixels_through_the_geometric_augmentation(tmp_path: Path, tiny_tiles: Path) -> None:
    model = _grass(tmp_path, tiny_tiles)
    # an image whose first band is its own class map: after any crop, flip or rotation the
    # warped labels must still read the warped band (nearest class = rounded band value)
    blocks = torch.randint(0, 3, (4, 4, 4), generator=torch.Generator().manual_seed(0))
    masks = blocks.repeat_interleave(16, dim=1).repeat_interleave(16, dim=2)  # 16 px blocks of one class
    masks[:, :16] = IGNORE_INDEX
    images = torch.stack([masks.float().clamp(min=-1)] * 4, dim=1)
    torch.manual_seed(0)
    model.augmentation.photometric = torch.nn.Identity()  # keep the band readable
    views, labels = _labelled_views(model, images, masks, classes=3)
    assert views.shape == (8, 4, 32, 32) and labels.shape == (8, 32, 32)
    band = views[:, 0:1]
    # inside a block the band is flat; at a class edge bilinear resampling blends classes
    # (a 0|2 edge reads 1), so compare where the 3 x 3 neighbourhood is flat
    spread = F.max_pool2d(band, 3, 1, 1) + F.max_pool2d(-band, 3, 1, 1)
    flat = spread[:, 0] < 0.05
    read = torch.where(band[:, 0].round() < 0, IGNORE_INDEX, band[:, 0].round().long())
    assert flat.float().mean() > 0.5
    assert torch.equal(labels[flat], read[flat])


def test_statistics_leave_weights_buffers_and_random_state_unchanged(tmp_path: Path, tiny_tiles: Path) -> None:
    model = _grass(tmp_path, tiny_tiles)
    model.eval()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    tiles = TileDataset(tiny_tiles, "train", with_mask=True, progress=False)
    stats = box_statistics(model, tiles, [0.7, 0.5], batches=1, batch_size=8)
    assert torch.equal(torch.rand(3), expected_next)
    assert not model.training  # mode restored
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name  # BatchNorm running statistics too
    assert [row.threshold_ratio for row in stats] == [0.7, 0.5]
    strict, released = stats
    assert isinstance(strict, BoxStatistics) and strict.views == released.views == 16
    assert strict.layer == "layer4" and strict.cells == (1, 1)  # test_resnet: 32 px views, stride 32
    # the same views at both thresholds: a higher threshold never enlarges a box
    assert strict.area <= released.area
    for row in stats:
        assert 0 < row.area <= 1 and 0 <= row.whole <= 1
        assert 0 < row.purity <= 1 and 0 < row.random_purity <= 1
    # seeded: the same call gives the same figures
    assert box_statistics(model, tiles, [0.7, 0.5], batches=1, batch_size=8) == stats


def test_one_class_tiles_have_pure_boxes_and_pure_twins(
    tmp_path: Path, tiny_tiles: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _grass(tmp_path, tiny_tiles, layer="layer1")  # a finer map: boxes smaller than the view
    tiles = TileDataset(tiny_tiles, "train", with_mask=True, progress=False)
    real = TileDataset.__getitem__

    def one_class(self: TileDataset, item: int) -> dict:  # type: ignore[type-arg]
        sample = real(self, item)
        sample["mask"] = torch.full_like(sample["mask"], 2)
        return sample

    monkeypatch.setattr(TileDataset, "__getitem__", one_class)
    (row,) = box_statistics(model, tiles, [0.5], batches=1, batch_size=8)
    assert row.purity == 1.0 and row.random_purity == 1.0 and row.area < 1


def test_refuses_tiles_without_masks_and_too_few_tiles(tmp_path: Path, tiny_tiles: Path) -> None:
    model = _grass(tmp_path, tiny_tiles)
    with pytest.raises(ValueError, match="masks"):
        box_statistics(model, TileDataset(tiny_tiles, "train", with_mask=False, progress=False))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        box_statistics(model, TileDataset(tiny_tiles, "train", with_mask=True, progress=False), [1.0])


def test_a_grass_run_on_labelled_tiles_writes_its_box_statistics(tmp_path: Path, tiny_tiles: Path) -> None:
    method = {"name": "grass", "warmup_epochs": 1, "hidden_dim": 16, "output_dim": 8, "threshold_ratio": 0.55}
    recipe = load_recipe(
        write_recipe(tmp_path, tiny_tiles, method, trainer={"max_epochs": 2, "limit_train_batches": 1})
    )
    result = run_pretrain(recipe)
    run = result.out
    table = pd.read_csv(run / BOX_STATISTICS)
    assert list(table["threshold_ratio"]) == [0.5, 0.55, 0.6, 0.7]  # the recipe's among the compared ones
    assert list(table.columns) == [
        "threshold_ratio",
        "layer",
        "cells",
        "views",
        "area",
        "whole",
        "purity",
        "random_purity",
    ]
    assert (table["cells"] == "1x1").all() and (table["views"] > 0).all()
    assert np.all(np.diff(table["area"]) <= 1e-9)  # same views, rising threshold
    line = describe_box_statistics(run / BOX_STATISTICS, 0.55)
    row = table.iloc[1]
    assert line == (
        f"boxes at threshold 0.55: {row['area']:.2f} of the view on average, purity {row['purity']:.3f} "
        f"against {row['random_purity']:.3f} for random boxes of their size (box_statistics.csv)"
    )
    assert result.findings == (line,)  # what geocl pretrain prints under its final line
    assert describe_box_statistics(run / BOX_STATISTICS, 0.9) is None
    assert describe_box_statistics(run / "absent.csv", 0.5) is None
