"""The downstream skeleton: the order of its steps, the best checkpoint, what metrics.json holds, the budget's fields."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Any, get_type_hints

import lightning
import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional
from torch.utils.data import DataLoader, RandomSampler

from geocl.errors import GeoclError
from geocl.finetune.downstream import (
    BudgetArguments,
    DataDescription,
    DownstreamOptions,
    Scores,
    TrainingBudget,
    budget_from,
    run_downstream,
)
from geocl.recipes.options import FinetuneCommand, FinetuneOptions

BUDGET = TrainingBudget(
    max_epochs=3, steps_per_epoch=2, val_every=1, patience=5, batch_size=4, progress=False, accelerator="cpu"
)


class Pixels(lightning.LightningModule):
    """A 1x1 convolution classifying pixels; validated by minus the cross-entropy (higher is better)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Conv2d(1, 2, 1)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return functional.cross_entropy(self.layer(batch["image"]), batch["mask"])

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.log("val/score", -functional.cross_entropy(self.layer(batch["image"]), batch["mask"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)


class PixelFactory:
    monitor = "val/score"
    log_every_n_steps = 1

    def __init__(self) -> None:
        self.built: list[Pixels] = []

    def build(self, data: DataDescription, options: DownstreamOptions) -> Pixels:
        self.built.append(Pixels())
        return self.built[-1]

    def record(self, module: lightning.LightningModule) -> dict[str, Any]:
        return {"network": "1x1 conv"}


def _items(count: int, seed: int, *, inverted: bool = False) -> list[dict[str, Tensor]]:
    """Pixels in [0, 1); class 1 above one half (``inverted``: below)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 1, 4, 4, generator=generator)
    return [{"image": image, "mask": ((image[0] > 0.5) != inverted).long()} for image in images]


class ListData:
    """Items in memory; ``setup`` draws ``draws`` numbers from torch's global generator."""

    def __init__(self, *, draws: int = 0, validate: bool = True) -> None:
        self.draws, self.validate = draws, validate
        self.calls: list[str] = []

    def setup(self, options: DownstreamOptions) -> DataDescription:
        self.calls.append("setup")
        torch.rand(self.draws)
        # val labels the other way round: training makes val worse, so the first validation is the best
        self.train, self.val = _items(8, 0), _items(4, 1, inverted=True)
        return DataDescription({"classes": [0, 1]}, {"train_items": 8}, {"read_as": "float32"})

    def loaders(
        self, module: lightning.LightningModule, options: DownstreamOptions
    ) -> tuple[DataLoader, DataLoader | None]:
        self.calls.append("loaders")
        sampler = RandomSampler(
            self.train,
            replacement=True,
            num_samples=options.budget.draws,
            generator=torch.Generator().manual_seed(options.seed),
        )
        val = DataLoader(self.val, batch_size=4) if self.validate else None
        return DataLoader(self.train, batch_size=options.budget.batch_size, sampler=sampler), val

    def score(
        self, trainer: lightning.Trainer, module: lightning.LightningModule, checkpoint: Path, out: Path
    ) -> Scores:
        self.calls.append("score")
        self.scored = checkpoint
        return Scores({"score": 0.25, "per_class": [math.nan, 1.0]}, {"test/score": 0.25})


def _options(out: Path, **changes: Any) -> DownstreamOptions:
    return DownstreamOptions(
        **{
            "out": out,
            "label_fraction": 0.5,
            "seed": 3,
            "budget": BUDGET,
            "identity": {"label_fraction": 0.5, "seed": 3, "lr": 0.5},
            **changes,
        }
    )


def test_a_run_keeps_the_best_checkpoint_and_records_in_order(tmp_path: Path) -> None:
    data, factory = ListData(), PixelFactory()
    done = run_downstream(factory, data, _options(tmp_path / "run"))
    assert data.calls == ["setup", "loaders", "score"] and data.scored == done.checkpoint
    assert done.checkpoint == tmp_path / "run" / "checkpoints" / "best.ckpt"
    with open(next((tmp_path / "run" / "logs").glob("version_*/metrics.csv"))) as file:
        validated = [float(row["val/score"]) for row in csv.DictReader(file) if row.get("val/score")]
    assert len(validated) == 3 and validated[0] > validated[-1]
    assert done.best_score == pytest.approx(validated[0])  # the best, not the last
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert list(record) == [
        "score",
        "per_class",
        "val_score",
        "classes",
        "label_fraction",
        "seed",
        "subset_seed",
        "train_items",
        "network",
        "read_as",
        "checkpoint",
        "seconds",
        "options",
    ]
    assert record["per_class"] == [None, 1.0]  # strict JSON
    assert (record["seed"], record["subset_seed"], record["label_fraction"]) == (3, 3, 0.5)  # None: the seed
    assert record["options"] == {"label_fraction": 0.5, "seed": 3, "lr": 0.5, "subset_seed": 3}
    assert record["val_score"] == pytest.approx(done.best_score) and record == done.record | {"per_class": [None, 1.0]}
    stored = torch.load(done.checkpoint, weights_only=True)["state_dict"]["layer.weight"]
    assert not torch.equal(stored, factory.built[0].layer.weight.detach())  # the best, not the last weights
    assert "options" not in json.loads(
        json.dumps(
            run_downstream(PixelFactory(), ListData(), _options(tmp_path / "unrecorded", record_options=False)).record
        )
    )


def test_the_data_is_read_before_seeding_and_the_folder_checked_before_reading(tmp_path: Path) -> None:
    runs = [
        run_downstream(PixelFactory(), ListData(draws=draws), _options(tmp_path / f"draws{draws}")) for draws in (0, 5)
    ]
    first, second = (torch.load(run.checkpoint, weights_only=True)["state_dict"] for run in runs)
    assert all(torch.equal(first[key], second[key]) for key in first)  # draws in setup change nothing
    data = ListData()
    with pytest.raises(GeoclError, match="holds a finetuning run") as error:
        run_downstream(PixelFactory(), data, _options(runs[0].out, identity={"label_fraction": 0.5, "seed": 4}))
    assert "seed 3 (now 4)" in str(error.value) and data.calls == []


def test_without_validation_the_last_weights_are_kept(tmp_path: Path) -> None:
    factory = PixelFactory()
    done = run_downstream(factory, ListData(validate=False), _options(tmp_path / "run"))
    assert done.checkpoint == tmp_path / "run" / "checkpoints" / "last.ckpt" and math.isnan(done.best_score)
    stored = torch.load(done.checkpoint, weights_only=True)["state_dict"]["layer.weight"]
    assert torch.equal(stored, factory.built[0].layer.weight.detach())
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["val_score"] is None


def test_the_budget_is_finetune_options_fields() -> None:
    """The skeleton's budget takes the CLI's and compare's fields by their names and defaults."""
    budget = {item.name: item.default for item in dataclasses.fields(TrainingBudget)}
    assert set(get_type_hints(BudgetArguments)) == set(budget)
    for name, default in budget.items():
        model = FinetuneOptions if name in FinetuneOptions.model_fields else FinetuneCommand
        assert model.model_fields[name].default == default, name
    assert budget_from({"max_epochs": 2}) == TrainingBudget(max_epochs=2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'epochs'"):
        budget_from({"epochs": 2})
    assert TrainingBudget(steps_per_epoch=3, batch_size=5).draws == 15
