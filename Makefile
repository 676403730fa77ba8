# study-embed — `make help` lists the targets.  Targets stay thin: they call scripts or the CLI.
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
CLI   := $(VENV)/bin/study-embed
STAMP := $(VENV)/.deps-stamp
LOCALDB := $(PY) -m study_embed_dev.localdb
# the CLI needs DATABASE_URL; on a checkout the targets default it to the local cluster
WITH_DB := export DATABASE_URL="$${DATABASE_URL:-$$($(LOCALDB) url)}";

.DEFAULT_GOAL := help
.PHONY: help deps demo demo-down ui screenshot db-up db-down db-url migrate schema test test-unit lint listen drain status bench bench-full eval clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-10s %s\n", $$1, $$2}'

deps: ## install PostgreSQL, pgvector, pg_cron and the Python deps (idempotent)
	@bash scripts/deps.sh

$(STAMP): pyproject.toml scripts/deps.sh
	@bash scripts/deps.sh

demo: $(STAMP) ## the whole pipeline on this machine: sample bank, real local model, drain, search, web UI
	@$(PY) -m study_embed_dev.demo.run

demo-down: ## stop what `make demo` started (the web UI, its embedding server, the local PostgreSQL)
	@if [ -x $(PY) ]; then $(PY) -m study_embed_dev.demo.ui down && $(PY) -m study_embed_dev.demo.server down && $(LOCALDB) down; fi

db-up: $(STAMP) ## start the project-local PostgreSQL (.pgdata/, loopback, pg_cron preloaded)
	@$(LOCALDB) up

db-down: ## stop the project-local PostgreSQL
	@if [ -x $(PY) ]; then $(LOCALDB) down; fi

db-url: $(STAMP) ## print the local DATABASE_URL
	@$(LOCALDB) url

migrate: $(STAMP) ## apply db/ to DATABASE_URL (local cluster when unset)
	@if [ -z "$$DATABASE_URL" ]; then $(LOCALDB) up; fi
	@$(WITH_DB) $(CLI) migrate

schema: $(STAMP) ## regenerate db/schema.sql (the schema after every migration, for reading)
	@$(PY) -m study_embed_dev.schema

# the suite mostly waits (servers, listeners, timeouts): more workers than cores, each with a
# PostgreSQL cluster of its own (TEST_WORKERS=0 runs it in one process)
TEST_WORKERS ?= 3

test: $(STAMP) ## run the test suite (starts a throwaway PostgreSQL per worker)
	@$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# (the unit tests use neither Hypothesis's nor anyio's pytest plugin: loading them is half the run)
test-unit: $(STAMP) ## only tests/unit: no database, no server, under five seconds (the worker's loops included)
	@$(PY) -m pytest -p no:hypothesispytest -p no:anyio tests/unit $(PYTEST_ARGS)

lint: $(STAMP) ## ruff (lint and format) and mypy, as CI runs them
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .
	@$(VENV)/bin/mypy

listen: migrate ## run the listener against DATABASE_URL
	@$(WITH_DB) $(CLI) listen

drain: migrate ## embed everything waiting, then exit
	@$(WITH_DB) $(CLI) drain

status: $(STAMP) ## show the embedding queue
	@$(WITH_DB) $(CLI) status

ui: $(STAMP) ## the reference web UI on DATABASE_URL (a read-only role: README, "The web UI")
	@$(WITH_DB) $(CLI) ui

screenshot: $(STAMP) ## take the README's picture of the UI (docs/ui-search.png) with the browser test
	@UI_SCREENSHOT_DIR=docs $(PY) -m pytest tests/cli/test_ui.py -k browser -q $(PYTEST_ARGS)

bench: $(STAMP) ## benchmarks, quick mode (a few minutes): prints a table, writes bench/results/
	@$(PY) bench/run.py

eval: $(STAMP) ## quality on the labelled set (eval/set.yaml) with EMBEDDING_URL's server, else the demo's
	@$(PY) eval/run.py

bench-full: $(STAMP) ## benchmarks, full mode (about 15 minutes, with a 1,000,000-row drain)
	@$(PY) bench/run.py --full

clean: demo-down ## remove the local cluster, the demo's files and the virtual environment
	rm -rf .pgdata .demo $(VENV)
