#!/usr/bin/env bash
# Install llama-cpp-python (the version pinned in pyproject.toml) into the virtual environment from a wheel
# built for THIS CPU, never from pip's own wheel cache.
#
#   scripts/install_llama_cpp.sh [VENV]            # default VENV: .venv
#   scripts/install_llama_cpp.sh [VENV] --check    # also decode a few tokens with the default model in a
#                                                  # subprocess; on a crash, rebuild once from source
#
# Why: llama.cpp is compiled with -march=native (minus what scripts/llama_cpu_flags.sh removes). pip's
# wheel cache is keyed by the sdist alone, not by the compiler flags or the CPU, so a wheel built before a
# flag change or on another CPU is silently reinstalled and crashes on the first decode (seen here on
# 2026-11-27: a cached wheel built with AMX kernels segfaulted the whole test suite of a fresh clone).
# Here the wheel lives in ~/.cache/infill-ls/wheels/<key>/, where key = hash(version, compiler flags,
# CMAKE_ARGS, CPU model and feature flags); a new key builds a new wheel (~25 min on 2 cores, once).
# The venv records the key it was installed with (VENV/.llama-cpp-key): a matching key exits at once.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV=.venv CHECK=0 PRINT_DIR=0
for arg in "$@"; do
  case "$arg" in
    --check) CHECK=1 ;;
    --print-wheel-dir) PRINT_DIR=1 ;;   # print where this CPU's wheel lives, and exit
    -*) echo "install_llama_cpp.sh: unknown option $arg" >&2; exit 2 ;;
    *) VENV="$arg" ;;
  esac
done
PY="$VENV/bin/python"
VERSION="$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' "$ROOT/pyproject.toml" | head -n1)"
FLAGS="$("$ROOT/scripts/llama_cpu_flags.sh")"
if [ -z "${CMAKE_ARGS:-}" ]; then
  CMAKE_ARGS="-DCMAKE_C_FLAGS='$FLAGS' -DCMAKE_CXX_FLAGS='$FLAGS'"
fi
export CMAKE_ARGS
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}"

KEY="$( { echo "llama-cpp-python==$VERSION"; echo "flags=$FLAGS"; echo "cmake=$CMAKE_ARGS";
          "$ROOT/scripts/llama_cpu_signature.sh"; } \
        | sha256sum | cut -c1-16)"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/infill-ls/wheels"
WHEEL_DIR="$CACHE/llama-cpp-python-$VERSION-$KEY"
STAMP="$VENV/.llama-cpp-key"
if [ "$PRINT_DIR" = 1 ]; then echo "$WHEEL_DIR"; exit 0; fi

installed_ok() {
  [ "$(cat "$STAMP" 2>/dev/null)" = "$KEY" ] && "$PY" -c "import importlib.metadata as m, sys; \
sys.exit(m.version('llama_cpp_python') != '$VERSION')" 2>/dev/null
}

build_wheel() {
  echo "[llama-cpp] building llama-cpp-python==$VERSION for this CPU (key $KEY; ~25 min on 2 cores)"
  echo "[llama-cpp] CMAKE_ARGS=$CMAKE_ARGS"
  rm -rf "$WHEEL_DIR.tmp"
  mkdir -p "$WHEEL_DIR.tmp"
  local start
  start=$(date +%s)
  "$PY" -m pip wheel --disable-pip-version-check --no-cache-dir --no-deps --no-binary llama-cpp-python \
      "llama-cpp-python==$VERSION" -w "$WHEEL_DIR.tmp"
  rm -rf "$WHEEL_DIR"
  mv "$WHEEL_DIR.tmp" "$WHEEL_DIR"
  echo "[llama-cpp] wheel built in $(( $(date +%s) - start )) s: $WHEEL_DIR"
}

install() {
  if ! ls "$WHEEL_DIR"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
    build_wheel
  fi
  # the binding's own dependencies first (numpy, jinja2, ...), then the wheel itself without touching them
  "$PY" -m pip install -q --disable-pip-version-check --no-cache-dir --force-reinstall --no-deps \
      "$WHEEL_DIR"/llama_cpp_python-"$VERSION"-*.whl
  "$PY" -m pip install -q --disable-pip-version-check "$WHEEL_DIR"/llama_cpp_python-"$VERSION"-*.whl
  echo "$KEY" > "$STAMP"
  echo "[llama-cpp] installed llama-cpp-python==$VERSION (key $KEY) into $VENV"
}

check() {
  # a real decode in a child process: a crash (signal) there means the build does not run on this CPU
  local rc=0
  "$PY" - <<'EOF' || rc=$?
import os, sys
from pathlib import Path
model = Path(os.environ.get("INFILL_LS_CHECK_MODEL") or
             Path.home() / ".cache" / "infill-ls" / "models" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
if not model.is_file():
    print(f"[llama-cpp] check skipped: no model at {model}")
    sys.exit(0)
from llama_cpp import Llama
llm = Llama(model_path=str(model), n_ctx=128, n_threads=2, verbose=False)
out = llm.create_completion("def add(a, b):\n    return", max_tokens=3, temperature=0.0)
print("[llama-cpp] decode check passed:", repr(out["choices"][0]["text"]))
EOF
  return $rc
}

if ! installed_ok; then
  install
fi
if [ "$CHECK" = 1 ]; then
  if ! check; then
    echo "[llama-cpp] the installed llama.cpp crashed on a decode on this CPU; rebuilding it from source once" >&2
    rm -rf "$WHEEL_DIR" "$STAMP"
    install
    check || { echo "[llama-cpp] still crashing after a rebuild: see docs/SETUP.md (CPU flags)" >&2; exit 1; }
  fi
fi
