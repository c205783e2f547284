"""Segmentation finetuning as a downstream evaluation: mIoU on the test tiles.

Each run finetunes an smp segmenter from the encoder (:func:`geocl.finetune.train.run_finetune`)
on a label fraction of the recipe's train tiles and reports its test mIoU; the rows of
``geocl compare`` for tile-set recipes. A method that trains the segmenter itself (a
semi-supervised one: an evaluation its class ``serves``) trains it instead, on the same
label subset, seed and budget (:func:`method_training`).
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from geocl.errors import GeoclError
from geocl.evaluation.protocol import Evaluation, Measurement, Subset, TestSet, option_kwargs, register_evaluation
from geocl.finetune.method_trainings import declared_training

#: Keyword arguments of the finetune function that the evaluation sets per run.
OWN_FINETUNE_ARGS = ("tiles", "encoder_checkpoint", "encoder", "label_fraction", "seed", "subset_seed", "out")
#: Finetune options that choose the network: a method that trains its own builds it, so they are not passed to it.
ARCHITECTURE_OPTIONS = ("arch", "freeze_encoder", "probe_stages")
#: The finetune option that only the dense linear probe reads (the frozen protocol's rows).
PROBE_STAGES = "probe_stages"


def method_training(recipe: Any, evaluation: str) -> Callable[..., Any] | None:
    """The training the recipe's method brings for the rows of ``evaluation``, or None (the evaluation's own).

    Asks the method class whether it trains these rows itself
    (:meth:`geocl.methods.base.PretrainMethod.trains_rows_of`, which also checks its keys
    and refuses an evaluation that a method pretraining nothing cannot serve); the
    training is then the one :data:`geocl.finetune.method_trainings.METHOD_TRAININGS`
    declares for the method's name and ``evaluation``, bound to the recipe's ``method``
    section (methods import nothing of ``geocl.finetune``). A method registered by its
    parameters alone has no class and brings none. Method classes register when
    :mod:`geocl.methods` is imported, and no recipe can name one before, so nothing is
    imported here for a recipe without a method.

    Raises:
        GeoclError: the method pretrains no encoder and cannot serve ``evaluation``, or
            cannot serve it with its keys.
        LookupError: a bug: the method class serves ``evaluation`` but the table declares
            no training for it.
    """
    registry = sys.modules.get("geocl.methods.registry")
    method = getattr(recipe, "method", None)  # a recipe-like object with its data only: no method
    cls = None if registry is None or method is None else registry.METHODS.get(str(method.name))
    if cls is None or not cls.trains_rows_of(evaluation, method):
        return None
    training = declared_training(cls.name, evaluation, method)
    if training is None:  # the class and the table disagree: geocl's fault, not the recipe's
        raise LookupError(
            f"bug: method {cls.name!r} serves the {evaluation!r} evaluation ({cls.__qualname__}.serves) but "
            f"geocl.finetune.method_trainings.METHOD_TRAININGS declares no training for it"
        )
    return training


def row_training(
    recipe: Any, evaluation: str, options: dict[str, Any], finetune_fn: Callable[..., Any] | None
) -> tuple[Callable[..., Any] | None, dict[str, Any]]:
    """What trains one row, with the options it takes.

    The method's own training (:func:`method_training`) without the
    :data:`ARCHITECTURE_OPTIONS` (it builds its own network), else ``finetune_fn``
    with every option; None for the evaluation's default function, which the caller
    imports only then (Lightning, smp, MONAI take seconds).
    """
    own = method_training(recipe, evaluation)
    if own is None:
        return finetune_fn, options
    return own, {key: value for key, value in options.items() if key not in ARCHITECTURE_OPTIONS}


def default_finetune() -> Callable[..., Any]:
    """:func:`geocl.finetune.train.run_finetune`, imported on use (Lightning and smp take seconds)."""
    from geocl.finetune.train import run_finetune

    return run_finetune


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
            a run (compare hands it an empty folder). A recipe whose method brings its
            own training (:func:`method_training`) runs that instead, without
            :data:`ARCHITECTURE_OPTIONS`.

    ``probe_stages`` (which encoder stages the dense linear probe reads) is the frozen
    protocol's alone (:attr:`reads_probe_stages`): a finetuned row has no probe, so these
    rows refuse it, and :meth:`from_options` leaves it to the frozen rows when one
    comparison runs both protocols (``protocol: both``).

    Raises:
        GeoclError: ``options`` set one of :data:`OWN_FINETUNE_ARGS`, or set
            ``probe_stages`` for rows that have no probe.
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
    #: Whether the rows train the dense linear probe, the one network that reads ``probe_stages``.
    reads_probe_stages: ClassVar[bool] = False

    def __init__(self, options: Any = None, *, finetune_fn: Callable[..., Any] | None = None) -> None:
        self.options = option_kwargs(options, OWN_FINETUNE_ARGS, "finetune", key="finetune")
        # None (every stage) is left out: the rows' settings, which decide whether compare reuses a
        # row, stay what they were before the option existed
        stages = self.options.pop(PROBE_STAGES, None)
        if stages is not None:
            if not self.reads_probe_stages:
                raise GeoclError(
                    f"applies to the frozen protocol (its dense linear probe), not to the {self.name} rows",
                    key=PROBE_STAGES,
                )
            self.options[PROBE_STAGES] = sorted({int(stage) for stage in stages})
        self.finetune_fn = finetune_fn

    @classmethod
    def from_options(cls, options: Any) -> SegmentationFinetune:
        """Configured by ``options.finetune`` (its ``probe_stages`` only where the rows read them)."""
        finetune = options.finetune
        if not cls.reads_probe_stages and getattr(finetune, PROBE_STAGES, None) is not None:
            # protocol both: the stages are the frozen rows' (compare refuses them without frozen rows)
            finetune = finetune.model_copy(update={PROBE_STAGES: None})
        return cls(finetune)

    def labelled_data(self, recipe: Any) -> str:
        return str(recipe.data.tiles)

    def subset_identity(self, subset: Subset, recipe: Any) -> Any:
        """Every label also where a fraction below 1 rounds up to every train tile
        (:func:`geocl.finetune.train.label_subset` keeps ``ceil(fraction x tiles)``)."""
        count = train_tile_count(Path(str(recipe.data.tiles)))
        if count is not None and math.ceil(subset.label_fraction * count) >= count:
            return ("all labels",)
        return super().subset_identity(subset, recipe)

    def run(self, checkpoint: Path | None, *, recipe: Any, subset: Subset, seed: int, out: Path) -> Measurement:
        finetune, options = row_training(recipe, self.name, self.options, self.finetune_fn)
        result = (finetune if finetune is not None else default_finetune())(
            tiles=Path(str(recipe.data.tiles)),
            encoder_checkpoint=checkpoint,
            encoder=str(recipe.encoder.name),
            label_fraction=subset.label_fraction,
            seed=seed,
            out=out,
            **options,
            **({} if subset.subset_seed is None else {"subset_seed": subset.subset_seed}),
        )
        return Measurement({"miou": float(result.miou)}, checkpoint=str(result.checkpoint), extra=per_class_iou(out))

    def read_finished(self, out: Path) -> Measurement | None:
        finished = super().read_finished(out)
        if finished is not None:
            finished.extra = {**finished.extra, **per_class_iou(out)}
        return finished

    def test_set(self, recipe: Any) -> TestSet | None:
        """The test split of the recipe's tile set: tiles, area, spread and pixels per class."""
        return describe_test_split(Path(str(recipe.data.tiles)))


