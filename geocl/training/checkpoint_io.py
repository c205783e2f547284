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
``last.ckpt`` is missing or unreadable (written by an older geocl, or damaged since).
"""

from __future__ import annotations

import errno
import io
import os
import re
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from geocl.errors import GeoclError
from geocl.io import atomic_path

#: What Lightning's ``ModelCheckpoint`` names the latest checkpoint of a run.
LAST_NAME = "last.ckpt"
#: The per-epoch checkpoints of a run (``build_trainer``'s ``filename="epoch{epoch:03d}"``).
EPOCH_PATTERN = re.compile(r"epoch(\d+)\.ckpt")
#: Errors of the storage, not of geocl: the user can fix them (space, permissions).
NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))  # EDQUOT: a quota full (not on Windows)
NO_ACCESS = (errno.EACCES, errno.EPERM, errno.EROFS)


def storage_error(
    exc: OSError, written: str | os.PathLike[str] | None, last_complete: Path | None, folder: Path | None = None
) -> GeoclError | None:
    """The one-line error for a failed write, or None for an error that is not the storage's.

    Args:
        exc: what the write raised.
        written: the file being written (the final name, not a temporary one), None when unknown.
        last_complete: the newest complete checkpoint of the run, None when none was written yet.
        folder: where the run writes (named when ``written`` is unknown).
    """
    target = f"{written}" if written is not None else f"into {folder}"
    where = Path(written).parent if written is not None else folder
    if exc.errno in NO_SPACE:
        what, fix = f"no space left writing {target}", "free space"
    elif exc.errno in NO_ACCESS:
        what, fix = f"permission denied writing {target}", f"make {where} writable"
    else:
        return None
    kept = f"the last complete checkpoint is {last_complete}" if last_complete else "no checkpoint was written yet"
    rerun = "rerun with --resume" if last_complete else "rerun"
    return GeoclError(f"{what}; {kept}; {fix} and {rerun}")


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

    def __init__(self, resumed_from: Path | None = None) -> None:
        super().__init__()
        self.last_complete = resumed_from

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        final = Path(path)
        # serialised in memory first, as Lightning does: torch's own file writer reports
        # a full disk as a RuntimeError without the errno, a Python write as OSError(ENOSPC).
        # bytes, not a view of the buffer: a view kept alive by the error's traceback
        # would pin (and, collected with it, can crash) the BytesIO
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getvalue()
        del buffer
        try:
            with atomic_path(final) as temp, open(temp, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())  # the rename must not land before the bytes
        except OSError as exc:
            error = storage_error(exc, final, self.last_complete)
            if error is None:
                raise
            raise error from exc
        self.last_complete = final


def read_progress(path: Path) -> dict[str, Any] | None:
    """Epoch, step and band count stored in a checkpoint, or None when it cannot be read.

    Maps the file (``mmap``) instead of reading the weights; a truncated file fails
    here because a checkpoint's index sits at its end.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception:  # truncated, not a checkpoint, unreadable: all mean "not intact"
        return None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        return None
    meta = checkpoint.get("geocl") or {}
    return {
        "epoch": int(checkpoint.get("epoch", -1)),
        "global_step": int(checkpoint.get("global_step", -1)),
        "in_chans": meta.get("in_chans"),
    }


def epoch_checkpoints(folder: Path) -> list[Path]:
    """The ``epochNNN.ckpt`` files of a checkpoint folder, newest epoch first."""
    found = [
        (int(match[1]), path) for path in folder.glob("epoch*.ckpt") if (match := EPOCH_PATTERN.fullmatch(path.name))
    ]
    return [path for _, path in sorted(found, reverse=True)]


def newest_intact_checkpoint(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The readable checkpoint with the most steps (``last.ckpt`` on a tie), and its progress."""
    best: tuple[Path, dict[str, Any]] | None = None
    for path in [folder / LAST_NAME, *epoch_checkpoints(folder)]:
        if not path.is_file():
            continue
        progress = read_progress(path)
        if progress is not None and (best is None or progress["global_step"] > best[1]["global_step"]):
            best = (path, progress)
    return best


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
