# facepipeline: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

SHARED ?= $(abspath ../shared)
export FACEPIPELINE_MODEL_ROOT ?= $(SHARED)/models
export FACEPIPELINE_MODEL ?= buffalo_sc
export FACEPIPELINE_HOME ?= $(abspath .facepipeline)
export DAGSTER_HOME ?= $(FACEPIPELINE_HOME)/dagster
# hnswlib compiles from source; without this it targets the build machine's CPU only.
export HNSWLIB_NO_NATIVE := 1
export FACEPIPELINE_SEED_FOLDER ?= $(SHARED)/data/faces
DEMO_SOURCE ?= embedded

# uv from PATH, or the copy pip installs below when the machine has none.
UV = $(shell command -v uv 2>/dev/null || echo python3 -m uv)

.PHONY: help env browser demo ui test check bench gallery-down clean
help:
	@echo "make demo   - create the environment, start the embedded gallery (PostgreSQL + pgvector, seeded"
	@echo "              from $(FACEPIPELINE_SEED_FOLDER)) and run the whole retrain against it"
	@echo "make test   - run the test suite (installs Debian's chromium for the UI test when missing)"
	@echo "make ui     - start the Dagster UI (dagster dev) on the same instance"
	@echo "make check  - dg check defs + dagster definitions validate"
	@echo "make bench  - embedding benchmark (bench/embed.py)"

env: .venv/.synced
.venv/.synced: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet "uv>=0.8"
	$(UV) sync --frozen --python 3.11
	@touch $@

demo: env
	$(UV) run --frozen facepipeline retrain --source $(DEMO_SOURCE)
	@echo "runs and assets: make ui, then open http://127.0.0.1:3000; stop the gallery: make gallery-down"

ui: env
	mkdir -p "$(DAGSTER_HOME)"
	$(UV) run --frozen facepipeline gallery up
	$(UV) run --frozen dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# The UI test drives Debian's chromium (never a browser download). As root (CI on a fresh Debian),
# install it when missing; otherwise say so, and tests/test_ui.py skips with that reason.
browser:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; \
	  else \
	    echo "make: /usr/bin/chromium is missing; as root: apt-get install chromium (the UI test skips without it)"; \
	  fi; }

test: env browser
	$(UV) run --frozen pytest

check: env
	$(UV) run --frozen dg check defs
	$(UV) run --frozen dagster definitions validate -w workspace.yaml

bench: env
	$(UV) run --frozen python bench/embed.py

gallery-down: env
	$(UV) run --frozen facepipeline gallery down

clean:
	rm -rf .venv .pytest_cache
