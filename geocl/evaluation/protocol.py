"""The downstream protocol: one interface for every way ``geocl compare`` scores an encoder.

An :class:`Evaluation` states

- which recipes it serves: ``formats``, values of the recipe's ``data.format``;
- what it measures: ``metric_columns`` (named numbers, higher is better), their names
  in tables (``metric_labels``), the ``primary_metric``, a table ``caption`` and plot
  labels;
- which label subsets it runs for the comparison's options: :meth:`Evaluation.subsets`
  (segmentation: one per label fraction; natural images: one, all labels);
- how to run once: ``run(checkpoint, *, recipe, subset, seed, out) -> Measurement``,
  ``checkpoint`` None meaning a randomly initialised encoder of the recipe's
  architecture, seeded with ``seed``;
- how to read a finished run back from its folder (:meth:`Evaluation.read_finished`),
  so that an interrupted comparison redoes only what is missing;
- what, besides the encoder, the labels and the seed, determines a run's numbers
  (:meth:`Evaluation.settings`): compare records it beside every row and reuses a row
  only when it is unchanged;
- which label subsets are the same labels (:meth:`Evaluation.subset_identity`: a label
  fraction of 1 is every label, whatever its subset seed), so that one set of labels is
  never counted as several independent pairs.

:mod:`geocl.experiments` and :mod:`geocl.report.table` know nothing else about a
task: a new one (Dice on medical volumes, hit@k on retrieval) is one more subclass,
registered with :func:`register_evaluation`, not one more pipeline.

Registry (timm/smp style): :func:`register_evaluation` (a class decorator) files a
subclass under its ``name``; :func:`get_evaluation` finds it by name and
:func:`evaluation_for` by data format. Several evaluations may serve one format (a
frozen-encoder probe beside finetuning, say); the first one registered for a format
is its default. The built-in ones (:mod:`geocl.evaluation.segmentation`,
:mod:`geocl.evaluation.natural`) register when :mod:`geocl.evaluation` is imported,
which is cheap: they import their training code only when they run.
"""

from __future__ import annotations

import dataclasses
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from geocl.errors import GeoclError

__all__ = [
    "ALL_LABELS",
    "Evaluation",
    "Measurement",
    "Subset",
    "TestSet",
    "evaluation_for",
    "evaluation_names",
    "get_evaluation",
    "option_kwargs",
    "register_evaluation",
]


@dataclass(frozen=True)
class Subset:
    """The labels one run may use.

    Attributes:
        label_fraction: share of the labelled train set, in (0, 1]; 1.0 = all labels.
        subset_seed: seed that draws the labelled subset, apart from the training seed,
            so that every training seed of every recipe meets the same subset (pairs);
            None: each run draws its subset with its training seed.

    A value, so that it can name folders and group table cells.
    """

    label_fraction: float = 1.0
    subset_seed: int | None = None


#: The one subset of evaluations that always use every label.
ALL_LABELS = Subset()


@dataclass
class Measurement:
    """What one run measured: one results row's numbers.

    Attributes:
        metrics: every one of the evaluation's ``metric_columns`` -> its value.
        checkpoint: what the row points at (the finetuned model, the evaluated encoder;
            "" for none).
        seconds: wall time of the run; None when the caller timed it (a fresh run).
        extra: further columns of the row (the evaluation's ``extra_columns``).
    """

    metrics: dict[str, float]
    checkpoint: str = ""
    seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TestSet:
    """What an evaluation's runs are scored on, as ``results.md`` states it.

    Attributes:
        description: one or two sentences: size and spread of the test data.
        class_pixels: labelled test pixels (or samples) per class name; classes with
            fewer than ``CompareOptions.min_test_pixels`` get a warning and their
            per-class columns a flag.
    """

    description: str
    class_pixels: dict[str, int] = field(default_factory=dict)


