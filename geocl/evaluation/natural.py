"""Frozen-encoder kNN and linear probe as a downstream evaluation: top-1 on natural images.

Each run embeds the recipe's image folder or CIFAR batches with the frozen encoder and
measures weighted cosine kNN and linear-probe top-1 accuracy on the val split
(:func:`geocl.evaluation.evaluate.run_evaluation`); the rows of ``geocl compare`` for
natural-image recipes. Every run uses all labels: its one subset is
:data:`~geocl.evaluation.protocol.ALL_LABELS` (label fraction 1.0 in ``results.csv``),
whatever label fractions the comparison was given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from geocl.evaluation.protocol import ALL_LABELS, Evaluation, Measurement, Subset, option_kwargs, register_evaluation

#: Keyword arguments of the evaluation function that the evaluation sets per run.
OWN_EVALUATE_ARGS = (
    "checkpoint",
    "data",
    "format",
    "out",
    "encoder",
    "encoder_args",
    "seed",
    "image_size",
    "val_fraction",
)


@register_evaluation
class KnnProbe(Evaluation):
    """kNN and linear-probe top-1 of the frozen encoder on the val split (all labels).

    Args:
        options: further keyword arguments of the evaluation function (``k``,
            ``temperature``, ``probe_epochs``...; ``EvaluateOptions``, a dataclass or a
            dict), none of :data:`OWN_EVALUATE_ARGS`.
        evaluate_fn: ``evaluate_fn(checkpoint, data, format, *, out, encoder, encoder_args,
            seed, image_size, val_fraction, **options) -> result`` with ``.knn_top1`` and
            ``.probe_top1``, writing ``out/evaluation.json``. Default:
            :func:`geocl.evaluation.evaluate.run_evaluation`.

    Raises:
        GeoclError: ``options`` set one of :data:`OWN_EVALUATE_ARGS`.
    """

    name: ClassVar[str] = "knn-probe"
    formats: ClassVar[tuple[str, ...]] = ("image_folder", "cifar")
    metric_columns: ClassVar[tuple[str, ...]] = ("knn_top1", "probe_top1")
    metric_labels: ClassVar[dict[str, str]] = {"knn_top1": "kNN top-1", "probe_top1": "linear-probe top-1"}
    primary_metric: ClassVar[str] = "probe_top1"
    caption: ClassVar[str] = (
        "Top-1 accuracy on the val split (CIFAR: test batch) of the frozen encoder: weighted cosine kNN "
        "and a linear probe;"
    )
    title: ClassVar[str] = "Frozen-encoder top-1 accuracy"
    axis_label: ClassVar[str] = "top-1 accuracy"
    folder: ClassVar[str] = "evaluate"
    result_file: ClassVar[str] = "evaluation.json"
    doing: ClassVar[str] = "evaluating"

    def __init__(self, options: Any = None, *, evaluate_fn: Callable[..., Any] | None = None) -> None:
        self.options = option_kwargs(options, OWN_EVALUATE_ARGS, "evaluation", key="evaluate")
        self.evaluate_fn = evaluate_fn

    @classmethod
    def from_options(cls, options: Any) -> KnnProbe:
        """Configured by ``options.evaluate``."""
        return cls(options.evaluate)

    def subsets(self, label_fractions: Sequence[float], subset_seeds: int | None = None) -> list[Subset]:
        """One subset, all labels: the fractions do not apply."""
        return [ALL_LABELS]

    def run_folder(self, name: str, subset: Subset, seed: int) -> str:
        return f"{self.folder}/{name}-s{seed}"

    def run(self, checkpoint: Path | None, *, recipe: Any, subset: Subset, seed: int, out: Path) -> Measurement:
        evaluate = self.evaluate_fn
        if evaluate is None:  # torch and lightly: imported when a run needs them
            from geocl.evaluation.evaluate import run_evaluation

            evaluate = run_evaluation
        from geocl.recipes import recipe_to_dict

        data = recipe.data
        result = evaluate(
            checkpoint,
            str(data.path),
            str(data.format),
            out=out,
            encoder=str(recipe.encoder.name),
            encoder_args=dict(recipe_to_dict(recipe)["encoder"].get("args") or {}),
            seed=seed,
            image_size=int(data.image_size),
            val_fraction=float(data.val_fraction),
            **self.options,
        )
        return Measurement(
            {"knn_top1": float(result.knn_top1), "probe_top1": float(result.probe_top1)},
            checkpoint="" if checkpoint is None else str(checkpoint),
        )
