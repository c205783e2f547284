# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv with Python >= 3.12 and (re)install the package only when
# pyproject.toml is newer than the last install. `make docs` serves the documentation site.

SHELL := /bin/bash
VENV := .venv
STAMP := $(VENV)/.geocl-installed
DEMO_OUT ?= demo_out
# pytest-xdist workers for `make test` (tests/conftest.py splits the cores between them)
TEST_WORKERS ?= 2
# where `make docs` serves the site
DOCS_ADDR ?= 127.0.0.1:8000
# MkDocs with Material's notice about its successor silenced (output is for people)
MKDOCS := NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs

# The first interpreter >= 3.12 that really runs: pyenv shims exist for versions
# that are not selected and fail when called, so each candidate is tried.
PYTHON_CANDIDATES := python3.13 python3.12 \
	$(sort $(wildcard $(shell pyenv root 2>/dev/null)/versions/3.1[2-9]*/bin/python))
FIND_PYTHON := for p in $(PYTHON_CANDIDATES); do \
	  if "$$p" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then \
	    echo "$$p"; break; fi; done

.PHONY: demo test venv clean browser docs docs-build lint

$(VENV)/bin/python:
	@py="$$($(FIND_PYTHON))"; \
	if [ -z "$$py" ]; then \
	  echo "error: geocl needs Python >= 3.12; none found (tried: $(PYTHON_CANDIDATES))." >&2; \
	  echo "Install python3.12 (or 3.13) and run make again." >&2; exit 1; fi; \
	echo "creating $(VENV) with $$py"; \
	"$$py" -m venv $(VENV)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/geocl demo --out $(DEMO_OUT)

# The retrieval search page's browser test drives Debian's Chromium: installed here when
# missing (as root, with apt-get); otherwise that one test skips and says how to install it.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the search page's browser test"; \
	    { apt-get install -y -qq chromium >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }; } || \
	      echo "could not install chromium: the browser test will skip"; \
	  else echo "chromium not found: the browser test will skip (install it: apt-get install chromium)"; fi; }

# The documentation site (mkdocs.yml, docs/): served with live reload while editing ...
docs: $(STAMP)
	$(MKDOCS) serve --dev-addr $(DOCS_ADDR)

# ... and built strictly by `make test`: a broken link, a missing page or a docstring the API
# reference cannot render fails it (a few seconds; the site goes to site/). Warnings, errors and
# the closing line are shown (not --quiet: it hides the warnings from --strict too, which then passes).
docs-build: $(STAMP)
	@set -o pipefail; $(MKDOCS) build --strict 2>&1 | { grep -v -E '^INFO +- +(Cleaning|Building)' || true; }

# ruff's lint rules and format (pyproject.toml); the import contract runs in the suite (tests/test_layers.py)
lint: $(STAMP)
	$(VENV)/bin/ruff check --quiet geocl tests benchmarks examples docs/hooks
	$(VENV)/bin/ruff format --check --quiet geocl tests benchmarks examples docs/hooks
	$(VENV)/bin/mypy --no-error-summary

test: $(STAMP) browser lint docs-build
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS)

clean:
	rm -rf $(VENV) $(DEMO_OUT) site
