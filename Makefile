# One command runs the reports, one runs the tests; each creates the virtual
# environment on first use (about 3 minutes) and reuses it afterwards.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PROFILE ?= standard
DATASETS ?= spacecraft clothing
# DATA=path/to/spec.toml (several: DATA="a.toml b.toml") runs your own data (see mmlib.data.spec);
# then only those, unless DATASETS is given on the command line too
DATA ?=
# MPNET=1 (default): `make reports` on the standard profile first fetches all-mpnet-base-v2 once (~400 MB,
# the committed clothing reports read it beside a TF-IDF bag); MPNET=0 skips it and the profile falls back to MiniLM + TF-IDF
MPNET ?= 1
ifeq ($(strip $(DATA)),)
REPORT_DATA := --datasets $(DATASETS)
else
REPORT_DATA := --data $(DATA) $(if $(filter command line,$(origin DATASETS)),--datasets $(DATASETS))
endif

.PHONY: reports test test-slow lab bench clean-cache

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	touch $@

## Execute every notebook on every dataset and write reports/ (HTML, records, index); DATA=spec.toml: your own data.
reports: $(VENV)/.installed
ifeq ($(PROFILE)$(MPNET),standard1)
	$(PY) -m mmlib.data.mpnet || echo "all-mpnet-base-v2 not fetched: the text models use MiniLM (see the warning above)"
endif
	$(PY) -m mmlib.reports --profile $(PROFILE) $(REPORT_DATA)

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
