"""What a comparison records to decide what it may reuse, and how two records differ.

A row is reused only when everything that determines it is unchanged (see
:mod:`geocl.experiments`, Resuming): its settings are recorded in its run folder's
``row.json`` (:func:`row_settings`, :func:`write_row_record`), a pretraining's in its
``config.yaml`` (compared without :data:`UNTRAINED_KEYS`, :func:`trained_part`). Both are
read as today's schema reads them, so keys it gained since take their defaults
(:func:`with_todays_defaults`). What changed between two records is said in one line
(:func:`describe_changes`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from geocl.errors import GeoclError
from geocl.evaluation import Evaluation, Subset
from geocl.evaluation.protocol import TestSet
from geocl.io import atomic_write_text
from geocl.methods import todays_recipe
from geocl.recipes import DataConfig, EncoderConfig, recipe_to_dict

__all__ = [
    "ROW_RECORD",
    "PRETRAINING_ONLY_DATA_KEYS",
    "UNTRAINED_KEYS",
    "UNTRAINED_TRAINER_KEYS",
    "describe_changes",
    "differing_keys",
    "encoder_identity",
    "read_row_record",
    "reused_checkpoint",
    "row_settings",
    "trained_part",
    "with_todays_defaults",
    "write_row_record",
]

#: The settings of a finished row, in its run folder (see :mod:`geocl.experiments`).
ROW_RECORD = "row.json"
#: Changed settings named in one line before "and N more".
_SHOWN_CHANGES = 3
#: Recipe keys that change nothing a run trains: where its folder is (``out``: a comparison
#: may be moved) and the online representation monitor, which leaves the weights as they are.
UNTRAINED_KEYS = ("out", "monitor")
#: Keys of the ``trainer`` section that change nothing a run trains: the experiment logger
#: (switching a comparison to MLflow keeps its pretrainings and rows) and the steps kept as
#: snapshots (a long run of a ``--snapshots`` sweep serves a later comparison at its own budget),
#: and how often checkpoints are written.
UNTRAINED_TRAINER_KEYS = ("logger", "snapshot_steps", "checkpoint_every_s")
#: Keys of the ``data`` section that only shape pretraining batches. A random-init row trains
#: nothing with them before its evaluation, so they do not tell two of its rows apart.
#: ``view_size`` is not one: the retrieval protocol trains its dual encoder on the first
#: recipe's data section, views included.
PRETRAINING_ONLY_DATA_KEYS = ("batch_size", "num_workers")


def differing_keys(before: Any, now: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain-data recipes (``seed``, ``method.temperature``)."""
    if isinstance(before, dict) and isinstance(now, dict):
        keys = [*before, *(key for key in now if key not in before)]
        return [name for key in keys for name in differing_keys(before.get(key), now.get(key), f"{prefix}{key}.")]
    return [] if before == now else [prefix.rstrip(".") or "the recipe"]


def trained_part(recipe: Any) -> Any:
    """A plain-data recipe without :data:`UNTRAINED_KEYS` (and :data:`UNTRAINED_TRAINER_KEYS`): what decides
    whether a folder holds the same run."""
    if not isinstance(recipe, dict):
        return recipe
    kept = {key: value for key, value in recipe.items() if key not in UNTRAINED_KEYS}
    if isinstance(kept.get("trainer"), dict):
        kept["trainer"] = {key: value for key, value in kept["trainer"].items() if key not in UNTRAINED_TRAINER_KEYS}
    return kept


def encoder_identity(recipe: Any, *, random: bool) -> dict[str, Any]:
    """What a row's encoder is, as plain data: the pretraining recipe (without ``out`` and ``monitor``), or a random init's data and encoder."""
    plain = recipe_to_dict(recipe)
    if random:
        return {"random_init": {"data": _evaluated_data(plain.get("data")), "encoder": plain.get("encoder")}}
    return {"recipe": trained_part(plain)}


def _evaluated_data(data: Any) -> Any:
    """A random init's ``data`` section without :data:`PRETRAINING_ONLY_DATA_KEYS`."""
    if not isinstance(data, dict):
        return data
    return {key: value for key, value in data.items() if key not in PRETRAINING_ONLY_DATA_KEYS}


