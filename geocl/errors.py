"""The one error type for user errors (bad files, options, recipe keys).

Bugs raise ordinary exceptions with a traceback; anything the user can fix raises
:class:`GeoclError`, which the CLI prints as one line and turns into a non-zero exit.
"""

from __future__ import annotations

from os import PathLike


class GeoclError(Exception):
    """A user error that names the file or key at fault.

    Args:
        message: what is wrong and, where possible, how to fix it.
        path: the file or folder at fault, if any.
        key: the option or recipe key at fault, if any.
    """

    def __init__(self, message: str, *, path: str | PathLike[str] | None = None, key: str | None = None) -> None:
        self.path = None if path is None else str(path)
        self.key = key
        prefix = ""
        if self.path is not None:
            prefix = f"{self.path}: "
        elif key is not None:
            prefix = f"{key}: "
        super().__init__(prefix + message)
