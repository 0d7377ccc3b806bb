#!/usr/bin/env bash
# The libFuzzer targets of the file readers (tests/fuzz/README.md), built with clang under AddressSanitizer and
# UBSan into build-fuzz/. For each target: first every input saved from an earlier crash
# (tests/fuzz/regressions/<target>/) once, then fuzzing for a bounded time from a copy of its seed corpus
# (tests/fuzz/corpus/<target>/). A crash, leak, UB report, hang (over 10 s an input) or a single allocation over
# 512 MiB (a reader that trusts a size its header claims: inputs are a few KB) fails the run, exit code 1, with the
# input kept in build-fuzz/artifacts/<target>/ (save it under tests/fuzz/regressions/<target>/ once fixed).
# UNET_FUZZ_SEED fixes libFuzzer's seed (CI: the same walk each run, so that CI is red for a change and not for a
# lucky draw); unset, each run draws its own and explores further over many runs.
#   scripts/fuzz.sh [SECONDS per target, default 40] [TARGET ...]   (targets: the tests/fuzz/fuzz_*.c names)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-40}
[ $# -gt 0 ] && shift
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for src in tests/fuzz/fuzz_*.c; do t=${src#tests/fuzz/fuzz_}; targets+=("${t%.c}"); done
fi

command -v clang > /dev/null || { echo "fuzz: clang not found: scripts/setup.sh installs it (clang, libclang-rt-14-dev)"; exit 1; }
mkdir -p build-fuzz
log=build-fuzz/build.log
CC=clang cmake -S . -B build-fuzz -DUNET_FUZZ=ON -DUNET_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo > "$log" 2>&1 \
  || { cat "$log"; exit 1; }
cmake --build build-fuzz -j"$(nproc)" --target "${targets[@]/#/fuzz_}" >> "$log" 2>&1 || { tail -50 "$log"; exit 1; }

# libhdf5's own bugs on corrupt files are suppressed (tests/fuzz/*.supp say which); an allocation that cannot be
# made returns NULL, as it would without ASan, for the reader to report
export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1:suppressions=$PWD/tests/fuzz/asan.supp
export LSAN_OPTIONS=suppressions=$PWD/tests/fuzz/lsan.supp:print_suppressions=0 UBSAN_OPTIONS=print_stacktrace=1
limits=(-timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512)
[ -n "${UNET_FUZZ_SEED:-}" ] && limits+=(-seed="$UNET_FUZZ_SEED")
failed=()
for t in "${targets[@]}"; do
  bin=build-fuzz/tests/fuzz/fuzz_$t
  out=build-fuzz/fuzz-$t.log
  art=build-fuzz/artifacts/$t/
  rm -rf "$art" "build-fuzz/corpus/$t"
  mkdir -p "$art" "build-fuzz/corpus/$t"
  extra=()  # the target's own flags (tests/fuzz/<target>.flags) and dictionary
  [ -f "tests/fuzz/$t.flags" ] && read -ra extra <<< "$(grep -v '^#' "tests/fuzz/$t.flags" | tr '\n' ' ')"
  [ -f "tests/fuzz/$t.dict" ] && extra+=(-dict="tests/fuzz/$t.dict")
  regressions=()
  [ -d "tests/fuzz/regressions/$t" ] && regressions=(tests/fuzz/regressions/"$t"/*)
  if [ ${#regressions[@]} -gt 0 ] && ! "$bin" "${limits[@]}" "${extra[@]}" -artifact_prefix="$art" "${regressions[@]}" > "$out" 2>&1; then
    echo "fuzz: $t fails on a saved regression input:"; tail -40 "$out"; failed+=("$t"); continue
  fi
  # the first folder takes what the fuzzer finds; the committed seeds are only read
  if ! "$bin" "${limits[@]}" "${extra[@]}" -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix="$art" \
       "build-fuzz/corpus/$t" "tests/fuzz/corpus/$t" >> "$out" 2>&1; then
    echo "fuzz: $t failed (input in $art):"; tail -40 "$out"; failed+=("$t"); continue
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out" | tail -1)
  echo "fuzz: $t: ${#regressions[@]} regression inputs, then $runs inputs in ${seconds} s, no failure" \
       "(corpus $(ls "build-fuzz/corpus/$t" | wc -l) files)"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failed: ${failed[*]} (logs in build-fuzz/fuzz-<target>.log)"
  exit 1
fi
