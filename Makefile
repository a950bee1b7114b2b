# tgstack — one entry point for building, testing and running the stack.
#   make test           the whole test suite (fast tier, slow drills, Telegram at the wire, Molecule default, failover, rollback), each tier timed; what CI runs
#   make test-fast      lock check + lint + unit + integration tests against real servers (a few minutes)
#   make test-unit      the unit tier alone (tests/unit): no server, no apt, under a minute; the fast loop
#   make test-telegram  the local MTProto server and the real Telethon path, over the wire
#   make test-molecule  converge site.yml on a real systemd + Docker server, idempotence, verify
#   make test-molecule-failover  failure drills while posts flow: Redis master, gateway kill -9, DB, RabbitMQ, password rotation
#   make test-molecule-rollback  migrate 30,000 legacy posts, backup/restore, roll back, roll back again
#   make venv           the virtualenv .venv, exactly as locked (uv.lock, requirements/dev.txt, hashes checked)
#   make lock           re-resolve the lock from pyproject.toml (LOCK_ARGS="--upgrade" for the newest of everything)
#   make demo           the whole stack on a local sandbox server: site.yml, a sample channel, a report
#   make demo-down      remove the sandbox server and its Docker volume
#   make bench-db       data-layer benchmark on 1,000,000 stored messages
#   make bench-ingest   tgstack replay of 100,000 synthetic posts through the whole pipeline
#   make bench-api      read API p50/p99 at a fixed rate (BENCH_ARGS="--rate 200 --seconds 30")
#   make bench          the seed's benchmarks beside the legacy baseline (BENCH_LONG=1: full)
#   make parser-report  precision and recall of the signal reader per kind and field on the golden corpus
#   make bench-parser   signal reader throughput in posts/s on one core (BENCH_ARGS="--seconds 30 --cpu 1")
#   make loadtest       tgstack loadtest --local (LOADTEST_ARGS="--rate 500 --duration 60")
#   make loadtest-wire  the same through the local Telegram server, real login and gateway (--through telegram)
#   make docs           the documentation site (mkdocs --strict), OpenSpec validation, doc checks

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMPS := .cache/stamps
REQ_DEV := requirements/dev.txt

.PHONY: help deps system-deps venv lock lock-check lint lint-python lint-ansible test test-fast test-unit test-slow test-telegram \
	test-molecule test-molecule-failover test-molecule-rollback testbed-images demo demo-down health bench-db bench-ingest bench-api docs clean

# molecule and ansible-lint call ansible-* by name: the virtualenv must come first on PATH
WITH_VENV := PATH=$(CURDIR)/$(BIN):$$PATH

help:
	@sed -n 's/^#  //p' Makefile

$(STAMPS):
	@mkdir -p $@

# The virtualenv holds exactly the lock's requirements/dev.txt, hashes checked: uv (pinned in
# that file) is bootstrapped with pip, then `uv pip sync` installs and removes whatever differs.
$(STAMPS)/venv: $(REQ_DEV) pyproject.toml | $(STAMPS)
	@echo "==> virtualenv $(VENV) from the lock ($(REQ_DEV), hashes checked)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@scripts/lock.sh entry uv $(REQ_DEV) >$(STAMPS)/uv-requirement.txt
	@$(BIN)/python -m pip --isolated install --quiet --disable-pip-version-check --require-hashes --no-deps \
		-r $(STAMPS)/uv-requirement.txt
	@$(BIN)/uv pip sync --quiet --python $(BIN)/python --require-hashes $(REQ_DEV)
	@$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps --no-build-isolation -e .
	@touch $@

venv: $(STAMPS)/venv

# Re-resolve the lock from pyproject.toml (LOCK_ARGS="--upgrade" takes the newest of everything)
# and rewrite its exports; commit uv.lock and requirements/ with a green make test.
lock: venv
	@UV=$(BIN)/uv scripts/lock.sh lock $(LOCK_ARGS)

lock-check: venv
	@UV=$(BIN)/uv scripts/lock.sh check

system-deps:
	@scripts/install-system-deps.sh

deps: venv system-deps

lint: lint-python lint-ansible

lint-python: venv
	@echo "==> ruff"
	@$(BIN)/ruff check runtime testing tests filter_plugins roles/tgstack_runtime/files roles/tgstack_runtime/filter_plugins
	@echo "==> mypy"
	@$(BIN)/mypy

