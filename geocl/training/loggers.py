"""Experiment loggers of a training run: the CSV log always, and TensorBoard or MLflow beside it.

The recipe key ``trainer.logger`` (:class:`geocl.recipes.schema.TrainerConfig`) picks the
Lightning logger written beside the CSV one, which stays where it always was and stays
first in the trainer's list (``trainer.log_dir``, the loss plot and the resume logic read it):

* ``csv`` (default): ``<run>/logs/version_<n>/metrics.csv`` only;
* ``tensorboard``: also ``<run>/tensorboard/version_<n>/events.out.tfevents.*``, with the
  run's parameters and tags as the session's hyperparameters (the HPARAMS tab); run
  ``tensorboard --logdir <run>``, or ``--logdir`` a comparison folder to see all its runs;
* ``mlflow``: also one MLflow run per start of a training, named after its run folder,
  with the run's parameters (``log_params``) and tags (``set_tag``), and its metrics.

Where MLflow writes: the tracking URI in ``MLFLOW_TRACKING_URI`` when it is set (the
user's server, database or folder: where their other runs are), otherwise a file store
``mlruns/`` inside the run folder, or, under ``geocl compare``, inside the comparison
folder, so that one store holds every run of the comparison and the folder stays
self-contained (moved or copied, it takes its runs along; ``MLFLOW_ALLOW_FILE_STORE=true mlflow ui
--backend-store-uri <folder>/mlruns`` shows them: the UI needs the full ``mlflow`` package, the
``loggers`` extra installs only ``mlflow-skinny``, which logs). MLflow 3 opens file stores only with
``MLFLOW_ALLOW_FILE_STORE`` true; geocl sets it while it opens one (when the user has
not set it) and puts the environment back.
The experiment is ``MLFLOW_EXPERIMENT_NAME`` when set, otherwise ``geocl`` for a single
run and the comparison folder's name for a comparison.

What a run records:

* params: a pretraining's recipe, flattened to dotted keys under ``recipe.``
  (``recipe.trainer.max_steps``); a finetuning's options under ``finetune.``; a compare
  row adds what its encoder is (its pretraining recipe under ``recipe.``, or the random
  init's data and encoder under ``random_init.``). Lightning adds the module's own
  hyperparameters under their own names (``encoder``, ``augment``, ...: no clash with these);
* tags: ``geocl.run`` (``pretrain``, ``finetune``, ...), ``geocl.version``, the recipe's
  ``recipe`` and ``method``; a compare row adds ``comparison``, ``evaluation``,
  ``label_fraction``, ``subset_seed``, ``seed`` and ``pretrain_steps``.

``geocl compare`` reaches the trainings of its rows through a *scope*
(:func:`log_scope`): the Evaluation interface (:mod:`geocl.evaluation.protocol`) knows
nothing of loggers, so compare sets the row's logger, store, experiment, params and tags
around each row, and every :func:`experiment_loggers` call below it (the finetuning's,
a semi-supervised training's, a medical one's) takes them. After the row, compare logs
its result (:func:`log_result`) and, with MLflow, the paired summary
(:func:`log_comparison_summary`).

Lightning, TensorBoard and MLflow are imported only when a run asks for them; a missing
package is one line naming the extra to install (:func:`check_logger`).
"""

from __future__ import annotations

import contextvars
import importlib.util
import json
import math
import numbers
import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeGuard
from urllib.parse import urlsplit, urlunsplit

from geocl.errors import GeoclError

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger

#: The values of ``trainer.logger``.
LoggerKind = Literal["csv", "tensorboard", "mlflow"]
LOGGER_KINDS: tuple[str, ...] = ("csv", "tensorboard", "mlflow")
#: The CSV log's folder in a run folder (``logs/version_<n>/metrics.csv``).
CSV_FOLDER = "logs"
#: TensorBoard's folder in a run folder (``tensorboard/version_<n>/``).
TENSORBOARD_FOLDER = "tensorboard"
#: The MLflow file store's folder in a run or comparison folder (without ``MLFLOW_TRACKING_URI``).
MLFLOW_FOLDER = "mlruns"
#: The experiment of a single run (without ``MLFLOW_EXPERIMENT_NAME``).
DEFAULT_EXPERIMENT = "geocl"
#: How to get the optional packages.
INSTALL_HINT = "pip install 'geocl[loggers]'"
#: The module each logger needs (TensorBoard's writer: tensorboard or tensorboardX).
_PACKAGES: dict[str, tuple[str, ...]] = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",)}
#: Characters MLflow takes in metric keys (Lightning drops the others, with a warning).
_UNSAFE_KEY = re.compile(r"[^A-Za-z0-9_/. -]+")


