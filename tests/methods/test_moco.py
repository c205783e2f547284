"""MoCo v2: the queue loss against a naive loop, the EMA update, frozen keys, and DDP against one process."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F

import geocl.methods  # noqa: F401  (registers the methods)
from geocl.errors import GeoclError
from geocl.methods import MoCo, build_method, load_recipe
from tests.conftest import write_recipe
from tests.distributed import run_distributed

BAND_STATS = {"mean": [0.0] * 4, "std": [1.0] * 4}
PARAMS = {"name": "moco", "hidden_dim": 16, "output_dim": 8, "queue_size": 32, "temperature": 0.2}


def _moco(folder: Path, **method: object) -> MoCo:
    recipe = load_recipe(write_recipe(folder, folder / "tiles", {**PARAMS, **method}))
    torch.manual_seed(0)
    return build_method(recipe, 4, BAND_STATS)


def _views(n: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 32, 32, generator=generator), torch.randn(n, 4, 32, 32, generator=generator)


def naive_moco(queries: torch.Tensor, keys: torch.Tensor, queue: torch.Tensor, temperature: float) -> float:
    """-mean_i log(pos_i / (pos_i + sum_j exp(q_i . Q_j / tau))), anchor by anchor."""
    q, k, bank = (F.normalize(t.double(), dim=1) for t in (queries, keys, queue))
    total = 0.0
    for i in range(len(q)):
        pos = math.exp(float(q[i] @ k[i]) / temperature)
        neg = sum(math.exp(float(q[i] @ entry) / temperature) for entry in bank)
        total += -math.log(pos / (pos + neg))
    return total / len(q)


def test_loss_equals_naive_loop_with_the_queue_and_enqueues_the_keys(tmp_path: Path) -> None:
    model = _moco(tmp_path).eval()  # eval: outputs independent of the batch, for the reference
    view_a, view_b = _views()
    queries, keys = model.query(view_a).detach(), model.key(view_b)
    queue = model.queue.clone()
    loss = model.contrast(view_a, view_b)
    assert float(loss.detach()) == pytest.approx(naive_moco(queries, keys, queue, 0.2), abs=1e-5)
    torch.testing.assert_close(model.queue[:8], F.normalize(keys, dim=1))
    torch.testing.assert_close(model.queue[8:], queue[8:])
    # the next step contrasts against the updated queue
    view_c, view_d = _views(seed=2)
    queries, keys, queue = model.query(view_c).detach(), model.key(view_d), model.queue.clone()
    loss = model.contrast(view_c, view_d).detach()
    assert float(loss) == pytest.approx(naive_moco(queries, keys, queue, 0.2), abs=1e-5)


def test_symmetric_loss_is_the_mean_of_both_directions_against_the_same_queue(tmp_path: Path) -> None:
    model = _moco(tmp_path, symmetric=True).eval()
    view_a, view_b = _views()
    qa, qb = model.query(view_a).detach(), model.query(view_b).detach()
    ka, kb = model.key(view_a), model.key(view_b)
    queue = model.queue.clone()
    loss = model.contrast(view_a, view_b)
    expected = (naive_moco(qa, kb, queue, 0.2) + naive_moco(qb, ka, queue, 0.2)) / 2
    assert float(loss.detach()) == pytest.approx(expected, abs=1e-5)
    torch.testing.assert_close(model.queue[:16], F.normalize(torch.cat([kb, ka]), dim=1))


def test_no_gradient_reaches_the_key_network(tmp_path: Path) -> None:
    model = _moco(tmp_path).train()
    model.contrast(*_views()).backward()
    frozen = [*model.key_encoder.parameters(), *model.key_head.parameters()]
    assert frozen and all(not p.requires_grad and p.grad is None for p in frozen)
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters())


def test_one_ema_update_is_m_key_plus_one_minus_m_query(tmp_path: Path) -> None:
    model = _moco(tmp_path)
    with torch.no_grad():
        for p in [*model.encoder.parameters(), *model.head.parameters()]:
            p.add_(torch.randn_like(p))  # queries and keys now differ
    query = [p.clone() for p in [*model.encoder.parameters(), *model.head.parameters()]]
    key = [p.clone() for p in [*model.key_encoder.parameters(), *model.key_head.parameters()]]
    model.update_key_network(0.9)
    updated = [*model.key_encoder.parameters(), *model.key_head.parameters()]
    assert len(updated) == len(query)
    for new, k, q in zip(updated, key, query, strict=True):
        torch.testing.assert_close(new, 0.9 * k + 0.1 * q)


def test_momentum_is_constant_or_a_cosine_to_one(tmp_path: Path) -> None:
    constant = _moco(tmp_path / "a", momentum=0.9)
    assert constant.momentum_at(0) == constant.momentum_at(50) == pytest.approx(0.9)
    scheduled = _moco(tmp_path / "b", momentum=0.9, momentum_schedule=True)
    scheduled._trainer = SimpleNamespace(estimated_stepping_batches=10)  # only the step budget is read
    # lightly's cosine reaches its end value at the last step, max_steps - 1
    for step in (0, 3, 9, 12):
        assert scheduled.momentum_at(step) == pytest.approx(1 - 0.1 * (math.cos(math.pi * min(step, 9) / 9) + 1) / 2)


def test_queue_travels_with_the_checkpoint(tmp_path: Path) -> None:
    model = _moco(tmp_path)
    model.contrast(*_views())
    checkpoint: dict = {}
    model.on_save_checkpoint(checkpoint)
    other = _moco(tmp_path / "b")
    assert not torch.equal(other.queue, model.queue)
    other.on_load_checkpoint(checkpoint)
    assert torch.equal(other.queue, model.queue)
    assert int(other.criterion.memory_bank.bank_ptr) == 8
    assert all(key.startswith(("encoder.", "head.", "key_")) for key in model.state_dict())


def test_bad_moco_parameters_name_their_key(tmp_path: Path) -> None:
    with pytest.raises(GeoclError, match="method.queue_size"):
        _moco(tmp_path / "a", queue_size=0)
    with pytest.raises(GeoclError, match="method.momentum"):
        _moco(tmp_path / "b", momentum=1.5)
    with pytest.raises(GeoclError, match="method.spps.kk"):
        load_recipe(write_recipe(tmp_path / "c", tmp_path, {**PARAMS, "spps": {"enabled": True, "kk": 2}}))


# ------------------------------------------------------------------ DDP


def _two_steps(model: MoCo, rows: slice, world: int) -> dict:
    """Two loss steps on ``rows`` of fixed batches (no optimizer step), gradients averaged as DDP does."""
    result: dict = {"loss": [], "grads": [], "queue": []}
    for seed in (1, 2):
        view_a, view_b = _views(seed=seed)
        model.zero_grad()
        loss = model.contrast(view_a[rows], view_b[rows])
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        if world > 1:
            for grad in grads:
                torch_dist.all_reduce(grad)
                grad /= world
        result["loss"].append(loss.detach())
        result["grads"].append(grads)
        result["queue"].append(model.queue.clone())
    return result


def _ddp_worker(rank: int, world: int, out: Path) -> None:
    results = {}
    for symmetric in (False, True):
        # eval mode: BatchNorm uses running statistics, so only the loss couples the rows
        model = _moco(out / f"r{rank}{symmetric}", symmetric=symmetric, shuffle_bn=True).eval()
        results[symmetric] = _two_steps(model, slice(rank * 8 // world, (rank + 1) * 8 // world), world)
    torch.save(results, out / f"rank{rank}.pt")


@pytest.mark.slow  # two spawned processes import geocl.methods: ~50 s on 2 shared cores
def test_two_gloo_processes_match_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    ranks = run_distributed(_ddp_worker, world=2, out=tmp_path)
    for symmetric in (False, True):
        whole = _two_steps(_moco(tmp_path / f"one{symmetric}", symmetric=symmetric).eval(), slice(0, 8), 1)
        split = [rank[symmetric] for rank in ranks]
        for step in range(2):
            # each process averages its own queries; their mean is the one-process loss
            mean = float(sum(r["loss"][step] for r in split) / 2)
            assert mean == pytest.approx(float(whole["loss"][step]), abs=1e-6)
            for r in split:
                for ddp_grad, grad in zip(r["grads"][step], whole["grads"][step], strict=True):
                    torch.testing.assert_close(ddp_grad, grad, atol=1e-6, rtol=1e-5)
                if symmetric:  # the same keys, enqueued rank by rank: equal as a set of rows
                    torch.testing.assert_close(_sorted_rows(r["queue"][step]), _sorted_rows(whole["queue"][step]))
                else:  # gathered in rank order: the very same queue
                    torch.testing.assert_close(r["queue"][step], whole["queue"][step])


def _sorted_rows(queue: torch.Tensor) -> torch.Tensor:
    return queue[torch.argsort(queue[:, 0])]
