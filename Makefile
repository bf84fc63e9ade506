# Confab — the two commands that matter: `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
DATA_DIR ?= ./data
ENSURE = eval "$$(bash scripts/ensure-services.sh)" && export CONFAB_TEST_DATABASE_URL CONFAB_TEST_REDIS_URL

.PHONY: help run build test test-rust lint fmt clippy chaos bench cluster check-deploy clean-test-dbs

help:
	@echo "make run    - build and start one node on http://127.0.0.1:8080 (embedded store, nothing to install)"
	@echo "make test   - install/start Postgres and Redis if missing, then run every test"
	@echo "make chaos  - the long fault-injection suite"
	@echo "make bench  - load benchmarks, results written to BENCHMARKS.md"
	@echo "make cluster- N nodes (default 3) behind a load balancer on loopback"
	@echo "make lint   - cargo fmt --check and clippy -D warnings"

build:
	$(CARGO) build --release -p confab-gateway -p confab-migrations

## Start a single node with the embedded store (SQLite under $(DATA_DIR)) and in-process fan-out.
run: build
	@mkdir -p $(DATA_DIR)
	CONFAB__DATABASE__DATA_DIR=$(DATA_DIR) ./target/release/confab

## Every test: unit, integration (both backends, multi-node), chaos (short), deploy checks.
test: clean-test-dbs
	@$(ENSURE) && bash scripts/ensure-tools.sh && $(CARGO) build -p confab-gateway --bin confab && \
	  $(CARGO) test --workspace --no-fail-fast 2>&1 | tee .confab/test.log; \
	  status=$${PIPESTATUS[0]}; \
	  bash scripts/check-deploy.sh || status=1; \
	  exit $$status

## Drop databases left behind by earlier test runs (each test creates its own).
clean-test-dbs:
	@$(ENSURE) && psql "$$CONFAB_TEST_DATABASE_URL" -Atqc \
	  "select datname from pg_database where datname like 'confab_t_%'" 2>/dev/null | \
	  while read -r db; do psql "$$CONFAB_TEST_DATABASE_URL" -qc "drop database if exists \"$$db\"" >/dev/null 2>&1 || true; done

## The long fault-injection suite (the short form runs in `make test`).
CHAOS_SECS ?= 180
chaos:
	@$(ENSURE) && $(CARGO) build -p confab-gateway --bin confab && \
	  CONFAB_CHAOS_SECS=$(CHAOS_SECS) $(CARGO) test -p confab-tests --test suite chaos:: -- --nocapture

## Load benchmarks: 2 release nodes on a fresh database, every scenario of confab-bench, a perf
## profile; writes BENCHMARKS.md (about 10-15 minutes after the release build).
bench:
	@bash scripts/bench.sh

lint: fmt clippy

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

check-deploy:
	bash scripts/check-deploy.sh

## N release nodes (default 3) on Postgres + Redis behind HAProxy on 127.0.0.1:8090 (LB_PORT=...);
## Ctrl-C stops all. `bash scripts/cluster.sh --background` / `stop` run it detached.
cluster: build
	@bash scripts/cluster.sh
