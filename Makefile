# localmodel-controller: everyday commands. `make dev` runs the product locally; `make test`
# runs every test. Both install what is missing first (virtualenv, Python packages, the
# Kubernetes binaries) and reuse it afterwards.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help venv binaries dev test unit integration e2e lint format clean

help:
	@echo "make dev          run a local cluster with manager, agents and a cached model"
	@echo "make test         run unit and integration tests (real API server)"
	@echo "make unit         run unit tests only"
	@echo "make integration  run integration tests only"
	@echo "make e2e          run the end-to-end tests (the whole product on simulated nodes)"
	@echo "make lint         ruff check and format check"
	@echo "make format       apply ruff's fixes and formatting"
	@echo "make binaries     build the Kubernetes binaries into the cache (skipped when present)"
	@echo "make clean        remove .venv, .dev and tool caches (not the Kubernetes binaries)"

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

binaries:
	tools/build-binaries.sh

dev: venv binaries
	$(BIN)/python -m controller dev

test: venv binaries
	$(BIN)/pytest tests/unit tests/integration

unit: venv
	$(BIN)/pytest tests/unit

integration: venv binaries
	$(BIN)/pytest tests/integration

e2e: venv binaries
	$(BIN)/pytest tests/integration -m e2e

lint: venv
	$(BIN)/ruff check controller tests
	$(BIN)/ruff format --check controller tests

format: venv
	$(BIN)/ruff check --fix controller tests
	$(BIN)/ruff format controller tests

clean:
	rm -rf $(VENV) .dev .pytest_cache .ruff_cache
