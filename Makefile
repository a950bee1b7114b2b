# tgstack — one entry point for building, testing and running the stack.
#   make test       the whole test suite (fast tier + slow real-server drills); what CI runs
#   make test-fast  lint + unit + integration tests against real servers (a few minutes)
#   make bench-db   data-layer benchmark on 1,000,000 stored messages

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMPS := .cache/stamps

.PHONY: help deps system-deps venv lint test test-fast test-slow bench-db clean

help:
	@sed -n 's/^#  //p' Makefile

$(STAMPS):
	@mkdir -p $@

$(STAMPS)/venv: pyproject.toml | $(STAMPS)
	@echo "==> creating virtualenv $(VENV) and installing tgstack[dev]"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

venv: $(STAMPS)/venv

system-deps:
	@scripts/install-system-deps.sh

deps: venv system-deps

lint: venv
	@echo "==> ruff"
	@$(BIN)/ruff check runtime tests
	@echo "==> mypy"
	@$(BIN)/mypy

test-fast: deps lint
	@echo "==> pytest (unit + integration, real servers)"
	@$(BIN)/pytest -m "not slow" -q

test-slow: deps
	@echo "==> pytest (slow real-server drills)"
	@$(BIN)/pytest -m slow -q

test: test-fast test-slow

bench-db: deps
	@$(BIN)/python tests/bench/bench_db.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache .hypothesis
