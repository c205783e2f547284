"""MNCLGLF: targets and losses against independent references, gradient paths, EMA, queue, a smoke run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

import geocl.methods  # noqa: F401  (registers the methods)
from geocl.errors import GeoclError
from geocl.methods import CHECKPOINT_KEY, MultiNet, build_method, load_recipe
from geocl.training.pretrain import run_pretrain
from tests.conftest import write_recipe
from tests.distributed import run_distributed
from tests.losses.test_ntxent import naive_ntxent

SMALL = {"name": "multinet", "hidden_dim": 32, "output_dim": 16, "predictor_hidden_dim": 8, "queue_size": 64}
BATCH, SIZE = 4, 32


def _multinet(tmp_path: Path, in_chans: int = 4, **method: object) -> MultiNet:
    recipe = load_recipe(write_recipe(tmp_path, tmp_path / "tiles", {**SMALL, **method}))
    torch.manual_seed(0)
    stats = {"mean": [0.0] * in_chans, "std": [1.0] * in_chans}
    return build_method(recipe, in_chans, stats)


def _views(count: int = 3, in_chans: int = 4, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(BATCH, in_chans, SIZE, SIZE, generator=generator) for _ in range(count)]


def _perturb_online(model: MultiNet) -> None:
    """Make the online weights differ from their momentum copies (as after some optimiser steps)."""
    with torch.no_grad():
        for param in [*model.encoder.parameters(), *model.projector.parameters()]:
            param.add_(torch.randn_like(param) * 0.1)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_global_term_equals_naive_2b_anchor_loop(tmp_path: Path, temperature: float) -> None:
    model = _multinet(tmp_path, global_temperature=temperature)
    generator = torch.Generator().manual_seed(2)
    p1, p3, n1, n3 = (torch.randn(BATCH, 16, generator=generator) for _ in range(4))
    expected = 0.5 * naive_ntxent(n3, p1, temperature) + 0.5 * naive_ntxent(n1, p3, temperature)
    assert float(model.global_loss(p1, p3, n1, n3)) == pytest.approx(expected, abs=1e-5)


def test_local_term_is_the_mean_of_both_directions_over_six_combinations(tmp_path: Path) -> None:
    model = _multinet(tmp_path)
    generator = torch.Generator().manual_seed(3)
    p1, p2 = torch.randn(BATCH, 16, generator=generator), torch.randn(BATCH, 16, generator=generator)
    c1, c2 = torch.randn(6 * BATCH, 16, generator=generator), torch.randn(6 * BATCH, 16, generator=generator)
    criterion = model.local_criterion
    by_hand = (
        sum(float(criterion(p, c[k * BATCH : (k + 1) * BATCH])) for p, c in ((p2, c1), (p1, c2)) for k in range(6)) / 12
    )
    assert float(model.local_loss(p1, p2, c1, c2)) == pytest.approx(by_hand, abs=1e-6)


def test_eval_mode_local_targets_equal_a_per_image_pair_loop(tmp_path: Path) -> None:
    model = _multinet(tmp_path, tile_batch_norm="eval")
    model.train()
    (views,) = _views(1)
    targets = model.local_targets(views)
    assert targets.shape == (6 * BATCH, 16) and not targets.requires_grad
    model.eval()
    half = SIZE // 2
    # column-major tiles: k = col * 2 + row
    windows = [(slice(r * half, (r + 1) * half), slice(c * half, (c + 1) * half)) for c in range(2) for r in range(2)]
    pairs = [(a, b) for a in range(4) for b in range(a + 1, 4)]
    with torch.no_grad():
        for j, (a, b) in enumerate(pairs):
            for i in range(BATCH):
                tile_a = views[i : i + 1, :, windows[a][0], windows[a][1]]
                tile_b = views[i : i + 1, :, windows[b][0], windows[b][1]]
                mean = (model.encoder(tile_a) + model.encoder(tile_b)) / 2
                torch.testing.assert_close(targets[j * BATCH + i], model.projector(mean)[0], atol=1e-5, rtol=1e-4)


def _running_stats(model: MultiNet) -> list[torch.Tensor]:
    return [model.encoder.body.bn1.running_mean.clone(), model.projector.layers[1].running_mean.clone()]


def test_batch_mode_tile_pass_uses_batch_statistics_and_leaves_running_statistics(tmp_path: Path) -> None:
    model = _multinet(tmp_path)
    model.train()
    (views,) = _views(1)
    before = _running_stats(model)
    batch_targets = model.local_targets(views)
    for now, then in zip(_running_stats(model), before, strict=True):
        assert torch.equal(now, then)
    model.params = model.params.model_copy(
        update={"tile_batch_norm": "train"}
    )  # as released: same outputs, running stats move
    torch.testing.assert_close(model.local_targets(views), batch_targets)
    assert not torch.equal(_running_stats(model)[0], before[0])
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_no_gradient_reaches_momentum_network_queue_or_tile_pass(tmp_path: Path) -> None:
    model = _multinet(tmp_path)
    model.train()
    local, global_ = model.losses(*_views())
    (local + 6 * global_).backward()
    momentum = [*model.momentum_encoder.parameters(), *model.momentum_projector.parameters()]
    assert momentum and all(not p.requires_grad and p.grad is None for p in momentum)
    assert not model.support.bank.requires_grad and model.support.bank.grad is None
    assert not model.local_targets(_views(1)[0]).requires_grad
    assert all(p.grad is not None for p in model.predictor.parameters())
    model.scheduler_config = model.scheduler_config.model_copy(
        update={"name": "none"}
    )  # the optimiser alone, no trainer needed
    optimised = {id(p) for group in model.configure_optimizers().param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in momentum} and {id(p) for p in model.predictor.parameters()} <= optimised


def test_local_term_alone_trains_predictor_and_backbone(tmp_path: Path) -> None:
    model = _multinet(tmp_path)
    model.train()
    local, _ = model.losses(*_views())
    local.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.predictor.parameters())
    backbone = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert backbone and sum(float(g.abs().sum()) for g in backbone) > 0


def _momentum_pairs(model: MultiNet) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(momentum parameter, online parameter) of the encoder and the projector, matched by name."""
    pairs = []
    for momentum, online in ((model.momentum_encoder, model.encoder), (model.momentum_projector, model.projector)):
        named = dict(online.named_parameters())
        pairs += [(param, named[name]) for name, param in momentum.named_parameters()]
    return pairs


