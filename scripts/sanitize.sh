#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer build of the CPU engine
# (build-asan/), and the CPU tests that drive its C code: any invalid access,
# leak or undefined behaviour in the library or the tools fails a test.
#   scripts/sanitize.sh [extra ctest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build-asan
cmake -S . -B build-asan -DUNET_SANITIZE=ON -DUNET_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo > build-asan/configure.log 2>&1 \
  || { cat build-asan/configure.log; exit 1; }
cmake --build build-asan -j"$(nproc)" > build-asan/build.log 2>&1 || { tail -50 build-asan/build.log; exit 1; }
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=99 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
cd build-asan
# the distributed, Slurm and benchmark-script tests exercise MPI's own allocations (and Python plumbing) more than
# our code: left to the plain build
ctest --output-on-failure -j"$(nproc)" -L cpu -E "test_dist|test_slurm|test_packaging|test_cudnn|test_bench_scripts" "$@"