def check_logger(kind: str, *, key: str = "trainer.logger", path: str | os.PathLike[str] | None = None) -> None:
    """Refuse a logger whose package is not installed, before any work.

    Raises:
        GeoclError: ``kind`` is not a logger, or its package is missing (one line naming
            :data:`INSTALL_HINT`).
    """
    named = "" if path is None else f"{key} "  # the message starts with the key, or with the file
    if kind not in LOGGER_KINDS:
        raise GeoclError(f"{named}unknown logger {kind!r} (choices: {', '.join(LOGGER_KINDS)})", path=path, key=key)
    needed = _PACKAGES.get(kind, ())
    if needed and not any(importlib.util.find_spec(name) is not None for name in needed):
        raise GeoclError(f"{named}{kind} needs the {needed[0]} package: {INSTALL_HINT}", path=path, key=key)


def flat_keys(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{dotted.key: value}``; lists and empty mappings stay values."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flat_keys(value, dotted))
        else:
            flat[dotted] = value
    return flat


def _plain(value: Any) -> bool | int | float | str:
    """A parameter value TensorBoard's hparams and MLflow both take (lists, None... as JSON)."""
    if isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, default=str)


# ---------------------------------------------------------------- scopes


@dataclass
class LogScope:
    """What the trainings under a :func:`log_scope` log with (see the module docstring).

    Attributes:
        kind: the logger; None leaves each training's own (its recipe's).
        store: the folder whose ``mlruns/`` is the MLflow file store (without ``MLFLOW_TRACKING_URI``).
        experiment: the MLflow experiment (without ``MLFLOW_EXPERIMENT_NAME``).
        tags: added to every run's tags.
        params: added to every run's params.
        opened: the loggers beside CSV built under this scope, in order (for :func:`log_result`).
    """

    kind: str | None = None
    store: Path | None = None
    experiment: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    opened: list[Logger] = field(default_factory=list)


_SCOPE: contextvars.ContextVar[LogScope | None] = contextvars.ContextVar("geocl_log_scope", default=None)


@contextmanager
def log_scope(
    *,
    kind: str | None = None,
    store: str | os.PathLike[str] | None = None,
    experiment: str | None = None,
    tags: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
) -> Iterator[LogScope]:
    """Set the logger, store, experiment, tags and params of the trainings run inside.

    Scopes nest: an inner one keeps what it does not set and adds its tags and params to
    the outer ones. The scope yielded collects the loggers opened inside (``opened``).
    """
    outer = current_scope()
    scope = replace(
        outer,
        kind=kind if kind is not None else outer.kind,
        store=Path(store) if store is not None else outer.store,
        experiment=experiment if experiment is not None else outer.experiment,
        tags={**outer.tags, **{str(name): str(value) for name, value in (tags or {}).items()}},
        params={**outer.params, **dict(params or {})},
        opened=[],
    )
    token = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        _SCOPE.reset(token)


def current_scope() -> LogScope:
    """The innermost :func:`log_scope` (an empty one outside any)."""
    return _SCOPE.get() or LogScope()


# ---------------------------------------------------------------- MLflow


def tracking_uri(store: str | os.PathLike[str]) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the file store ``<store>/mlruns`` as a ``file:`` URI."""
    configured = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return configured or (Path(store).resolve() / MLFLOW_FOLDER).as_uri()


def experiment_name(default: str = DEFAULT_EXPERIMENT) -> str:
    """``MLFLOW_EXPERIMENT_NAME`` when set, else ``default``."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or default


def shown_uri(uri: str) -> str:
    """A tracking URI without the user name and password it may hold (for messages)."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host))


@contextmanager
def _file_store_allowed(uri: str) -> Iterator[None]:
    """``MLFLOW_ALLOW_FILE_STORE=true`` (when unset) while MLflow opens a ``file:`` store, then as it was.

    MLflow 3 refuses file stores without it (a database store needs SQLAlchemy, which
    mlflow-skinny lacks). It is read when a store is built, and MLflow keeps the stores
    it built (per URI), so the store opened here serves the run's later calls. A value
    the user set is kept.
    """
    local = "://" not in uri or uri.startswith("file:")
    if not local or "MLFLOW_ALLOW_FILE_STORE" in os.environ:
        yield
        return
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)


def open_experiment(uri: str, name: str) -> str:
    """The id of MLflow experiment ``name`` at ``uri``, created when missing.

    Called before a run starts, so that an unreachable server is one line before any
    training, and so that Lightning's logger finds the experiment (it warns when it
    creates one).

    Raises:
        GeoclError: the store cannot be reached or written (naming the URI without credentials).
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        with _file_store_allowed(uri):
            client = MlflowClient(uri)
        found = client.get_experiment_by_name(name)
        if found is not None and found.lifecycle_stage != "deleted":
            return str(found.experiment_id)
        if found is not None:
            raise GeoclError(
                f"MLflow experiment {name!r} at {shown_uri(uri)} is deleted; restore it or set MLFLOW_EXPERIMENT_NAME",
                key="trainer.logger",
            )
        try:
            return str(client.create_experiment(name))
        except MlflowException:  # created meanwhile by another process
            again = client.get_experiment_by_name(name)
            if again is None:
                raise
            return str(again.experiment_id)
    except (MlflowException, OSError) as exc:
        message = " ".join(str(exc).split())[:200]
        raise GeoclError(
            f"MLflow tracking store {shown_uri(uri)} cannot be used: {message}", key="trainer.logger"
        ) from None


