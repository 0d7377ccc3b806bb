#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine and builds unet into build/.
#   scripts/setup.sh            install what is missing (as root, or through sudo), configure, build
#   UNET_CUDA=OFF scripts/setup.sh   build without the CUDA backend even where nvcc is installed
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the build, the tests and the dataset scripts need; the
# Dockerfile installs the same list (keep them in step: tests/cpu/test_packaging.py checks).
PACKAGES=(build-essential cmake pkg-config libhdf5-dev libjson-c-dev libpng-dev libtiff-dev
          python3 python3-pip python3-numpy python3-scipy python3-h5py python3-matplotlib python3-pytest
          python3-torch python3-torchvision python3-pil libopenmpi-dev openmpi-bin
          libonnx-dev protobuf-c-compiler libprotobuf-c-dev)
# For the tests alone, not the image: a real single-node Slurm (tests/cpu/test_slurm.py); clang with libFuzzer and
# its OpenMP for the fuzz targets of the file readers (scripts/fuzz.sh); clang-format (tests/cpu/test_format.py).
TEST_PACKAGES=(slurm-wlm munge python3-venv clang libclang-rt-14-dev libomp-dev clang-format)

missing=()
for p in "${PACKAGES[@]}" "${TEST_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The tests' PyPI packages (ONNX, ONNX Runtime, segmentation-models-pytorch) in .venv, beside Debian's torch
# (tests/requirements*.txt say why some go in without their dependencies); tests/CMakeLists.txt runs pytest from it.
if [ ! -x .venv/bin/python ] || ! cmp -s tests/requirements.txt .venv/requirements.txt \
     || ! cmp -s tests/requirements-nodeps.txt .venv/requirements-nodeps.txt; then
  echo "setup: installing the tests' Python packages into .venv"
  /usr/bin/python3 -m venv --system-site-packages .venv
  .venv/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -r tests/requirements-nodeps.txt
  cp tests/requirements.txt tests/requirements-nodeps.txt .venv/
fi

# nvcc lives outside PATH on most CUDA installs
[ -d /usr/local/cuda/bin ] && export PATH="/usr/local/cuda/bin:$PATH"
cuda_flag=()
[ -n "${UNET_CUDA:-}" ] && cuda_flag=(-DUNET_CUDA="$UNET_CUDA")
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "${cuda_flag[@]}" > build.log 2>&1 || { cat build.log; exit 1; }
cmake --build build -j"$(nproc)" >> build.log 2>&1 || { tail -50 build.log; exit 1; }
echo "setup: built build/unet ($(grep -q 'UNET_CUDA:BOOL=ON' build/CMakeCache.txt && echo 'with' || echo 'without') CUDA)"
