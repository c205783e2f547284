"""Momentum copies: equal at first, independent afterwards, never trained."""

from __future__ import annotations

import torch
from lightly.models.utils import update_momentum
from torch import nn

from geocl.models import frozen_copy


def test_frozen_copy_starts_equal_takes_no_gradient_and_follows_only_the_ema() -> None:
    online = nn.Linear(3, 2)
    twin = frozen_copy(online)
    assert all(torch.equal(a, b) for a, b in zip(online.parameters(), twin.parameters(), strict=True))
    assert not any(p.requires_grad for p in twin.parameters())
    assert all(p.requires_grad for p in online.parameters())  # the online module is untouched

    before = twin.weight.clone()
    with torch.no_grad():
        online.weight.add_(1.0)  # a training step of the online module alone
    assert torch.equal(twin.weight, before)  # separate storage
    update_momentum(online, twin, 0.9)
    torch.testing.assert_close(twin.weight, 0.9 * before + 0.1 * online.weight)
