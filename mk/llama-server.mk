# make server: llama.cpp's own llama-server and llama-bench, built from the very llama.cpp
# source that llama-cpp-python vendors (same version as pyproject.toml pins, same CMAKE_ARGS),
# so that the server engine and the Python bindings run the same inference code.
#
#   make server                       build (once per version and set of flags)
#   make server CMAKE_ARGS="..."      another set of flags gets its own build folder
#   make server-if-possible           build, or print why not and succeed (for `make test`:
#                                     the server tests then skip, saying to run `make server`)
#   make clean-server                 remove the sources and all builds
#
# Layout (build/ is git-ignored):
#   build/sdist/                              the llama-cpp-python sdist, fetched with pip
#   build/llama-cpp-python-<version>/         the unpacked sdist (vendor/llama.cpp is built)
#   build/llama.cpp-<version>-<flags id>/     one CMake build per version and set of flags
#   build/llama.cpp -> llama.cpp-<...>        stable link to the build of the last `make server`
#   $(LLAMA_SERVER_BIN), $(LLAMA_BENCH_BIN)   the binaries, through that link
#
# Not a dependency of `make run`: only the server engine needs it.

PYTHON ?= python3
VENV ?= .venv
CMAKE_ARGS ?= -DGGML_NATIVE=OFF

LLAMA_CPP_PYTHON_VERSION := $(shell grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml | cut -d= -f3)
LLAMA_NPROC := $(shell nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
# pip of the project's environment when there is one (looked up when used, after `make`
# may have made it), else the system's: only `pip download`.
LLAMA_PIP_PYTHON = $(firstword $(wildcard $(VENV)/bin/python) $(PYTHON))

# Fixed flags first, so that CMAKE_ARGS can override any of them. Why each one:
#   Release                 optimised like llama-cpp-python's own build (scikit-build-core)
#   LLAMA_CURL=OFF          no model downloads from the server (ignored, with a warning, by
#                           llama.cpp versions that dropped curl)
#   BUILD_SHARED_LIBS=OFF   self-contained binaries: no RPATH into this build folder
#   LLAMA_OPENSSL=OFF       the server only listens on 127.0.0.1; no libssl-dev needed
#   LLAMA_BUILD_UI=OFF, LLAMA_USE_PREBUILT_UI=OFF
#                           no npm build and no download of the web UI during the build
#                           (we run with --no-webui anyway)
#   LLAMA_BUILD_TESTS/EXAMPLES=OFF  less to configure; only two targets are built
LLAMA_FIXED_CMAKE_FLAGS := -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
LLAMA_CMAKE_FLAGS := $(LLAMA_FIXED_CMAKE_FLAGS) $(CMAKE_ARGS)
# One build folder per set of flags: changing CMAKE_ARGS (or the fixed flags) rebuilds.
LLAMA_FLAGS_ID := $(shell printf '%s' '$(LLAMA_CMAKE_FLAGS)' | cksum | cut -d' ' -f1)

LLAMA_SDIST_DIR := build/sdist
LLAMA_SRC_DIR := build/llama-cpp-python-$(LLAMA_CPP_PYTHON_VERSION)
LLAMA_SRC_STAMP := $(LLAMA_SRC_DIR)/.unpacked
LLAMA_BUILD_DIR := build/llama.cpp-$(LLAMA_CPP_PYTHON_VERSION)-$(LLAMA_FLAGS_ID)
LLAMA_BUILD_STAMP := $(LLAMA_BUILD_DIR)/.built
LLAMA_CPP_LINK := build/llama.cpp
LLAMA_SERVER_BIN := $(LLAMA_CPP_LINK)/bin/llama-server
LLAMA_BENCH_BIN := $(LLAMA_CPP_LINK)/bin/llama-bench

.PHONY: server server-if-possible clean-server

server: $(LLAMA_BUILD_STAMP)
	ln -sfn $(notdir $(LLAMA_BUILD_DIR)) $(LLAMA_CPP_LINK)
	@$(LLAMA_SERVER_BIN) --version 2>&1 | grep -E '^(version|built with)' || true
	@echo "llama-server: $(LLAMA_SERVER_BIN)"
	@echo "llama-bench:  $(LLAMA_BENCH_BIN)"

$(LLAMA_SRC_STAMP):
	@test -n "$(LLAMA_CPP_PYTHON_VERSION)" \
	  || { echo "no llama-cpp-python==<version> pin found in pyproject.toml" >&2; exit 1; }
	mkdir -p $(LLAMA_SDIST_DIR)
	$(LLAMA_PIP_PYTHON) -m pip download --quiet --no-deps --no-binary :all: \
	  --dest $(LLAMA_SDIST_DIR) llama-cpp-python==$(LLAMA_CPP_PYTHON_VERSION)
	rm -rf $(LLAMA_SRC_DIR)
	mkdir -p $(LLAMA_SRC_DIR)
	tar -xzf "$$(ls $(LLAMA_SDIST_DIR)/llama?cpp?python-$(LLAMA_CPP_PYTHON_VERSION).tar.gz | head -n 1)" \
	  -C $(LLAMA_SRC_DIR) --strip-components=1
	test -f $(LLAMA_SRC_DIR)/vendor/llama.cpp/CMakeLists.txt
	touch $@

$(LLAMA_BUILD_STAMP): $(LLAMA_SRC_STAMP)
	cmake -S $(LLAMA_SRC_DIR)/vendor/llama.cpp -B $(LLAMA_BUILD_DIR) $(LLAMA_CMAKE_FLAGS)
	cmake --build $(LLAMA_BUILD_DIR) --config Release -j $(LLAMA_NPROC) \
	  --target llama-server llama-bench
	printf 'llama-cpp-python==%s\ncmake flags: %s\n' \
	  '$(LLAMA_CPP_PYTHON_VERSION)' '$(LLAMA_CMAKE_FLAGS)' > $(LLAMA_BUILD_DIR)/build-flags.txt
	touch $@

server-if-possible:
	@$(MAKE) --no-print-directory server \
	  || echo "warning: could not build llama-server (see above); its tests will be skipped"

clean-server:
	rm -rf $(LLAMA_CPP_LINK) build/llama.cpp-* build/llama-cpp-python-* $(LLAMA_SDIST_DIR)
