#!/usr/bin/env bash
# Sets everything up and runs the test suite: the CPU tests everywhere, and
# the GPU tests too on a machine with a GPU (they skip themselves elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cd build
ctest --output-on-failure -j"$(nproc)" -L "cpu|gpu" "$@"
