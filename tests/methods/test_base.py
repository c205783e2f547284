"""What every pretraining method shares: the optimizer schedule, its fit to the budget, warm-up stages."""

from __future__ import annotations

import warnings

import pytest
import torch
from lightly.utils.scheduler import cosine_warmup_schedule

import geocl.methods  # noqa: F401  (registers the methods)
from geocl.errors import GeoclError
from geocl.methods.base import BudgetCosineScheduler, WarmUp, check_warmup_fits, parameters_model, steps_per_epoch
from geocl.methods.registry import METHODS

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


def test_an_epoch_is_the_full_batches_of_one_device_and_at_least_one_step() -> None:
    assert steps_per_epoch(48, 8) == 6 and steps_per_epoch(50, 8) == 6
    assert steps_per_epoch(48, 8, world_size=2) == 3
    assert steps_per_epoch(5, 8) == 1  # fewer images than a batch: one short batch


def test_a_learning_rate_warm_up_must_fit_in_the_budget() -> None:
    check_warmup_fits(1, 6, 6)
    check_warmup_fits(0, 6, 1)
    with pytest.raises(GeoclError) as caught:
        check_warmup_fits(2, 6, 10)
    assert caught.value.key == "scheduler.warmup_epochs"
    assert str(caught.value).startswith(
        "scheduler.warmup_epochs: 2 epochs of learning-rate warm-up are 12 optimizer steps"
    )
    assert "budget of 10 steps" in str(caught.value)


@pytest.mark.parametrize(
    ("method", "params", "expected"),
    [
        ("grass", {"warmup_epochs": 2}, WarmUp(2, "method.warmup_epochs", "simclr")),
        ("grass", {"warmup_epochs": 0}, None),
        (
            "simclr",
            {"spps": {"enabled": True, "warmup_epochs": 3}},
            WarmUp(3, "method.spps.warmup_epochs", "simclr without spps"),
        ),
        (
            "moco",
            {"spps": {"enabled": True, "warmup_epochs": 2}},
            WarmUp(2, "method.spps.warmup_epochs", "moco without spps"),
        ),
        ("moco", {"spps": {"enabled": True, "warmup_epochs": 2, "checkpoint": "mine.ckpt"}}, None),  # mines at once
        ("simclr", {"spps": {"enabled": False, "warmup_epochs": 3}}, None),
    ],
)
def test_methods_declare_the_warm_up_before_their_own_stage(method: str, params: dict, expected: WarmUp | None) -> None:
    cls = METHODS[method]
    assert cls.warm_up(parameters_model(cls)(**params)) == expected


def test_every_method_without_a_warm_up_parameter_trains_as_itself_from_the_first_step() -> None:
    for name, cls in METHODS.items():
        stage = cls.warm_up(parameters_model(cls)())
        if name == "grass":  # its default: one epoch of SimCLR
            assert stage == WarmUp(1, "method.warmup_epochs", "simclr")
        else:
            assert stage is None, name