def _is_rank_zero() -> bool:
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


# ---------------------------------------------------------------- building


def experiment_loggers(
    out: str | os.PathLike[str],
    kind: str = "csv",
    *,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    default_experiment: str = DEFAULT_EXPERIMENT,
) -> list[Logger]:
    """Lightning's loggers of one training in run folder ``out``: CSV first, then the chosen one.

    Args:
        out: the run folder (``logs/`` and ``tensorboard/`` inside; ``mlruns/`` too without
            ``MLFLOW_TRACKING_URI`` and outside a scope that names a store).
        kind: ``csv``, ``tensorboard`` or ``mlflow``; a :func:`log_scope` that sets a
            kind wins (a compare row takes its recipe's).
        params: the run's parameters (a scope's are added).
        tags: the run's tags (a scope's are added, and win).
        default_experiment: the MLflow experiment without ``MLFLOW_EXPERIMENT_NAME`` or a scope's.

    Returns:
        ``[CSVLogger]`` or ``[CSVLogger, TensorBoardLogger | MLFlowLogger]``; the second is
        also recorded in the scope's ``opened``.

    Raises:
        GeoclError: the logger's package is missing, or the MLflow store cannot be used.
    """
    from lightning.pytorch.loggers import CSVLogger

    out = Path(out)
    scope = current_scope()
    kind = scope.kind or kind
    check_logger(kind)
    loggers: list[Logger] = [CSVLogger(out, name=CSV_FOLDER)]
    if kind == "csv":
        return loggers
    from geocl import __version__

    all_tags = {"geocl.version": __version__, **{str(k): str(v) for k, v in (tags or {}).items()}, **scope.tags}
    all_params = {name: _plain(value) for name, value in {**dict(params or {}), **scope.params}.items()}
    if kind == "tensorboard":
        extra = _tensorboard(out, all_params, all_tags)
    else:
        store = scope.store if scope.store is not None else out
        experiment = experiment_name(scope.experiment or default_experiment)
        extra = _mlflow(tracking_uri(store), experiment, out.name, all_params, all_tags)
    scope.opened.append(extra)
    loggers.append(extra)
    return loggers


def _tensorboard(out: Path, params: dict[str, Any], tags: dict[str, str]) -> Logger:
    """A TensorBoard logger under ``out/tensorboard`` holding params and tags as its hparams session."""
    from lightning.pytorch.loggers import TensorBoardLogger

    logger = TensorBoardLogger(out, name=TENSORBOARD_FOLDER, default_hp_metric=False)
    values = {**params, **tags}
    logger.log_hyperparams(values)  # kept in its hparams.yaml; no event without a metric
    if _is_rank_zero():
        from torch.utils.tensorboard.summary import hparams

        # the hparams plugin's session: what TensorBoard's HPARAMS tab lists per run
        writer = logger.experiment._get_file_writer()  # as Lightning's own log_hyperparams does
        for summary in hparams(values, {}):
            writer.add_summary(summary)
        logger.experiment.flush()
    return logger


