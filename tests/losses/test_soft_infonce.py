"""Soft-target InfoNCE: against a naive loop, against cross-entropy for one-hot targets, DDP against one process."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geocl.losses import SoftTargetInfoNCELoss
from geocl.transforms.patchmix import dense_targets
from tests.distributed import run_distributed


def naive_soft_infonce(queries: torch.Tensor, keys: torch.Tensor, targets: torch.Tensor, temperature: float) -> float:
    """The spec's formula, query by query, in float64."""
    q = F.normalize(queries.double(), dim=1)
    k = F.normalize(keys.double(), dim=1)
    total = 0.0
    for i in range(len(q)):
        logits = [float(q[i] @ k[j]) / temperature for j in range(len(k))]
        norm = math.log(sum(math.exp(v) for v in logits))
        total -= sum(float(targets[i, j]) * (logits[j] - norm) for j in range(len(k)))
    return total / len(q)


def _soft_targets(n: int, g: int, seed: int) -> torch.Tensor:
    weights = torch.rand(n, g, generator=torch.Generator().manual_seed(seed)) ** 3
    return weights / weights.sum(1, keepdim=True)


@pytest.mark.parametrize("temperature", [0.2, 0.5])
def test_soft_infonce_equals_naive_loop(temperature: float) -> None:
    generator = torch.Generator().manual_seed(3)
    queries, keys = torch.randn(6, 16, generator=generator), torch.randn(6, 16, generator=generator)
    targets = _soft_targets(6, 6, 4)
    loss = SoftTargetInfoNCELoss(temperature)(queries, keys, targets)
    assert float(loss) == pytest.approx(naive_soft_infonce(queries, keys, targets, temperature), abs=1e-5)


def test_one_hot_targets_give_cross_entropy_and_keys_get_no_gradient() -> None:
    generator = torch.Generator().manual_seed(5)
    queries = torch.randn(5, 8, generator=generator, requires_grad=True)
    keys = torch.randn(5, 8, generator=generator, requires_grad=True)
    loss = SoftTargetInfoNCELoss(0.2)(queries, keys, torch.eye(5))
    logits = F.normalize(queries, dim=1) @ F.normalize(keys, dim=1).T / 0.2
    torch.testing.assert_close(loss, F.cross_entropy(logits, torch.arange(5)))
    loss.backward()
    assert keys.grad is None and queries.grad is not None and queries.grad.abs().sum() > 0


def test_targets_must_match_the_gathered_keys() -> None:
    with pytest.raises(ValueError, match="do not match"):
        SoftTargetInfoNCELoss()(torch.randn(4, 8), torch.randn(4, 8), torch.eye(4, 8))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 8))


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    # targets within each half (a device's own mixing) as PatchMix makes them
    blocks = [_soft_targets(4, 4, 10), _soft_targets(4, 4, 11)]
    return torch.randn(8, 10, generator=generator), torch.randn(8, 10, generator=generator), torch.stack(blocks)


def _ddp_worker(rank: int, world: int, out: Path) -> None:
    model = nn.parallel.DistributedDataParallel(_model())
    view_q, view_k, blocks = _data()
    rows = slice(rank * 4, (rank + 1) * 4)
    with torch.no_grad():
        keys = model.module(view_k[rows])
    loss = SoftTargetInfoNCELoss(0.2)(model(view_q[rows]), keys, dense_targets(blocks[rank], rank, world))
    loss.backward()
    torch.save({"loss": loss.detach(), "grads": [p.grad.clone() for p in model.parameters()]}, out / f"rank{rank}.pt")


@pytest.mark.slow  # two processes; tests/losses/test_ntxent.py keeps the gathered-batch check in the default suite
def test_two_gloo_processes_match_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    ranks = run_distributed(_ddp_worker, world=2, out=tmp_path)

    model = _model()
    view_q, view_k, blocks = _data()
    targets = torch.block_diag(blocks[0], blocks[1])
    with torch.no_grad():
        keys = model(view_k)
    loss = SoftTargetInfoNCELoss(0.2, gather_distributed=False)(model(view_q), keys, targets)
    loss.backward()

    assert float(sum(r["loss"] for r in ranks) / 2) == pytest.approx(float(loss.detach()), abs=1e-6)
    for rank in ranks:
        for ddp_grad, param in zip(rank["grads"], model.parameters(), strict=True):
            torch.testing.assert_close(ddp_grad, param.grad, atol=1e-6, rtol=1e-5)
