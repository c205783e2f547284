"""Failed rows: the status a failure leaves in ``results.csv``, and the one line a command shows for them.

One recipe's or one row's failure does not stop the others (see :mod:`geocl.experiments`,
Failures); an interruption is not a failure (:mod:`geocl.experiments.process`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from geocl.errors import GeoclError

__all__ = ["describe_failures", "failure_status"]

log = logging.getLogger(__name__)

#: Longest failure message kept in a status (a CSV cell, a table footnote).
_MAX_MESSAGE = 300


def failure_status(exc: Exception, doing: str) -> str:
    """``failed: <one line>``; logs the traceback of anything that is not a user error."""
    message = " ".join(str(exc).split())
    if isinstance(exc, GeoclError):
        log.warning("%s failed: %s", doing, message)
    else:
        # Probably a bug: keep its type in the status and its traceback in the log
        # (printed on stderr when logging is not configured).
        message = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        log.warning("%s failed", doing, exc_info=exc)
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 1] + "…"
    return f"failed: {message}"


def describe_failures(results: pd.DataFrame, out: str | Path) -> str | None:
    """The one line that says which rows of a comparison failed, or None when all are ok.

    Args:
        results: what :func:`~geocl.experiments.runner.run_compare` returned (its
            ``recipe`` and ``status`` columns).
        out: the comparison folder (``CompareOptions.out``), where ``results.md`` lists
            the reasons.

    Returns:
        E.g. ``"7 of 18 runs failed: beta (6 of 6), alpha (1 of 6); the reasons are in
        runs/compare/results.md"``; recipes in table order.
    """
    failed = results["status"] != "ok"
    if not failed.any():
        return None
    counts = results.assign(failed=failed).groupby("recipe", sort=False)["failed"].agg(["sum", "size"])
    named = [f"{recipe} ({int(row['sum'])} of {int(row['size'])})" for recipe, row in counts.iterrows() if row["sum"]]
    return (
        f"{int(failed.sum())} of {len(results)} runs failed: {', '.join(named)}; "
        f"the reasons are in {Path(out) / 'results.md'}"
    )
