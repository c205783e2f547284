"""Local InfoNCE: against a per-sample loop, its gradient path, and DDP against one process."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geocl.losses import LocalInfoNCELoss
from tests.distributed import run_distributed


def naive_local_infonce(predictions: torch.Tensor, targets: torch.Tensor, temperature: float) -> float:
    """Spec formula, anchor by anchor: mean over (combo c, image i) of -log softmax_k(p_i · c_{c,k} / T)[i]."""
    p = F.normalize(predictions.double(), dim=1)
    c = F.normalize(targets.double(), dim=1)
    batch = len(p)
    blocks = len(c) // batch
    total = 0.0
    for block in range(blocks):
        for i in range(batch):
            scores = [float(p[i] @ c[block * batch + k]) / temperature for k in range(batch)]
            total += -(scores[i] - math.log(sum(math.exp(s) for s in scores)))
    return total / (blocks * batch)


@pytest.mark.parametrize(("temperature", "blocks"), [(1.0, 6), (0.2, 6), (0.5, 1)])
def test_local_infonce_equals_naive_loop(temperature: float, blocks: int) -> None:
    generator = torch.Generator().manual_seed(0)
    predictions = torch.randn(5, 12, generator=generator)
    targets = torch.randn(blocks * 5, 12, generator=generator)
    loss = LocalInfoNCELoss(temperature=temperature)(predictions, targets)
    assert float(loss) == pytest.approx(naive_local_infonce(predictions, targets, temperature), abs=1e-5)


def test_gradient_reaches_predictions_only() -> None:
    generator = torch.Generator().manual_seed(1)
    predictions = torch.randn(4, 8, generator=generator, requires_grad=True)
    targets = torch.randn(24, 8, generator=generator, requires_grad=True)
    LocalInfoNCELoss()(predictions, targets).backward()
    assert predictions.grad is not None and predictions.grad.abs().sum() > 0
    assert targets.grad is None  # stop-gradient even when the caller's targets carry a graph


def test_matching_orthogonal_targets_fall_toward_zero_as_temperature_falls() -> None:
    targets = torch.eye(4).repeat(6, 1)  # 6 identical blocks, image i's target = e_i
    predictions = torch.eye(4)
    losses = [float(LocalInfoNCELoss(temperature=t)(predictions, targets)) for t in (1.0, 0.5, 0.1, 0.02)]
    assert all(a > b for a, b in zip(losses, losses[1:], strict=False)) and losses[-1] < 1e-6


def test_refuses_targets_that_are_not_blocks_of_the_batch() -> None:
    with pytest.raises(ValueError, match="blocks of 4"):
        LocalInfoNCELoss()(torch.randn(4, 3), torch.randn(10, 3))


BATCH, BLOCKS = 8, 6


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 8))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(BATCH, 10, generator=generator)
    targets = torch.randn(BLOCKS, BATCH, 8, generator=generator)  # block k, image i
    return inputs, targets


def _ddp_worker(rank: int, world: int, out: Path) -> None:
    model = nn.parallel.DistributedDataParallel(_model())
    inputs, targets = _data()
    rows = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    # this rank's images, still laid out as blocks of its own batch
    local_targets = targets[:, rows].reshape(-1, 8)
    loss = LocalInfoNCELoss(temperature=0.5, gather_distributed=True)(model(inputs[rows]), local_targets)
    loss.backward()
    torch.save({"loss": loss.detach(), "grads": [p.grad.clone() for p in model.parameters()]}, out / f"rank{rank}.pt")


@pytest.mark.slow  # two processes; tests/losses/test_ntxent.py keeps the gathered-batch check in the default suite
def test_two_gloo_processes_match_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    ranks = run_distributed(_ddp_worker, world=2, out=tmp_path)

    model = _model()
    inputs, targets = _data()
    loss = LocalInfoNCELoss(temperature=0.5)(model(inputs), targets.reshape(-1, 8))
    loss.backward()

    assert float(sum(r["loss"] for r in ranks) / 2) == pytest.approx(float(loss.detach()), abs=1e-6)
    for rank in ranks:
        for ddp_grad, param in zip(rank["grads"], model.parameters(), strict=True):
            torch.testing.assert_close(ddp_grad, param.grad, atol=1e-6, rtol=1e-5)
