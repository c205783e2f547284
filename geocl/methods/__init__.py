"""Pretraining methods, registered by name: a recipe's ``method.name`` selects one."""

from __future__ import annotations

from geocl.errors import GeoclError
from geocl.methods.base import CHECKPOINT_KEY, PretrainMethod
from geocl.methods.grass import GraSS, GraSSConfig
from geocl.methods.moco import MoCo, MoCoConfig
from geocl.methods.multinet import MultiNet, MultiNetConfig
from geocl.methods.patchmix import PatchMix, PatchMixConfig
from geocl.methods.simclr import SimCLR, SimCLRConfig
from geocl.recipes import register_method_config

#: Method name -> Lightning module. SPPS is not a method of its own but a plug-in of
#: simclr and moco (``method.spps``).
METHODS: dict[str, type[PretrainMethod]] = {
    "simclr": SimCLR,
    "grass": GraSS,
    "moco": MoCo,
    "multinet": MultiNet,
    "patchmix": PatchMix,
}

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
    "MoCo",
    "MoCoConfig",
    "MultiNet",
    "MultiNetConfig",
    "PatchMix",
    "PatchMixConfig",
    "PretrainMethod",
    "SimCLR",
    "SimCLRConfig",
    "method_class",
]
