"""Pretraining methods, registered by name: a recipe's ``method.name`` selects one.

The built-in methods are declared here, in :data:`BUILTIN_METHODS`: this module runs
before any module of the package (Python imports a package before its modules), so
whoever imports any part of :mod:`geocl.methods` finds them registered, and
:func:`load_recipe` validates their recipe sections whatever was imported first. A new
built-in method is one module with ``@register_method("<name>")`` and one entry here.

SPPS is not a method of its own but a plug-in of simclr and moco (``method.spps``).
FBA is no pretraining: a semi-supervised segmentation that ``geocl compare`` trains at
every row; ``fba-pretrain`` is its label-free contrast as a pretraining method.
"""

from __future__ import annotations

from geocl.methods.base import CHECKPOINT_KEY, PretrainMethod, parameters_model
from geocl.methods.fba import FBA
from geocl.methods.fba_pretrain import FBAPretrain
from geocl.methods.grass import GraSS
from geocl.methods.moco import MoCo
from geocl.methods.multinet import MultiNet
from geocl.methods.patchmix import PatchMix
from geocl.methods.registry import (
    METHODS,
    build_method,
    load_recipe,
    method_class,
    read_saved_recipe,
    register_method,
    todays_recipe,
)
from geocl.methods.retrieval import Retrieval
from geocl.methods.simclr import SimCLR

#: The built-in methods, each registered under its ``name`` by ``@register_method``.
BUILTIN_METHODS: tuple[type[PretrainMethod], ...] = (
    SimCLR,
    MoCo,
    GraSS,
    MultiNet,
    PatchMix,
    Retrieval,
    FBA,
    FBAPretrain,
)

__all__ = [
    "BUILTIN_METHODS",
    "CHECKPOINT_KEY",
    "FBA",
    "METHODS",
    "FBAPretrain",
    "GraSS",
    "MoCo",
    "MultiNet",
    "PatchMix",
    "PretrainMethod",
    "Retrieval",
    "SimCLR",
    "build_method",
    "load_recipe",
    "method_class",
    "parameters_model",
    "read_saved_recipe",
    "todays_recipe",
    "register_method",
]
