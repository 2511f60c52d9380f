#!/usr/bin/env bash
# Build llama-cpp-python (the version pinned in pyproject.toml) with llama.cpp's CUDA backend, as a wheel in a
# folder (so it can be carried to another machine with the same Python), optionally install it, and check it.
#
#   scripts/build_cuda.sh                     # arch from nvidia-smi, else llama.cpp's default list; wheel in dist/cuda
#   scripts/build_cuda.sh --arch 90 --jobs 16 --install         # H100/H200 only, install into .venv, run doctor
#   scripts/build_cuda.sh --sdist path/llama_cpp_python-0.3.36.tar.gz --no-build-isolation --python python3
#
# Options:
#   --arch ARCH        CMAKE_CUDA_ARCHITECTURES: e.g. 90 (H100/H200), 89 (RTX 40xx/L4), 86 (RTX 30xx/A10), 80 (A100),
#                      "86;89", "native" (the GPUs of this machine; needs one). Default: the compute capability
#                      of each GPU nvidia-smi lists; without nvidia-smi, llama.cpp's own list of architectures
#                      (every major one: works on any card, builds several times longer).
#   --jobs N           parallel compile jobs (default: nproc). nvcc needs ~1-2 GB of RAM per job on the big kernels.
#   --wheel-dir DIR    where the wheel goes (default: dist/cuda)
#   --sdist FILE       build from this llama-cpp-python sdist instead of fetching it from PyPI (offline machines)
#   --python PY        the Python that builds (and installs) it (default: .venv/bin/python, else python3)
#   --no-build-isolation  use the build tools already installed (scikit-build-core, cmake, ninja): no downloads
#   --install          install the wheel into PY's environment (replaces the CPU build), then run the check
#   --check            only run the check: `infill-ls doctor --json` must say GPU offload with a GPU device
#   --cublas DIR       cuBLAS outside the toolkit: DIR/include and DIR/lib (e.g. the nvidia-cublas wheel's nvidia/cu13)
#   --cmake-args ARGS  more CMake arguments (e.g. "-DGGML_CUDA_NO_VMM=ON"), appended to CMAKE_ARGS
#
# The CPU side keeps -march=native minus what scripts/llama_cpu_flags.sh removes (AMX in VMs that fault on it).
#
# Needs: the CUDA toolkit (nvcc and cuBLAS, e.g. /usr/local/cuda), a C++ compiler, CMake >= 3.18. Times and what was
# tried on which machine: docs/GPU.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' "$ROOT/pyproject.toml" | head -n1)"
ARCH="" JOBS="$(nproc 2>/dev/null || echo 2)" WHEEL_DIR="$ROOT/dist/cuda" SDIST="" PY="" ISOLATION=1 INSTALL=0
CHECK_ONLY=0 EXTRA="" CUBLAS=""

usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) ARCH="$2"; shift 2 ;;
    --jobs) JOBS="$2"; shift 2 ;;
    --wheel-dir) WHEEL_DIR="$2"; shift 2 ;;
    --sdist) SDIST="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --no-build-isolation) ISOLATION=0; shift ;;
    --install) INSTALL=1; shift ;;
    --check) CHECK_ONLY=1; shift ;;
    --cmake-args) EXTRA="$2"; shift 2 ;;
    --cublas) CUBLAS="$2"; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "build_cuda.sh: unknown option $1" >&2; usage 2 ;;
  esac
done
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi

check() {
  # A CUDA build reports GPU offload only where llama.cpp finds a GPU device (it needs the driver).
  "$PY" - <<'EOF'
import json, subprocess, sys
out = subprocess.run([sys.executable, "-m", "lsp_server", "doctor", "--json"], capture_output=True, text=True)
if out.returncode != 0:
    sys.exit(f"doctor failed: {out.stderr[-2000:]}")
report = json.loads(out.stdout)
ll = report["llama.cpp"]
gpus = [d for d in ll.get("devices", []) if d["type"] in ("gpu", "igpu")]
for d in gpus:
    print(f"device {d['name']}: {d['description']}, {d['memory_free'] / 2**30:.1f} of {d['memory_total'] / 2**30:.1f} GiB free")
print("doctor:", report["gpu"]["summary"])
if not (ll.get("gpu_offload") and gpus):
    sys.exit("check FAILED: llama.cpp reports no GPU offload / no GPU device (CPU build installed, or no driver/GPU here)")
print("check ok: GPU offload available")
EOF
}

if [ "$CHECK_ONLY" = 1 ]; then cd "$ROOT" && check; exit $?; fi

# nvcc: on PATH, or the usual toolkit location
if ! command -v nvcc >/dev/null 2>&1; then
  for d in /usr/local/cuda/bin /usr/local/cuda-*/bin; do
    if [ -x "$d/nvcc" ]; then export PATH="$d:$PATH"; break; fi
  done
