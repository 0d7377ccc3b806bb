#!/usr/bin/env bash
# The CUDA backend on a GPU in one run of about 8 minutes (docs/gpu.md): from
# a build carried over from a CPU machine (scripts/gpu_bundle.sh) or a normal
# build, with no configure or compile here. Every step has its own timeout and
# runs whatever the step before it did; everything learnt goes into at most 8
# files in --out, since they may be all that comes back from the machine.
#
#   scripts/gpu_check.sh (--carried DIR | --build DIR) --out DIR [--dry-run]
#                        [--only STEP,...] [--skip STEP,...] [--deadline S] [--python PY]
#                        [--data TRAIN.h5 --val VAL.h5] [--pytest-k EXPR] [--keep-work]
#
#   --carried DIR  the tree scripts/gpu_bundle.sh made (DIR/build, DIR/data, DIR/bundle.json)
#   --build DIR    a build made on this machine (scripts/setup.sh: build); the data is then
#                  data/nuclei_train.h5 and data/nuclei_val.h5 (python3 datasets/nuclei.py),
#                  or --data and --val
#   --out DIR      summary.txt, figures.json, machine.txt, log.txt, cudnn.log, pytest.xml,
#                  sanitizer.txt, torch_compare.json: nothing else is written there
#   --dry-run      no GPU: the same steps, the same commands, on the CPU. With a build of the
#                  CUDA emulation (tests/emu, -DUNET_CUDA_EMU=ON) they run with --device cuda on
#                  the emulator; with any other build, their CPU twins (--device cpu). Tiny
#                  sizes; every figure is marked as the CPU's or the emulator's, none as a GPU's
#   --only, --skip steps by name: machine smoke graphs memcheck twins graph train variants nccl torch profile
#   --deadline S   the whole run's seconds (default 470); a step gets the lesser of its own
#                  timeout and what is left, the PyTorch comparison what is left at its turn
#   --python PY    the Python with torch, numpy, h5py and pytest (default $UNET_PYTHON, else python3)
#   --pytest-k E   pytest -k E for the test steps (a confirming run of a few tests)
#   --keep-work    keep the scratch folder (its path is printed) instead of deleting it
#
# Exit status: 0 when no step failed or timed out, 1 otherwise, 2 on a usage error.
set -uo pipefail   # no -e and no -x: a failing step is a row of the summary, and the next step runs

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HELPER="$ROOT/scripts/gpu_check.py"
CARRIED="" BUILD="" OUT="" DRY=0 ONLY="" SKIP="" DEADLINE=470 PY="${UNET_PYTHON:-python3}"
TRAIN="" VAL="" PYTEST_K="" KEEP=0
STEPS="machine smoke graphs memcheck twins graph train variants nccl torch profile"

usage() { sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "gpu_check: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --carried) CARRIED=$(realpath -m "${2:?--carried needs a directory}"); shift 2 ;;
    --build) BUILD=$(realpath -m "${2:?--build needs a directory}"); shift 2 ;;
    --out) OUT=$(realpath -m "${2:?--out needs a directory}"); shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --only) ONLY=",${2:?--only needs step names},"; shift 2 ;;
    --skip) SKIP=",${2:?--skip needs step names},"; shift 2 ;;
    --deadline) DEADLINE="${2:?--deadline needs seconds}"; shift 2 ;;
    --python) PY="${2:?--python needs a Python}"; shift 2 ;;
    --data) TRAIN=$(realpath -m "${2:?}"); shift 2 ;;
    --val) VAL=$(realpath -m "${2:?}"); shift 2 ;;
    --pytest-k) PYTEST_K="${2?}"; shift 2 ;;
    --keep-work) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
[ -n "$OUT" ] || die "--out DIR is required: the folder that receives the 8 result files"
if [ -n "$CARRIED" ] && [ -n "$BUILD" ]; then die "give --carried DIR or --build DIR, not both"; fi
if [ -n "$CARRIED" ]; then
  [ -f "$CARRIED/bundle.json" ] || die "--carried $CARRIED has no bundle.json: make it with scripts/gpu_bundle.sh"
  BUILD="$CARRIED/build" TRAIN="${TRAIN:-$CARRIED/data/train.h5}" VAL="${VAL:-$CARRIED/data/val.h5}"
elif [ -n "$BUILD" ]; then
  TRAIN="${TRAIN:-$ROOT/data/nuclei_train.h5}" VAL="${VAL:-$ROOT/data/nuclei_val.h5}"
else
  die "give --carried DIR (scripts/gpu_bundle.sh) or --build DIR (scripts/setup.sh: build)"
