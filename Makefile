# tollway — every target installs what it needs. See README.md.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The services' ports (infra/services.sh) and the clients' addresses (streams/settings.py) always agree.
# TOLLWAY_KAFKA_BROKERS=3: node i listens on the Kafka port + 10(i-1); clients get the whole list.
KAFKA_PORT := $(or $(TOLLWAY_KAFKA_PORT),9092)
export TOLLWAY_BOOTSTRAP_SERVERS ?= $(shell for i in $$(seq 0 $$(( $(or $(TOLLWAY_KAFKA_BROKERS),1) - 1 ))); do \
  printf '127.0.0.1:%d,' $$(( $(KAFKA_PORT) + 10 * i )); done | sed 's/,$$//')
export TOLLWAY_REDIS_URL ?= redis://127.0.0.1:$(or $(TOLLWAY_REDIS_PORT),6379)/0

.PHONY: help venv litellm-venv librdkafka up down status demo test test-unit test-integration lint typecheck bench chaos schemas clean

help:
	@echo "make demo | test | up | down | status | lint | typecheck | bench | chaos | schemas | clean"

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "Python 3.11 is required ($(PY) not found)"; exit 1; }
	@[ -x $(BIN)/python ] || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,semantic]'  # semantic: the injection detector's opt-in head, so tests and evals run it
	@touch $(STAMP)

venv: $(STAMP)

# Bench-only peer (issue 18): LiteLLM's proxy in a virtualenv of its own (its pins must not change tollway's).
# Installed at build time; nothing downloads at run time.
litellm-venv:
	@[ -x .venv-litellm/bin/litellm ] || { $(PY) -m venv .venv-litellm && \
	 .venv-litellm/bin/pip install -q "$$($(BIN)/python -c 'import tomllib; print(tomllib.load(open("pyproject.toml","rb"))["project"]["optional-dependencies"]["gateway-bench"][0])')"; }

librdkafka: $(STAMP)  # kept for old instructions: confluent-kafka (librdkafka) is a dependency of tollway now

up:
	@infra/services.sh up

down:
	@infra/services.sh down

status:
	@infra/services.sh status

demo: $(STAMP)
	@started=0; infra/services.sh status >/dev/null 2>&1 || { infra/services.sh up && started=1; }; \
	 TOLLWAY_TOPIC_PREFIX=$${TOLLWAY_TOPIC_PREFIX:-tollway} $(BIN)/tollway demo; rc=$$?; \
	 [ $$started = 1 ] && infra/services.sh down; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check streams workers schemas tests bench deploy

typecheck: $(STAMP)
	$(BIN)/mypy streams workers schemas deploy

test-unit: $(STAMP)
	$(BIN)/pytest -q -m "not integration and not chaos"

test-integration: $(STAMP) up
	$(BIN)/pytest -q -m "integration and not chaos"

test: $(STAMP) up
	$(BIN)/ruff check streams workers schemas tests bench deploy
	$(BIN)/mypy streams workers schemas deploy
	$(BIN)/pytest -q -m "not chaos"

bench: $(STAMP) up  # BENCH_ARGS="--requests 20000 --layouts 1" etc.; see python -m bench.run --help
	OPENBLAS_NUM_THREADS=1 $(BIN)/python -m bench.run $(BENCH_ARGS)

# Fault scenarios (tests/chaos): own broker/Redis on 29092/26379 for the scenarios that kill them, and a 3-broker
# cluster on 29094/29104/29114 (controllers one above; TOLLWAY_CHAOS_CLUSTER_PORT) for the broker faults. The table prints
# at the end (also after a failure) and is kept in .state/chaos/table.txt.
chaos: $(STAMP) up
	@rm -f .state/chaos/table.txt; $(BIN)/pytest -q -m chaos -s -p no:logging; rc=$$?; \
	 echo; [ -f .state/chaos/table.txt ] && cat .state/chaos/table.txt; exit $$rc

schemas: $(STAMP)
	$(BIN)/tollway schemas --out schemas/json

clean:
	infra/services.sh down || true
	rm -rf .state $(VENV)
