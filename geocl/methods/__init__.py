"""Pretraining methods, registered by name: a recipe's ``method.name`` selects one.

SPPS is not a method of its own but a plug-in of simclr and moco (``method.spps``).
FBA is no pretraining: a semi-supervised segmentation that ``geocl compare`` trains at every row.
"""

from __future__ import annotations

from geocl.methods.base import CHECKPOINT_KEY, PretrainMethod
from geocl.methods.fba import FBA
from geocl.methods.grass import GraSS
from geocl.methods.moco import MoCo
from geocl.methods.multinet import MultiNet
from geocl.methods.patchmix import PatchMix
from geocl.methods.registry import METHODS, build_method, method_class, parameters_model, register_method
from geocl.methods.retrieval import Retrieval
from geocl.methods.simclr import SimCLR

__all__ = [
    "CHECKPOINT_KEY",
    "FBA",
    "METHODS",
    "GraSS",
    "MoCo",
    "MultiNet",
    "PatchMix",
    "PretrainMethod",
    "Retrieval",
    "SimCLR",
    "build_method",
    "method_class",
    "parameters_model",
    "register_method",
]
