"""Checkpoints written whole or not at all, and the one-line story when a write fails.

Lightning's own writer (``TorchCheckpointIO``) serialises into memory and then writes
the bytes straight onto the final name: a full disk or a folder that turns read-only
half-way leaves a truncated ``epochNNN.ckpt`` or ``last.ckpt`` that a later ``--resume``
trips over. :class:`AtomicCheckpointIO` writes beside the final name and renames
(:func:`geocl.io.atomic_path`), so every ``*.ckpt`` in a run folder is complete: a
failed write leaves the previous file and no partial one.

It also remembers the last checkpoint it completed (or the one the run resumed from),
so that the failure reads as one line naming both files::

    no space left writing OUT/checkpoints/epoch002.ckpt; the last complete checkpoint is
    OUT/checkpoints/last.ckpt; free space and rerun with --resume

:func:`newest_intact_checkpoint` picks what ``--resume`` continues from when
``last.ckpt`` is missing, older than an epoch checkpoint (a run killed between writing
``epochNNN.ckpt`` and ``last.ckpt``) or unreadable (written by an older geocl, or damaged
since); :func:`restore_last` then makes ``last.ckpt`` that checkpoint again.

Nothing is unpickled from a checkpoint: :meth:`AtomicCheckpointIO.load_checkpoint` (what
Lightning's resume and ``trainer.test(ckpt_path=...)`` call) reads with
``torch.load(weights_only=True)`` whatever Lightning asks, through
:func:`geocl.finetune.model.read_checkpoint`, and :meth:`AtomicCheckpointIO.save_checkpoint`
stores plain data only (:func:`plain_data`), so every checkpoint geocl writes reads back so.
"""

from __future__ import annotations

import errno
import io
import os
import re
import shutil
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO
from pydantic import BaseModel

from geocl.errors import GeoclError
from geocl.io import atomic_path
from geocl.models.checkpoints import checkpoint_kind, read_checkpoint

#: What Lightning's ``ModelCheckpoint`` names the latest checkpoint of a run.
LAST_NAME = "last.ckpt"
#: The per-epoch checkpoints of a run (``build_trainer``'s ``filename="epoch{epoch:03d}"``).
EPOCH_PATTERN = re.compile(r"epoch(\d+)\.ckpt")
#: Errors of the storage, not of geocl: the user can fix them (space, permissions).
NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))  # EDQUOT: a quota full (not on Windows)
NO_ACCESS = (errno.EACCES, errno.EPERM, errno.EROFS)


def storage_error(
    exc: OSError,
    written: str | os.PathLike[str] | None,
    last_complete: Path | None,
    folder: Path | None = None,
    resumable: bool = True,
) -> GeoclError | None:
    """The one-line error for a failed write, or None for an error that is not the storage's.

    Args:
        exc: what the write raised.
        written: the file being written (the final name, not a temporary one), None when unknown.
        last_complete: the newest complete checkpoint of the run, None when none was written yet.
        folder: where the run writes (named when ``written`` is unknown).
        resumable: the run continues with ``--resume`` (pretraining); False: it is rerun whole.
    """
    target = f"{written}" if written is not None else f"into {folder}"
    where = Path(written).parent if written is not None else folder
    if exc.errno in NO_SPACE:
        what, fix = f"no space left writing {target}", "free space"
    elif exc.errno in NO_ACCESS:
        what, fix = f"permission denied writing {target}", f"make {where} writable"
    else:
        return None
    if not resumable:
        return GeoclError(f"{what}; {fix} and rerun")
    kept = f"the last complete checkpoint is {last_complete}" if last_complete else "no checkpoint was written yet"
    rerun = "rerun with --resume" if last_complete else "rerun"
    return GeoclError(f"{what}; {kept}; {fix} and {rerun}")


#: Values ``torch.load(weights_only=True)`` reads back as they are (tensors aside).
_PLAIN_ATOMS = (type(None), bool, int, float, complex, str, bytes, bytearray, torch.dtype, torch.device, torch.Size)


