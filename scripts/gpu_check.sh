#!/usr/bin/env bash
# Verifies the CUDA backend on a machine with an NVIDIA GPU in one command:
# builds unet with CUDA out of tree, runs the tests labelled gpu, then the GPU
# benchmarks of bench/ (bench/*_gpu.py), and prints a short table last.
#
#   scripts/gpu_check.sh [--build DIR] [--prebuilt DIR] [--libs DIR] [--no-bench]
#                        [--bench-args "ARGS"] [--bench-timeout S] [--arch 90]
#
#   --build DIR      build directory (default build-gpu), configured with -DUNET_CUDA=ON
#   --prebuilt DIR   use a build directory made elsewhere (say, on a machine with
#                    the HDF5 and json-c headers this one lacks): no
#                    configure, no build; the tests run through pytest directly,
#                    since that build's ctest files name the other machine's paths
#   --libs DIR       shared libraries carried with a prebuilt build (libhdf5,
#                    libjson-c, ...): prepended to LD_LIBRARY_PATH
#   --arch N         CUDA architecture to build for (default: the project's, 80 and 90)
#   --no-bench       tests only
#   --bench-args     extra arguments for every bench/*_gpu.py (after --build DIR)
#   --bench-timeout  seconds allowed to each benchmark (default 600)
#
# The tests run under $UNET_PYTHON, else python3: the Python with torch, numpy
# and h5py. Exit status: 0 when every step passed (skipped tests count as
# passed; the table says so), 1 when one failed, 2 on a usage error.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD="$ROOT/build-gpu"
PREBUILT=""
LIBS=""
ARCH=""
BENCH=1
BENCH_ARGS=""
BENCH_TIMEOUT=600
PY="${UNET_PYTHON:-python3}"

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "gpu_check: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --build) BUILD=$(realpath -m "${2:?--build needs a directory}"); shift 2 ;;
    --prebuilt) PREBUILT=$(realpath -m "${2:?--prebuilt needs a directory}"); shift 2 ;;
    --libs) LIBS=$(realpath -m "${2:?--libs needs a directory}"); shift 2 ;;
    --arch) ARCH="${2:?--arch needs a number, e.g. 90}"; shift 2 ;;
    --no-bench) BENCH=0; shift ;;
    --bench-args) BENCH_ARGS="${2?}"; shift 2 ;;
    --bench-timeout) BENCH_TIMEOUT="${2:?}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done

# One row per step, printed as a table at the end.
ROWS=()
FAILED=0
row() { ROWS+=("$(printf '%-34s %-8s %s' "$1" "$2" "$3")"); [ "$2" = FAIL ] && FAILED=1; return 0; }
# shellcheck disable=SC2317 # called by the EXIT trap
print_table() {
  echo
  echo "== gpu_check summary =="
  printf '%-34s %-8s %s\n' "step" "result" "detail"
  printf '%s\n' "${ROWS[@]}"
}
trap print_table EXIT

# ---- the machine ----
command -v "$PY" >/dev/null || die "no '$PY': set UNET_PYTHON to the Python that has torch, numpy and h5py"
TORCH=$("$PY" -c 'import torch, numpy; print(torch.__version__, "cuda" if torch.cuda.is_available() else "no-cuda")' 2>/dev/null) \
  || die "$PY cannot import torch and numpy: set UNET_PYTHON to the Python that has them"
GPU=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
if [ -n "$GPU" ]; then row "device" ok "$GPU"; else row "device" none "nvidia-smi lists no GPU: the gpu tests will skip"; fi
row "python" ok "$PY: torch $TORCH"

if [ -n "$LIBS" ]; then
  [ -d "$LIBS" ] || die "--libs $LIBS is not a directory"
  export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

# ---- build ----
if [ -n "$PREBUILT" ]; then
  BUILD="$PREBUILT"
  [ -x "$BUILD/unet_optest" ] || die "--prebuilt $BUILD has no unet_optest: build the tools there first"
  row "build" ok "prebuilt $BUILD"
else
  command -v cmake >/dev/null || die "cmake is not installed (or use --prebuilt DIR)"
  GEN=()
  command -v ninja >/dev/null && GEN=(-G Ninja)
  CFG=(-S "$ROOT" -B "$BUILD" "${GEN[@]}" -DUNET_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DUNET_PYTHON="$(command -v "$PY")")
  [ -n "$ARCH" ] && CFG+=(-DCMAKE_CUDA_ARCHITECTURES="$ARCH-real")
  mkdir -p "$BUILD"
  echo "== configure: cmake ${CFG[*]}"
  if ! cmake "${CFG[@]}" > "$BUILD/gpu_check.configure.log" 2>&1; then
    tail -20 "$BUILD/gpu_check.configure.log"
    row "configure" FAIL "see $BUILD/gpu_check.configure.log (missing HDF5/json-c headers? build elsewhere, then --prebuilt DIR --libs DIR)"
    exit 1
  fi
  echo "== build"
  START=$(date +%s)
  if ! cmake --build "$BUILD" -j"$(nproc)" > "$BUILD/gpu_check.build.log" 2>&1; then
    grep -E "error|Error" "$BUILD/gpu_check.build.log" | head -20
    row "build" FAIL "see $BUILD/gpu_check.build.log"
    exit 1
  fi
  row "build" ok "$BUILD in $(( $(date +%s) - START )) s"
