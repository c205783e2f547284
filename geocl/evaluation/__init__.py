"""Downstream evaluation of pretrained encoders: the protocol and its implementations.

:mod:`geocl.evaluation.protocol` is the interface ``geocl compare`` and the report use;
:class:`~geocl.evaluation.segmentation.SegmentationFinetune` (tile sets: mIoU after
finetuning) and :class:`~geocl.evaluation.natural.KnnProbe` (natural images: kNN and
linear-probe top-1) register on importing this package. The numerical parts (kNN,
linear probe, features, :func:`run_evaluation`) pull in torch and lightly, so they are
imported on first use of their names.
"""

from __future__ import annotations

import importlib
from typing import Any

from geocl.evaluation.medical import MedicalDice
from geocl.evaluation.natural import KnnProbe
from geocl.evaluation.protocol import (
    ALL_LABELS,
    Evaluation,
    Measurement,
    Subset,
    evaluation_for,
    evaluation_names,
    get_evaluation,
    register_evaluation,
)
from geocl.evaluation.retrieval import TextRetrieval
from geocl.evaluation.segmentation import FrozenLinearProbe, SegmentationFinetune

#: Names imported on first use -> their module.
_LAZY = {
    "EVALUATION_FILE": "geocl.evaluation.evaluate",
    "EvaluationResult": "geocl.evaluation.evaluate",
    "run_evaluation": "geocl.evaluation.evaluate",
    "embed_labelled": "geocl.evaluation.features",
    "load_checkpoint_encoder": "geocl.models.encoders",
    "knn_classify": "geocl.evaluation.knn",
    "knn_top1": "geocl.evaluation.knn",
    "LinearProbe": "geocl.evaluation.linear_probe",
    "linear_probe_top1": "geocl.evaluation.linear_probe",
    "top1_accuracy": "geocl.evaluation.linear_probe",
    "train_linear_probe": "geocl.evaluation.linear_probe",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ALL_LABELS",
    "Evaluation",
    "FrozenLinearProbe",
    "KnnProbe",
    "Measurement",
    "MedicalDice",
    "SegmentationFinetune",
    "Subset",
    "TextRetrieval",
    "evaluation_for",
    "evaluation_names",
    "get_evaluation",
    "register_evaluation",
    *_LAZY,
]