def train_tile_count(tiles: Path) -> int | None:
    """Train tiles of a tile set (from ``tiles.gpkg``); None when the index cannot be read."""
    try:
        stamp = (tiles / "tiles.gpkg").stat().st_mtime_ns
    except OSError:
        return None
    return _train_tile_count(tiles, stamp)


@functools.lru_cache(maxsize=16)
def _train_tile_count(tiles: Path, stamp: int) -> int | None:
    try:
        import geopandas as gpd

        index = gpd.read_file(tiles / "tiles.gpkg", layer="tiles", columns=["split"], ignore_geometry=True)
    except Exception:
        return None
    return int((index["split"] == "train").sum())


def per_class_iou(out: Path) -> dict[str, float]:
    """``{"iou_<class>": IoU}`` from a finetuning run's ``metrics.json`` (NaN: class absent); {} without one."""
    try:
        record = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        pairs = zip(record["classes"], record["iou"], strict=True)
        return {f"iou_{value}": math.nan if iou is None else float(iou) for value, iou in pairs}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def describe_test_split(tiles: Path) -> TestSet | None:
    """Size and spread of a tile set's test split, from ``tiles.json`` and ``tiles.gpkg``; None if unreadable.

    The spread is the share of the tiled extent's width and height that the test tiles'
    bounding box spans, and the share of the tiled extent's quarters holding a test tile:
    a test split in one corner reads "1 of 4 quarters".
    """
    try:
        import geopandas as gpd

        metadata = json.loads((tiles / "tiles.json").read_text(encoding="utf-8"))
        index = gpd.read_file(tiles / "tiles.gpkg", layer="tiles")
    except Exception:
        return None
    test = index[index["split"] == "test"]
    if test.empty:
        return TestSet(f"{tiles}: no test tiles")
    left, bottom, right, top = index.total_bounds
    t_left, t_bottom, t_right, t_top = test.total_bounds
    width, height = max(right - left, 1e-9), max(top - bottom, 1e-9)
    centres = test.geometry.centroid
    quarters = {
        (bool(x < (left + right) / 2), bool(y < (bottom + top) / 2)) for x, y in zip(centres.x, centres.y, strict=False)
    }
    area = float(test.geometry.area.sum())
    crs = index.crs
    # projected and engineering (pixel-grid) CRSs in metres alike; a geographic one is in degrees
    in_metres = crs is not None and bool(crs.axis_info) and crs.axis_info[0].unit_name in ("metre", "meter")
    shown_area = f"{area / 1e6:.2f} km²" if in_metres else f"{area:.0f} map units²"
    description = (
        f"test split of {tiles}: {len(test)} of {len(index)} tiles ({shown_area}, {len(test) / len(index):.0%} of the tiles), "
        f"spanning {(t_right - t_left) / width:.0%} of the tiled width and {(t_top - t_bottom) / height:.0%} of its height, "
        f"in {len(quarters)} of 4 quarters"
    )
    pixels = metadata.get("class_pixels", {}).get("test", {})
    return TestSet(description, {str(value): int(count) for value, count in pixels.items()})


