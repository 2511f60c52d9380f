#!/usr/bin/env bash
# Build llama.cpp's `llama-server` once, from the llama.cpp sources vendored in the llama-cpp-python sdist
# (same llama.cpp revision as the pinned Python binding), into the user cache dir.
#
#   scripts/build_llama_server.sh            # -> ${INFILL_LS_BIN_DIR:-~/.cache/infill-ls/bin}/llama-server
#
# Idempotent: when the binary is already there and runs (`--version`), it exits at once.
# CPU-only build (no CUDA); set LLAMA_CMAKE_ARGS for e.g. -DGGML_CUDA=ON on a GPU box.
# Build time measured: see docs/DEPLOY.md (~15 min on 2 shared cores).
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
BIN_DIR="${INFILL_LS_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/infill-ls/bin}"
WORK_DIR="${INFILL_LS_BUILD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/infill-ls/build/llama.cpp-$VERSION}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
PY="${PYTHON:-python3}"
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi

TARGET="$BIN_DIR/llama-server"
STAMP="$TARGET.flags"
# -march=native: a binary built on another CPU (a cache carried between machines) may crash here, so the
# stamp holds the CPU's model and feature flags too, hashed
CPU_SIG="$("$(dirname "$0")/llama_cpu_signature.sh" | sha256sum | cut -c1-16)"
WANT="flags=$("$(dirname "$0")/llama_cpu_flags.sh") ${LLAMA_CMAKE_ARGS:-} cpu=$CPU_SIG"
if [ -x "$TARGET" ] && "$TARGET" --version >/dev/null 2>&1 && [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ]; then
  echo "llama-server already built: $TARGET"
  exit 0
fi

mkdir -p "$BIN_DIR" "$WORK_DIR"
start=$(date +%s)

SRC="$WORK_DIR/src"
if [ ! -f "$SRC/vendor/llama.cpp/CMakeLists.txt" ]; then
  echo "fetching llama-cpp-python==$VERSION sdist (vendors llama.cpp)..."
  rm -rf "$WORK_DIR/sdist" "$SRC"
  mkdir -p "$WORK_DIR/sdist"
  "$PY" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
      "llama-cpp-python==$VERSION" -d "$WORK_DIR/sdist"
  tarball=$(ls "$WORK_DIR"/sdist/llama_cpp_python-*.tar.gz | head -n1)
  mkdir -p "$SRC"
  tar -xzf "$tarball" -C "$SRC" --strip-components=1
fi

CPU_FLAGS=$("$(dirname "$0")/llama_cpu_flags.sh")  # no AMX where the VM cannot run it (see that script)
cd "$SRC/vendor/llama.cpp"
# shellcheck disable=SC2086
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF \
      -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
      "-DCMAKE_C_FLAGS=$CPU_FLAGS" "-DCMAKE_CXX_FLAGS=$CPU_FLAGS" ${LLAMA_CMAKE_ARGS:-}
cmake --build build --target llama-server -j"$JOBS"

cp build/bin/llama-server "$TARGET.tmp"
mv "$TARGET.tmp" "$TARGET"
echo "$WANT" > "$STAMP"
"$TARGET" --version
echo "llama-server built in $(( $(date +%s) - start ))s: $TARGET"
