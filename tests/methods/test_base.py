"""The shared optimizer schedule of the pretraining methods."""

from __future__ import annotations

import warnings

import pytest
import torch
from lightly.utils.scheduler import cosine_warmup_schedule

from geocl.methods.base import BudgetCosineScheduler

BASE_LR = 0.5


def _run(max_steps: int, steps: int, warmup: int = 1) -> tuple[torch.optim.Optimizer, BudgetCosineScheduler]:
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=BASE_LR, momentum=0.9)
    scheduler = BudgetCosineScheduler(optimizer, warmup_epochs=warmup, max_epochs=max_steps)
    for _ in range(steps):
        weight.grad = torch.ones(2)
        optimizer.step()
        scheduler.step()
    return optimizer, scheduler


def _resume(saved: tuple[torch.optim.Optimizer, BudgetCosineScheduler], max_steps: int) -> BudgetCosineScheduler:
    """Restore as Lightning does: a fresh optimizer and schedule, the optimizer's state first."""
    optimizer, scheduler = _run(max_steps, steps=0)
    optimizer.load_state_dict(saved[0].state_dict())
    scheduler.load_state_dict(saved[1].state_dict())
    return scheduler


def _expected(step: int, max_steps: int, warmup: int = 1) -> float:
    return BASE_LR * cosine_warmup_schedule(step, max_steps, 1.0, 0.001, warmup, 0.0)


def test_a_run_resumed_with_a_larger_budget_follows_the_schedule_of_that_budget() -> None:
    saved = _run(max_steps=4, steps=4)
    assert saved[0].param_groups[0]["lr"] == pytest.approx(BASE_LR * 0.001)  # the old schedule has ended
    scheduler = _resume(saved, max_steps=10)
    assert scheduler.max_epochs == 10
    rates = [scheduler.optimizer.param_groups[0]["lr"]]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # lightly warns when a step passes the schedule's end
        for _ in range(5):
            scheduler.optimizer.step()
            scheduler.step()
            rates.append(scheduler.optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([_expected(step, 10) for step in range(4, 10)])
    assert rates[0] > 0.5 * BASE_LR


def test_a_run_resumed_with_the_same_budget_is_unchanged() -> None:
    saved = _run(max_steps=8, steps=3)
    before = saved[0].param_groups[0]["lr"]
    scheduler = _resume(saved, max_steps=8)
    assert scheduler.optimizer.param_groups[0]["lr"] == before == pytest.approx(_expected(3, 8))
    assert scheduler.get_last_lr() == [before]
