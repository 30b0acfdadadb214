#!/bin/sh
# Installs the peer task queues into bench-only environments, never into the project's .venv:
# a Python venv (Celery, RQ, Dramatiq, taskiq, arq) and a node_modules folder (BullMQ).
# kubeq itself runs from a third one holding only what a user installs (`kubeq[fast]`,
# editable so it is always this tree's code): the project's .venv carries the dev tools
# and OpenTelemetry, which redis-py imports when present (~70 ms more at every start).
# Idempotent: a stamp per environment, re-done only when this file changes.
set -eu
cd "$(dirname "$0")"
PY="${PYTHON:-python3.11}"
VENV=.peers-venv
if [ ! -f "$VENV/.stamp" ] || [ setup.sh -nt "$VENV/.stamp" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q 'celery[redis]' rq 'dramatiq[redis]' taskiq taskiq-redis arq psutil hiredis
  touch "$VENV/.stamp"
fi
KVENV=.kubeq-venv
if [ ! -f "$KVENV/.stamp" ] || [ setup.sh -nt "$KVENV/.stamp" ] || [ ../../pyproject.toml -nt "$KVENV/.stamp" ]; then
  "$PY" -m venv "$KVENV"
  "$KVENV/bin/pip" install -q -e '../..[fast]' psutil
  touch "$KVENV/.stamp"
fi
NODE_DIR=.peers-node
if [ ! -f "$NODE_DIR/.stamp" ] || [ setup.sh -nt "$NODE_DIR/.stamp" ]; then
  mkdir -p "$NODE_DIR"
  [ -f "$NODE_DIR/package.json" ] || echo '{"name":"kubeq-bench-peers","private":true}' > "$NODE_DIR/package.json"
  # ioredis: bullmq 6.7 lists it as a peer dependency, so it is installed by name
  (cd "$NODE_DIR" && npm install --silent --no-audit --no-fund bullmq ioredis)
  touch "$NODE_DIR/.stamp"
fi
