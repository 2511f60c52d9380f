# infill-ls developer entry points. `make demo` and `make test` are the README's first two commands:
# each sets up everything it needs (virtual environment, package, default model) on a fresh machine.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# llama-cpp-python compiles llama.cpp on first install (~25 min on 2 cores); the wheel is kept per CPU after.
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)
# No AMX kernels where the VM faults on them (scripts/llama_cpu_flags.sh says why); the rest stays -march=native.
LLAMA_CPU_FLAGS := $(shell scripts/llama_cpu_flags.sh)
export CMAKE_ARGS ?= -DCMAKE_C_FLAGS='$(LLAMA_CPU_FLAGS)' -DCMAKE_CXX_FLAGS='$(LLAMA_CPU_FLAGS)'

.PHONY: setup llama-check model demo test test-unit bench-context clean llama-server bench-load

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	scripts/install_llama_cpp.sh $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[test,transformers]'
	touch $@

# llama-cpp-python comes from a wheel built for this CPU (scripts/install_llama_cpp.sh says why), never from
# pip's wheel cache; the check reinstalls it when the venv's build was made for other flags or another CPU.
setup: $(BIN)/.installed
	@scripts/install_llama_cpp.sh $(VENV)

# a real decode in a child process; a build that crashes on this CPU is rebuilt once from source
llama-check: model
	scripts/install_llama_cpp.sh $(VENV) --check

model: setup
	$(BIN)/infill-ls models pull

demo: model
	@echo "--- infill-ls: completing examples/demo.py line 9 through the language server over stdio ---"
	$(BIN)/infill-ls complete examples/demo.py:9:end --show

test: model llama-check llama-server
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-unit: setup
	$(BIN)/python -m pytest -q tests/unit

# llama.cpp's llama-server for the HTTP backend tests and managed mode, built once from the sources that the
# pinned llama-cpp-python sdist vendors into ~/.cache/infill-ls/bin (skipped when present): ~15+ min on 2 cores.
llama-server: setup
	scripts/build_llama_server.sh

bench-load: model llama-server
	$(BIN)/python bench/load_bench.py --ns 1,4,16 --requests 5 --threads 1

bench-context: setup
	$(BIN)/python bench/context_bench.py

# Replay benchmark (issue 5): typing sessions through the real server, naive beside optimized (~10 min).
# REPLAY_ARGS passes switches, e.g. make bench-replay REPLAY_ARGS="--config optimized --limit-keys 40"
.PHONY: bench-replay
bench-replay: model
	$(BIN)/python bench/replay.py $(REPLAY_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info

# --- editors (issue 8): VS Code extension + Neovim plugin, and their end-to-end tests in the real editors ---
# editors-setup installs Neovim 0.12 and Node 24 (PyPI) into the venv, Debian's chromium/tmux and the -dev
# libraries code-server builds against (only if missing), npm ci + compile + lint + package editors/vscode,
# npm ci tests/editors/harness, and code-server into ~/.cache/infill-ls/editors. Idempotent: seconds when done.
.PHONY: editors-setup vsix test-editors editors-screenshots
test: editors-setup

editors-setup: setup
	VENV=$(abspath $(VENV)) bash tests/editors/setup.sh

vsix: editors-setup
	@ls -l editors/vscode/infill-ls.vsix

test-editors: model editors-setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/editors

# the same tests, also copying their screenshots to docs/images (used by docs/EDITORS.md)
editors-screenshots: model editors-setup
	INFILL_SCREENSHOTS=$(abspath docs/images) $(BIN)/python -m pytest -q -p no:cacheprovider tests/editors
