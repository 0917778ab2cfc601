# Two commands do all set-up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test run stop bench loadtest compose-check clean-data

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	@bash scripts/ensure_chromium.sh || echo "note: Chromium not installed; the browser test will be skipped"
	@touch $(STAMP)

test: setup
	$(BIN)/pytest -q

run: setup
	$(BIN)/python scripts/run_stack.py

stop:
	$(BIN)/python scripts/run_stack.py --stop

bench: setup
	$(BIN)/python -m benchmarks.run

loadtest: setup
	$(BIN)/python scripts/loadtest.py

compose-check: setup
	$(BIN)/python scripts/validate_deploy.py

# The whole stack in containers on this machine (docker compose up, for real). Where no engine
# or registry is at hand, scripts/compose_prepare.sh first starts dockerd and builds the local
# base images; it prints each step and how long it took. See docs/deploy.md.
.PHONY: compose-up compose-down compose-test

compose-up: setup
	bash scripts/compose_prepare.sh up

compose-down:
	bash scripts/compose_prepare.sh down

# Up (the default stack, then the production override), the checks through the published
# ports, then down -v; tests/test_compose_stack.py.
compose-test: setup
	ALZPROG_COMPOSE_TEST=1 $(BIN)/pytest -q tests/test_compose_stack.py -x
