"""Segmentation finetuning as a downstream evaluation: mIoU on the test tiles.

Each run finetunes an smp segmenter from the encoder (:func:`geocl.finetune.train.run_finetune`)
on a label fraction of the recipe's train tiles and reports its test mIoU; the rows of
``geocl compare`` for tile-set recipes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from geocl.evaluation.protocol import Evaluation, Measurement, Subset, option_kwargs, register_evaluation

#: Keyword arguments of the finetune function that the evaluation sets per run.
OWN_FINETUNE_ARGS = ("tiles", "encoder_checkpoint", "encoder", "label_fraction", "seed", "subset_seed", "out")


@register_evaluation
class SegmentationFinetune(Evaluation):
    """Finetune a segmenter from the encoder at each label fraction; mIoU on the test tiles.

    Args:
        options: further keyword arguments of the finetune function (epochs, batch
            size...; ``FinetuneOptions``, a dataclass or a dict), none of
            :data:`OWN_FINETUNE_ARGS`.
        finetune_fn: ``finetune_fn(*, tiles, encoder_checkpoint, encoder, label_fraction,
            seed, out, **options) -> result`` with ``.miou`` and ``.checkpoint``, writing
            ``out/metrics.json`` (with ``miou``) when done. Default:
            :func:`geocl.finetune.train.run_finetune`, which refuses an ``out`` holding
            a run (compare hands it an empty folder).

    Raises:
        GeoclError: ``options`` set one of :data:`OWN_FINETUNE_ARGS`.
    """

    name: ClassVar[str] = "finetune"
    formats: ClassVar[tuple[str, ...]] = ("tiles",)
    metric_columns: ClassVar[tuple[str, ...]] = ("miou",)
    metric_labels: ClassVar[dict[str, str]] = {"miou": "mIoU"}
    caption: ClassVar[str] = "mIoU on the test tiles,"
    title: ClassVar[str] = "mIoU"
    axis_label: ClassVar[str] = "test mIoU"
    folder: ClassVar[str] = "finetune"
    result_file: ClassVar[str] = "metrics.json"
    doing: ClassVar[str] = "finetuning"

    def __init__(self, options: Any = None, *, finetune_fn: Callable[..., Any] | None = None) -> None:
        self.options = option_kwargs(options, OWN_FINETUNE_ARGS, "finetune", key="finetune")
        self.finetune_fn = finetune_fn

    @classmethod
    def from_options(cls, options: Any) -> SegmentationFinetune:
        """Configured by ``options.finetune``."""
        return cls(options.finetune)

    def labelled_data(self, recipe: Any) -> str:
        return str(recipe.data.tiles)

    def run(self, checkpoint: Path | None, *, recipe: Any, subset: Subset, seed: int, out: Path) -> Measurement:
        finetune = self.finetune_fn
        if finetune is None:  # Lightning and smp: imported when a run needs them
            from geocl.finetune.train import run_finetune as finetune
        result = finetune(
            tiles=Path(str(recipe.data.tiles)), encoder_checkpoint=checkpoint, encoder=str(recipe.encoder.name),
            label_fraction=subset.label_fraction, seed=seed, out=out, **self.options,
            **({} if subset.subset_seed is None else {"subset_seed": subset.subset_seed}),
        )
        return Measurement({"miou": float(result.miou)}, checkpoint=str(result.checkpoint))


@register_evaluation
class FrozenLinearProbe(SegmentationFinetune):
    """The frozen protocol: a dense linear probe on the frozen encoder; mIoU on the test tiles.

    Same label subsets, seeds and training budget as :class:`SegmentationFinetune`, but
    only a 1x1 classifier on the encoder's upsampled multi-level features trains
    (:class:`~geocl.finetune.linear_probe.DenseLinearProbe`): every encoder weight and
    BatchNorm statistic stays as pretrained. Registered after the finetune protocol, so
    that stays the default for tile sets; ``geocl compare --protocol frozen`` picks this.
    """

    name: ClassVar[str] = "frozen"
    caption: ClassVar[str] = "mIoU on the test tiles of a dense linear probe on the frozen encoder,"
    title: ClassVar[str] = "Frozen-encoder mIoU"
    axis_label: ClassVar[str] = "test mIoU (linear probe)"
    folder: ClassVar[str] = "frozen"
    doing: ClassVar[str] = "probing"

    def __init__(self, options: Any = None, *, finetune_fn: Callable[..., Any] | None = None) -> None:
        super().__init__(options, finetune_fn=finetune_fn)
        # the probe is the architecture: a decoder choice does not apply
        self.options = {**self.options, "arch": "linear", "freeze_encoder": True}
