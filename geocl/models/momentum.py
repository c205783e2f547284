"""Momentum (EMA) copies of networks, as MoCo, PatchMix and MultiNet keep them."""

from __future__ import annotations

import copy

from lightly.models.utils import deactivate_requires_grad
from torch import nn


def frozen_copy[M: nn.Module](module: M) -> M:
    """A deep copy of ``module`` that the optimiser never updates (no parameter requires grad).

    Its weights then follow the online module only through lightly's
    ``update_momentum(online, copy, m)``: ``theta_copy <- m theta_copy + (1 - m) theta_online``.
    """
    twin = copy.deepcopy(module)
    deactivate_requires_grad(twin)
    return twin
