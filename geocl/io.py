"""Atomic file writes: a reader, or a rerun after a crash, never sees half a file."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


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
