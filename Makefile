# Two entry points for a fresh machine (see README.md):
#   make book   set everything up, run every chapter for the default model, build the HTML book
#   make test   set everything up, run ruff, pytest and the notebook regression tests (nbval)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MODEL ?= smollm2-135m
DEVICE ?= auto
# the llama-cpp-python release (setup-llm), and the llama.cpp it vendors (setup-llm-server)
LLAMA_CPP_PYTHON := 0.3.36

.PHONY: setup setup-llm setup-llm-server setup-browser describe judge-scores book test lint unit nbval bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: these machines carry the CPU build of 2.13.0 locally, so pip does not fetch CUDA.
$(VENV)/.installed: requirements.txt requirements-nodeps.txt pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

setup: $(VENV)/.installed

# Every llama.cpp built here force-includes tools/gcc12_amx_tilecfg.h: GCC 12 (Debian 12, Ubuntu 22.04)
# miscompiles llama.cpp's AMX kernels, which then die of SIGILL on Sapphire Rapids and newer CPUs.
# CMake takes CFLAGS/CXXFLAGS from the environment at its first configure; elsewhere the header is empty.
LLAMA_FLAGS := CFLAGS="-include $(CURDIR)/tools/gcc12_amx_tilecfg.h" \
	CXXFLAGS="-include $(CURDIR)/tools/gcc12_amx_tilecfg.h"

# The local LLM server that describes heads (chapter 7). Optional: it compiles llama.cpp (6-10 min),
# which `make book` and `make test` do not need (they replay the committed answers).
setup-llm: setup
	$(LLAMA_FLAGS) $(BIN)/pip install -q --no-cache-dir "llama-cpp-python[server]==$(LLAMA_CPP_PYTHON)"

# llama.cpp's own server (`--llm-backend llama-server`), built from the llama.cpp that the same
# llama-cpp-python release vendors, statically, into the venv (6-8 min; needs cmake and a C++
# compiler). Same kernels, no Python in the token loop: 1.13x faster per head on 2 cores, and
# requests in flight decode together (8 slots: 1.46x more where decoding waits on memory).
setup-llm-server: $(BIN)/llama-server
$(BIN)/llama-server: | setup
	rm -rf $(VENV)/llama.cpp-src && mkdir -p $(VENV)/llama.cpp-src
	$(BIN)/pip download -q --no-deps --no-binary :all: -d $(VENV)/llama.cpp-src \
		"llama-cpp-python==$(LLAMA_CPP_PYTHON)"
	tar xzf $(VENV)/llama.cpp-src/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz -C $(VENV)/llama.cpp-src
	$(LLAMA_FLAGS) cmake -S $(VENV)/llama.cpp-src/llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp \
		-B $(VENV)/llama.cpp-src/build -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
		-DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF > /dev/null
	cmake --build $(VENV)/llama.cpp-src/build -j $$(nproc) --target llama-server > /dev/null
	cp $(VENV)/llama.cpp-src/build/bin/llama-server $@
	rm -rf $(VENV)/llama.cpp-src

# Describe (and score) every head of MODEL with the local LLM; resumable, answers into the package.
describe: setup-llm
	$(BIN)/python -m mapslib salient --model $(MODEL) --device cpu --out _build/describe/$(MODEL).json \
		--describe --judge --llm local --llm-cache mapslib/data/llm_answers

# Commit the likelihood judge's cached scores (mapslib/data/judge_scores/), so that a fresh clone
# replays chapter 7's judge with no llama.cpp and no judge model.
judge-scores: setup
	$(BIN)/python -c "from mapslib.salient.assess import export_judge_scores; print(export_judge_scores())"

book: setup
	$(BIN)/python -m mapslib book --model $(MODEL) --device $(DEVICE) --fresh

lint: setup
	$(BIN)/ruff check mapslib tests notebooks benchmarks
	$(BIN)/ruff format --check mapslib tests benchmarks

# Debian's chromium for the browser tests (tests/book/test_browser.py), installed where missing and
# possible; where it cannot be, those tests skip and say why.
setup-browser:
	@command -v chromium > /dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null && \
		apt-get update -qq > /dev/null && apt-get install -y -qq chromium > /dev/null; } || \
		echo "chromium is not installed and could not be: the browser tests will skip"

unit: setup setup-browser
	$(BIN)/python -m pytest -q tests

# nbval re-executes copies of the committed executed notebooks (so their data/ is not rewritten) and
# compares every text output with the committed one; _build/nbval/data starts empty, so every table is recomputed.
nbval: setup
	rm -rf _build/nbval && mkdir -p _build/nbval && cp $$(grep -v '^#' tests/nbval_notebooks.txt) _build/nbval/
	$(BIN)/python -m pytest -q -p no:cacheprovider --nbval --nbval-current-env \
		--nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 900 _build/nbval

test: lint unit nbval

bench: setup
	$(BIN)/python benchmarks/bench_relations.py

clean:
	rm -rf _build
