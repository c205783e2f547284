"""Checks shared by the tests of refused commands: what a folder holds, and the one error line."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (links followed) by its SHA-256: equal before and after means untouched."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def error_line(status: int, capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line of a refused command (exit 2, no traceback, no object repr)."""
    captured = capsys.readouterr()
    assert status == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert " object at 0x" not in lines[0]
    return lines[0]
