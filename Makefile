# otel-worker: every target installs what it needs first (`make install` is their prerequisite).
SHELL := /bin/bash
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
# The uv that installs the lock is the one the lock pins. Bytecode is compiled at install, as
# in the image: PYTHONDONTWRITEBYTECODE=1 here would otherwise make every process (each test's
# services, each cold start) compile its imports again.
UV_VERSION := $(shell awk '/^name = "uv"$$/{getline; gsub(/[^0-9.]/, ""); print}' uv.lock)
CODE := shared functions proto/generate.py
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: help
help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' \
	  '{name[NR] = $$1; text[NR] = $$2; if (length($$1) > width) width = length($$1)} \
	   END {for (k = 1; k <= NR; k++) printf "  %-*s  %s\n", width, name[k], text[k]}'

$(VENV)/.installed: pyproject.toml uv.lock
	@test -x $(UV) || { python3 -m venv $(VENV) && $(VENV)/bin/pip install --quiet "uv==$(UV_VERSION)"; }
	$(UV) sync --frozen --quiet --compile-bytecode
	@touch $@

# The report page's map script (Leaflet): the version package-lock.json pins, fetched by
# `npm ci` into build/npm and copied into the package, which serves and inlines it.
ASSETS := shared/static/leaflet
$(ASSETS)/.built: package.json package-lock.json
	rm -rf build/npm $(ASSETS) && mkdir -p build/npm $(ASSETS)
	cp package.json package-lock.json build/npm/
	npm ci --prefix build/npm --ignore-scripts --no-audit --no-fund --loglevel=error
	cp build/npm/node_modules/leaflet/dist/leaflet.js build/npm/node_modules/leaflet/dist/leaflet.css \
	  build/npm/node_modules/leaflet/LICENSE $(ASSETS)/
	@touch $@

.PHONY: assets
assets: $(ASSETS)/.built  ## build the report page's vendored map script (npm ci, pinned by package-lock.json)

.PHONY: install
install: $(VENV)/.installed $(ASSETS)/.built  ## create .venv from the lock file, with the project and its tools, and the map script

.PHONY: bytecode
bytecode: install  ## compile the project's bytecode, as the image ships it (stale files are ignored)
	@$(PY) -m compileall -q shared

.PHONY: system-deps
system-deps:  ## make sure the system packages the tests use are installed
	@bash .ci/system-deps

.PHONY: proto
proto: install  ## regenerate the gRPC stubs in shared/rpc from proto/
	$(PY) proto/generate.py

.PHONY: schemas
schemas: install  ## export the JSON Schemas of the event data to docs/events
	.venv/bin/otel-worker schemas --out docs/events

.PHONY: lint
lint: install  ## ruff (lint + format check), mypy --strict and the import rules (lint-imports)
	$(VENV)/bin/ruff check $(CODE) tests
	$(VENV)/bin/ruff format --check $(CODE) tests
	$(VENV)/bin/mypy $(CODE) tests/bench
	@set -o pipefail; $(VENV)/bin/lint-imports --no-cache | sed -n '/^Contracts$$/,$$p'

.PHONY: fmt
fmt: install  ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix $(CODE) tests
	$(VENV)/bin/ruff format $(CODE) tests

.PHONY: test
test: install system-deps lint bytecode  ## everything CI checks: lint, types, the test suite with coverage
	$(PY) -m pytest --cov --cov-report=term $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: install  ## the unit tests alone (no database, S3 or processes): seconds
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

.PHONY: test-reliability
test-reliability: install system-deps bytecode  ## the reliability scenarios (tests/reliability) and their scoreboard (SOAK_S: soak length)
	$(PY) -m pytest tests/reliability $(PYTEST_ARGS)

.PHONY: bench-db
bench-db: install system-deps  ## benchmark seeding, the locations reader and the jobs store
	$(PY) -m tests.bench.bench_db $(BENCH_ARGS)

.PHONY: bench-accuracy
bench-accuracy: install  ## stays, path, bounds, trips and time at home against known truth (docs/ACCURACY.md)
	$(PY) tests/bench/bench_accuracy.py $(BENCH_ARGS)

.PHONY: bench-engine
bench-engine: install  ## engine and CSV writer throughput and memory for 1M and 10M fixes
	$(PY) tests/bench/bench_engine.py $(BENCH_ARGS)

.PHONY: bench-formats
bench-formats: install  ## file readers, analyze and import on a generated 1.4 GB Takeout file (deleted after)
	$(PY) -m tests.bench.bench_formats $(BENCH_ARGS)

.PHONY: bench-late-fixes
bench-late-fixes: install system-deps  ## the late-fix check (otel-worker refresh) on a two-year table
	$(PY) -m tests.bench.bench_late_fixes $(BENCH_ARGS)

.PHONY: bench-pipeline
bench-pipeline: install system-deps bytecode  ## the whole system: job latency, throughput, status latency, start-up
	$(PY) -m tests.bench.bench_pipeline $(BENCH_ARGS)

.PHONY: bench-compare
bench-compare: install system-deps bytecode  ## this project beside the server's own COPY of the rows: the comparison table
	$(PY) -m tests.bench.bench_compare $(BENCH_ARGS)

.PHONY: bench-ranges
bench-ranges: install system-deps bytecode  ## a year of two devices: first run, again under a new key, one fix inserted
	$(PY) -m tests.bench.bench_ranges $(BENCH_ARGS)

.PHONY: coldstart
coldstart: install system-deps bytecode  ## each function: process start -> ready -> first answered request
	$(PY) -m tests.bench.coldstart $(BENCH_ARGS)

.PHONY: demo
demo: install  ## run the whole system end to end on embedded defaults, then stop it (DEMO_ARGS=--keep: keep it up until Ctrl-C)
	$(VENV)/bin/otel-worker demo $(DEMO_ARGS)

.PHONY: audit
audit: install  ## check the runtime lock for known vulnerabilities (needs the audit service)
	$(UV) export --frozen --no-dev --no-emit-project --format requirements-txt -o .venv/runtime-requirements.txt -q
	$(VENV)/bin/pip-audit --strict --require-hashes --disable-pip -r .venv/runtime-requirements.txt

.PHONY: arm64-check
arm64-check: install  ## prove every runtime dependency has an arm64 wheel (the Pi 5 cluster)
	$(UV) export --frozen --no-dev --no-emit-project --format requirements-txt -o .venv/runtime-requirements.txt -q
	rm -rf .venv/arm64-wheels
	@# manylinux_2_28 as well: the image's Debian bookworm has glibc 2.36, and some packages
	@# (argon2-cffi-bindings) publish their arm64 wheels only with that newer tag.
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux2014_aarch64 \
	  --platform manylinux_2_28_aarch64 --python-version 3.11 --implementation cp \
	  -r .venv/runtime-requirements.txt -d .venv/arm64-wheels
	@ls .venv/arm64-wheels | sed 's/^/  /'
	@echo "all $$(ls .venv/arm64-wheels | wc -l) runtime wheels exist for arm64"

.PHONY: clean
clean:  ## remove the virtualenv, caches and test artifacts
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* htmlcov artifacts build shared/static