fi
if [ ! -x "$BUILD/unet" ] || [ ! -f "$BUILD/CMakeCache.txt" ]; then die "$BUILD has no unet or no CMakeCache.txt: not a build"; fi
for s in ${ONLY//,/ } ${SKIP//,/ }; do [[ " $STEPS " == *" $s "* ]] || die "unknown step '$s'; the steps: $STEPS"; done
command -v "$PY" >/dev/null || die "no Python '$PY': give --python, the one with torch, numpy, h5py and pytest"

EMU=0
grep -q '^UNET_CUDA_EMU:BOOL=ON' "$BUILD/CMakeCache.txt" && EMU=1
if [ $DRY -eq 1 ]; then
  MODE=cpu DEV=cpu
  [ $EMU -eq 1 ] && MODE=emulated DEV=cuda
else
  [ $EMU -eq 1 ] && die "$BUILD emulates CUDA on the CPU (tests/emu): it measures nothing on a GPU; use --dry-run"
  MODE=gpu DEV=cuda
fi

# ---- the 8 result files; scratch elsewhere ----
mkdir -p "$OUT" || die "cannot make --out $OUT"
SUMMARY="$OUT/summary.txt" FIGURES="$OUT/figures.json" MACHINE="$OUT/machine.txt" LOG="$OUT/log.txt"
CUDNN="$OUT/cudnn.log" JUNIT="$OUT/pytest.xml" SANITIZER="$OUT/sanitizer.txt" TORCH_JSON="$OUT/torch_compare.json"
: > "$LOG"; : > "$CUDNN"; : > "$MACHINE"; : > "$SANITIZER"; : > "$SUMMARY"
rm -f "$FIGURES" "$JUNIT" "$TORCH_JSON"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || die "cannot make a scratch folder"
STARTED=$(date +%Y-%m-%dT%H:%M:%S)
T0=$(date +%s)

# ---- the environment of every step ----
export UNET_BUILD="$BUILD" UNET_SOURCE="$ROOT" PYTHONPATH="$ROOT/tests${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
[ $EMU -eq 1 ] && export UNET_CUDA_EMULATED=1
# cuDNN, cuBLAS, NCCL and the CUDA runtime from the wheels beside PyTorch (site-packages/nvidia/*/lib), where
# this machine has no CUDA libraries of its own; the carried ones (HDF5, json-c, ...) the executables find
# through their RPATH, so that nothing else (python3, torch) sees them.
NVLIBS=""
if [ $EMU -eq 0 ]; then
  NVLIBS=$(timeout 60 "$PY" "$HELPER" nvidia-libdirs 2>/dev/null)
  [ -n "$NVLIBS" ] && export LD_LIBRARY_PATH="$NVLIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
if [ "$MODE" != gpu ]; then export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" OMP_WAIT_POLICY=passive; fi
GPU_NAME=""
[ "$MODE" = gpu ] && GPU_NAME=$(timeout 15 nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)

# ---- rows, the summary and figures.json (rewritten after every row) ----
FAILED=0
say() { echo "gpu_check: $*"; }
assemble() {
  timeout 30 "$PY" "$HELPER" assemble --work "$WORK" --out "$OUT" --mode "$MODE" --started "$STARTED" \
    --torch-json "$TORCH_JSON" >> "$LOG" 2>&1
}
summary() {
  {
    case "$MODE" in
      gpu) echo "== gpu_check $STARTED on ${GPU_NAME:-NO GPU (nvidia-smi lists none): nothing below is a GPU figure} ==" ;;
      cpu) echo "== gpu_check $STARTED: DRY RUN on the CPU (CPU twins): no figure below is a GPU's ==" ;;
      emulated) echo "== gpu_check $STARTED: DRY RUN on the CUDA emulation: no figure below is a GPU's ==" ;;
    esac
    printf '%-18s %-8s %-9s %s\n' step result "s/limit" detail
    awk -F'\t' '{printf "%-18s %-8s %-9s %s\n", $1, $2, $3 "/" $4, $5}' "$WORK/steps.tsv" 2>/dev/null
    echo "elapsed $(( $(date +%s) - T0 )) s of the --deadline $DEADLINE s; files: $(cd "$OUT" && ls | tr '\n' ' ')"
  } > "$SUMMARY"
}
# row STEP RESULT SECONDS LIMIT DETAIL
row() {
  local detail=${5//$'\t'/ }
  detail=${detail//$'\n'/; }
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${detail:0:400}" >> "$WORK/steps.tsv"
  case "$2" in FAIL|TIMEOUT) FAILED=1 ;; esac
  say "$1: $2 ($3 s) ${detail:0:160}"
  assemble
  summary
}
# shellcheck disable=SC2317 # called by the EXIT trap
finish() {
  assemble
  summary
  echo
  cat "$SUMMARY"
  if [ "$KEEP" -eq 1 ]; then echo "gpu_check: scratch kept in $WORK"; else rm -rf "$WORK"; fi
}
trap finish EXIT

# ---- steps: each under its own limit, cut to what the deadline leaves ----
STEP="" STEP_T0=0 STEP_LIMIT=0 STEP_END=0
left() { echo $(( T0 + DEADLINE - $(date +%s) )); }
selected() { { [ -z "$ONLY" ] || [[ "$ONLY" == *",$1,"* ]]; } && [[ "$SKIP" != *",$1,"* ]]; }
# begin STEP LIMIT: false (and a row) when the step is not to run
begin() {
  STEP=$1
  selected "$1" || return 1
  local l
  l=$(left)
  if [ "$l" -lt 5 ]; then row "$1" "not run" 0 0 "the --deadline of $DEADLINE s was spent"; return 1; fi
  STEP_LIMIT=$(( $2 < l ? $2 : l ))
  STEP_T0=$(date +%s)
  STEP_END=$(( STEP_T0 + STEP_LIMIT ))
  printf '\n==== %s (at most %s s; %s s into the run) ====\n' "$1" "$STEP_LIMIT" "$(( STEP_T0 - T0 ))" >> "$LOG"
  say "$1 (at most $STEP_LIMIT s)"
}
step_left() { echo $(( STEP_END - $(date +%s) )); }
# end RESULT DETAIL
end() { row "$STEP" "$1" "$(( $(date +%s) - STEP_T0 ))" "$STEP_LIMIT" "$2"; }
# within_to STDOUT STDERR LIMIT CMD...: runs CMD for at most LIMIT seconds and what the step has left,
# appending its output to the files given; returns CMD's status, 124 when it was stopped
within_to() {
  local o=$1 e=$2 t=$3 l
  shift 3
  l=$(step_left)
  [ "$l" -lt "$t" ] && t=$l
  [ "$t" -lt 1 ] && return 124
  echo "\$ $*" >> "$LOG"
  timeout -k 5 "$t" "$@" >> "$o" 2>> "$e"
}
within() { within_to "$LOG" "$LOG" "$@"; }
# stderr into cudnn.log under a heading: the runs made with UNET_CUDNN_LOG=1
within_cudnn() {
  printf '\n## %s: %s\n' "$STEP" "${*:2}" >> "$CUDNN"
  within_to "$LOG" "$CUDNN" "$@"
}
# the sizes: the real ones on a GPU; tiny ones in a dry run, where the CPU or the emulator runs them
# shellcheck disable=SC2054 # the commas are unet's filter lists
if [ "$MODE" = gpu ]; then
  TRAIN_MODEL=(--model unet --filters 32,64,128,256,512 --padding same --tile 256 --batch 8 --workers 8)
  TRAIN_STEPS=60 SETTLE=10 XDIST=(-n 8) FIRST_RUN=(--model unet --filters 8,16,32 --tile 64)
else
  TRAIN_MODEL=(--model unet --filters 4,8,16 --padding same --tile 64 --batch 2 --workers 1)
  TRAIN_STEPS=4 SETTLE=1 XDIST=() FIRST_RUN=(--model unet --filters 4,8 --tile 32 --cuda-graph off)
fi
# A CPU twin is the same command on the CPU, which runs every precision in fp32 and ignores --cuda-graph and
# --fast-nondeterministic; only the device augmentation it refuses.
# Prints the arguments one a line (for mapfile), twinned in a CPU dry run.
twin() {
  local a skip=0
  for a in "$@"; do
    if [ "$MODE" = cpu ]; then
      if [ $skip -eq 1 ]; then skip=0; continue; fi
      if [ "$a" = --augment-device ]; then skip=1; continue; fi
      [ "$a" = cuda ] && a=cpu
    fi
    printf '%s\n' "$a"
  done
}
# unet_has_flag COMMAND FLAG: whether this unet's COMMAND takes FLAG (a flag another branch adds may not be there yet)
# (grep reads the whole help: with -q it would stop early and unet's SIGPIPE would fail the pipeline)
unet_has_flag() { "$BUILD/unet" "$1" --help 2>/dev/null | grep -- "$2 " > /dev/null; }

say "mode $MODE (device $DEV), build $BUILD, out $OUT, deadline $DEADLINE s"

# ---- 1. the machine: GPU, driver, the libraries found and the ones a run loads ----
if begin machine 35; then
  {
    echo "# gpu_check machine report, $STARTED ($MODE)"
    echo "host: $(hostname), $(uname -srm), $(nproc) cores, $(awk '/MemTotal/ {print int($2/1048576) " GiB"}' /proc/meminfo)"
    echo "build: $BUILD; Python: $PY"
    echo "LD_LIBRARY_PATH: ${LD_LIBRARY_PATH:-}"
  } >> "$MACHINE"
  [ "$MODE" = gpu ] && { timeout 15 nvidia-smi >> "$MACHINE" 2>&1 || echo "nvidia-smi: failed or absent" >> "$MACHINE"; }
  timeout 30 "$PY" "$HELPER" machine --work "$WORK" --mode "$MODE" --carried "$CARRIED" >> "$MACHINE" 2>&1
  if [ -n "$CARRIED" ]; then
    built=$(sed -n 's/.*"digest": "\([0-9a-f]*\)".*/\1/p' "$CARRIED/bundle.json")
    here=$(timeout 30 "$PY" "$HELPER" digest "$ROOT")
    [ "$built" = "$here" ] && src="sources as bundled" || src="SOURCES DIFFER from the bundle's ($built, here $here): rebuild it"
    echo "sources: $src" >> "$MACHINE"
  fi
  echo "--- ldd $BUILD/unet" >> "$MACHINE"
  ldd "$BUILD/unet" >> "$MACHINE" 2>&1
  missing=$(ldd "$BUILD/unet" 2>/dev/null | awk '/not found/ {print $1}' | tr '\n' ' ')
  # the first run on the device, its mapped libraries read while it runs (cuDNN's engine libraries load late)
  UNET_CUDNN_LOG=1 within_cudnn 25 "$PY" "$HELPER" watch-libs --out "$WORK/maps.txt" -- "$BUILD/unet" bench --json \
    --device "$DEV" --precision tf32 "${FIRST_RUN[@]}" --padding same --batch 2 --steps 2 --bench-warmup 1
  rc=$?
  { echo "--- shared libraries mapped by that unet bench run (exit $rc)"; cat "$WORK/maps.txt" 2>/dev/null; } >> "$MACHINE"
  libs=$(grep -E "libcudnn|libcublas|libcudart|libnccl|libnvrtc|libcuda\.so" "$WORK/maps.txt" 2>/dev/null | xargs -r -n1 basename | sort -u | tr '\n' ' ')
  gpu=$(sed -n 's/^nvidia-smi: \(.*\)  \[.*/\1/p' "$MACHINE" | head -1)
  vers=$(grep -E "^(CUDA runtime|cuDNN|cuBLAS |NCCL|CUDA driver)" "$MACHINE" | awk '{print $1, $2, $3}' | sed 's/ \/.*//' | tr '\n' ';')
  loaded=$(grep -o "cuDNN [^ ]* loaded (built against [^)]*)" "$CUDNN" | head -1)
  detail="${gpu:-no GPU listed}; ${vers}${loaded:+ $loaded;}${src:+ $src;} first run exit $rc; mapped: ${libs:-none}"
  if [ -n "$missing" ]; then end FAIL "libraries not found: $missing(see machine.txt); $detail"
  elif [ $rc -eq 124 ]; then end TIMEOUT "the first unet bench run did not finish; $detail"
  elif [ $rc -ne 0 ]; then end FAIL "the first unet bench run failed: $(tail -1 "$CUDNN"); $detail"
  else end ok "$detail"; fi
fi

# ---- 2. one convolution forward and backward, fp32 and tf32, each kernel waited for ----
if begin smoke 35; then
  res="" bad=0
  for p in fp32 tf32; do
    UNET_CUDA_SYNC=1 UNET_CUDNN_LOG=1 within_cudnn 15 "$PY" "$HELPER" smoke --work "$WORK" --precision "$p" --device "$DEV"
    rc=$?
    [ $rc -ne 0 ] && bad=$rc
    res="$res$(grep "^smoke $p" "$LOG" | tail -1 || echo "smoke $p: exit $rc"); "
  done
  [ "$MODE" = cpu ] && res="CPU twin against the CPU: $res"
  case $bad in 0) end ok "$res" ;; 124) end TIMEOUT "$res" ;; *) end FAIL "$res(cuDNN log: cudnn.log)" ;; esac
