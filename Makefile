# netatlas: `make run` serves the app on the demo; `make test` runs every test, browser tests included.
# Both install what they need on first use and skip the install when nothing changed.

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
# Pinned: a bare `torch` requirement may pull a multi-GB build; these install from a local wheel cache
# where one exists and from PyPI otherwise.
TORCH   := torch==2.14.1 torchvision==0.29.1
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
ARGS    ?=

.PHONY: run test install install-test system-deps system-deps-test bench clean

run: install system-deps
	$(PY) launch.py $(ARGS)

test: install-test system-deps-test
	$(PY) -m pytest $(ARGS)

bench: install
	$(PY) bench/extract.py

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.torch: | $(VENV)/bin/python
	$(PIP) install -q $(TORCH)
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(PIP) install -q -e '.[test]'
	touch $@

# graphviz provides `dot` for model diagrams; chromium drives the browser tests; a small TeX (LaTeX + TikZ,
# about 64 MB) lets the tests compile the diagrams' TikZ export.
system-deps:
	@command -v dot >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq graphviz; }

system-deps-test: system-deps
	@[ -x /usr/bin/chromium ] || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }
	@{ command -v pdflatex >/dev/null && kpsewhich tikz.sty >/dev/null; } || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	  texlive-latex-base texlive-pictures; }

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
