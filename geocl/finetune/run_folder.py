"""The run folder of a downstream training: one run a folder, and its ``metrics.json``.

A folder that holds a finetuning run (its ``metrics.json`` or a checkpoint) is refused
before any work (:func:`check_finetune_folder`), naming each option that differs from the
run found there; for that, ``metrics.json`` records under :data:`OPTIONS_KEY` every option
that determines the result (:func:`recorded_options`: paths resolved, the encoder
checkpoint by the SHA-256 of its bytes). The result is written last, atomically, in
strict JSON (:func:`write_result`). The skeleton of :mod:`geocl.finetune.downstream` calls
both; the reasons are in its docstring.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from geocl.errors import GeoclError
from geocl.io import atomic_write_text, check_output_folder
from geocl.models.checkpoints import checkpoint_fingerprint

__all__ = [
    "FINGERPRINT_KEY",
    "OPTIONS_KEY",
    "RESULT_FILE",
    "check_finetune_folder",
    "recorded_options",
    "strict_json",
    "write_result",
]


#: What marks a folder as holding a finetuning run (besides ``checkpoints/*.ckpt``).
RESULT_FILE = "metrics.json"
#: Where ``metrics.json`` records every option that determines a run's result (see :func:`check_finetune_folder`).
OPTIONS_KEY = "options"
#: The SHA-256 of the encoder checkpoint's bytes, recorded with the options: the same path may
#: hold another pretraining since.
FINGERPRINT_KEY = "encoder_checkpoint_sha256"
#: Options named in words in the refusal (their keys read badly there).
_SHOWN_NAMES = {"encoder_checkpoint": "encoder checkpoint", FINGERPRINT_KEY: "encoder checkpoint content"}
#: A key the run found there did not record.
_UNRECORDED = object()


def check_finetune_folder(out: str | Path, options: dict[str, Any] | None = None) -> Path:
    """Make sure ``out`` can take a new finetuning run, before any work (created when missing).

    Args:
        out: the run folder (the ``out`` option).
        options: the new run's options (e.g. ``label_fraction``, ``seed``, ``encoder``
            or ``encoder_checkpoint``, ``arch``, ``lr``), to say which of them differ from
            the run found there. An ``encoder_checkpoint`` is compared by its resolved path
            and by the SHA-256 of its content; ``encoder`` without ``encoder_checkpoint``
            means a random init, which differs from a run that started from a checkpoint.

    Raises:
        GeoclError: ``out`` (key ``out``) is a file or not writable, or holds a
            finetuning run: ``metrics.json`` or any ``checkpoints/*.ckpt``, finished
            or not. Its files are left untouched. The message names each option that
            differs (``lr 0.001 (now 0.01)``), or each one the old run did not record;
            it says "the same options" only when every option given was recorded and is equal.
    """
    out = check_output_folder(out, key="out")
    held = [RESULT_FILE] if (out / RESULT_FILE).exists() else []
    held += sorted(path.relative_to(out).as_posix() for path in (out / "checkpoints").glob("*.ckpt"))
    if not held:
        return out
    differs = _differing_options(out / RESULT_FILE, options or {})
    raise GeoclError(
        f"holds a finetuning run ({', '.join(held)}){differs}; a new run there would mix its model and "
        "figures with the old ones: choose another out, or delete the folder to redo the run",
        path=out,
        key="out",
    )


def _resolved(path: str | Path | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def recorded_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options of a run as ``metrics.json`` records them under :data:`OPTIONS_KEY`.

    Paths resolved, ``subset_seed`` None replaced by the seed, a random init recorded as
    ``encoder_checkpoint: None``, and an encoder checkpoint's content as its SHA-256
    (:data:`FINGERPRINT_KEY`). :func:`check_finetune_folder` compares the new run's
    options in this form with those recorded.
    """
    compared = dict(options)
    if compared.get("subset_seed") is None and "seed" in compared:
        compared["subset_seed"] = compared["seed"]  # None: the subset is drawn with the seed
    if "encoder_checkpoint" not in compared and "encoder" in compared:
        compared["encoder_checkpoint"] = None  # a random init
    if compared.get("encoder_checkpoint") is not None:
        compared[FINGERPRINT_KEY] = checkpoint_fingerprint(compared["encoder_checkpoint"])
        compared.pop("encoder", None)  # a checkpoint brings its own
    for key in ("encoder_checkpoint", "tiles"):
        if compared.get(key) is not None:
            compared[key] = _resolved(compared[key])
    return compared


def _recorded(before: dict[str, Any], key: str) -> Any:
    """An option of the run found in the folder: from its options record, else the top level."""
    options = before.get(OPTIONS_KEY)
    if isinstance(options, dict) and key in options:
        return options[key]
    if key not in before:
        return _UNRECORDED
    value = before[key]
    # runs that recorded only the top level wrote the encoder checkpoint as it was given
    return _resolved(value) if key in ("encoder_checkpoint", "tiles") and isinstance(value, str) else value


def _shown(key: str, value: Any) -> str:
    if key == "encoder_checkpoint" and value is None:
        return "none (random init)"
    if key == FINGERPRINT_KEY and isinstance(value, str):
        return f"sha256 {value[:12]}"
    return str(value)


def _same(old: Any, new: Any) -> bool:
    """Equal as recorded in JSON (``1`` and ``1.0`` alike, but ``True`` not ``1``)."""
    if isinstance(old, bool) or isinstance(new, bool):
        return old is new
    return bool(old == new)


def _differing_options(metrics: Path, options: dict[str, Any]) -> str:
    """``" made with other options: seed 0 (now 1)"``, ``" made with the same options"`` or ``""``."""
    try:
        before = json.loads(metrics.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    if not isinstance(before, dict) or not options:
        return ""
    now = recorded_options(options)
    changed, unrecorded = [], []
    for key, value in now.items():
        old = _recorded(before, key)
        name = _SHOWN_NAMES.get(key, key)
        if old is _UNRECORDED:
            unrecorded.append(name)
        elif not _same(old, value):
            changed.append(f"{name} {_shown(key, old)} (now {_shown(key, value)})")
    if changed:
        return f" made with other options: {', '.join(changed)}"
    if unrecorded:
        return f" made with the same recorded options; it does not record {', '.join(unrecorded)}"
    return " made with the same options"


def strict_json(value: Any) -> Any:
    """``value`` with every float that is not finite (NaN, inf) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value


def write_result(out: Path, record: dict[str, Any]) -> None:
    """Write a finished run's :data:`RESULT_FILE` atomically, last: strict JSON (NaN and inf as null).

    Every downstream training writes its result through here, so ``geocl compare`` reads
    one format and a file that exists marks a finished run.
    """
    atomic_write_text(out / RESULT_FILE, json.dumps(strict_json(record), indent=1, allow_nan=False))