def plain_data(value: Any, where: str = "checkpoint") -> Any:
    """``value`` as data ``torch.load(weights_only=True)`` reads back, without any other object.

    Tensors, numbers, strings and dicts, lists, tuples and sets of them stay as they
    are; what stands for plain data is replaced by it: a numpy scalar or array by its
    number or list, a path by its string, an enum by its value, a pydantic model by its
    JSON-mode dump, any other mapping (Lightning's ``AttributeDict``) by a dict, a named
    tuple by a tuple.

    Raises:
        TypeError: for any other object (a bug: geocl must store plain data), naming
            where in the checkpoint it is.
    """
    if type(value) in _PLAIN_ATOMS or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, Enum):
        return plain_data(value.value, where)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        pairs = [(plain_data(key, where), plain_data(item, f"{where}[{key!r}]")) for key, item in value.items()]
        kept = type(value) in (dict, OrderedDict, Counter)
        if kept and all(new[0] is old[0] and new[1] is old[1] for new, old in zip(pairs, value.items(), strict=False)):
            return value  # unchanged: the same object (a state dict keeps its ``_metadata``)
        plain = cast(Any, type(value))(pairs) if kept else dict(pairs)
        if kept and hasattr(value, "__dict__"):
            vars(plain).update(vars(value))
        return plain
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [plain_data(item, f"{where}[{index}]") for index, item in enumerate(value)]
        if type(value) in (list, tuple, set) and all(new is old for new, old in zip(items, value, strict=False)):
            return value
        if type(value) in (list, set):
            return type(value)(items)
        return tuple(items) if isinstance(value, tuple) else set(items)
    if isinstance(value, (bool, int, float, str, bytes)):  # subclasses of the built-in types
        base: Any = next(base for base in (bool, int, float, str, bytes) if isinstance(value, base))
        return base(value)
    raise TypeError(
        f"{where} holds a {type(value).__module__}.{type(value).__qualname__}: a checkpoint stores plain data only, "
        "which torch.load(weights_only=True) reads back"
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint writer, writing through a temporary file and a rename.

    Args:
        resumed_from: the checkpoint the run continues from (the last complete one until
            this writer completes another), None for a new run.

    Attributes:
        last_complete: the newest checkpoint known complete.

    Raises:
        GeoclError: from :meth:`save_checkpoint` when the disk is full or the folder
            not writable, naming the file and :attr:`last_complete`; no partial file is
            left behind.
    """

    def __init__(self, resumed_from: Path | None = None, resumable: bool = True) -> None:
        super().__init__()
        self.last_complete = resumed_from
        self.resumable = resumable

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        final = Path(path)
        # serialised in memory first, as Lightning does: torch's own file writer reports
        # a full disk as a RuntimeError without the errno, a Python write as OSError(ENOSPC).
        # bytes, not a view of the buffer: a view kept alive by the error's traceback
        # would pin (and, collected with it, can crash) the BytesIO
        buffer = io.BytesIO()
        torch.save(plain_data(checkpoint), buffer)
        data = buffer.getvalue()
        del buffer
        try:
            with atomic_path(final) as temp, open(temp, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())  # the rename must not land before the bytes
        except OSError as exc:
            error = storage_error(exc, final, self.last_complete, resumable=self.resumable)
            if error is None:
                raise
            raise error from exc
        self.last_complete = final

    def load_checkpoint(
        self, path: _PATH, map_location: Callable[..., Any] | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """The checkpoint at ``path`` on the CPU, read with ``weights_only=True`` whatever is asked.

        Lightning calls this to resume (``trainer.fit(ckpt_path=...)``) and to test a
        checkpoint (``trainer.test(ckpt_path=...)``); Lightning moves the weights to the
        model's device itself.

        Raises:
            GeoclError: naming the file when it cannot be read, holds Python objects, or
                is no Lightning checkpoint (see :func:`~geocl.finetune.model.read_checkpoint`).
        """
        checkpoint = read_checkpoint(path)
        if not isinstance(checkpoint.get("state_dict"), dict):
            raise GeoclError(f"is {checkpoint_kind(checkpoint)}, not a checkpoint of a geocl run", path=path)
        return checkpoint


def checkpoint_progress(path: Path) -> dict[str, Any]:
    """Epoch, step and band count stored in a pretraining checkpoint.

    Maps the file (``mmap``) instead of reading the weights; a truncated file fails
    here because a checkpoint's index sits at its end.

    Raises:
        GeoclError: naming the file, saying why it cannot be resumed from (see
            :func:`~geocl.finetune.model.read_checkpoint`), or that it is another kind of
            checkpoint.
    """
    checkpoint = read_checkpoint(path, mmap=True)
    meta = checkpoint.get("geocl")
    epoch, step = checkpoint.get("epoch"), checkpoint.get("global_step")
    if not isinstance(meta, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise GeoclError(f"is {checkpoint_kind(checkpoint)}, not a pretraining checkpoint", path=path)
    if type(epoch) is not int or type(step) is not int:
        raise GeoclError("is a pretraining checkpoint without its epoch and step (not written by Lightning)", path=path)
    in_chans = meta.get("in_chans")
    return {"epoch": epoch, "global_step": step, "in_chans": in_chans if type(in_chans) is int else None}


def read_progress(path: Path) -> dict[str, Any] | None:
    """:func:`checkpoint_progress`, or None when the file cannot be resumed from."""
    try:
        return checkpoint_progress(path)
    except GeoclError:
        return None


def epoch_checkpoints(folder: Path) -> list[Path]:
    """The ``epochNNN.ckpt`` files of a checkpoint folder, newest epoch first."""
    found = [
        (int(match[1]), path) for path in folder.glob("epoch*.ckpt") if (match := EPOCH_PATTERN.fullmatch(path.name))
    ]
    return [path for _, path in sorted(found, reverse=True)]


def run_checkpoints(folder: Path) -> list[Path]:
    """Every checkpoint file of a run's folder: ``last.ckpt``, the ``epochNNN.ckpt`` (newest
    epoch first), then any other ``*.ckpt`` (newest first); temporaries of writers aside."""
    epochs = epoch_checkpoints(folder)
    others = [
        path
        for path in folder.glob("*.ckpt")
        if not path.name.startswith(".") and path.name != LAST_NAME and path not in epochs
    ]
    others.sort(key=lambda path: path.stat().st_mtime_ns if path.exists() else 0, reverse=True)
    last = [folder / LAST_NAME] if (folder / LAST_NAME).exists() else []
    return [*last, *epochs, *others]


def newest_intact_checkpoint(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The readable checkpoint with the most steps (``last.ckpt`` on a tie, then the order
    of :func:`run_checkpoints`), and its progress."""
    best: tuple[Path, dict[str, Any]] | None = None
    for path in run_checkpoints(folder):
        progress = read_progress(path)
        if progress is not None and (best is None or progress["global_step"] > best[1]["global_step"]):
            best = (path, progress)
    return best