def test_one_ema_step_and_the_predictor_has_no_copy(tmp_path: Path) -> None:
    model = _multinet(tmp_path, momentum=0.9)
    _perturb_online(model)
    pairs = _momentum_pairs(model)
    old = [momentum.clone() for momentum, _ in pairs]
    predictor = [p.clone() for p in model.predictor.parameters()]
    model.update_momentum_network()
    for (momentum, online), before in zip(pairs, old, strict=True):
        expected = 0.9 * before.double() + 0.1 * online.detach().double()
        torch.testing.assert_close(momentum.double(), expected, atol=1e-7, rtol=1e-6)
    online_count = len([*model.encoder.parameters(), *model.projector.parameters()])
    assert len(pairs) == online_count  # the EMA covers encoder + projector exactly
    momentum_names = {n for n, _ in model.named_parameters() if n.startswith("momentum_")}
    assert len(momentum_names) == online_count and not any("predictor" in n for n in momentum_names)
    for now, then in zip(model.predictor.parameters(), predictor, strict=True):
        assert torch.equal(now, then)


def test_ema_happens_before_the_targets_of_a_step(tmp_path: Path) -> None:
    model = _multinet(tmp_path, momentum=0.5)
    _perturb_online(model)
    old = [p.clone() for p in model.momentum_encoder.parameters()]
    model.losses(*_views())
    for now, then, param in zip(model.momentum_encoder.parameters(), old, model.encoder.parameters(), strict=True):
        torch.testing.assert_close(now, 0.5 * then + 0.5 * param.detach(), atol=1e-7, rtol=1e-6)


