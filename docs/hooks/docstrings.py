"""Griffe extension for the API reference: geocl's docstrings as the site shows them.

geocl's docstrings are written for ``help()`` and for readers of the source, in a few
reStructuredText habits that Markdown does not read. Before mkdocstrings renders a
docstring this extension rewrites, in the site's copy only (the source is untouched):

* a method's spec named by a path outside the repository (``spec ``../shared/specs/grass.md```` in
  a few module docstrings; users do not have that folder) -> a link to the method's page
  on this site, which states the spec's readings;
* Sphinx roles (``:class:`~geocl.sampling.GradientRegionSampler```) -> a code span of the
  name (``GradientRegionSampler``; the full dotted path without ``~``);
* an ``Args`` entry whose list of several names wraps onto the next line -> one line
  (griffe's Google-style parser reads the names from one line);
* a reStructuredText simple table (columns framed by lines of ``=``) -> a code block showing
  it as written (Markdown would read its ``===`` lines as heading underlines);
* a paragraph ending in ``::`` (reStructuredText's "literal block follows") -> ``:``,
  the indented block after it being a Markdown code block already.

Used by ``mkdocs.yml`` (``plugins.mkdocstrings...extensions``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

#: spec file name -> the heading id of its method page (``# GraSS {#method-grass}``)
SPEC_PAGES = {
    "grass": "method-grass",
    "spps": "method-spps",
    "multinet": "method-multinet",
    "patchmix": "method-patchmix",
    "fba": "method-fba",
    "claires": "method-retrieval",
}

_SPEC_PATH = re.compile(r"``(?:\.\./)?shared/specs/(\w+)\.md``")
_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc|const):`(~?)([^`]+)`")
_LITERAL_BLOCK = re.compile(r"(\S)::\n")
#: an Args entry whose list of names wraps: "a, b,\n        c: description" (griffe reads one line)
_WRAPPED_NAMES = re.compile(r"^(\s+[\w*]+(?:, [\w*]+)*,)\n\s+(?=[\w*]+(?:, [\w*]+)*:)", re.MULTILINE)


_TABLE_BORDER = re.compile(r"^\s*=+(?: +=+)+\s*$")


def _simple_tables(text: str) -> str:
    """Every reStructuredText simple table in ``text`` fenced as a ``text`` code block."""
    lines, out, table = text.split("\n"), [], []
    for number, line in enumerate(lines):
        if not table and not _TABLE_BORDER.match(line):
            out.append(line)
            continue
        table.append(line)
        following = lines[number + 1] if number + 1 < len(lines) else ""
        if _TABLE_BORDER.match(line) and len(table) > 1 and not following.strip():  # the bottom border
            indent = len(table[0]) - len(table[0].lstrip())
            out += ["", " " * indent + "```text", *table, " " * indent + "```", ""]
            table = []
    return "\n".join(out + table)


def _spec_link(match: re.Match[str]) -> str:
    anchor = SPEC_PAGES.get(match.group(1))
    if anchor is None:  # a spec without a page: say so in words rather than print a path users lack
        return "its method page"
    return f"[its method page][{anchor}]"


def _role(match: re.Match[str]) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


def rewrite(text: str) -> str:
    """The docstring ``text`` as Markdown for the site (see the module docstring)."""
    text = _SPEC_PATH.sub(_spec_link, text)
    text = _ROLE.sub(_role, text)
    text = _WRAPPED_NAMES.sub(r"\1 ", text)
    text = _simple_tables(text)
    return _LITERAL_BLOCK.sub(r"\1:\n", text)


class DocsDocstrings(griffe.Extension):
    """Rewrites every docstring griffe loads (see :func:`rewrite`)."""

    def on_instance(self, *, node: Any, obj: griffe.Object, agent: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
