"""User errors: one message naming the file or key, and the matching built-in error too."""

from __future__ import annotations

import errno

import pytest

from geocl.errors import GeoclError, InputPermissionError, InvalidInputError, MissingInputError, OutputExistsError


@pytest.mark.parametrize(
    ("kind", "builtin"),
    [
        (MissingInputError, FileNotFoundError),
        (InvalidInputError, ValueError),
        (OutputExistsError, FileExistsError),
        (InputPermissionError, PermissionError),
    ],
)
def test_each_user_error_is_also_its_builtin_and_names_the_file_or_key(kind: type, builtin: type) -> None:
    with pytest.raises(builtin) as caught:
        raise kind("is wrong", path="/data/scene.tif")
    assert isinstance(caught.value, GeoclError)
    assert str(caught.value) == "/data/scene.tif: is wrong" and caught.value.path == "/data/scene.tif"
    by_key = kind("must be at least 8", key="data.view_size")
    assert str(by_key) == "data.view_size: must be at least 8" and by_key.key == "data.view_size"


def test_an_os_error_subclass_keeps_no_stray_errno() -> None:
    # OSError's one-argument form: no errno or filename that would change its message
    error = MissingInputError("missing", path="a.tif")
    assert error.errno is None and error.filename is None and error.errno != errno.ENOENT
