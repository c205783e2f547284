"""NT-Xent (lightly's, as geocl uses it): against a naive loop, and DDP against one process."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geocl.losses import NTXentLoss
from tests.distributed import run_distributed


def naive_ntxent(z0: torch.Tensor, z1: torch.Tensor, temperature: float) -> float:
    """The spec's formula, anchor by anchor: -mean_i log(pos_i / (pos_i + neg_i)) over 2N anchors."""
    z = F.normalize(torch.cat([z0, z1]), dim=1).double()
    n = len(z0)
    total = 0.0
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        pos = math.exp(float(z[i] @ z[partner]) / temperature)
        neg = sum(math.exp(float(z[i] @ z[j]) / temperature) for j in range(2 * n) if j not in (i, partner))
        total += -math.log(pos / (pos + neg))
    return total / (2 * n)


@pytest.mark.parametrize("temperature", [0.5, 0.1])
def test_ntxent_equals_naive_loop(temperature: float) -> None:
    generator = torch.Generator().manual_seed(3)
    z0, z1 = torch.randn(6, 16, generator=generator), torch.randn(6, 16, generator=generator)
    loss = NTXentLoss(temperature=temperature, gather_distributed=True)(z0, z1)
    assert float(loss) == pytest.approx(naive_ntxent(z0, z1, temperature), abs=1e-5)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 8))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, 10, generator=generator), torch.randn(8, 10, generator=generator)


def _ddp_worker(rank: int, world: int, out: Path) -> None:
    model = nn.parallel.DistributedDataParallel(_model())
    view_a, view_b = _data()
    rows = slice(rank * 8 // world, (rank + 1) * 8 // world)
    criterion = NTXentLoss(temperature=0.5, gather_distributed=True)
    loss = criterion(model(view_a[rows]), model(view_b[rows]))
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    torch.save({"loss": loss.detach(), "grads": grads}, out / f"rank{rank}.pt")


def test_two_gloo_processes_match_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    ranks = run_distributed(_ddp_worker, world=2, out=tmp_path)

    model = _model()
    view_a, view_b = _data()
    loss = NTXentLoss(temperature=0.5)(model(view_a), model(view_b))
    loss.backward()

    # each rank's loss averages its own anchors over all negatives; their mean is the global loss
    assert float(sum(r["loss"] for r in ranks) / 2) == pytest.approx(float(loss), abs=1e-6)
    for rank in ranks:  # DDP averages gradients, so every rank holds the global gradient
        for ddp_grad, param in zip(rank["grads"], model.parameters(), strict=True):
            torch.testing.assert_close(ddp_grad, param.grad, atol=1e-6, rtol=1e-5)
