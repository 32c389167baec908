# `make test` and `make demo` set everything up on a fresh machine: they create
# .venv and install the project into it when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: test demo lint unit bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,flows,bench]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check streamsvd flows tests benchmarks infra
	$(VENV)/bin/ruff format --check streamsvd flows tests benchmarks infra
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(PY) -m pytest

test: lint unit

demo: $(STAMP)
	$(PY) -m flows demo --config config/demo.yaml

bench: $(STAMP)
	$(PY) benchmarks/chunking.py
	$(PY) benchmarks/ingest.py
	$(PY) benchmarks/fit.py
	$(PY) benchmarks/update.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis demo-data
