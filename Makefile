# Two commands set everything up from a fresh clone:
#   make demo   creates .venv, installs pyro-vae, trains a Bernoulli VAE on the bundled digits (runs/demo)
#   make test   creates .venv if needed, installs the test extras, runs the test suite
#   make docs   installs the docs extras and builds the Sphinx site (docs/_build/html), warnings as errors
#   make examples  runs every example and reproduction in its smoke mode (a few seconds each), the tutorials'
#                  commands (tests/test_docs.py) and the notebook; says which tests and runs were skipped and why
#   make lint   installs the lint extras, runs ruff check, then mypy on the public API (both set in pyproject.toml)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: demo test install docs examples lint clean

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/pyro-vae fit --dataset digits --likelihood bernoulli --epochs 100 --out runs/demo --overwrite

test: install
	$(PY) -m pytest -q

$(VENV)/.docs-installed: $(VENV)/.installed setup.cfg
	$(PIP) -e ".[docs]"
	touch $@

docs: $(VENV)/.docs-installed
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html
	@echo "docs built: docs/_build/html/index.html"

$(VENV)/.lint-installed: $(VENV)/.installed setup.cfg
	$(PIP) -e ".[lint]"
	touch $@

lint: $(VENV)/.lint-installed
	$(PY) -m ruff check .
	$(PY) -m mypy

$(VENV)/.notebooks-installed: $(VENV)/.installed setup.cfg
	$(PIP) -e ".[notebooks]"
	touch $@

examples: $(VENV)/.notebooks-installed
	$(PY) -m pytest -q -rs -m examples tests/test_example_smoke.py tests/test_docs.py

clean:
	rm -rf runs build dist *.egg-info .pytest_cache docs/_build docs/reference/_api