fi

# ---- 3. cuDNN accepts every graph the convolutions build (no device needed: this cuDNN's own checks) ----
if begin graphs 15; then
  within_to "$WORK/graphs.txt" "$LOG" 15 "$BUILD/unet_cudnn_graphcheck"
  rc=$?
  grep -v "^accepted" "$WORK/graphs.txt" >> "$LOG"
  n_ok=$(grep -c "^accepted" "$WORK/graphs.txt") n_bad=$(grep -c "^REFUSED" "$WORK/graphs.txt")
  case $rc in
    0) end ok "$n_ok graphs accepted by the cuDNN loaded" ;;
    77) end n/a "this build has no CUDA backend" ;;
    124) end TIMEOUT "$n_ok accepted before the limit" ;;
    *) end FAIL "$n_bad refused, $n_ok accepted (the refused ones in log.txt)" ;;
  esac
fi

# ---- 4. compute-sanitizer on tiny runs of every op family ----
# WHAT|TOOL|unet ARGS (eager, batch 2, 2 steps) or pytest ARGS (the twins' runs of the channel-vectorised NHWC
# kernels, whose per-channel sums go through a shared-memory tree: racecheck as well as memcheck)
NHWC_K="nhwc and (batchnorm_channel_vectors or crop_wide)"
MEMCHECK_RUNS=(
  "conv,conv_t2,pool,concat,dropout,CE,SGD fp32|memcheck|bench --precision fp32 --model unet --filters 4,8,16 --padding valid --tile 60 --classes 2 --dropout 0.3 --optimizer sgd"
  "bn,bilinear,BCE+Dice,heads,Adam tf32|memcheck|bench --precision tf32 --model unetpp --filters 4,8,16 --padding same --tile 32 --classes 1 --deep-supervision --norm batch --upsample bilinear --optimizer adam"
  "bf16 kernels,add fusion,CE 3 classes,AdamW|memcheck|bench --precision bf16 --model unetpp --filters 4,8,16 --padding same --tile 32 --classes 3 --norm batch --upsample bilinear --fusion add --dropout 0.2 --optimizer adamw"
  "augment on device tf32|memcheck|train --precision tf32 --augment paper --augment-device cuda --model unet --filters 4,8,16 --padding same --tile 64 --classes 2 --data $TRAIN --log-every 1 --val-every 0"
)
if unet_has_flag bench --layout; then
  MEMCHECK_RUNS+=(
    "tf32 NHWC|memcheck|bench --precision tf32 --layout nhwc --model unetpp --filters 4,8,16 --padding same --tile 32 --classes 1 --deep-supervision --norm batch --optimizer adam"
    "NHWC vector kernels|memcheck|pytest"
    "NHWC vector kernels|racecheck|pytest"
  )
