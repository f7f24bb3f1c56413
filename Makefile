# `make run` starts the server with embedded defaults; `make test` runs the whole test suite.
# Both create .venv on first use and install what they need, system packages included.
PY ?= python3.11
# Most end-to-end tests wait on real-time audio, not the CPU: three workers share two cores well.
TEST_WORKERS ?= 3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYS_STAMP := $(VENV)/.system-packages
APT_PACKAGES := espeak-ng sox libsox-fmt-all redis-server sip-tester baresip-core linphone-cli postgresql

.PHONY: run test lint bench system venv clean

run: $(STAMP)
	$(BIN)/python run.py serve

test: $(STAMP) $(SYS_STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/ruff format --check .

bench: $(STAMP) $(SYS_STAMP)
	$(BIN)/python bench/latency.py --start-server
	$(BIN)/python bench/sip_latency.py --start-server --concurrency 1,4

venv: $(STAMP)

# Debian packages the tests need (test audio and a standalone Redis); the server itself needs none.
system: $(SYS_STAMP)
$(SYS_STAMP): Makefile | $(VENV)/bin/python
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	touch $@

$(VENV)/bin/python:
	$(PY) -m venv $(VENV)

# torch first: the local CPU build, so nothing pulls the multi-GB CUDA wheels.
# llama-cpp-python compiles llama.cpp (no wheel for it here): CPU only, without the multimodal
# library we don't use, on every core. pip caches the wheel, so this happens once per machine.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	CMAKE_ARGS="-DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	  $(BIN)/pip install -q -e ".[test]"
	touch $@

clean:
	rm -rf $(VENV) data
