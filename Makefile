# Two commands do everything on a fresh Debian/Ubuntu machine with Python 3.11:
#   make demo   set up whatever is missing, then run the telemetry pipeline demo
#   make test   set up whatever is missing, then run linters, type checks and all tests
# Both are idempotent: a second run only re-does what changed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.kubeq-installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# System packages: redis-server for the queue, prometheus/promtool for the metrics tests,
# chromium + chromium-driver for the dashboard's browser tests (a GitHub runner's
# preinstalled Chrome and chromedriver serve as well).
SYSTEM_PACKAGES := redis-server prometheus chromium chromium-driver

.PHONY: setup system-packages demo test lint typecheck unit bench bench-peers bench-peers-quick clean lock test-model-long

setup: system-packages $(STAMP)

system-packages:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v chromium >/dev/null || command -v google-chrome >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || [ -x "$$CHROMEWEBDRIVER/chromedriver" ] || missing="$$missing chromium-driver"; \
	$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@# Debian starts the packaged services; kubeq never uses them (it starts its own on free ports).

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/kubeq demo telemetry

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest -q

unit: setup
	$(BIN)/pytest -q tests/unit

# The model-based protocol test at length: 5x the runs, twice as long, batches up
# to 20k, random (not derandomized) sequences, failures shrunk to minimal reproductions.
test-model-long: setup
	KUBEQ_MODEL_LONG=1 $(BIN)/pytest -q -s tests/redis/test_model.py

bench: setup
	$(BIN)/python -m bench.protocol
	$(BIN)/python -m bench.worker

# kubeq against Celery, RQ, Dramatiq, taskiq, arq and BullMQ, interleaved in one run
# (about 15 minutes on 2 cores), then the scaling run (1/2/4 workers, single Redis and a
# 3-node cluster). The peers install into bench-only environments (bench/peers/setup.sh),
# never into $(VENV). QUICK=1: a smoke test of the whole pipeline in about 2 minutes.
bench-peers: setup
	bench/peers/setup.sh
	$(BIN)/python -m bench.peers.run $(if $(QUICK),--quick --out peers-quick)
	$(if $(QUICK),,$(BIN)/python -m bench.peers.scaling)

bench-peers-quick:
	$(MAKE) bench-peers QUICK=1

# The images' hash-locked dependency sets (docs/security.md): refresh after changing the
# dependencies in pyproject.toml, then commit requirements/*.txt. Resolved against the
# default index (PyPI) only: the machine's extra indexes and find-links are switched off.
LOCK := env PIP_CONSTRAINT= PIP_FIND_LINKS= PIP_EXTRA_INDEX_URL= $(BIN)/pip-compile --quiet \
	--generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links
lock: setup
	$(BIN)/pip install -q "pip-tools>=7.4"
	$(LOCK) --extra fast --output-file requirements/worker.txt pyproject.toml
	$(LOCK) --extra operator --extra dashboard --extra fast --output-file requirements/operator.txt pyproject.toml
	echo "hatchling>=1.21" | $(LOCK) --output-file requirements/build.txt -

clean:
	rm -rf $(VENV) build dist *.egg-info