fi
# sanitize TOOL LIMIT CMD...: CMD under compute-sanitizer's TOOL (bare where there is none), into sanitizer.txt
sanitize() {
  local tool=$1 limit=$2
  shift 2
  if [ -n "$SAN" ]; then
    within_to "$SANITIZER" "$SANITIZER" "$limit" "$SAN" --tool "$tool" --target-processes all --error-exitcode 99 \
      --print-limit 20 "$@"
  else
    within_to "$SANITIZER" "$SANITIZER" "$limit" "$@"
  fi
}
if begin memcheck 75; then
  SAN=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer 2>/dev/null | head -1)
  [ "$MODE" = gpu ] || SAN=""
  clean=0 errors=0 refused=0 timedout=0 notes="" n=${#MEMCHECK_RUNS[@]}
  for r in "${MEMCHECK_RUNS[@]}"; do
    share=$(( $(step_left) / n ))  # each run its share of what is left: one that hangs costs only its own
    n=$((n - 1))
    IFS='|' read -r what tool run <<< "$r"
    read -r -a args <<< "$run"
    case "${args[0]}" in
      bench) mapfile -t cmd < <(twin "$BUILD/unet" "${args[@]}" --device cuda --batch 2 --steps 2 --bench-warmup 0 --cuda-graph off) ;;
      train) mapfile -t cmd < <(twin "$BUILD/unet" "${args[@]}" --device cuda --batch 2 --steps 2 --cuda-graph off) ;;
      pytest) cmd=("$PY" -m pytest -q -p no:cacheprovider "$ROOT/tests/gpu/test_twins.py" -k "$NHWC_K") ;;
    esac
    printf '\n## %s (%s): %s\n' "$what" "$tool" "${cmd[*]}" >> "$SANITIZER"
    UNET_FORCE_GPU_TESTS=$([ "$MODE" = gpu ] && echo 1 || echo 0) sanitize "$tool" "$share" "${cmd[@]}"
    rc=$?
    if [ $rc -eq 0 ]; then clean=$((clean + 1))
    elif [ $rc -eq 5 ] && [ "${args[0]}" = pytest ]; then notes="$notes $what ($tool): no such tests in this tree;"
    elif [ $rc -eq 124 ]; then timedout=$((timedout + 1)); notes="$notes $what ($tool): timeout;"
    elif [ $rc -eq 99 ]; then errors=$((errors + 1)); notes="$notes $what: $tool errors;"
    elif [ -n "$SAN" ] && tail -20 "$SANITIZER" | grep -iE "not supported|failed to initialize" > /dev/null; then
      # the sanitizer's own refusal (under gVisor: "Device not supported"), not the program's failure, which it
      # reports as "Target application returned an error" with the program's status
      refused=$((refused + 1))
      notes="$notes $what: refused ($(tail -20 "$SANITIZER" | grep -iE "not supported|failed to initialize" | head -1 | cut -c1-100));"
      break  # a sanitizer refused once is refused for every run
    else errors=$((errors + 1)); notes="$notes $what ($tool): exit $rc ($(tail -1 "$SANITIZER" | cut -c1-120));"; fi
  done
  how="compute-sanitizer"
  [ -z "$SAN" ] && how="no compute-sanitizer here ($MODE): the same commands ran bare"
  detail="$how: $clean clean, $errors with errors, $refused refused, $timedout timed out of ${#MEMCHECK_RUNS[@]};$notes"
  if [ $errors -gt 0 ]; then end FAIL "$detail"
  elif [ $timedout -gt 0 ]; then end TIMEOUT "$detail"
  elif [ $refused -gt 0 ]; then end refused "$detail"
  else end ok "$detail"; fi
