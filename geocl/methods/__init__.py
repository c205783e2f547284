"""Pretraining methods, registered by name: a recipe's ``method.name`` selects one."""

from __future__ import annotations

from geocl.errors import GeoclError
from geocl.methods.base import CHECKPOINT_KEY, PretrainMethod
from geocl.methods.grass import GraSS, GraSSConfig
from geocl.methods.simclr import SimCLR, SimCLRConfig
from geocl.recipes import register_method_config

METHODS: dict[str, type[PretrainMethod]] = {"simclr": SimCLR, "grass": GraSS}

for _name, _method in METHODS.items():
    register_method_config(_name, _method.config_class)


def method_class(name: str) -> type[PretrainMethod]:
    """The Lightning module class registered under ``name``."""
    try:
        return METHODS[name]
    except KeyError:
        raise GeoclError(f"unknown method {name!r}; known: {', '.join(METHODS)}", key="method.name") from None


__all__ = [
    "CHECKPOINT_KEY",
    "METHODS",
    "GraSS",
    "GraSSConfig",
    "PretrainMethod",
    "SimCLR",
    "SimCLRConfig",
    "method_class",
]
