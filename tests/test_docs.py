"""The documentation site (mkdocs.yml, docs/): the strict build catches a broken link, every method
page cites its paper and states its readings and checks, the generated references cover the code,
and the README's links lead into existing pages.

`make test` builds the site itself (`mkdocs build --strict`); the build here is of a copy with one
broken link planted, which must fail naming that link and nothing else.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
METHOD_PAGES = sorted(path for path in (DOCS / "methods").glob("*.md") if path.name != "index.md")
#: an arXiv abstract or a DOI link, the form a method page cites its paper in
PAPER_LINK = re.compile(r"\]\((?:https://arxiv\.org/abs/\d{4}\.\d{4,5}|https://doi\.org/10\.\d{4,9}/\S+)\)")


def _hook(name: str) -> ModuleType:
    """A module of docs/hooks/, loaded from its file (the hooks are not a package)."""
    spec = importlib.util.spec_from_file_location(f"docs_hooks_{name}", DOCS / "hooks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mkdocs() -> Path:
    mkdocs = Path(sys.executable).with_name("mkdocs")
    if not mkdocs.exists():
        pytest.skip(f"mkdocs is not installed beside {sys.executable}: pip install -e '.[docs]'")
    return mkdocs


@pytest.mark.slow  # a whole site build: 7 s of CPU, 15 s on 2 busy cores (`make test` builds it once anyway)
def test_strict_build_fails_on_a_planted_broken_link(tmp_path: Path) -> None:
    shutil.copytree(DOCS, tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    page = tmp_path / "docs" / "methods" / "grass.md"
    page.write_text(page.read_text() + "\nSee also [the appendix](grass-appendix.md).\n")
    result = subprocess.run(
        [str(_mkdocs()), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    warnings = [line for line in output.splitlines() if line.startswith("WARNING")]
    # the planted link is named, with its page, and it is the only fault: the rest of the site is clean
    assert len(warnings) == 1, output
    assert "methods/grass.md" in warnings[0] and "grass-appendix.md" in warnings[0]
    assert "Aborted with 1 warnings in strict mode" in output


def test_make_test_builds_the_site_strictly_and_shows_its_warnings() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    assert re.search(r"^strict: true$", config, re.MULTILINE)
    makefile = (ROOT / "Makefile").read_text()
    test_rule = re.search(r"^test:(.*)$", makefile, re.MULTILINE)
    assert test_rule is not None and "docs-build" in test_rule.group(1).split()
    build = re.search(r"^docs-build:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert build is not None and "build --strict" in build.group(1)
    # --quiet hides the warnings from --strict as well: the build would pass whatever is broken
    assert "--quiet" not in build.group(1) and "-q " not in build.group(1)


@pytest.mark.parametrize("page", METHOD_PAGES, ids=[path.stem for path in METHOD_PAGES])
def test_every_method_page_cites_its_paper_and_states_readings_and_checks(page: Path) -> None:
    text = page.read_text()
    assert PAPER_LINK.search(text), f"{page.name} has no arXiv or DOI link to its paper"
    headings = [line.lower() for line in text.splitlines() if line.startswith("## ")]
    assert any("what geocl implements" in heading for heading in headings), page.name
    assert any("reading" in heading for heading in headings), page.name
    assert any("how it was checked" in heading for heading in headings), page.name


def test_every_registered_method_is_documented_on_a_method_page_in_the_navigation() -> None:
    registered = {
        name
        for path in (ROOT / "geocl" / "methods").glob("*.py")
        for name in re.findall(r'@register_method\("([\w-]+)"\)', path.read_text())
    }
    assert {"simclr", "grass", "moco", "multinet", "patchmix", "fba", "retrieval"} <= registered
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in METHOD_PAGES:
        assert f"methods/{page.name}" in nav, f"docs/methods/{page.name} is not in mkdocs.yml's nav"
    # a method has its own page, or a page that names its recipe key (SPPS is a plug-in: its own page)
    documented = {page.stem for page in METHOD_PAGES} | {
        name for page in METHOD_PAGES for name in re.findall(r"`method\.name: ([\w-]+)`", page.read_text())
    }
    assert not registered - documented, f"methods without a docs page: {sorted(registered - documented)}"
    assert "spps" in documented


def test_cli_reference_renders_every_command_and_flag() -> None:
    import argparse

    from geocl.cli import build_parser

    text = _hook("cli_reference").render()
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"tile", "pretrain", "finetune", "predict", "compare", "demo"} <= set(commands)
    for name, parser in commands.items():
        assert f"## geocl {name}\n" in text
        for action in parser._actions:
            for flag in action.option_strings:
                assert flag in text, f"geocl {name} {flag} missing from the CLI reference"


def test_api_reference_lists_the_public_modules_of_a_package() -> None:
    hook = _hook("api_reference")
    methods = hook.modules("geocl.methods")
    assert "geocl.methods.grass" in methods and "geocl.methods.registry" in methods
    assert not [name for name in methods if name.rsplit(".", 1)[-1].startswith("_")]
    assert methods == sorted(methods)
    assert "geocl.cli" not in hook.modules("geocl")
    rendered = hook.render("geocl.losses")
    assert rendered.count(":::") == 1 + len(hook.modules("geocl.losses"))


def test_docstrings_become_markdown_and_name_no_path_outside_the_repository() -> None:
    hook = _hook("docstrings")
    text = hook.rewrite(
        "GraSS (spec ``../shared/specs/grass.md``), FBA (``shared/specs/fba.md``)::\n\n"
        "    loss = ...\n\n"
        "See :class:`~geocl.sampling.GradientRegionSampler` and :func:`geocl.io.atomic_write`.\n\n"
        "Args:\n    max_epochs, lr,\n        patience: as for finetuning.\n"
    )
    assert "shared/" not in text
    assert "[its method page][method-grass]" in text and "[its method page][method-fba]" in text
    assert "`GradientRegionSampler`" in text and "`geocl.io.atomic_write`" in text
    assert "(``shared/specs/fba.md``):\n" not in text and "[method-fba]):\n" in text  # `::` -> `:`
    assert "    max_epochs, lr, patience: as for finetuning." in text
    table = hook.rewrite("Inputs:\n\n====  ====\ngiven read\n====  ====\na     b\n====  ====\n\nAfter.")
    assert "```text\n====  ====\ngiven read\n====  ====\na     b\n====  ====\n```" in table
    assert table.endswith("After.")
    # every anchor the rewrite links to is a heading id of a method page
    ids = set(re.findall(r"\{#([\w-]+)\}", "".join(page.read_text() for page in METHOD_PAGES)))
    assert set(hook.SPEC_PAGES.values()) <= ids


def test_readme_links_lead_to_existing_docs_pages() -> None:
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)#\s]+)", readme)
    assert len(links) >= 5, "the README points into the docs"
    for link in links:
        assert (ROOT / link).is_file(), f"README links to {link}, which does not exist"
    assert "make demo" in readme and "make test" in readme
    assert "shared/" not in readme
