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
	$(BIN)/alzprog bench

loadtest: setup
	$(BIN)/python scripts/loadtest.py

compose-check: setup
	$(BIN)/python scripts/validate_deploy.py
