# One command runs the reports, one runs the tests; each creates the virtual
# environment on first use (about 3 minutes) and reuses it afterwards.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PROFILE ?= standard
DATASETS ?= spacecraft clothing

.PHONY: reports test test-slow lab bench clean-cache

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	touch $@

## Execute every notebook on every dataset and write reports/ (HTML, records, index).
reports: $(VENV)/.installed
	$(PY) -m mmlib.reports --profile $(PROFILE) --datasets $(DATASETS)

## Unit tests + a smoke run of every notebook.
test: $(VENV)/.installed
	$(PY) -m pytest

## The slow tests kept out of the default run.
test-slow: $(VENV)/.installed
	$(PY) -m pytest -m slow

## JupyterLab on the notebooks, with the project's environment.
lab: $(VENV)/.installed
	$(VENV)/bin/jupyter lab notebooks/

## Throughput of the in-memory pipeline vs a naive per-item PNG-decoding DataLoader.
bench: $(VENV)/.installed
	$(PY) -m mmlib.bench

clean-cache:
	rm -rf .cache