fi

# ---- 5-6, 8. the GPU tests through pytest, one file at a time, each into its junit file ----
PYTEST_OPTS=(-q -p no:cacheprovider -rfE -o junit_logging=system-out)
"$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST_OPTS+=(--timeout 120)
"$PY" -c "import xdist" 2>/dev/null || XDIST=()
[ -n "$PYTEST_K" ] && PYTEST_OPTS+=(-k "$PYTEST_K")
# pytest_files FILE...: each file gets its share of what the step has left; a row with the counts of every file.
# On a GPU a file whose tests all skipped checked nothing: the row says `skipped` (their reasons: log.txt).
pytest_files() {
  local n=$# f name rc share count counts="" bad=0 skipped=0
  for f in "$@"; do
    name=$(basename "$f" .py)
    share=$(( $(step_left) / n ))
    n=$((n - 1))
    within "$share" "$PY" -m pytest "${PYTEST_OPTS[@]}" "${XDIST[@]}" --junitxml="$WORK/junit-$name.xml" "$f"
    rc=$?
    case $rc in
      5) counts="$counts $name: none selected;"; continue ;;
      124) counts="$counts $name: TIMEOUT;"; [ $bad -eq 0 ] && bad=124; continue ;;
      0) ;;
      *) bad=1 ;;
    esac
    count=$(timeout 30 "$PY" "$HELPER" counts "$WORK/junit-$name.xml")
    [[ "$MODE" = gpu && "$count" == *": 0 passed"* ]] && skipped=1
    counts="$counts $count;"
  done
  timeout 30 "$PY" "$HELPER" junit "$JUNIT" "$WORK"/junit-*.xml > /dev/null
  if [ $bad -eq 1 ]; then end FAIL "$counts (failures: log.txt, pytest.xml)"
  elif [ $bad -eq 124 ]; then end TIMEOUT "$counts"
  elif [ $skipped -eq 1 ]; then end skipped "$counts"
  else end ok "$counts"; fi
}
TWIN_FILES=()
for f in "$ROOT"/tests/gpu/test_*.py; do
  case "$f" in */test_cuda_graph.py|*/test_dist_nccl.py) ;; *) TWIN_FILES+=("$f") ;; esac
