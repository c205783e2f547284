"""MkDocs hook: no page of the site names a path outside the repository.

The method specs geocl was built from lie outside the repository (users do not have them), so a
page that mentions ``../shared/...`` or ``shared/specs/...`` — written on it, or brought in by a
docstring of the API reference — is a warning, and ``mkdocs build --strict`` fails on it.
``docs/hooks/docstrings.py`` rewrites the docstrings that still name a spec into a link to the
method's page.

Used by ``mkdocs.yml`` (``hooks:``).
"""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger("mkdocs.hooks.outside_paths")
_OUTSIDE = re.compile(r"(?:\.\./|\b)shared/(?:specs|data|design)")


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs event: warn for every path outside the repository on the rendered page."""
    for match in sorted(set(_OUTSIDE.findall(html))):
        log.warning("%s names %r, a path outside the repository", page.file.src_uri, match)
    return html
