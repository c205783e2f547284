"""Quiet output by default: a run prints geocl's own progress and results.

Lightning announces itself on every run (``GPU available: ...``, ``TPU available:
...``, ``💡 Tip: ...`` about its cloud products, ``Restoring states from the checkpoint
path ...``, ``LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES``, ``Seed set to 0``) through INFO
records of its loggers, and the libraries below geocl warn about their own internals
(deprecations of one another's APIs, "does not have many workers"). None of it is
something a user of geocl can act on. :func:`configure_output` hides both unless
``verbose``; warnings and errors of every logger, geocl's warnings and the warnings
attributed to other code are kept.

Lightning sets the level of its package loggers (``lightning.pytorch``,
``lightning.fabric``) to INFO when it is imported, after this runs, so the levels are
set on the loggers below them, which it leaves alone; the messages come from those.
This module imports only the standard library.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, cast

#: Lightning's packages (the unified ``lightning`` and the standalone distributions).
_LIGHTNING_PACKAGES = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")
#: Their sub-packages: each logger below them logs through one of these.
_LIGHTNING_SUBPACKAGES = (
    "accelerators",
    "callbacks",
    "cli",
    "connector",
    "core",
    "demos",
    "fabric",
    "loggers",
    "loops",
    "overrides",
    "plugins",
    "profilers",
    "serve",
    "strategies",
    "trainer",
    "tuner",
    "utilities",
    "wrappers",
)
#: The loggers set to WARNING when quiet: every logger of Lightning's sub-packages,
#: among them ``lightning.pytorch.utilities.rank_zero`` (GPU/TPU available, tips,
#: restoring states, `Trainer.fit` stopped), ``lightning.pytorch.accelerators.cuda``
#: (LOCAL_RANK), ``lightning.fabric.utilities.seed`` (Seed set) and
#: ``lightning.pytorch.callbacks.model_summary`` (the parameter table).
QUIET_LOGGERS: tuple[str, ...] = tuple(
    f"{package}.{sub}" for package in _LIGHTNING_PACKAGES for sub in _LIGHTNING_SUBPACKAGES
)
#: Packages whose own deprecation and user warnings are hidden when quiet.
QUIET_WARNING_MODULES: tuple[str, ...] = (
    "lightning",
    "pytorch_lightning",
    "lightning_fabric",
    "lightning_utilities",
    "torch",
    "torchvision",
    "torchgeo",
    "torchmetrics",
    "timm",
    "kornia",
    "lightly",
    "segmentation_models_pytorch",
    "rasterio",
    "pyproj",
    "geopandas",
    "shapely",
    "matplotlib",
    "pandas",
    "mlflow",
    "tensorboard",
)
_QUIET_CATEGORIES: tuple[type[Warning], ...] = (
    DeprecationWarning,
    PendingDeprecationWarning,
    FutureWarning,
    UserWarning,
)
_MODULE_PATTERN = r"(" + "|".join(name.replace(".", r"\.") for name in QUIET_WARNING_MODULES) + r")(\..*)?$"

#: The warning filters this module added (removed again by a verbose call).
_installed: list[tuple[object, ...]] = []


def configure_output(verbose: bool = False) -> None:
    """Set up the output of a run: quiet (default) or everything.

    Quiet: Lightning's INFO banners are dropped (:data:`QUIET_LOGGERS` at WARNING) and
    deprecation, future and user warnings raised inside the third-party packages of
    :data:`QUIET_WARNING_MODULES` are ignored. Verbose: both are undone, so every
    logger shows what its package configured and warnings follow Python's filters.
    Call it before a command runs; calling it again switches.

    Args:
        verbose: show everything.
    """
    level = logging.NOTSET if verbose else logging.WARNING
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(level)
    _remove_filters()
    if verbose:
        return
    for category in _QUIET_CATEGORIES:
        warnings.filterwarnings("ignore", category=category, module=_MODULE_PATTERN)
        _installed.append(warnings.filters[0])


def _remove_filters() -> None:
    if not _installed:
        return
    kept = [entry for entry in warnings.filters if entry not in _installed]
    _installed.clear()
    # a list at runtime, which typeshed declares a Sequence
    cast(list[Any], warnings.filters)[:] = kept
    # let the warnings machinery forget what it decided under the old filters
    mutated = getattr(warnings, "_filters_mutated", None)
    if mutated is not None:
        mutated()