fi

# Shared libraries the tools cannot find make every test fail the same way: say it once, clearly.
# cuDNN loads its engine libraries (libcudnn_graph, libcudnn_engines_*) only at
# run time, so ldd alone does not see them missing. Where the system has no
# cuDNN or cuBLAS of its own, the ones PyTorch's wheels bring (site-packages/
# nvidia/*/lib) are used.
missing_libs() {
  local m
  m=$(ldd "$BUILD/unet_optest" 2>/dev/null | awk '/not found/ {print $1}' | tr '\n' ' ')
  if ! ldconfig -p 2>/dev/null | grep -q "libcudnn_graph.so.9" &&
     ! compgen -G "$(dirname "$(ldd "$BUILD/unet_optest" 2>/dev/null | awk '/libcudnn.so/ {print $3}')" 2>/dev/null)/libcudnn_graph.so.9*" >/dev/null; then
    m="$m libcudnn_graph.so.9"
  fi
  echo "$m" | xargs
}
MISSING=$(missing_libs)
if [ -n "$MISSING" ]; then
  TORCH_LIBS=$("$PY" - <<'PYEOF' 2>/dev/null
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except ImportError:
    roots = []
print(":".join(sorted(d for r in roots for d in glob.glob(os.path.join(r, "*", "lib")))))
PYEOF
)
  if [ -n "$TORCH_LIBS" ]; then
    export LD_LIBRARY_PATH="$TORCH_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    row "libraries from torch" ok "missing $MISSING: using PyTorch's nvidia/*/lib"
    MISSING=$(missing_libs)
  fi
fi
if [ -n "$MISSING" ]; then
  row "shared libraries" FAIL "not found: $MISSING(carry them and pass --libs DIR)"
  exit 1
fi

# ---- gpu tests ----
echo "== gpu tests"
export UNET_BUILD="$BUILD" UNET_SOURCE="$ROOT" PYTHONPATH="$ROOT/tests${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
export PYTEST_ADDOPTS="-rs ${PYTEST_ADDOPTS:-}" # skip reasons in the output
for t in "$ROOT"/tests/gpu/test_*.py; do
  [ -e "$t" ] || continue
  name=$(basename "$t" .py)
  START=$(date +%s)
  if [ -z "$PREBUILT" ]; then
    # what ctest -L gpu --output-on-failure runs, one file at a time (a row each), verbose for pytest's summary
    out=$(cd "$BUILD" && ctest -L gpu -R "^gpu\.$name\$" -V --output-on-failure 2>&1)
  else
    out=$("$PY" -m pytest -q -x -p no:cacheprovider "$t" 2>&1)
  fi
  status=$?
  echo "$out" | tail -60
  secs=$(( $(date +%s) - START ))
  # pytest's last words: "12 passed, 3 skipped in 20.1s"
  summary=$(echo "$out" | grep -E "[0-9]+ (passed|failed|skipped|error)" | tail -1 | sed -E 's/^[0-9]+: //; s/=+//g; s/^ +| +$//g')
  reason=$(echo "$out" | grep -E "SKIPPED \[" | head -1 | sed -E 's/^[0-9]+: //; s/^SKIPPED \[[0-9]+\] [^:]*:[0-9]+: //' | cut -c1-90)
  if [ $status -ne 0 ]; then
    row "$name" FAIL "${secs} s; ${summary:-no pytest summary: see the output above}"
  elif echo "$summary" | grep -q "passed"; then
    row "$name" ok "${secs} s; $summary"
  elif [ -n "$summary" ]; then
    row "$name" skip "$summary: ${reason:-see the output above}"
  else
    row "$name" FAIL "${secs} s; no test ran (ctest found no test gpu.$name? reconfigure the build)"
  fi
done

# ---- benchmarks ----
if [ $BENCH -eq 1 ]; then
  found=0
  for b in "$ROOT"/bench/*_gpu.py; do
    [ -e "$b" ] || continue
    found=1
    name=$(basename "$b")
    echo "== benchmark $name"
    START=$(date +%s)
    # shellcheck disable=SC2086
    if timeout "$BENCH_TIMEOUT" "$PY" "$b" --build "$BUILD" $BENCH_ARGS; then
      row "bench $name" ok "$(( $(date +%s) - START )) s (numbers above)"
    else
      row "bench $name" FAIL "exit $? after $(( $(date +%s) - START )) s (timeout ${BENCH_TIMEOUT} s)"
    fi
  done
  [ $found -eq 1 ] || row "benchmarks" none "no bench/*_gpu.py yet"
fi

exit $FAILED
