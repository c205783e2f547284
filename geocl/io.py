"""Output paths: checked before any work, written atomically (a reader, or a rerun after a
crash, never sees half a file)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from geocl.errors import GeoclError


def check_output_folder(folder: str | os.PathLike[str], *, key: str | None = None) -> Path:
    """Make sure ``folder`` can receive a run's files, before any work starts.

    Creates it (and its parents) when missing.

    Raises:
        GeoclError: naming the path (and ``key``, the option or recipe key that gave it)
            when it is an existing file, cannot be created, or is not writable.
    """
    folder = Path(folder)
    where = f" (given by {key})" if key else ""
    if folder.exists() and not folder.is_dir():
        raise GeoclError(f"is a file, not a folder{where}; choose another output folder", path=folder, key=key)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GeoclError(f"cannot create the output folder{where}: {exc.strerror or exc}", path=folder, key=key) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise GeoclError(f"output folder is not writable{where}", path=folder, key=key)
    return folder


def check_output_file(path: str | os.PathLike[str], *, key: str | None = None) -> Path:
    """Make sure a file can be written at ``path`` (its folder writable, it no folder), before any work.

    Raises:
        GeoclError: naming the path when it is a folder or its folder cannot take it.
    """
    path = Path(path)
    if path.is_dir():
        where = f" (given by {key})" if key else ""
        raise GeoclError(f"is a folder, not a file{where}; give a file name", path=path, key=key)
    check_output_folder(path.parent if str(path.parent) else Path("."), key=key)
    if path.exists() and not os.access(path, os.W_OK):
        raise GeoclError("exists and is not writable", path=path, key=key)
    return path


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` on success.

    The temporary name keeps the final suffix so format drivers that look at it
    (GDAL, OGR) pick the right one. On error the temporary file is removed and
    ``final`` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = final.with_name(f".{final.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{final.suffix}")
    try:
        yield temp
        os.replace(temp, final)
    finally:
        if temp.exists():
            temp.unlink()


def atomic_write_text(final: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``final`` atomically."""
    with atomic_path(final) as temp:
        temp.write_text(text)


def save_figure(figure: Any, final: str | os.PathLike[str], dpi: int = 110) -> Path:
    """Write a matplotlib figure (a bare ``Figure``, no pyplot state) as PNG atomically.

    Args:
        figure: a ``matplotlib.figure.Figure``.
        final: the PNG path.
        dpi: resolution.

    Returns:
        The PNG path.
    """
    final = Path(final)
    with atomic_path(final) as temp:
        figure.savefig(temp, dpi=dpi, format="png")
    return final