def row_settings(
    evaluation: Evaluation, subset: Subset, seed: int, encoder: dict[str, Any], test_set: TestSet | None
) -> dict[str, Any]:
    """Everything that determines one row's numbers, as the JSON data ``row.json`` holds."""
    settings = {
        "evaluation": evaluation.settings(),
        "label_fraction": subset.label_fraction,
        "subset_seed": subset.subset_seed,
        "seed": seed,
        "encoder": encoder,
        "test_set": None
        if test_set is None
        else {"description": test_set.description, "class_pixels": test_set.class_pixels},
    }
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def with_todays_defaults(settings: dict[str, Any]) -> dict[str, Any]:
    """A recorded row's settings with its pretraining recipe read as today's schema reads it.

    Keys the schema gained since the row was recorded take their defaults
    (:func:`geocl.methods.todays_recipe`, which also reads a pretraining's ``config.yaml``): a
    new method parameter whose default is the old behaviour does not make every earlier
    row of that method count as changed. A random init's ``data`` and ``encoder`` sections
    are read the same way, and its data section without :data:`PRETRAINING_ONLY_DATA_KEYS`
    (a row recorded with them matches one recorded without). Settings whose recipe or
    sections no longer validate are returned as they are.
    """
    encoder = settings.get("encoder")
    if not isinstance(encoder, dict):
        return settings
    if isinstance(recipe := encoder.get("recipe"), dict):
        # out is left out of the record (it names no training) but the schema requires one
        today = todays_recipe({**recipe, "out": "."})
        if today is None:
            return settings
        identity: dict[str, Any] = {"recipe": trained_part(today)}
    elif isinstance(random := encoder.get("random_init"), dict):
        try:  # as the schema reads a recipe's sections: a key added since takes its default
            data = DataConfig.model_validate(random["data"]).model_dump(mode="json")
            identity = {
                "random_init": {
                    "data": _evaluated_data(data),
                    "encoder": EncoderConfig.model_validate(random["encoder"]).model_dump(mode="json"),
                }
            }
        except (KeyError, ValidationError, GeoclError):
            return settings
    else:
        return settings
    upgraded = {**settings, "encoder": {**encoder, **identity}}
    return json.loads(json.dumps(upgraded, sort_keys=True, default=str))  # as row_settings writes them


def read_row_record(folder: Path) -> dict[str, Any] | None:
    """A run folder's ``row.json``, or None (absent or unreadable)."""
    try:
        record = json.loads((folder / ROW_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("settings"), dict) else None


def write_row_record(folder: Path, root: Path, settings: dict[str, Any], checkpoint: str) -> None:
    """Record a finished row's settings, its checkpoint relative to the comparison folder where it lies inside."""
    if checkpoint:
        try:
            checkpoint = Path(checkpoint).resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            pass  # outside the comparison: kept as it is
    atomic_write_text(folder / ROW_RECORD, json.dumps({"settings": settings, "checkpoint": checkpoint}, indent=1))


def reused_checkpoint(record: dict[str, Any], root: Path, fallback: str) -> str:
    """A reused row's checkpoint: recorded relative to the comparison folder, wherever that is now."""
    recorded = record.get("checkpoint")
    if not isinstance(recorded, str) or not recorded:
        return fallback
    return recorded if Path(recorded).is_absolute() else str(root / recorded)


def describe_changes(before: dict[str, Any], now: dict[str, Any]) -> str:
    """``finetune lr 0.001, now 0.01; ...``: the settings that differ, evaluation options by their own names."""
    changed = []
    for key in differing_keys(before, now):
        old, new = _at(before, key), _at(now, key)
        shown = key
        if key.startswith("evaluation.options."):
            shown = f"{now.get('evaluation', {}).get('name', 'evaluation')} {key.removeprefix('evaluation.options.')}"
        elif (
            key.startswith("evaluations.") and key.count(".") >= 3
        ):  # comparison.json: evaluations.<name>.options.<key>
            _, name, _, option = key.split(".", 3)
            shown = f"{name} {option}"
        elif key.startswith("encoder.recipe."):
            shown = f"pretraining {key.removeprefix('encoder.recipe.')}"
        changed.append(f"{shown} {_plain(old)}, now {_plain(new)}")
    more = f"; and {len(changed) - _SHOWN_CHANGES} more" if len(changed) > _SHOWN_CHANGES else ""
    return "; ".join(changed[:_SHOWN_CHANGES]) + more


def _at(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _plain(value: Any) -> str:
    if value is None:
        return "unset"
    text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= 60 else text[:59] + "…"
