# Set-up and the two commands of the README's Quick start:
#   make run    installs everything, then runs the default experiment (all CSVs and plots)
#   make test   installs everything, then runs the test suite
#
# llama-cpp-python is compiled from source. By default it is built for the CPU without
# -march=native (portable; some VMs forbid the AMX instructions a native build uses).
# Your own CMAKE_ARGS take precedence, e.g. for an NVIDIA GPU:
#   make run CMAKE_ARGS="-DGGML_CUDA=on"

PYTHON ?= python3
VENV ?= .venv
CMAKE_ARGS ?= -DGGML_NATIVE=OFF
export CMAKE_ARGS

BIN := $(VENV)/bin
# One stamp per set of build flags: changing them rebuilds llama-cpp-python.
FLAGS_ID := $(shell printf '%s' '$(CMAKE_ARGS)' | cksum | cut -d' ' -f1)
STAMP := $(VENV)/.installed-$(FLAGS_ID)

.PHONY: setup run test lint report browser clean-venv mutation

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@if [ ! -e $(STAMP) ] && ls $(VENV)/.installed-* >/dev/null 2>&1; then \
	  echo "build flags changed to '$(CMAKE_ARGS)': rebuilding llama-cpp-python"; \
	  $(BIN)/python -m pip install --no-cache-dir --force-reinstall --no-deps \
	    "$$(grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml)"; \
	fi
	$(BIN)/python -m pip install -e ".[test,mutation]"
	rm -f $(VENV)/.installed-*
	touch $@

run: $(STAMP)
	$(BIN)/snakemake

# The tests also need Chromium (the report), SLURM (a throwaway cluster) and llama-server
# (the server engine); each is skipped with its reason when it cannot be installed.
test: $(STAMP) browser slurm server-if-possible
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks workflow/scripts
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint

report: $(STAMP)
	$(BIN)/snakemake --report report.html

# Mutation testing of the core modules (CONTRIBUTING.md, "Mutation testing"); not part of
# `make test`. Starts afresh each time, prints the kill rate per module and the survivors.
mutation: $(STAMP)
	rm -rf mutants && mkdir -p mutants models && ln -s ../models mutants/models
	KVCACHE_TEST_THREADS=1 $(BIN)/mutmut run
	$(BIN)/python mutation/report.py --min 90

# Headless Chromium for the report test; installed from Debian's packages when we can.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: could not install chromium; the report's browser test will be skipped"; \
	  else \
	    echo "note: chromium is not installed; the report's browser test will be skipped"; \
	  fi; }

clean-venv:
	rm -rf $(VENV)

include mk/slurm.mk
include mk/llama-server.mk
