#!/usr/bin/env bash
# Makes, on a machine without a GPU, the tree that scripts/gpu_check.sh runs
# on a GPU machine where nothing can be built or installed (docs/gpu.md):
#
#   DIR/build/unet, unet_<tool>...   stripped executables: unet and the test
#                                    drivers that tests/gpu and bench/*_gpu.py run
#   DIR/build/lib/                   the shared libraries they need that a bare GPU
#                                    machine lacks (HDF5, json-c, libpng, libtiff,
#                                    their own dependencies, OpenMP), found by
#                                    RPATH $ORIGIN/lib; never the CUDA ones
#                                    (cudart, cuBLAS, cuDNN, NCCL): those come
#                                    from the GPU machine's PyTorch
#   DIR/build/CMakeCache.txt         the build's cache (the tests read UNET_CUDA from it)
#   DIR/data/train.h5, val.h5        the training data (the nuclei image, rows 0..383
#                                    with the border weight map, and rows 384..511)
#   DIR/bundle.json                  what it is: commit, source digest, CUDA and cuDNN
#                                    it was built against, sizes, the libraries carried
#
#   scripts/gpu_bundle.sh [--out .device] [--build-dir build-device] [--arch 90]
#                         [--from-build DIR] [--data nuclei|ellipses] [--data-cache data/cache]
#                         [--jobs 2] [--limit-mib 64]
#
#   --out DIR          the carried tree (default .device, ignored by git)
#   --build-dir DIR    where the build is configured and made (default build-device):
#                      CUDA on, architecture --arch only (90: the H100 and H200), Release,
#                      without MPI, RPATH $ORIGIN/lib as DT_RPATH (so the libraries' own
#                      dependencies are found there too)
#   --from-build DIR   carry a build made otherwise instead (no configure, no compile; its
#                      RPATH stays as built: for the dry run on this machine, tests/cpu/test_gpu_check.py)
#   --data nuclei      datasets/nuclei.py (the stardist wheel from PyPI, cached in --data-cache);
#          ellipses    synthetic cells (datasets/make_ellipses.py), no network
#   --limit-mib N      what the device tool takes in all (default 64): the carried tree
#                      and the repository's working tree together must stay under it
#
# Prints the size of the carried tree and of the working tree that travels with it.
# Exit status 0, or 1 with the reason (a build that fails, a library not found,
# the limit passed).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

OUT=.device
BUILD_DIR=build-device
ARCH=90
FROM=""
DATA=nuclei
CACHE=data/cache
JOBS=2
LIMIT_MIB=64
usage() { sed -n '2,37p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "gpu_bundle: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="${2:?--out needs a directory}"; shift 2 ;;
    --build-dir) BUILD_DIR="${2:?}"; shift 2 ;;
    --arch) ARCH="${2:?--arch needs a number, e.g. 90}"; shift 2 ;;
    --from-build) FROM="${2:?--from-build needs a build directory}"; shift 2 ;;
    --data) DATA="${2:?}"; shift 2 ;;
    --data-cache) CACHE="${2:?}"; shift 2 ;;
    --jobs) JOBS="${2:?}"; shift 2 ;;
    --limit-mib) LIMIT_MIB="${2:?}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_bundle: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$DATA" in nuclei|ellipses) ;; *) echo "gpu_bundle: --data is nuclei or ellipses, not '$DATA'" >&2; exit 2 ;; esac
# the dataset scripts need numpy, h5py and PIL: the tests' Python
PY=/usr/bin/python3
[ -x .venv/bin/python ] && PY=.venv/bin/python