def _mlflow(uri: str, experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> Logger:
    """An MLflow logger whose run exists (on rank zero) with its params and tags."""
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.exceptions import MlflowException

    if _is_rank_zero():
        open_experiment(uri, experiment)
    with _file_store_allowed(uri):  # every rank's logger opens a client
        logger = MLFlowLogger(experiment_name=experiment, run_name=run_name, tracking_uri=uri, tags=dict(tags))
    try:
        logger.log_hyperparams(params)  # rank zero only; starts the run
    except MlflowException as exc:
        message = " ".join(str(exc).split())[:200]
        raise GeoclError(
            f"MLflow tracking store {shown_uri(uri)} refused the run: {message}", key="trainer.logger"
        ) from None
    return logger


# ---------------------------------------------------------------- results


def log_final_metrics(loggers: list[Logger], metrics: Mapping[str, float], step: int = 0) -> None:
    """Log a finished run's figures (test scores...) to its loggers beside CSV, after Lightning closed them.

    Values that are not finite numbers are left out (a class absent from the test set).
    The CSV log is left alone: ``metrics.json`` holds these figures.
    """
    from lightning.pytorch.loggers import CSVLogger

    finite = {name: float(value) for name, value in metrics.items() if _finite(value)}
    for logger in loggers:
        if isinstance(logger, CSVLogger) or not finite:
            continue
        logger.log_metrics(finite, step=step)
        logger.finalize("success")  # TensorBoard: flushed and closed again; MLflow: still finished


def _finite(value: Any) -> TypeGuard[float]:
    """A real number (numpy's too) that is finite; not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def log_result(out: str | os.PathLike[str], metrics: Mapping[str, float]) -> None:
    """Log a compare row's result (``results.csv``'s metric columns) where the row's training logged.

    Into the loggers opened under the current scope (the row's finetuning), or, for an
    evaluation that trains through no Lightning logger (kNN probes), into a run of its own
    in ``out``. Nothing when the scope's logger is ``csv`` (``results.csv`` holds the row).

    Raises:
        GeoclError: the store refused it (the row itself stands: compare warns).
    """
    scope = current_scope()
    if scope.kind in (None, "csv"):
        return
    errors: tuple[type[Exception], ...] = (OSError,)
    if scope.kind == "mlflow":
        from mlflow.exceptions import MlflowException

        errors = (OSError, MlflowException)
    try:
        opened = list(scope.opened) or experiment_loggers(out, scope.kind, tags={"geocl.run": "evaluate"})[1:]
        log_final_metrics(opened, metrics)
    except errors as exc:
        raise GeoclError(
            f"the result was not logged to {scope.kind}: {' '.join(str(exc).split())[:200]}", path=out
        ) from None


def _steps_label(row: Mapping[str, Any]) -> str:
    steps = row.get("pretrain_steps")
    return f"{int(steps)}steps" if _finite(steps) else ""


def _metric_key(*parts: str) -> str:
    return "/".join(_UNSAFE_KEY.sub("_", part) for part in parts if part)


def log_comparison_summary(
    rows: list[dict[str, Any]], store: str | os.PathLike[str], *, baseline: str, files: list[Path]
) -> str:
    """Log a comparison's paired summary to MLflow, as one run ``summary`` of the comparison's experiment.

    Args:
        rows: ``results_summary.csv`` records (:func:`geocl.report.paired.paired_summary`
            with ``evaluation`` and ``pretrain_steps``): per recipe and label fraction the
            mean with its interval (``mean``, ``low``, ``high``, ``n``) and the paired
            difference to the baseline with its interval (``delta``, ``delta_low``,
            ``delta_high``, ``pairs``, ``wins``, ``losses``).
        store: the comparison folder: the file store's place without ``MLFLOW_TRACKING_URI``,
            the experiment's name without ``MLFLOW_EXPERIMENT_NAME`` (as for its rows).
        baseline: the recipe the differences are taken to (a tag).
        files: report files logged as the run's artifacts (those that exist).

    Metrics are named ``<evaluation>/<recipe>/f<fraction>/<column>`` (characters MLflow
    does not take become ``_``), at step ``pretrain_steps`` (0 without a budget), so a
    sweep of budgets gives each figure's curve over steps; values that are not finite
    (the baseline's own difference) are left out.

    Returns:
        The MLflow run id.
    """
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    folder = Path(store).resolve().name
    uri = tracking_uri(store)
    experiment_id = open_experiment(uri, experiment_name(folder))
    with _file_store_allowed(uri):
        client = MlflowClient(uri)
    from geocl import __version__

    tags = {"geocl.version": __version__, "geocl.run": "compare-summary", "comparison": folder, "baseline": baseline}
    run = client.create_run(experiment_id, run_name="summary", tags=tags)
    columns = ("mean", "low", "high", "n", "delta", "delta_low", "delta_high", "pairs", "wins", "losses")
    metrics: list[Metric] = []
    stamp = int(time.time() * 1000)
    for row in rows:
        steps = row.get("pretrain_steps")
        step = int(steps) if _finite(steps) else 0
        prefix = (str(row.get("evaluation") or ""), str(row["recipe"]), f"f{float(row['label_fraction']):g}")
        for column in columns:
            value = row.get(column)
            if _finite(value):
                metrics.append(Metric(_metric_key(*prefix, column), float(value), stamp, step))
    flags = [  # why a recipe's rows are not its method's (a budget inside its warm-up): as results.md says
        RunTag(
            _metric_key("flag", str(row.get("evaluation") or ""), str(row["recipe"]), _steps_label(row)),
            str(row["flag"]),
        )
        for row in rows
        if isinstance(row.get("flag"), str) and row["flag"]
    ]
    for start in range(0, max(len(metrics), 1), 1000):  # MLflow's batch limit
        client.log_batch(run.info.run_id, metrics=metrics[start : start + 1000], tags=flags if start == 0 else [])
    for path in files:
        if path.is_file():
            client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id, "FINISHED")
    return str(run.info.run_id)