done
if begin twins 100; then pytest_files "${TWIN_FILES[@]}"; fi
if begin graph 40; then pytest_files "$ROOT/tests/gpu/test_cuda_graph.py"; fi

# ---- 7. training on the nuclei image: time to first step and images/s per precision, layout and mode ----
# the most telling first: the precisions and the two layouts of fp32 and tf32 (which decides --layout auto), then
# the graph, determinism and device-augmentation variants
TRAIN_RUNS=(
  "fp32|--precision fp32 --layout nchw"
  "tf32|--precision tf32 --layout nchw"
  "tf32-nhwc|--precision tf32 --layout nhwc"
  "bf16|--precision bf16"
  "fp32-nhwc|--precision fp32 --layout nhwc"
  "bf16-eager|--precision bf16 --cuda-graph off"
  "bf16-nondet|--precision bf16 --fast-nondeterministic"
  "tf32-augdev|--precision tf32 --layout nchw --augment paper --augment-device cuda"
)
# one row each: train:NAME
train_runs() {
  local r name extra flags rc line res t0 limit
  for r in "${TRAIN_RUNS[@]}"; do
    name=${r%%|*}
    read -r -a extra <<< "${r#*|}"
    if ! unet_has_flag train --layout; then  # a build from before --layout: NCHW is all there is
      [[ " ${extra[*]} " == *" --layout nhwc "* ]] && { row "train:$name" n/a 0 0 "this unet has no --layout"; continue; }
      mapfile -t extra < <(printf '%s\n' "${extra[@]}" | grep -v -x -e --layout -e nchw)
    fi
    limit=$(step_left)
    [ "$limit" -gt 25 ] && limit=25
    if [ "$limit" -lt 3 ]; then row "train:$name" "not run" 0 0 "the train step's $STEP_LIMIT s were spent"; continue; fi
    mapfile -t flags < <(twin --data "$TRAIN" --val "$VAL" --device cuda "${TRAIN_MODEL[@]}" --classes 2 \
      --optimizer adam --lr 1e-4 --augment flip,rot90 --steps "$TRAIN_STEPS" --val-every 0 --seed 1 "${extra[@]}")
    t0=$(date +%s)
    UNET_CUDNN_LOG=1 within_cudnn "$limit" "$PY" "$HELPER" train --work "$WORK" --name "$name" --settle "$SETTLE" \
      --unet "$BUILD/unet" -- "${flags[@]}"
    rc=$?
    line=$(grep "^train $name:" "$LOG" | tail -1 | sed "s/^train $name: //")
    case $rc in 0) res=ok ;; 124) res=TIMEOUT line="did not end within its limit" ;; *) res=FAIL ;; esac
    [ "$MODE" != gpu ] && line="($MODE: not a GPU figure) $line"
    row "train:$name" "$res" "$(( $(date +%s) - t0 ))" "$limit" "${line:-exit $rc}"
  done
}
if begin train 105; then
  if [ -f "$TRAIN" ]; then train_runs
  else end FAIL "no training data $TRAIN (python3 datasets/nuclei.py --out data, or --data and --val)"; fi