# ---- the build ----
# The executables the GPU machine runs: unet, and every test driver (tests/tools/*.c) that tests/gpu,
# bench/*_gpu.py or the check itself names.
tools() {
  local t name
  echo unet
  for t in tests/tools/*.c; do
    name=$(basename "$t" .c)
    if grep -qw "$name" tests/gpu/*.py bench/*_gpu.py scripts/gpu_check.sh 2>/dev/null; then echo "$name"; fi
  done
}
mapfile -t TOOLS < <(tools)
if [ -n "$FROM" ]; then
  BUILD=$(realpath "$FROM")
  [ -f "$BUILD/CMakeCache.txt" ] || die "--from-build $FROM is not a CMake build (no CMakeCache.txt)"
else
  [ -d /usr/local/cuda/bin ] && export PATH="/usr/local/cuda/bin:$PATH"
  command -v nvcc >/dev/null || die "nvcc is not installed: the carried build needs the CUDA toolkit (or --from-build DIR)"
  BUILD="$ROOT/$BUILD_DIR"
  mkdir -p "$BUILD"
  echo "gpu_bundle: configuring $BUILD_DIR (CUDA sm_$ARCH, Release, no MPI, RPATH \$ORIGIN/lib)"
  # shellcheck disable=SC2016 # $ORIGIN is for the dynamic loader, not the shell
  cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DUNET_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH-real" \
    -DCMAKE_DISABLE_FIND_PACKAGE_MPI=ON -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON -DCMAKE_INSTALL_RPATH='$ORIGIN/lib' \
    -DCMAKE_EXE_LINKER_FLAGS=-Wl,--disable-new-dtags > "$BUILD/bundle-configure.log" 2>&1 \
    || { tail -30 "$BUILD/bundle-configure.log"; die "configure failed: $BUILD/bundle-configure.log"; }
  grep -q "UNET_CUDA:BOOL=ON" "$BUILD/CMakeCache.txt" || die "$BUILD_DIR was configured without CUDA"
  echo "gpu_bundle: building ${TOOLS[*]} (-j$JOBS)"
  cmake --build "$BUILD" -j"$JOBS" --target "${TOOLS[@]}" > "$BUILD/bundle-build.log" 2>&1 \
    || { grep -E "error" "$BUILD/bundle-build.log" | head -20; die "build failed: $BUILD/bundle-build.log"; }
fi
EMULATED=false
grep -q "UNET_CUDA_EMU:BOOL=ON" "$BUILD/CMakeCache.txt" && EMULATED=true

# ---- the carried tree ----
rm -rf "$OUT"
mkdir -p "$OUT/build/lib" "$OUT/data"
for t in "${TOOLS[@]}"; do
  [ -x "$BUILD/$t" ] || die "$BUILD/$t is missing: build it first"
  cp "$BUILD/$t" "$OUT/build/$t"
  strip "$OUT/build/$t"
done
cp "$BUILD/CMakeCache.txt" "$OUT/build/"

# Every shared library the executables load, except the C library's (the GPU machine's own glibc is newer,
# and libstdc++ and libgcc_s with it) and CUDA's (the driver's libcuda, and the runtime, cuBLAS, cuDNN and
# NCCL, which come from PyTorch's wheels there, their versions checked at run time).
SYSTEM_RE='^(linux-vdso|ld-linux|libc|libm|libpthread|libdl|librt|libresolv|libutil|libgcc_s|libstdc\+\+)\.so'
CUDA_RE='^(libcuda|libcudart|libcublas|libcublasLt|libcudnn[a-z_]*|libnccl|libnvrtc|libnvJitLink)\.so'
declare -A CARRIED=()
for t in "${TOOLS[@]}"; do
  while read -r name _ path _; do
    [[ "$name" =~ $SYSTEM_RE || "$name" =~ $CUDA_RE ]] && continue
    [ "$path" = "not" ] && die "$t needs $name, which is not found here"
    CARRIED[$name]=$path
  done < <(ldd "$BUILD/$t" | grep "=>")
done
for name in "${!CARRIED[@]}"; do
  cp -L "${CARRIED[$name]}" "$OUT/build/lib/$name"
  strip --strip-unneeded "$OUT/build/lib/$name" 2>/dev/null || true
done

# A build of ours finds them through its RPATH: check that each resolves inside the tree.
if [ -z "$FROM" ]; then
  for t in "${TOOLS[@]}"; do
    while read -r name _ path _; do
      [ -n "${CARRIED[$name]:-}" ] || continue
      case "$path" in "$(realpath "$OUT")"/build/lib/*) ;; *) die "$t resolves $name to $path, not to the carried copy";; esac
    done < <(ldd "$(realpath "$OUT")/build/$t" | grep "=>")
  done
fi

# ---- the data ----
if [ "$DATA" = nuclei ]; then
  "$PY" datasets/nuclei.py --out "$OUT/data" --cache "$CACHE" > /dev/null \
    || die "datasets/nuclei.py failed (no network? put the stardist wheel in $CACHE, or --data ellipses)"
  mv "$OUT/data/nuclei_train.h5" "$OUT/data/train.h5"
  mv "$OUT/data/nuclei_val.h5" "$OUT/data/val.h5"
  DATA_NOTE="nuclei (Data Science Bowl 2018 image from the stardist 0.9.1 wheel): train rows 0..383, val rows 384..511 of 512x512"
else
  "$PY" datasets/make_ellipses.py --n 1 --size 384 --seed 0 -o "$OUT/data/train.h5" > /dev/null
  "$PY" datasets/make_ellipses.py --n 1 --size 128 --seed 1 -o "$OUT/data/val.h5" > /dev/null
  DATA_NOTE="synthetic ellipses (datasets/make_ellipses.py): one 384x384 training image, one 128x128 validation image"
fi
# the U-Net paper's border weight map, as scripts/demo.sh adds it (the CPU path of the carried unet: it runs here)
"$OUT/build/unet" data weights "$OUT/data/train.h5" --w0 10 --sigma 5 > /dev/null

# ---- what it is ----
size_kib() { du -sk "$1" | cut -f1; }
TREE_KIB=$(git ls-files -co --exclude-standard -z | du -ck --files0-from=- 2>/dev/null | tail -1 | cut -f1)
CARRIED_KIB=$(size_kib "$OUT")
CUDA_VERSION=$( (nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p') || true)
CUDNN_H=$( (cat /usr/local/cuda/include/cudnn_version.h /usr/include/cudnn_version.h 2>/dev/null || true) |
           awk '/define CUDNN_(MAJOR|MINOR|PATCHLEVEL) / {print $3}' | head -3 | paste -sd.)
ARCHS=$(sed -n 's/^CMAKE_CUDA_ARCHITECTURES:[A-Z]*=//p' "$BUILD/CMakeCache.txt")
ARCHS=${ARCHS:-CMakeLists.txt default (80-real 90-real)}
libs_json=$(for name in $(printf '%s\n' "${!CARRIED[@]}" | sort); do
  printf '{"name": "%s", "from": "%s", "bytes": %s},' "$name" "${CARRIED[$name]}" "$(stat -c %s "$OUT/build/lib/$name")"
done | sed 's/,$//')
tools_json=$(printf '"%s",' "${TOOLS[@]}" | sed 's/,$//')
cat > "$OUT/bundle.json" <<EOF
{"date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)", "commit": "$(git describe --always --dirty 2>/dev/null || echo unknown)",
 "digest": "$("$PY" scripts/gpu_check.py digest "$ROOT")", "from_build": "$BUILD", "emulated": $EMULATED,
 "arch": "$ARCHS",
 "cuda": "${CUDA_VERSION:-unknown}", "cudnn_headers": "${CUDNN_H:-unknown}", "host": "$(. /etc/os-release && echo "$PRETTY_NAME"), $(ldd --version | head -1)",
 "tools": [$tools_json], "libraries": [$libs_json], "data": "$DATA_NOTE",
 "carried_kib": $CARRIED_KIB, "working_tree_kib": $TREE_KIB}
EOF
"$PY" -c "import json,sys; json.load(open(sys.argv[1]))" "$OUT/bundle.json" || die "bundle.json is not valid JSON"

echo "gpu_bundle: $OUT: ${#TOOLS[@]} executables, ${#CARRIED[@]} libraries, $(( CARRIED_KIB / 1024 )) MiB" \
     "(build $(( $(size_kib "$OUT/build") / 1024 )) MiB, of which lib $(( $(size_kib "$OUT/build/lib") / 1024 )) MiB;" \
     "data $(( $(size_kib "$OUT/data") )) KiB); the working tree that travels with it: $(( TREE_KIB / 1024 )) MiB"
if [ $(( CARRIED_KIB + TREE_KIB )) -ge $(( LIMIT_MIB * 1024 )) ]; then
  die "the carried tree and the working tree together pass --limit-mib $LIMIT_MIB"
fi