class Evaluation(ABC):
    """One downstream task that turns an encoder checkpoint into named numbers.

    Subclasses set the class attributes and implement :meth:`run`; they override
    :meth:`from_options`, :meth:`subsets` or :meth:`run_folder` where the defaults do
    not fit, and register with :func:`register_evaluation`.

    Class attributes:
        name: registry key; the ``evaluation`` column of ``results.csv``.
        formats: recipe ``data.format`` values whose data it evaluates on.
        metric_columns: its numbers, in column order (higher is better, but for those
            in ``lower_is_better``; the primary metric is always higher-is-better, as
            the paired verdicts read it).
        lower_is_better: metric columns where smaller is better (distances in mm).
        metric_labels: column -> name in tables and plots (default: the column).
        primary_metric: the number that ranks recipes (default: the first column).
        extra_columns: further per-run columns it always fills. A run may add more in
            ``Measurement.extra`` (per-class scores, whose names depend on the data);
            compare writes those after these.
        caption: what the numbers are, the start of the table's caption, ending in
            the punctuation that goes before ``mean ± sample std ...``.
        title: plot title stem (``<title> against label fraction ...``).
        axis_label: plot value-axis label.
        folder: sub-folder of the comparison that holds its run folders.
        result_file: the JSON a finished run leaves in its folder (with every metric).
        doing: verb of log and failure messages (``finetuning alpha-f0.1-s0 failed``).
    """

    name: ClassVar[str]
    formats: ClassVar[tuple[str, ...]]
    metric_columns: ClassVar[tuple[str, ...]]
    metric_labels: ClassVar[Mapping[str, str]] = {}
    primary_metric: ClassVar[str] = ""
    lower_is_better: ClassVar[tuple[str, ...]] = ()
    extra_columns: ClassVar[tuple[str, ...]] = ()
    caption: ClassVar[str] = "Scores,"
    title: ClassVar[str] = "Score"
    axis_label: ClassVar[str] = "score"
    folder: ClassVar[str] = "evaluate"
    result_file: ClassVar[str] = "metrics.json"
    doing: ClassVar[str] = "evaluating"

    @classmethod
    def label(cls, column: str) -> str:
        """The name of a metric column in tables and plots."""
        return cls.metric_labels.get(column, column)

    @classmethod
    def primary(cls) -> str:
        """The primary metric (``primary_metric`` or the first metric column)."""
        return cls.primary_metric or cls.metric_columns[0]

    @classmethod
    def from_options(cls, options: Any) -> Evaluation:
        """The evaluation as configured by the comparison's options (``CompareOptions``).

        Raises:
            GeoclError: options it cannot use (before any work starts).
        """
        return cls()

    def subsets(self, label_fractions: Sequence[float], subset_seeds: int | None = None) -> list[Subset]:
        """The label subsets to run: each fraction, drawn with subset seeds ``0 .. subset_seeds-1``
        (None: with each run's training seed)."""
        seeds: list[int | None] = [None] if subset_seeds is None else list(range(subset_seeds))
        return [Subset(float(fraction), seed) for fraction in label_fractions for seed in seeds]

    def subset_identity(self, subset: Subset, recipe: Any) -> Any:
        """A value that is equal for two subsets exactly when they hold the same labels (for ``recipe``'s data).

        Default: a subset of every label (``label_fraction`` 1) is one subset whatever
        its subset seed; any other is itself. An evaluation that knows its data's size
        may say more (a fraction that rounds up to every item).
        """
        if subset.label_fraction >= 1.0:
            return ("all labels",)
        return (subset.label_fraction, subset.subset_seed)

    def settings(self) -> dict[str, Any]:
        """Everything of this evaluation that determines a run's numbers, as plain JSON data.

        Compare records it with every row (with the encoder, subset, seed and test set)
        and reuses a finished row only when all of it is unchanged. Default: the name and
        every option the runs are given (``self.options``) but :data:`PRESENTATION_OPTIONS`.
        An evaluation holding further state that changes results overrides this.
        """
        options = getattr(self, "options", None) or {}
        if hasattr(options, "model_dump"):
            options = options.model_dump()
        kept = {str(key): value for key, value in dict(options).items() if key not in PRESENTATION_OPTIONS}
        return {"name": self.name, "options": json.loads(json.dumps(kept, sort_keys=True, default=str))}

    def run_folder(self, name: str, subset: Subset, seed: int) -> str:
        """The run folder of one row, relative to the comparison folder (unique per row)."""
        drawn = "" if subset.subset_seed is None else f"-l{subset.subset_seed}"
        return f"{self.folder}/{name}-f{subset.label_fraction}{drawn}-s{seed}"

    def labelled_data(self, recipe: Any) -> str:
        """The labelled data a recipe gets evaluated on (compare warns when recipes differ)."""
        return f"{recipe.data.format}:{recipe.data.path}"

    @abstractmethod
    def run(self, checkpoint: Path | None, *, recipe: Any, subset: Subset, seed: int, out: Path) -> Measurement:
        """Evaluate one encoder once.

        Args:
            checkpoint: a pretraining checkpoint, or None for a randomly initialised
                encoder of ``recipe.encoder`` (seeded with ``seed``).
            recipe: the loaded recipe (read-only attribute tree): data and encoder.
            subset: the labels to use.
            seed: the run's seed.
            out: the run folder, absent or empty (compare moves a folder holding an
                earlier run aside first); a finished run leaves ``out/<result_file>``
                there.

        Returns:
            The row's numbers; a non-finite metric marks the row failed.
        """

    def test_set(self, recipe: Any) -> TestSet | None:
        """What the runs of ``recipe`` are scored on; None when there is nothing to state (default)."""
        return None

    def read_finished(self, out: Path) -> Measurement | None:
        """The measurement a finished run left in ``out``, or None (run it again).

        Default: ``out/<result_file>``, a JSON object holding every metric column as a
        number, and optionally ``seconds`` and ``checkpoint``.
        """
        try:
            record = json.loads((out / self.result_file).read_text(encoding="utf-8"))
            metrics = {column: float(record[column]) for column in self.metric_columns}
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return Measurement(
            metrics,
            checkpoint=str(record.get("checkpoint") or ""),
            seconds=float(record.get("seconds", math.nan)),
            extra={column: record.get(column) for column in self.extra_columns},
        )