fi

# ---- 7b. unet bench variants on the benchmark's models at batch 8: tf32 NCHW against NHWC (what --layout auto
# should pick), and the 1x1 convolutions by cuBLASLt, by cuDNN and as measured (whether cuBLASLt earns its place) ----
# variant_set SET LIMIT [--models KEYS]: a row variants:SET of the set's medians, its cuDNN log in cudnn.log
variant_set() {
  local set=$1 limit=$2 dry=() rc line t0
  shift 2
  [ "$MODE" = emulated ] && dry=(--dry --batch 2 --steps 2 --warmup 0)
  t0=$(date +%s)
  UNET_CUDNN_LOG=1 within_cudnn "$limit" "$PY" "$HELPER" variants --set "$set" --work "$WORK" --unet "$BUILD/unet" \
    --seconds "$(( limit - 3 ))" "${dry[@]}" "$@"
  rc=$?
  line=$(grep "^$set: " "$LOG" | tail -1 | sed "s/^$set: //")
  [ "$MODE" != gpu ] && line="($MODE: not GPU figures) $line"
  case $rc in 0) rc=ok ;; 124) rc=TIMEOUT ;; *) rc=FAIL ;; esac
  row "variants:$set" "$rc" "$(( $(date +%s) - t0 ))" "$limit" "$line"
}
if begin variants 90; then
  if [ "$MODE" = cpu ]; then end n/a "CUDA variants: the CPU twin has none"
  else
    if unet_has_flag bench --layout; then variant_set layout 55
    else row variants:layout n/a 0 0 "this unet has no --layout"; fi
    # the heads are the 1x1 convolutions: UNet++ with deep supervision has the most
    if grep -q UNET_CONV1X1 "$BUILD/unet"; then variant_set conv1x1 "$(step_left)" --models unetpp
    else row variants:conv1x1 n/a 0 0 "this unet has no UNET_CONV1X1 (cuBLASLt for 1x1 convolutions)"; fi
  fi
fi

if begin nccl 40; then
  # alone on the GPU (it times the allreduce), its report printed into log.txt
  PYTEST_OPTS+=(-s) XDIST=()
  pytest_files "$ROOT/tests/gpu/test_dist_nccl.py"
fi