lint-ansible: venv
	@echo "==> yamllint"
	@$(BIN)/yamllint .
	@echo "==> ansible-lint"
	@$(WITH_VENV) $(BIN)/ansible-lint
	@echo "==> ansible-playbook --syntax-check"
	@$(WITH_VENV) $(BIN)/ansible-playbook --syntax-check ansible/site.yml ansible/health.yml \
		ansible/migrate.yml ansible/rollback.yml ansible/backup.yml ansible/restore.yml \
		ansible/start.yml ansible/stop.yml ansible/rotate-credentials.yml

test-fast: deps lock-check lint docs
	@echo "==> pytest (unit + integration, real servers)"
	@$(BIN)/pytest -m "not slow" -q

# The fast loop: tests/unit only (tests/unit/conftest.py fails a unit test that asks for a
# server), on the virtualenv alone: no system packages, no lint, no docs.
test-unit: venv
	@echo "==> pytest (unit: no servers)"
	@$(BIN)/pytest -q -m "not slow" tests/unit

test-slow: deps
	@echo "==> pytest (slow real-server drills)"
	@$(BIN)/pytest -m slow -q

# Over the wire: the local MTProto server (testing/tgstack_testing/telegram) and real Telethon
# clients, then the real `tgstack login` and `tgstack gateway` against it.
test-telegram: deps
	@echo "==> pytest (Telegram at the wire: local MTProto server, real Telethon clients)"
	@$(BIN)/pytest -q tests/telegram

# One tier after the other, each timed (scripts/test-tiers.sh prints the table at the end).
TEST_TIERS := test-fast test-slow test-telegram test-molecule test-molecule-failover test-molecule-rollback
test:
	@MAKE="$(MAKE)" scripts/test-tiers.sh $(TEST_TIERS)

testbed-images:
	@scripts/testbed/engine.sh
	@scripts/testbed/build-images.sh server stack
	@scripts/testbed/save-images.sh

test-molecule: venv testbed-images
	@echo "==> molecule test -s default"
	@$(WITH_VENV) molecule test -s default

test-molecule-failover: venv testbed-images
	@echo "==> molecule test -s failover"
	@$(WITH_VENV) molecule test -s failover

test-molecule-rollback: venv testbed-images
	@echo "==> molecule test -s rollback"
	@$(WITH_VENV) molecule test -s rollback

demo: venv
	@$(WITH_VENV) scripts/demo.sh up

demo-down:
	@scripts/demo.sh down

health: venv
	@$(WITH_VENV) $(BIN)/ansible-playbook ansible/health.yml $(HEALTH_ARGS)

bench-db: deps
	@$(BIN)/python tests/bench/bench_db.py $(BENCH_ARGS)

bench-ingest: deps
	@$(BIN)/python tests/bench/bench_ingest.py $(BENCH_ARGS)

bench-api: deps
	@$(BIN)/python tests/bench/bench_api.py $(BENCH_ARGS)

.PHONY: bench loadtest loadtest-wire parser-report bench-parser

# Every seed benchmark and the baseline in one run: bench-results/<time>/bench.md, bench.json
bench: deps
	@$(BIN)/python tests/bench/bench_stack.py $(if $(BENCH_LONG),--long) $(BENCH_ARGS)

# The signal reader (tgstack.signals) against tests/data/signals/corpus.jsonl: no server needed.
parser-report: venv
	@$(BIN)/python tests/bench/parser_report.py $(REPORT_ARGS)

bench-parser: venv
	@$(BIN)/python tests/bench/bench_parser.py $(BENCH_ARGS)

loadtest: deps
	@$(BIN)/tgstack loadtest --local $(LOADTEST_ARGS)

# Posts go through the local MTProto server (testing/) to a real tgstack login + gateway.
loadtest-wire: deps
	@$(BIN)/tgstack loadtest --local --through telegram --telegram-server-dir $(CURDIR)/testing $(LOADTEST_ARGS)

# The documentation site (mkdocs.yml) built strictly into .cache/site, the OpenSpec specs
# validated, and the doc checks: commands, targets, paths and named tests exist.
docs: deps
	@echo "==> docs tooling: ruff + mypy"
	@$(BIN)/ruff check scripts/docs tests/docs
	@MYPYPATH=scripts/docs $(BIN)/mypy --strict scripts/docs tests/docs
	@echo "==> mkdocs build --strict"
	@NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	@echo "==> openspec validate --strict"
	@scripts/docs/openspec.sh validate --all --strict --no-interactive
	@echo "==> doc checks"
	@$(BIN)/pytest -q -p no:cacheprovider tests/docs

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache .hypothesis
