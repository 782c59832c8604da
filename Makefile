# Two commands set everything up from a fresh clone:
#   make demo   creates .venv, installs pyro-vae, trains a Bernoulli VAE on the bundled digits (runs/demo)
#   make test   creates .venv if needed, installs the test extras, runs the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: demo test install docs clean

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/pyro-vae fit --dataset digits --likelihood bernoulli --epochs 100 --out runs/demo --overwrite

test: install
	$(PY) -m pytest -q

clean:
	rm -rf runs build dist *.egg-info .pytest_cache
