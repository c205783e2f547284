"""MkDocs hook: the API reference pages list geocl's modules as they are at build time.

A page holding ``<!-- geocl-api geocl.methods -->`` gets, in its place, the package's own
docstring and then one mkdocstrings block (``::: geocl.methods.grass``) per public module
of the package (file names without a leading underscore), in alphabetical order, found where
Python imports the package from; a module
added to the package appears on the next build without an edit here. Nothing is
imported: mkdocstrings reads the sources (griffe's static analysis).

Modules left out on purpose are listed in :data:`EXCLUDED` with the reason.

Used by ``mkdocs.yml`` (``hooks:``).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

_MARKER = re.compile(r"<!-- geocl-api (?P<package>[\w.]+) -->")

#: module -> why the reference leaves it out
EXCLUDED: dict[str, str] = {"geocl.cli": "the command line has its own page, rendered from the parser"}


def modules(package: str) -> list[str]:
    """The public modules of ``package`` (dotted names), sub-packages excluded, sorted."""
    spec = importlib.util.find_spec(package)  # imports the parent packages only (light)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"{package} is not a package")
    folder = Path(next(iter(spec.submodule_search_locations)))
    names = sorted(path.stem for path in folder.glob("*.py") if not path.stem.startswith("_"))
    return [f"{package}.{name}" for name in names if f"{package}.{name}" not in EXCLUDED]


def render(package: str) -> str:
    """Markdown: the package's docstring, then one mkdocstrings block per module."""
    own = (
        f"::: {package}\n    options:\n      members: false\n      show_root_heading: false\n"
        "      show_root_toc_entry: false\n"
    )
    parts = [own]
    parts += [f"::: {module}\n" for module in modules(package)]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs event: every marker replaced by its package's reference."""
    return _MARKER.sub(lambda match: render(match.group("package")), markdown)
