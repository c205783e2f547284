"""Dice on medical volumes as a downstream evaluation: few-label 2D segmentation of NIfTI cases.

Each run finetunes a 2D segmenter from the encoder on the slices of a label fraction of
the labelled train cases (drawn by case) and scores whole test volumes, predicted slice
by slice and put back on their own grid (:func:`geocl.finetune.medical.run_medical_finetune`):
the rows of ``geocl compare`` for ``data.format: nifti`` recipes. Its numbers are the
means over the test cases of Dice, Jaccard, 95 % Hausdorff distance and average surface
distance (mm); the run folder keeps the per-case ones (``cases.csv``), the predicted
label maps and pictures.

Higher is better for Dice and Jaccard, lower for the two distances:
``lower_is_better`` names those. The report ranks recipes and takes paired differences
by the primary metric, Dice, so the distances only appear as table columns.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from geocl.evaluation.protocol import Evaluation, Measurement, Subset, TestSet, option_kwargs, register_evaluation

#: Keyword arguments of the finetune function that the evaluation sets per run (from the recipe or the row).
OWN_FINETUNE_ARGS = (
    "data",
    "encoder_checkpoint",
    "encoder",
    "label_fraction",
    "seed",
    "subset_seed",
    "out",
    "spacing",
    "slice_axis",
    "intensity",
    "image_size",
    "val_fraction",
)


@register_evaluation
class MedicalDice(Evaluation):
    """Finetune a 2D segmenter on slices of a fraction of the labelled cases; Dice and distances on the test volumes.

    Args:
        options: further keyword arguments of the finetune function (epochs, batch size,
            ...; ``FinetuneOptions``, a dataclass or a dict), none of
            :data:`OWN_FINETUNE_ARGS`.
        finetune_fn: ``finetune_fn(*, data, encoder_checkpoint, encoder, label_fraction,
            seed, out, spacing, slice_axis, intensity, image_size, val_fraction, **options)
            -> result`` with ``.dice``, ``.jaccard``, ``.hd95``, ``.asd`` and
            ``.checkpoint``, writing ``out/metrics.json`` when done. Default:
            :func:`geocl.finetune.medical.run_medical_finetune`.

    Raises:
        GeoclError: ``options`` set one of :data:`OWN_FINETUNE_ARGS`.
    """

    name: ClassVar[str] = "dice"
    formats: ClassVar[tuple[str, ...]] = ("nifti",)
    metric_columns: ClassVar[tuple[str, ...]] = ("dice", "jaccard", "hd95", "asd")
    metric_labels: ClassVar[dict[str, str]] = {
        "dice": "Dice",
        "jaccard": "Jaccard",
        "hd95": "95HD (mm)",
        "asd": "ASD (mm)",
    }
    primary_metric: ClassVar[str] = "dice"
    #: Metric columns where lower is better (distances).
    lower_is_better: ClassVar[tuple[str, ...]] = ("hd95", "asd")
    caption: ClassVar[str] = (
        "Mean over the test volumes of Dice, Jaccard, 95 % Hausdorff distance and average surface distance "
        "(mm; lower is better) of a 2D segmenter finetuned on slices of the labelled cases,"
    )
    title: ClassVar[str] = "Dice"
    axis_label: ClassVar[str] = "test Dice (mean over volumes)"
    folder: ClassVar[str] = "dice"
    result_file: ClassVar[str] = "metrics.json"
    doing: ClassVar[str] = "finetuning"

    def __init__(self, options: Any = None, *, finetune_fn: Callable[..., Any] | None = None) -> None:
        self.options = option_kwargs(options, OWN_FINETUNE_ARGS, "finetune", key="finetune")
        self.finetune_fn = finetune_fn

    @classmethod
    def from_options(cls, options: Any) -> MedicalDice:
        """Configured by ``options.finetune`` (the tile sets' finetuning settings)."""
        return cls(options.finetune)

    def labelled_data(self, recipe: Any) -> str:
        return f"nifti:{recipe.data.path}"

    def run(self, checkpoint: Path | None, *, recipe: Any, subset: Subset, seed: int, out: Path) -> Measurement:
        from geocl.evaluation.segmentation import row_training

        finetune, options = row_training(recipe, self.name, self.options, self.finetune_fn)
        if finetune is None:
            finetune = _medical_finetune()
        data = recipe.data
        result = finetune(
            data=Path(str(data.path)),
            encoder_checkpoint=checkpoint,
            encoder=str(recipe.encoder.name),
            label_fraction=subset.label_fraction,
            seed=seed,
            out=out,
            spacing=None if data.spacing is None else [float(s) for s in data.spacing],
            slice_axis=int(data.slice_axis),
            intensity=str(data.intensity),
            image_size=int(data.image_size),
            val_fraction=float(data.val_fraction),
            **options,
            **({} if subset.subset_seed is None else {"subset_seed": subset.subset_seed}),
        )
        return Measurement(
            {column: float(getattr(result, column)) for column in self.metric_columns},
            checkpoint=str(result.checkpoint),
        )

    def test_set(self, recipe: Any) -> TestSet | None:
        """The test cases of the recipe's data folder (None when the folder cannot be read)."""
        from geocl.errors import GeoclError

        try:
            from geocl.data.medical.files import find_cases
            from geocl.data.medical.split import split_cases

            root = Path(str(recipe.data.path))
            cases = find_cases(root)
            splits = split_cases(cases, root, val_fraction=float(recipe.data.val_fraction))
        except GeoclError:
            return None
        names = ", ".join(case.id for case in splits.test)
        return TestSet(
            f"{len(splits.test)} test volumes of {len(cases)} cases in {root} ({names}); "
            f"{len(splits.val)} val, {len(splits.train)} train cases, split by case"
        )


def _medical_finetune() -> Callable[..., Any]:
    """:func:`geocl.finetune.medical.run_medical_finetune`, imported when a row trains (it imports torch)."""
    from geocl.finetune.medical import run_medical_finetune

    return run_medical_finetune
