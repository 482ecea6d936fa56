# `make run` and `make test` set everything up on a fresh machine: a virtual environment in
# .venv with the package and its test tools. Python >= 3.11 is needed (PYTHON=python3.12 to pick).
# The distribution's interpreter is preferred where there is one: it is built with PGO and LTO,
# which makes the gateway's hot path markedly faster than a plain source build (pyenv's default).
PYTHON ?= $(firstword $(wildcard /usr/bin/python3.13 /usr/bin/python3.12 /usr/bin/python3.11) python3)
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= deploy/config.example.yaml
STAMP := $(VENV)/.installed

.PHONY: run test lint check clean bench binary

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "sidecar needs Python >= 3.11 (make PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/sidecar --config $(CONFIG)

check: $(STAMP)
	$(BIN)/sidecar --config $(CONFIG) --check

# Real upstreams for the tests (llama.cpp's server, the LiteLLM proxy), each in a venv kept in
# ~/.cache/sidecar and built once per machine: the first `make test` compiles llama.cpp.
REAL := PYTHON=$(PYTHON) bash tests/real/cached_venv.sh

# The tests run a real redis-server (Debian's package): installed here when it is missing,
# with sudo unless this runs as root (as CI does).
REDIS_SERVER := $(firstword $(wildcard /usr/bin/redis-server /usr/local/bin/redis-server))

test: $(STAMP)
	@if [ -z "$(REDIS_SERVER)" ] && ! command -v redis-server >/dev/null; then \
		echo "installing redis-server for the shared-state tests"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; \
	fi
	$(BIN)/ruff check sidecar tests
	$(BIN)/mypy
	llama="$$($(REAL) llama)" && litellm="$$($(REAL) litellm)" && \
	SIDECAR_LLAMA_VENV="$$llama" SIDECAR_LITELLM_VENV="$$litellm" $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check sidecar tests
	$(BIN)/ruff format --check sidecar tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info

# The benchmark (tests/bench/): needs wrk (apt-get install wrk); nginx is compared when installed.
bench: $(STAMP)
	$(BIN)/python -m tests.bench.run $(BENCH_ARGS)

# One self-contained executable in dist/sidecar (PyInstaller; interpreter and dependencies inside).
binary: $(STAMP)
	$(BIN)/python deploy/build_binary.py --dist dist
