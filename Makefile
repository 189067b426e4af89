# sesscache: `make run` starts the server, `make test` runs every check.
# Both set up the virtual environment and the generated stubs when needed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
# Two stamps: `make run` needs only the runtime list and the project
# (RUN_STAMP); `make test` adds the development tools (DEV_STAMP).
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
PROTO  := protos/sesscache/v1/sesscache.proto
STUBS  := sesscache_pb2.py sesscache_pb2.pyi sesscache_pb2_grpc.py sesscache_pb2_grpc.pyi
GEN    := $(addprefix sesscache/v1/,$(STUBS)) $(addprefix client/sesscache_client/v1/,$(STUBS))
PYTEST_ARGS ?=

.PHONY: all setup setup-run node-deps proto run test lint typecheck pytest bench bench-console bench-freshness soak scale-demo clean

all: test

setup: $(DEV_STAMP) $(GEN)

setup-run: $(RUN_STAMP)

# What serving needs: the pinned runtime list, then the project and the client,
# editable. Their build hooks (setup.py) generate the stubs in place; the
# generator's tools go into pip's temporary build environment, not the venv.
# Redone when a pinned list, a build file or the proto changes.
$(RUN_STAMP): requirements.txt pyproject.toml setup.py client/pyproject.toml client/setup.py \
              client/stubs.py $(PROTO)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e . -e ./client
	touch $@

# The development and test tools on top (mypy, ruff, hypothesis, pytest, ...).
$(DEV_STAMP): $(RUN_STAMP) requirements-dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

# Python stubs for protos/, with mypy stubs: the server's (`sesscache.v1`) and
# the client's copy (`sesscache_client.v1`), by the generator the builds use.
$(GEN) &: $(PROTO) $(DEV_STAMP) client/stubs.py
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

proto: $(DEV_STAMP)
	rm -f $(GEN)
	$(MAKE) $(GEN)

run: setup-run
	$(BIN)/sesscache-server $(ARGS)

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

# The web console's page load with 10,000 sessions, and its cost to the hit path.
bench-console: setup
	$(PY) -m bench.console $(ARGS)

bench-freshness: setup
	$(PY) -m bench.freshness $(ARGS)

soak: setup
	$(PY) -m soak $(ARGS)

scale-demo: setup
	$(PY) -m scale $(ARGS)

clean:
	rm -rf $(VENV) $(GEN) .mypy_cache .ruff_cache .pytest_cache .hypothesis $(NODE_DIR)/node_modules
