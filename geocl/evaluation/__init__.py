"""Evaluation of pretrained encoders on labelled natural images: kNN and linear-probe top-1."""

from geocl.evaluation.evaluate import EVALUATION_FILE, EvaluationResult, run_evaluation
from geocl.evaluation.features import embed_labelled, load_checkpoint_encoder
from geocl.evaluation.knn import knn_classify, knn_top1
from geocl.evaluation.linear_probe import LinearProbe, linear_probe_top1, top1_accuracy, train_linear_probe

__all__ = [
    "EVALUATION_FILE",
    "EvaluationResult",
    "LinearProbe",
    "embed_labelled",
    "knn_classify",
    "knn_top1",
    "linear_probe_top1",
    "load_checkpoint_encoder",
    "run_evaluation",
    "top1_accuracy",
    "train_linear_probe",
]