#: Options that change what a run shows, never what it measures: left out of :meth:`Evaluation.settings`.
PRESENTATION_OPTIONS = ("progress",)


_REGISTRY: dict[str, type[Evaluation]] = {}


def register_evaluation[E: type[Evaluation]](cls: E) -> E:
    """Class decorator: file an :class:`Evaluation` subclass under its ``name``.

    Raises:
        ValueError: a class without name, formats or metric columns, or a name
            another class took (a bug, not a user error).
    """
    for attribute in ("name", "formats", "metric_columns"):
        if not getattr(cls, attribute, None):
            raise ValueError(f"{cls.__name__} must set {attribute}")
    if cls.primary_metric and cls.primary_metric not in cls.metric_columns:
        raise ValueError(f"{cls.__name__}: primary_metric {cls.primary_metric!r} is not a metric column")
    taken = _REGISTRY.get(cls.name)
    if taken is not None and taken.__qualname__ != cls.__qualname__:
        raise ValueError(f"evaluation {cls.name!r} is already {taken.__module__}.{taken.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def evaluation_names() -> list[str]:
    """Registered evaluation names, in registration order."""
    return list(_REGISTRY)


def get_evaluation(name: str) -> type[Evaluation]:
    """The evaluation registered as ``name``.

    Raises:
        GeoclError: no such evaluation.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise GeoclError(f"unknown evaluation {name!r}; choose from {', '.join(_REGISTRY)}", key="evaluation") from None


#: The default evaluation of each built-in ``data.format``, declared here rather than taken from
#: the order in which modules happen to register (a sorted import once made retrieval the
#: default for tile sets).
DEFAULT_EVALUATIONS: dict[str, str] = {
    "tiles": "finetune",
    "image_folder": "knn-probe",
    "cifar": "knn-probe",
    "nifti": "dice",
}


def evaluation_for(data_format: str) -> type[Evaluation]:
    """The default evaluation of recipes with ``data.format == data_format``.

    The one :data:`DEFAULT_EVALUATIONS` names for a built-in format; for another format, the
    first registered evaluation that serves it.

    Raises:
        GeoclError: no evaluation serves that format.
    """
    declared = DEFAULT_EVALUATIONS.get(data_format)
    if declared is not None and declared in _REGISTRY:
        return _REGISTRY[declared]
    for cls in _REGISTRY.values():
        if data_format in cls.formats:
            return cls
    raise GeoclError(f"no evaluation for data format {data_format!r}", key="data.format")


def option_kwargs(options: Any, own: Collection[str], what: str, key: str) -> dict[str, Any]:
    """Keyword arguments of a run function from nested command options.

    Args:
        options: a pydantic model, a dataclass, a mapping or None.
        own: arguments the evaluation sets per run; left out, and refused when set.
        what: the options' name in the message (``finetune``).
        key: the key of the error.

    Raises:
        GeoclError: ``options`` set one of ``own``.
    """
    if options is None:
        values, explicit = {}, set()
    elif isinstance(options, Mapping):
        values = dict(options)
        explicit = set(values)
    elif hasattr(options, "model_dump"):  # pydantic: defaults of ``own`` fields are not a clash
        values = options.model_dump()
        explicit = set(options.model_fields_set)
    elif dataclasses.is_dataclass(options) and not isinstance(options, type):
        fields = dataclasses.fields(options)
        values = {item.name: getattr(options, item.name) for item in fields}
        explicit = {item.name for item in fields if values[item.name] != item.default}
    else:
        raise TypeError(f"{what} options must be a model, a dataclass or a mapping, got {type(options).__name__}")
    clash = sorted(explicit & set(own))
    if clash:
        raise GeoclError(f"{what} options must not set {', '.join(clash)}: compare sets them per row", key=key)
    return {name: value for name, value in values.items() if name not in own}
