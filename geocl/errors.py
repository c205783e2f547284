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


# The matching built-in errors too, as torchgeo's DatasetNotFoundError is a FileNotFoundError:
# code that catches the built-in (a caller's ``except FileNotFoundError``) catches these as well,
# and the CLI still prints them as one line.


class MissingInputError(GeoclError, FileNotFoundError):
    """A file or folder the user named (a scene, tile set, checkpoint, recipe) does not exist."""


class InvalidInputError(GeoclError, ValueError):
    """A value, file content or recipe key the user gave is out of range or malformed."""


class OutputExistsError(GeoclError, FileExistsError):
    """An output would overwrite something that must be kept (an input, an earlier run)."""


class InputPermissionError(GeoclError, PermissionError):
    """A file or folder the user named cannot be read or written with the user's rights."""
