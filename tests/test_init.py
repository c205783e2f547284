"""The public API: every name resolves, and importing the package stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import geocl


@pytest.mark.parametrize("name", sorted(set(geocl.__all__) - {"__version__"}))
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(geocl, name) is not None


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        geocl.no_such_thing  # noqa: B018


def test_import_geocl_imports_no_heavy_library() -> None:
    code = "import sys, geocl; print(sorted(m for m in ('torch', 'lightning', 'torchgeo', 'rasterio') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