fi
command -v nvcc >/dev/null 2>&1 || { echo "build_cuda.sh: nvcc not found: install the CUDA toolkit" >&2; exit 2; }
export CUDACXX="${CUDACXX:-$(command -v nvcc)}"

if [ -z "$ARCH" ] && command -v nvidia-smi >/dev/null 2>&1; then
  # "9.0" -> "90", one entry per distinct GPU model
  ARCH="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | tr -d ' .' | sort -u | paste -sd ';' -)"
fi

CPU_FLAGS="$("$ROOT/scripts/llama_cpu_flags.sh" 2>/dev/null || true)"
CXX_FLAGS="$CPU_FLAGS" CUDA_FLAGS=""
CMAKE_ARGS="-DGGML_CUDA=on${ARCH:+ -DCMAKE_CUDA_ARCHITECTURES=$ARCH}"
if [ -n "$CUBLAS" ]; then
  # FindCUDAToolkit looks for cuBLAS in the toolkit only; name the libraries and headers of DIR instead.
  links="$(mktemp -d)"
  for lib in cublas cublasLt; do
    real="$(ls "$CUBLAS"/lib/lib$lib.so* 2>/dev/null | head -n1)"
    [ -n "$real" ] || { echo "build_cuda.sh: no lib$lib.so* in $CUBLAS/lib" >&2; exit 2; }
    ln -sf "$real" "$links/lib$lib.so"
  done
  CMAKE_ARGS="$CMAKE_ARGS -DCUDA_cublas_LIBRARY=$links/libcublas.so -DCUDA_cublasLt_LIBRARY=$links/libcublasLt.so"
  CXX_FLAGS="$CXX_FLAGS -I$CUBLAS/include" CUDA_FLAGS="-I$CUBLAS/include"
fi
[ -z "$CPU_FLAGS" ] || CMAKE_ARGS="$CMAKE_ARGS -DCMAKE_C_FLAGS='$CPU_FLAGS'"
[ -z "${CXX_FLAGS// }" ] || CMAKE_ARGS="$CMAKE_ARGS -DCMAKE_CXX_FLAGS='${CXX_FLAGS# }'"
[ -z "$CUDA_FLAGS" ] || CMAKE_ARGS="$CMAKE_ARGS -DCMAKE_CUDA_FLAGS='$CUDA_FLAGS'"
CMAKE_ARGS="$CMAKE_ARGS${EXTRA:+ $EXTRA}"
export CMAKE_ARGS CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" FORCE_CMAKE=1
SOURCE="${SDIST:-llama-cpp-python==$VERSION}"
echo "building llama-cpp-python $VERSION with CUDA ($(nvcc --version | tail -n1))"
echo "  CMAKE_ARGS=\"$CMAKE_ARGS\" jobs=$JOBS source=$SOURCE -> $WHEEL_DIR"
[ -n "$ARCH" ] || echo "  no --arch and no nvidia-smi: llama.cpp's default architecture list (slow build)"

mkdir -p "$WHEEL_DIR"
flags=(--no-deps --no-cache-dir --disable-pip-version-check -w "$WHEEL_DIR")
[ "$ISOLATION" = 1 ] || flags+=(--no-build-isolation)
start=$(date +%s)
# --no-binary keeps pip from taking a cached CPU wheel of the same version
# progress: the CMake findings, then one short line per compiled file ("[12/339] .../acc.cu.o")
FULL_LOG="$WHEEL_DIR/build-full.log"
"$PY" -m pip wheel "${flags[@]}" --no-binary llama-cpp-python -v "$SOURCE" 2>&1 | tee "$FULL_LOG" \
  | grep -E --line-buffered '^ *(Building|Created|Successfully|ERROR|error|CMake Error)|CUDA|-- (Found|Could NOT)|\[[0-9]+/[0-9]+\]' \
  | sed -E -u 's/^ *(\[[0-9]+\/[0-9]+\]) .* -o ([^ ]+) .*/\1 \2/' || true
wheel="$(ls -t "$WHEEL_DIR"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -n1 || true)"
if [ -z "$wheel" ]; then
  tail -n 40 "$FULL_LOG" >&2
  echo "build_cuda.sh: no wheel was built (full log: $FULL_LOG)" >&2
  exit 1
fi
echo "built $wheel in $(( $(date +%s) - start ))s ($(du -h "$wheel" | cut -f1))"

if [ "$INSTALL" = 1 ]; then
  "$PY" -m pip install --no-deps --force-reinstall --disable-pip-version-check -q "$wheel"
  cd "$ROOT" && check
fi
