"""A checkpoint's online or momentum encoder, as evaluation loads it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import geocl.methods  # noqa: F401  (registers the methods)
from geocl.errors import GeoclError
from geocl.evaluation.features import load_checkpoint_encoder
from geocl.methods import load_recipe
from geocl.training.pretrain import run_pretrain
from tests.conftest import write_recipe


def test_the_momentum_encoder_is_loaded_on_request_and_only_where_there_is_one(
    tmp_path: Path, tiny_tiles: Path
) -> None:
    budget = {"trainer": {"max_epochs": 1, "limit_train_batches": 2}}
    moco = run_pretrain(
        load_recipe(write_recipe(tmp_path / "moco", tiny_tiles, {"name": "moco", "queue_size": 32}, **budget))
    )
    state = torch.load(moco.checkpoint, weights_only=False)["state_dict"]

    online, _ = load_checkpoint_encoder(moco.checkpoint)
    momentum, meta = load_checkpoint_encoder(moco.checkpoint, momentum_encoder=True)
    assert meta["momentum_encoder_attribute"] == "key_encoder"
    for name, value in momentum.body.state_dict().items():
        assert torch.equal(value, state[f"key_encoder.body.{name}"])
    # after two steps with momentum < 1 the EMA copy trails the online weights
    assert any(not torch.equal(a, b) for a, b in zip(online.body.parameters(), momentum.body.parameters(), strict=True))

    simclr = run_pretrain(load_recipe(write_recipe(tmp_path / "simclr", tiny_tiles, {"name": "simclr"}, **budget)))
    with pytest.raises(GeoclError, match="no momentum encoder"):
        load_checkpoint_encoder(simclr.checkpoint, momentum_encoder=True)
