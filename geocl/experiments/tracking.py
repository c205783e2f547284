"""A comparison's experiment logs: every pretraining and row logged as its recipe's ``trainer.logger`` says.

The loggers themselves are :mod:`geocl.training.loggers`; this module gives each
pretraining and row its scope (the comparison's MLflow store and experiment, its tags),
checks the loggers before any work, and logs the paired summary at the end.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from geocl.experiments.candidates import Candidate
from geocl.training.loggers import (
    check_logger,
    experiment_name,
    log_comparison_summary,
    log_scope,
    open_experiment,
    shown_uri,
    tracking_uri,
)

__all__ = ["check_loggers", "log_summary", "logging_scope"]


def check_loggers(recipes: list[Candidate], out: Path) -> None:
    """Before any work: each recipe's ``trainer.logger`` installed; an MLflow store reachable (one line if not)."""
    for candidate in recipes:
        check_logger(str(candidate.recipe.trainer.logger), path=candidate.path)
    if any(str(candidate.recipe.trainer.logger) == "mlflow" for candidate in recipes):
        open_experiment(tracking_uri(out), experiment_name(out.resolve().name))


def logging_scope(
    out: Path, recipe: Any, *, tags: dict[str, Any] | None = None, params: dict[str, Any] | None = None
) -> Any:
    """The logging scope of a pretraining or a row (:func:`geocl.training.loggers.log_scope`): the recipe's
    ``trainer.logger``, the comparison's MLflow store and experiment, the ``comparison`` tag and ``tags``."""
    return log_scope(
        kind=str(recipe.trainer.logger),
        store=out,
        experiment=out.resolve().name,
        tags={"comparison": out.resolve().name, **(tags or {})},
        params=params,
    )


def log_summary(recipes: list[Any], out: Path, baseline: str, say: Callable[[str], None]) -> None:
    """The paired summary (``results_summary.csv``) to MLflow when a recipe's ``trainer.logger`` is ``mlflow``; a line
    says where the comparison's runs are."""
    if not any(recipe is not None and str(recipe.trainer.logger) == "mlflow" for recipe in recipes):
        return
    summary = pd.read_csv(out / "results_summary.csv")
    rows = [
        {key: value for key, value in row.items() if not (isinstance(value, float) and math.isnan(value))}
        for row in summary.to_dict("records")
    ]
    files = [out / name for name in ("results.md", "results_summary.csv", "results.csv", "results_paired.png")]
    log_comparison_summary(rows, out, baseline=baseline, files=files)
    say(f"MLflow: experiment {experiment_name(out.resolve().name)!r} at {shown_uri(tracking_uri(out))}")
