# sesscache: `make run` starts the server, `make test` runs every check.
# Both set up the virtual environment and the generated stubs when needed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed
PROTO  := protos/sesscache/v1/sesscache.proto
STUBS  := sesscache_pb2.py sesscache_pb2.pyi sesscache_pb2_grpc.py sesscache_pb2_grpc.pyi
GEN    := $(addprefix sesscache/v1/,$(STUBS)) $(addprefix client/sesscache_client/v1/,$(STUBS))
PYTEST_ARGS ?=

.PHONY: all setup node-deps proto run test lint typecheck pytest bench bench-freshness soak scale-demo clean

all: test

setup: $(STAMP) $(GEN)

# The virtual environment, rebuilt when a pinned list changes.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation \
	    -e . -e ./client
	touch $@

# Python stubs for protos/, with mypy stubs: the server's (`sesscache.v1`) and
# the client's copy (`sesscache_client.v1`), by the generator the builds use.
$(GEN) &: $(PROTO) $(STAMP) client/stubs.py
	$(PY) client/stubs.py protos . sesscache.v1 >/dev/null
	$(PY) client/stubs.py protos client sesscache_client.v1 >/dev/null

# The Node test client's npm packages (tests/test_grpc_js.py), reinstalled when
# package.json changes. No lock file is written. Without node and npm this warns
# and the test skips, except under CI=true, where it is an error.
NODE_DIR   := tests/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed

node-deps: $(NODE_STAMP)

$(NODE_STAMP): $(NODE_DIR)/package.json
	@if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then \
	    if [ "$$CI" = true ]; then \
	        echo "error: node and npm are needed for tests/test_grpc_js.py (apt-get install nodejs npm)" >&2; \
	        exit 1; \
	    fi; \
	    echo "warning: node or npm not found: tests/test_grpc_js.py will be skipped" >&2; \
	else \
	    cd $(NODE_DIR) && npm install --no-package-lock --no-audit --no-fund --loglevel=error && \
	    touch node_modules/.installed; \
	fi

proto: $(STAMP)
	rm -f $(GEN)
	$(MAKE) $(GEN)

run: setup
	$(PY) -m sesscache_server $(ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

pytest: setup node-deps
	$(PY) -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

# Benchmarks and soaks: long runs with their own targets (`make test` runs short versions).
bench: setup
	$(PY) -m bench $(ARGS)

bench-freshness: setup
	$(PY) -m bench.freshness $(ARGS)

soak: setup
	$(PY) -m soak $(ARGS)

scale-demo: setup
	$(PY) -m scale $(ARGS)

clean:
	rm -rf $(VENV) $(GEN) .mypy_cache .ruff_cache .pytest_cache .hypothesis $(NODE_DIR)/node_modules