def test_neighbours_are_queue_rows_found_by_brute_force_before_j3_is_enqueued(tmp_path: Path) -> None:
    model = _multinet(tmp_path)
    model.train()
    queue = model.support.bank.clone()
    view_1, view_3 = _views(2)
    torch.manual_seed(5)
    neighbour_1, neighbour_3 = model.global_targets(view_1, view_3)
    # the same momentum embeddings, recomputed for the reference (train-mode BN: same batch, same output)
    with torch.no_grad():
        j1 = model.momentum_projector(model.momentum_encoder(view_1))
        j3 = model.momentum_projector(model.momentum_encoder(view_3))
    for embeddings, neighbours in ((j1, neighbour_1), (j3, neighbour_3)):
        for row, neighbour in zip(embeddings, neighbours, strict=True):
            cosines = [float(torch.nn.functional.cosine_similarity(row, entry, dim=0)) for entry in queue]
            assert torch.equal(neighbour, queue[max(range(len(cosines)), key=cosines.__getitem__)])
    assert int(model.support.bank_ptr) == BATCH
    torch.testing.assert_close(model.support.bank[:BATCH], j3)  # only j3 was enqueued, raw
    assert torch.equal(model.support.bank[BATCH:], queue[BATCH:])
    assert "support.bank" in model.state_dict()  # the queue travels with checkpoints


def _queue_worker(rank: int, world: int, out: Path) -> None:
    torch.manual_seed(0)
    from lightly.models.modules import NNMemoryBankModule

    support = NNMemoryBankModule(size=(10, 3))
    support.gather_distributed = True  # as MultiNet sets it
    rows = torch.arange(12.0).reshape(4, 3)
    support(rows[rank * 2 : (rank + 1) * 2], update=True)
    torch.save(support.bank.clone(), out / f"rank{rank}.pt")


@pytest.mark.slow  # spawning two processes that import geocl.methods: ~30 s on 2 shared cores
def test_queue_is_the_same_on_every_device_as_with_the_whole_batch(tmp_path: Path) -> None:
    banks = run_distributed(_queue_worker, world=2, out=tmp_path)
    assert torch.equal(banks[0], banks[1])
    assert torch.equal(banks[0][:4], torch.arange(12.0).reshape(4, 3))


@pytest.mark.parametrize("in_chans", [3, 4, 13])
def test_any_band_count_gives_finite_losses_and_spec_shapes(tmp_path: Path, in_chans: int) -> None:
    model = _multinet(tmp_path, in_chans=in_chans)
    model.train()
    views = _views(in_chans=in_chans)
    assert model.predictions(views[0]).shape == (BATCH, 16)
    assert model.local_targets(views[0]).shape == (6 * BATCH, 16)
    assert model.support.bank.shape == (64, 16)
    local, global_ = model.losses(*views)
    assert torch.isfinite(local) and torch.isfinite(global_)
    assert float(local.detach()) > 0 and float(global_.detach()) > 0


@pytest.mark.parametrize(
    ("method", "key"),
    [
        ({"splits": 3}, "method.splits"),  # 32 px views do not split in 3
        ({"combs": 5}, "method.combs"),
        ({"momentum": 1.5}, "method.momentum"),
        ({"queue_size": 0}, "method.queue_size"),
        ({"local_temperature": 0.0}, "method.local_temperature"),
        ({"tile_batch_norm": "sync"}, "method.tile_batch_norm"),
    ],
)
def test_bad_parameters_name_their_key(tmp_path: Path, method: dict, key: str) -> None:
    with pytest.raises(GeoclError, match=key):
        _multinet(tmp_path, **method)


def test_pretrain_smoke_run_writes_a_checkpoint_with_encoder_weights(tmp_path: Path, tiny_tiles: Path) -> None:
    path = write_recipe(
        tmp_path, tiny_tiles, SMALL, data={"batch_size": 4}, trainer={"max_epochs": 1, "limit_train_batches": 2}
    )
    with pytest.warns(UserWarning, match="method.queue_size"):
        result = run_pretrain(load_recipe(path))
    assert result.global_step == 2
    checkpoint = torch.load(result.checkpoint, weights_only=False)
    assert checkpoint[CHECKPOINT_KEY]["method"] == "multinet"
    state = checkpoint["state_dict"]
    assert any(key.startswith("encoder.body.") for key in state)
    assert any(key.startswith("momentum_encoder.") for key in state) and "support.bank" in state
    metrics = pd.concat(pd.read_csv(p) for p in (result.out / "logs").glob("version_*/metrics.csv"))
    assert {"train/loss_step", "train/loss_local_step", "train/loss_global_step"} <= set(metrics.columns)
