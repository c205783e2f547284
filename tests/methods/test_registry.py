"""Methods from Python alone: typed arguments, one schema with the recipes, training without a YAML file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from geocl.errors import GeoclError
from geocl.methods import (
    METHODS,
    FBAPretrain,
    GraSS,
    MoCo,
    MultiNet,
    PatchMix,
    SimCLR,
    build_method,
    load_recipe,
    parameters_model,
)
from geocl.recipes import method_config_class
from tests.conftest import write_recipe

BANDS = 4
VIT = {"encoder": "test_vit", "encoder_args": {"patch_size": 8, "img_size": 32}}
#: Each method with small heads, from Python arguments only.
SMALL: dict[type, dict[str, Any]] = {
    SimCLR: {"encoder": "test_resnet", "hidden_dim": 16, "output_dim": 8},
    GraSS: {"encoder": "test_resnet", "hidden_dim": 16, "output_dim": 8, "warmup_epochs": 1},
    MoCo: {"encoder": "test_resnet", "hidden_dim": 16, "output_dim": 8, "queue_size": 16},
    MultiNet: {
        "encoder": "test_resnet",
        "hidden_dim": 16,
        "output_dim": 8,
        "predictor_hidden_dim": 8,
        "queue_size": 16,
    },
    PatchMix: {**VIT, "proj_hidden_dim": 16, "proj_output_dim": 8, "pred_hidden_dim": 16},
    # its fg/bg split needs a feature map of more than one position: 64-px views
    FBAPretrain: {"encoder": "test_resnet", "embedding_dim": 8, "view_size": 64},
}


class RandomImages(Dataset[dict[str, torch.Tensor]]):
    """Batches in the package's contract (a dict with ``image``), no files."""

    def __init__(self, count: int = 16) -> None:
        self.images = torch.randn(count, BANDS, 32, 32, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[item]}


#: Methods that train only on data of their own kind, tested in their own files:
#: retrieval needs captions (tests/methods/test_retrieval.py), FBA labelled-first
#: batches and no pretraining (tests/methods/test_fba.py).
OWN_DATA = {"retrieval", "fba"}


def test_every_registered_method_is_covered() -> None:
    assert set(METHODS.values()) == set(SMALL) | {cls for name, cls in METHODS.items() if name in OWN_DATA}


@pytest.mark.parametrize("cls", list(SMALL), ids=lambda cls: cls.__name__)
def test_each_method_is_built_and_trained_from_python_arguments(cls: type, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = cls(in_chans=BANDS, optimizer={"lr": 1e-3}, **{"view_size": 32, **SMALL[cls]})
    assert (
        model.name in METHODS
        and model.params.model_dump().items()
        >= {k: v for k, v in SMALL[cls].items() if k not in ("encoder", "encoder_args", "view_size")}.items()
    )
    before = [p.detach().clone() for p in model.encoder.parameters()]
    trainer = lightning.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, DataLoader(RandomImages(), batch_size=8, drop_last=True))
    assert trainer.global_step == 4
    changed = [not torch.equal(a, b) for a, b in zip(before, model.encoder.parameters(), strict=True)]
    assert any(changed)


def test_parameter_model_is_the_constructors_signature() -> None:
    fields = parameters_model(GraSS).model_fields
    # GraSS adds its own arguments to SimCLR's, defaults included
    assert fields["temperature"].default == 0.5 and fields["warmup_epochs"].default == 1
    assert fields["stage2_sampling"].default == "online"
    assert "encoder" not in fields and "optimizer" not in fields  # the other recipe sections
    # the recipe's `method` section is that model plus the selector
    assert set(method_config_class("grass").model_fields) == {"name", *fields}


def test_recipe_and_python_arguments_build_the_same_method(tmp_path: Path) -> None:
    recipe = load_recipe(
        write_recipe(
            tmp_path, tmp_path / "tiles", {"name": "moco", "hidden_dim": 16, "output_dim": 8, "queue_size": 16}
        )
    )
    torch.manual_seed(0)
    from_recipe = build_method(recipe, BANDS)
    torch.manual_seed(0)
    from_python = MoCo(
        "test_resnet",
        BANDS,
        hidden_dim=16,
        output_dim=8,
        queue_size=16,
        view_size=32,
        optimizer=recipe.optimizer,
        scheduler=recipe.scheduler,
    )
    assert from_recipe.params == from_python.params
    assert from_recipe.optimizer_config == from_python.optimizer_config
    for a, b in zip(from_recipe.state_dict().values(), from_python.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # checkpoints carry the recipe it came from, or the recipe its arguments amount to
    assert from_recipe.as_recipe()["data"]["tiles"] == str(tmp_path / "tiles")
    assert from_python.as_recipe()["method"] == {"name": "moco", **from_python.params.model_dump(mode="json")}


@pytest.mark.parametrize(
    ("arguments", "key", "rule"),
    [
        ({"temperature": 0.0}, "method.temperature", "must be greater than 0"),
        ({"stage2_sampling": "geoo"}, "method.stage2_sampling", "did you mean 'geo'"),
        ({"warmup_epochs": "two"}, "method.warmup_epochs", "expected an integer"),
        ({"optimizer": {"lr": -1}}, "optimizer.lr", "must be greater than 0"),
        ({"scheduler": {"name": "cosin"}}, "scheduler.name", "did you mean 'cosine'"),
    ],
)
def test_bad_python_arguments_name_the_recipe_key(arguments: dict[str, Any], key: str, rule: str) -> None:
    with pytest.raises(GeoclError, match=rule) as caught:
        GraSS("test_resnet", BANDS, **arguments)
    assert caught.value.key == key
    with pytest.raises(TypeError, match="nonsense"):  # a misspelt argument fails as in any Python call
        GraSS("test_resnet", BANDS, nonsense=1)


def test_a_method_refuses_data_it_cannot_use() -> None:
    model = GraSS("test_resnet", BANDS, stage2_sampling="geo")
    with pytest.raises(GeoclError, match="georeferenced tiles") as caught:
        model.check_train_data(RandomImages())
    assert caught.value.key == "method.stage2_sampling"
    SimCLR("test_resnet", BANDS).check_train_data(RandomImages())  # any images will do
