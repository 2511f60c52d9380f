# infill-ls developer entry points. `make demo` and `make test` are the README's first two commands:
# each sets up everything it needs (virtual environment, package, default model) on a fresh machine.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# llama-cpp-python compiles llama.cpp on first install (~25 min on 2 cores); pip caches the wheel after.
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: setup model demo test test-unit bench-context clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[test]'
	touch $@

setup: $(BIN)/.installed

model: setup
	$(BIN)/infill-ls models pull

demo: model
	@echo "--- infill-ls: completing examples/demo.py line 9 through the language server over stdio ---"
	$(BIN)/infill-ls complete examples/demo.py:9:end --show

test: model
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-unit: setup
	$(BIN)/python -m pytest -q tests/unit

bench-context: setup
	$(BIN)/python bench/context_bench.py

clean:
	rm -rf $(VENV) build dist *.egg-info
