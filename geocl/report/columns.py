"""What a table or plot needs to know about the numbers it shows: plain data, no evaluation.

The report reads a results frame (one row per run) whose metric columns, their names
and the caption come from whoever ran the evaluation: :mod:`geocl.experiments.results`
fills a :class:`MetricColumns` from the evaluation of each group
(:mod:`geocl.evaluation.protocol`), so :mod:`geocl.report` depends on no evaluation and
any caller (a notebook, another tool) can draw the same table from its own numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["MetricColumns"]


@dataclass(frozen=True)
class MetricColumns:
    """The metric columns of one evaluation's results, and how tables and plots name them.

    Attributes:
        name: the evaluation's name (the ``evaluation`` column of ``results.csv``; the
            budget plot's panels say "<name> protocol").
        columns: the metric columns, in table order (higher is better, except those in
            ``lower_is_better``).
        labels: column -> its name in tables and plots (default: the column itself).
        primary: the column that ranks recipes (default: the first column); always
            higher-is-better.
        lower_is_better: columns where smaller is better (distances in mm); bar plots
            give them their own axes.
        caption: what the numbers are, the start of the table's caption, ending in the
            punctuation that goes before ``mean ± sample std ...``.
        title: plot title stem (``<title> against label fraction ...``).
        axis_label: plot value-axis label.

    Raises:
        ValueError: no columns, or a primary or lower-is-better column that is not one of them.
    """

    name: str
    columns: tuple[str, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    primary: str = ""
    lower_is_better: tuple[str, ...] = ()
    caption: str = "Scores,"
    title: str = "Score"
    axis_label: str = "score"

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", tuple(self.columns))
        object.__setattr__(self, "lower_is_better", tuple(self.lower_is_better))
        if not self.columns:
            raise ValueError(f"{self.name}: a report needs at least one metric column")
        if not self.primary:
            object.__setattr__(self, "primary", self.columns[0])
        unknown = [column for column in (self.primary, *self.lower_is_better) if column not in self.columns]
        if unknown:
            raise ValueError(
                f"{self.name}: {', '.join(unknown)} not among the metric columns {', '.join(self.columns)}"
            )

    def label(self, column: str) -> str:
        """The name of a metric column in tables and plots."""
        return self.labels.get(column, column)
