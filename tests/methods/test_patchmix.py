"""PatchMix method: momentum encoder bookkeeping, EMA formula, schedule, band counts, bad recipes."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import geocl.methods  # noqa: F401  (registers the methods)
from geocl.errors import GeoclError
from geocl.methods import PatchMix, build_method, load_recipe
from tests.conftest import write_recipe

VIT = {"name": "test_vit", "args": {"patch_size": 8, "img_size": 32}}
METHOD = {"name": "patchmix", "proj_hidden_dim": 32, "proj_output_dim": 16, "pred_hidden_dim": 32}


def _patchmix(tmp_path: Path, bands: int = 4, encoder: dict | None = None, **method: object) -> PatchMix:
    recipe = load_recipe(write_recipe(tmp_path, tmp_path / "tiles", {**METHOD, **method}, encoder=encoder or VIT))
    torch.manual_seed(0)
    return build_method(recipe, bands, {"mean": [0.0] * bands, "std": [1.0] * bands})


def _views(n: int = 5, bands: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, bands, 32, 32, generator=generator), torch.randn(n, bands, 32, 32, generator=generator)


def test_no_gradient_reaches_the_momentum_encoder(tmp_path: Path) -> None:
    model = _patchmix(tmp_path)
    key_params = [*model.key_encoder.parameters(), *model.key_projector.parameters()]
    assert key_params and not any(p.requires_grad for p in key_params)
    model.losses(*_views())["loss"].backward()
    assert all(p.grad is None for p in key_params)
    online = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None for g in online) and sum(float(g.abs().sum()) for g in online) > 0
    assert not any(name.startswith("key_") for name, p in model.named_parameters() if p.requires_grad)


def test_one_ema_update_is_m_times_key_plus_one_minus_m_times_online(tmp_path: Path) -> None:
    model = _patchmix(tmp_path)
    with torch.no_grad():  # make online and key weights differ
        for p in model.encoder.parameters():
            p.add_(torch.randn_like(p))
    m = 0.9
    before = {n: p.clone() for n, p in model.key_encoder.named_parameters()}
    online = dict(model.encoder.named_parameters())
    model.update_key_network(m)
    for name, param in model.key_encoder.named_parameters():
        assert torch.equal(param, before[name].mul(m).add(online[name], alpha=1 - m))
        torch.testing.assert_close(param, m * before[name] + (1 - m) * online[name])


def test_momentum_follows_the_cosine_schedule_to_one(tmp_path: Path) -> None:
    model = _patchmix(tmp_path, momentum=0.996)
    total = 11
    for step in (0, 3, 5, 10):
        expected = 1 - (1 - 0.996) * (1 + math.cos(math.pi * step / (total - 1))) / 2
        assert model.momentum_at(step, total) == pytest.approx(expected, abs=1e-12)
    assert model.momentum_at(0, total) == pytest.approx(0.996) and model.momentum_at(total - 1, total) == 1.0


@pytest.mark.parametrize("bands", [3, 4, 13])
def test_losses_are_finite_for_any_band_count(tmp_path: Path, bands: int) -> None:
    model = _patchmix(tmp_path, bands=bands)
    losses = model.losses(*_views(bands=bands))
    assert all(torch.isfinite(v) for v in losses.values())
    expected = losses["loss_src"] + 0.5 * losses["loss_mix"] + 0.5 * losses["loss_mm"]
    torch.testing.assert_close(losses["loss"], expected)
    # soft targets are not one-hot: the mixed contrasts cannot reach 0 (entropy of 1/2, 1/2 is log 2)
    assert float(losses["loss_mix"].detach()) > math.log(2) - 1e-4


def test_without_momentum_encoder_keys_come_from_the_online_network(tmp_path: Path) -> None:
    model = _patchmix(tmp_path, momentum_encoder=False)
    assert model.key_encoder is None
    model.eval()
    views, _ = _views()
    torch.testing.assert_close(model.key(views), model.projector(model.encoder(views)))
    assert not model.key(views).requires_grad


def test_bad_patchmix_recipes_name_their_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(GeoclError, match="needs a ViT") as error:
        _patchmix(tmp_path / "a", encoder={"name": "test_resnet"})
    assert error.value.key == "encoder.name"
    with pytest.raises(GeoclError) as error:
        _patchmix(tmp_path / "b", encoder={"name": "test_vit", "args": {"patch_size": 6, "img_size": 30}})
    assert error.value.key == "data.view_size"
    model = _patchmix(tmp_path / "c", num_mix=[5])
    # the batch size is the data module's: checked when training starts, before the first step
    monkeypatch.setattr(
        PatchMix, "trainer", property(lambda self: SimpleNamespace(datamodule=SimpleNamespace(batch_size=8)))
    )
    with pytest.raises(GeoclError) as error:
        model.on_fit_start()  # batch 8 < 2 * 5 - 1
    assert error.value.key == "data.batch_size"


def test_mix_count_is_a_function_of_seed_and_step_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _patchmix(tmp_path, num_mix=[2, 3, 4])
    draws = []
    for step in range(12):
        monkeypatch.setattr(PatchMix, "global_step", property(lambda self, step=step: step))
        torch.manual_seed(step)  # another device's global generator: must not matter
        first = model.draw_num_mix()
        torch.manual_seed(1000 + step)
        assert model.draw_num_mix() == first
        draws.append(first)
    assert set(draws) <= {2, 3, 4} and len(set(draws)) > 1


def test_a_learning_rate_warm_up_longer_than_the_budget_names_the_key_before_training(tmp_path: Path) -> None:
    # `compare --pretrain-steps 2` of recipes/patchmix.yaml (scheduler.warmup_epochs 1): lightly's schedule
    # would stop with "Warmup steps 6 must be <= max_steps", naming nothing
    model = _patchmix(tmp_path)
    model.scheduler_config = model.scheduler_config.model_copy(update={"warmup_epochs": 1})
    data = SimpleNamespace(dataset=range(48), batch_size=8)
    model._trainer = SimpleNamespace(estimated_stepping_batches=2, max_epochs=-1, datamodule=data, world_size=1)
    with pytest.raises(GeoclError) as caught:
        model.configure_optimizers()
    assert caught.value.key == "scheduler.warmup_epochs"
    assert "1 epoch of learning-rate warm-up is 6 optimizer steps (6 an epoch)" in str(caught.value)
    assert "budget of 2 steps" in str(caught.value)
    model._trainer = SimpleNamespace(estimated_stepping_batches=6, max_epochs=-1, datamodule=data, world_size=1)
    assert model.configure_optimizers()["lr_scheduler"]["scheduler"].warmup_epochs == 6  # a warm-up that fits
