#!/usr/bin/env bash
# Sets everything up and runs the test suite: the CPU tests everywhere, and
# the GPU tests too on a machine with a GPU (they skip themselves elsewhere).
# Then the GPU tests once more, everywhere, against the CUDA backend built on
# the CPU emulation of CUDA (tests/emu, build-emu/): a correctness check of
# the CUDA code without a GPU, whose timings are no GPU's.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
(cd build && ctest --output-on-failure -j"$(nproc)" -L "cpu|gpu" "$@")

mkdir -p build-emu
log=build-emu/emu-build.log
cmake -S . -B build-emu -DCMAKE_BUILD_TYPE=Release -DUNET_CUDA_EMU=ON > "$log" 2>&1 || { cat "$log"; exit 1; }
cmake --build build-emu -j"$(nproc)" >> "$log" 2>&1 || { tail -50 "$log"; exit 1; }
echo "test: built build-emu/unet (the CUDA backend emulated on the CPU)"
cd build-emu
ctest --output-on-failure -j"$(nproc)" -L emu "$@"
