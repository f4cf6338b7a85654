# kvraft — developer entry points (docs/entry-points.md). `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kvraft-installed
PYTEST := $(PY) -m pytest

.DEFAULT_GOAL := help
.PHONY: help install protos lint test test-fast docs sim sim-cluster run bench bench-compare chaos powerloss certs docker-up docker-down clean

help:
	@echo "make run          start a local 5-node cluster on loopback (Ctrl-C stops it)"
	@echo "make test         create .venv if needed, install, run the whole test suite"
	@echo "make test-fast    the quick tiers only (no slow, cluster, docker, chaos tests)"
	@echo "make lint         ruff over the package and the tests; mypy over the package"
	@echo "make docs         the contract pages and API reference into build/docs-site (warnings fail)"
	@echo "make sim SEEDS=N  randomized Raft simulation over N seeds (SEED=S replays one)"
	@echo "make sim-cluster SEEDS=N  whole-node deterministic simulation (SEED=S replays one with a trace)"
	@echo "make bench        the project's benchmarks, printing a table"
	@echo "make chaos        fault injection with a linearizability check (SEED=, DURATION=)"
	@echo "make powerloss    power cuts of a 3-node cluster on lazyfs (CUTS=, SEED=, MODE=ext4|posix)"
	@echo "make certs        a development CA and member/client certificates (CERTS_DIR=, MEMBERS=)"
	@echo "make docker-up    build the image without a registry and start the 5-node compose cluster (TLS=1: with TLS)"
	@echo "make docker-down  stop it (VOLUMES=1 also removes the data)"

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Reinstall when the package metadata or a .proto changes; the build compiles the protos.
$(STAMP): $(PY) pyproject.toml setup.py protos/*.proto protos/compile.py
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

protos: $(STAMP)
	$(PY) protos/compile.py

# mypy's scope and strictness (strict for kvraft.raft and kvraft.storage) are in
# pyproject.toml [tool.mypy]; stubs/ holds the stubs of dependencies that ship none.
lint: install
	$(PY) -m ruff check kvraft tests examples protos stubs
	$(PY) -m mypy

# Coverage of the Raft core is measured on its unit and scenario tests; the randomized
# simulation (tests/raft, marker slow) runs without the tracer, which slows it ~3x.
test: install lint docs
	$(PYTEST) tests/raft -m "not slow" --cov=kvraft.raft --cov-report=term --cov-fail-under=90
	$(PYTEST) tests/raft -m slow
	$(PYTEST) tests --ignore=tests/raft --durations=15

test-fast: install
	$(PYTEST) tests -m "not slow and not cluster and not docker and not chaos"

# The docs extra (mkdocs, mkdocstrings) is installed on first use. The build itself reads
# only the repository (no network) and fails on any warning (mkdocs.yml: strict).
DOCS_STAMP := $(VENV)/.kvraft-docs-installed
$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e '.[test,docs]'
	@touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(PY) -m mkdocs build --strict --clean

SEEDS ?= 1000
# SEED=S replays one seed with a trace of every action; otherwise seeds 0..SEEDS-1.
sim: install
	@if [ -n "$(SEED)" ]; then $(PY) -m tests.raft.sim --seed $(SEED) -v; \
	  else $(PY) -m tests.raft.sim --seeds $(SEEDS); fi

# The whole-node simulation (tests/simcluster): real Nodes and LevelDB stores on a virtual
# clock, seeded faults. SEED=S replays one seed with a trace; otherwise seeds 0..N-1
# (SEEDS given on the command line, else 100). NO_WIRE_CHECK=1 checks only consequences;
# NO_LEASE_WATCH=1 runs without the lease and watch clients (as before they existed).
sim-cluster: install
	@if [ -n "$(SEED)" ]; then $(PY) -m tests.simcluster --seed $(SEED) -v \
	  $(if $(NO_WIRE_CHECK),--no-wire-check) $(if $(NO_LEASE_WATCH),--no-lease-watch); \
	  else $(PY) -m tests.simcluster \
	  --seeds $(if $(filter command line environment,$(origin SEEDS)),$(SEEDS),100) \
	  $(if $(NO_WIRE_CHECK),--no-wire-check) $(if $(NO_LEASE_WATCH),--no-lease-watch); fi

# A local cluster on loopback in the foreground; data and logs in $(RUN_DIR) (reused by the
# next run). Ctrl-C stops every node.
RUN_DIR ?= .run
NODES ?= 5
run: install
	@$(PY) -m kvraft.devcluster --nodes $(NODES) --dir $(RUN_DIR)

# Every tests/bench/bench_*.py is a standalone benchmark script that prints a table.
bench: install
	@set -e; found=0; for f in tests/bench/bench_*.py; do [ -e "$$f" ] || continue; \
	  found=1; echo "== $$f"; $(PY) "$$f"; done; \
	  [ $$found = 1 ] || { echo "make bench: no benchmarks have landed yet"; exit 1; }

# kvraft vs etcd vs a bare gRPC echo server; BENCH_ARGS narrows the matrix, e.g.
# make bench-compare BENCH_ARGS="--nodes 3 --clients 64 --repeats 1"
BENCH_ARGS ?=
bench-compare: install
	@mkdir -p .run
	$(PY) -m tests.bench.compare --markdown BENCHMARKS.md --json .run/bench-compare.json $(BENCH_ARGS)

# A real 5-node cluster in network namespaces under a seeded nemesis (needs root and
# iproute2/iptables); no SEED draws one, which the report prints for replaying.
# OVERLAP=1 lets faults pile up instead of healing each one; READ_MODE=lease runs the
# nodes with `kvraft serve --read-mode lease`.
DURATION ?= 300
chaos: install
	$(PY) -m tests.chaos.run --duration $(DURATION) $(if $(SEED),--seed $(SEED)) \
	  $(if $(OVERLAP),--overlap) $(if $(READ_MODE),--read-mode $(READ_MODE))

# A 3-node cluster on lazyfs (tests/powerloss: a FUSE file system that loses what was not
# fsynced) power-cut CUTS times, a quarter (or ALL_CUTS) of them all members at once,
# checked after each cut. No SEED draws one, which the run prints; a failure prints the
# seed and keeps the run's directory. MODE=posix also needs directory fsyncs for names.
# SWEEP=1 first cuts a founding member right after each fsync of its bootstrap.
CUTS ?= 100
MODE ?= ext4
SWEEP ?= 0
powerloss: install
	$(PY) -m tests.powerloss.run --cuts $(CUTS) --mode $(MODE) $(if $(SEED),--seed $(SEED)) \
	  $(if $(ALL_CUTS),--all-cuts $(ALL_CUTS)) $(if $(filter 1,$(SWEEP)),--bootstrap-sweep)

# Development certificates (kvraft/devcerts.py, docs/security.md): a CA, and for each
# member a client-port and a peer certificate naming 127.0.0.1, localhost and kvraftID
# (the compose cluster's host names), and a client certificate.
CERTS_DIR ?= .certs
MEMBERS ?= 1,2,3,4,5
certs: install
	$(PY) -m kvraft.devcerts --out $(CERTS_DIR) --members $(MEMBERS) \
	  --host 127.0.0.1 --host localhost --member-host 'kvraft{id}'

# The compose plugin when present, docker-compose v1 otherwise (deferred: only these
# targets pay for the probe). Neither target needs the venv: the image is built from
# host wheels and the leader wait runs inside a container (deploy/scripts/).
DOCKER_COMPOSE = $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
VOLUMES ?= 0

# TLS=1: the TLS overlay (deploy/docker-compose.tls.yml) with the certificates of
# `make certs` (made first when CERTS_DIR has none).
docker-up: $(if $(filter 1,$(TLS)),$(CERTS_DIR)/ca.crt)
	@DOCKER_COMPOSE="$(DOCKER_COMPOSE)" TLS="$(TLS)" CERTS_DIR="$(CERTS_DIR)" \
	  bash deploy/scripts/docker-up.sh

$(CERTS_DIR)/ca.crt:
	$(MAKE) certs CERTS_DIR=$(CERTS_DIR)

docker-down:
	@DOCKER_COMPOSE="$(DOCKER_COMPOSE)" VOLUMES="$(VOLUMES)" TLS="$(TLS)" \
	  bash deploy/scripts/docker-down.sh

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache .coverage kvraft/proto/*_pb2*.py kvraft/proto/*_pb2.pyi