def restore_last(folder: Path, newest: Path) -> Path:
    """Make ``folder/last.ckpt`` a copy of ``newest`` (atomically) unless it is that file already.

    A run killed after writing ``epochNNN.ckpt`` and before ``last.ckpt``, then resumed,
    has nothing left to train; its newest checkpoint is the epoch file. ``newest`` is
    left as it was.

    Raises:
        GeoclError: for a full disk or a folder that is not writable, naming ``last.ckpt``.
    """
    last = folder / LAST_NAME
    if newest == last:
        return last
    try:
        with atomic_path(last) as temp, open(newest, "rb") as source, open(temp, "wb") as target:
            shutil.copyfileobj(source, target, 2**22)
            target.flush()
            os.fsync(target.fileno())
    except OSError as exc:
        error = storage_error(exc, last, newest)
        if error is None:
            raise
        raise error from exc
    return last


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the temporary files of writers that died (SIGKILL) before their rename."""
    for temp in folder.glob(".*.tmp-*"):
        match = re.search(r"\.tmp-(\d+)-", temp.name)
        if match is None:
            continue
        try:
            os.kill(int(match[1]), 0)
        except ProcessLookupError:
            temp.unlink(missing_ok=True)
        except OSError:
            pass  # alive under another user: not ours to touch
