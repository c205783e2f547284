"""MkDocs hook: the command-line reference, rendered from geocl's own parser at build time.

A page that holds the marker ``<!-- geocl-cli-reference -->`` gets, in its place, the help
of ``geocl`` and of every subcommand exactly as ``geocl COMMAND --help`` prints it
(:func:`geocl.cli.build_parser`; the flags and defaults of ``tile``, ``finetune``,
``predict``, ``evaluate``, ``compare``, ``index``, ``search`` and ``serve`` come from
the option models of ``geocl/recipes/options.py`` and ``compare_options.py``). So the
reference cannot fall behind the code: a flag added to the parser appears on the next build.

Used by ``mkdocs.yml`` (``hooks:``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

MARKER = "<!-- geocl-cli-reference -->"
#: help width in characters (argparse reads it from COLUMNS), the width of a code block on the page
WIDTH = 80


@contextmanager
def _columns(width: int) -> Iterator[None]:
    """COLUMNS set to ``width`` while argparse formats, then as it was."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps its subparsers here and nowhere public
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _block(text: str) -> str:
    return "```text\n" + text.rstrip() + "\n```\n"


def render() -> str:
    """Markdown: ``geocl --help``, then one section per subcommand with its summary and help."""
    # imports nothing heavy: the CLI answers --help at once
    from geocl.cli import build_parser

    with _columns(WIDTH):
        parser = build_parser()
        commands = _subcommands(parser)
        summaries = {}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                summaries = {choice.dest: choice.help for choice in action._choices_actions}
        parts = ["## geocl\n", _block(parser.format_help())]
        for name, command in commands.items():
            parts.append(f"## geocl {name}\n")
            if summaries.get(name):
                parts.append(f"*{summaries[name]}*\n")
            parts.append(_block(command.format_help()))
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs event: the marker replaced by the rendered reference."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render())