# ---- 9. the PyTorch comparison, the three models of the benchmark protocol at batch 8, in what is left ----
# ncu, where it reads the GPU's counters: the profile after the comparison gets PROFILE_S of what is left
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
PROFILE_S=0
if [ "$MODE" = gpu ] && [ -n "$NCU" ] && selected profile; then PROFILE_S=60; fi
torch_compare() {
  local limit=$(( $(step_left) - PROFILE_S )) budget bench rc report ratios
  budget=$(( limit - 20 ))
  if [ "$budget" -lt 20 ]; then end "not run" "only $limit s left"; return; fi
  if [ "$MODE" = gpu ]; then
    bench=(--short --budget "$budget")
  else  # the script's CPU smoke run (labelled as such in its report), not a GPU measurement
    bench=(--device cpu --quick --models unet32 --batches 1 --torch-variants fp32 --skip-compile --no-inference
           --repeats 1)
  fi
  within "$limit" "$PY" "$ROOT/bench/train_step_gpu.py" --build "$BUILD" --out "$WORK/bench" "${bench[@]}"
  rc=$?
  for report in "$WORK"/bench/*.json; do [ -f "$report" ] && cp "$report" "$TORCH_JSON"; done
  ratios=$(timeout 30 "$PY" "$HELPER" ratios "$TORCH_JSON" 2>&1)
  case $rc in
    0) if [ -s "$TORCH_JSON" ]; then end ok "$ratios"; else end FAIL "no report: $(tail -1 "$LOG" | cut -c1-300)"; fi ;;
    124) end TIMEOUT "cut at the deadline (the rows measured before are kept): $ratios" ;;
    *) end FAIL "exit $rc: $(tail -1 "$LOG" | cut -c1-200); $ratios" ;;
  esac
}
if begin torch 600; then torch_compare; fi

# ---- 10. where a training step's kernel time goes (ncu): ours against the libraries', and our kernels' DRAM
# throughput (U-Net 64..1024, tile 572, batch 8, one eager step; bf16, and tf32 NHWC where the build has it)
PROFILES=("bf16|--precision bf16" "tf32-nhwc|--precision tf32 --layout nhwc")
profile() {
  local p name extra rc res="" bad=0 n=${#PROFILES[@]} share
  for p in "${PROFILES[@]}"; do
    share=$(( $(step_left) / n ))
    n=$((n - 1))
    name=${p%%|*}
    read -r -a extra <<< "${p#*|}"
    if [[ "$name" == *nhwc ]] && ! unet_has_flag bench --layout; then res="$res $name: n/a (no --layout);"; continue; fi
    within_to "$WORK/ncu-$name.csv" "$LOG" "$share" "$NCU" --clock-control none --csv --print-units base \
      --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed --launch-count 600 \
      "$BUILD/unet" bench --json --device cuda "${extra[@]}" --model unet --filters 64,128,256,512,1024 \
      --padding valid --classes 2 --tile 572 --batch 8 --steps 1 --bench-warmup 0 --cuda-graph off
    rc=$?
    if [ $rc -eq 124 ]; then res="$res $name: TIMEOUT;"; bad=1; continue; fi
    timeout 30 "$PY" "$HELPER" ncu-summary --work "$WORK" --name "$name" "$WORK/ncu-$name.csv" >> "$LOG" 2>&1 || bad=1
    res="$res $(grep "^profile $name:" "$LOG" | tail -1 | sed 's/^profile //' || echo "$name: no ncu rows (exit $rc)");"
  done
  # the uploads of a training run (pinned, double-buffered: every per-step host-to-device copy from page-locked
  # memory, the feed of batch k+1 while batch k runs), where nsys is there to trace them: its tables into log.txt
  if command -v nsys > /dev/null && [ "$(step_left)" -gt 15 ]; then
    within "$(step_left)" nsys profile -t cuda,osrt --force-overwrite true -o "$WORK/uploads" "$BUILD/unet" train \
      --data "$TRAIN" --device cuda --precision tf32 "${TRAIN_MODEL[@]}" --steps 40 --log-every 40 --val-every 0 \
      && within "$(step_left)" nsys stats -r cuda_gpu_mem_size_sum,cuda_api_sum "$WORK/uploads.nsys-rep" \
      && res="$res uploads: nsys tables in log.txt;" || res="$res uploads: nsys failed (log.txt);"
  else
    res="$res uploads: no nsys here;"
  fi
  if [ $bad -eq 0 ]; then end ok "$res"; else end FAIL "$res (ncu's output: log.txt)"; fi
}
if begin profile 60; then
  if [ "$MODE" != gpu ]; then end n/a "no GPU counters in a dry run"
  elif [ -z "$NCU" ]; then end n/a "no ncu on this machine"
  else profile; fi
fi

exit $FAILED