@register_evaluation
class FrozenLinearProbe(SegmentationFinetune):
    """The frozen protocol: a dense linear probe on the frozen encoder; mIoU on the test tiles.

    Same label subsets, seeds and training budget as :class:`SegmentationFinetune`, but
    only a 1x1 classifier on the encoder's upsampled multi-level features trains
    (:class:`~geocl.finetune.linear_probe.DenseLinearProbe`): every encoder weight and
    BatchNorm statistic stays as pretrained. Registered after the finetune protocol, so
    that stays the default for tile sets; ``geocl compare --protocol frozen`` picks this.

    The probe reads every encoder stage unless ``probe_stages`` says which
    (``--probe-stages 4 5``: the deep features alone). Given, the stages are among the
    settings a row records, so a comparison rerun with other stages redoes its frozen rows;
    left unset they are not recorded, as before the option existed, so rows made then
    are reused.
    """

    name: ClassVar[str] = "frozen"
    caption: ClassVar[str] = "mIoU on the test tiles of a dense linear probe on the frozen encoder,"
    title: ClassVar[str] = "Frozen-encoder mIoU"
    axis_label: ClassVar[str] = "test mIoU (linear probe)"
    folder: ClassVar[str] = "frozen"
    doing: ClassVar[str] = "probing"
    reads_probe_stages: ClassVar[bool] = True

    def __init__(self, options: Any = None, *, finetune_fn: Callable[..., Any] | None = None) -> None:
        super().__init__(options, finetune_fn=finetune_fn)
        # the probe is the architecture: a decoder choice does not apply
        self.options = {**self.options, "arch": "linear", "freeze_encoder": True}
