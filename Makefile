# otel-worker: every target installs what it needs first (`make install` is their prerequisite).
SHELL := /bin/bash
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
# The uv that installs the lock is the one the lock pins.
UV_VERSION := $(shell awk '/^name = "uv"$$/{getline; gsub(/[^0-9.]/, ""); print}' uv.lock)
CODE := shared functions proto/generate.py
PYTEST_ARGS ?=

.PHONY: help
help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml uv.lock
	@test -x $(UV) || { python3 -m venv $(VENV) && $(VENV)/bin/pip install --quiet "uv==$(UV_VERSION)"; }
	$(UV) sync --frozen --quiet
	@touch $@

.PHONY: install
install: $(VENV)/.installed  ## create .venv from the lock file, with the project and its tools

.PHONY: system-deps
system-deps:  ## make sure the system packages the tests use are installed
	@bash .ci/system-deps

.PHONY: proto
proto: install  ## regenerate the gRPC stubs in shared/rpc from proto/
	$(PY) proto/generate.py

.PHONY: lint
lint: install  ## ruff (lint + format check) and mypy --strict
	$(VENV)/bin/ruff check $(CODE) tests
	$(VENV)/bin/ruff format --check $(CODE) tests
	$(VENV)/bin/mypy $(CODE)

.PHONY: fmt
fmt: install  ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix $(CODE) tests
	$(VENV)/bin/ruff format $(CODE) tests

.PHONY: test
test: install system-deps lint  ## everything CI checks: lint, types, the test suite with coverage
	$(PY) -m pytest --cov --cov-report=term $(PYTEST_ARGS)

.PHONY: bench-engine
bench-engine: install  ## engine and CSV writer throughput and memory for 1M and 10M fixes
	$(PY) tests/bench/bench_engine.py

.PHONY: demo
demo: install  ## run the main job end to end on embedded defaults
	@echo "make demo arrives with its own issue; until then see README.md"; exit 1

.PHONY: clean
clean:  ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* htmlcov
