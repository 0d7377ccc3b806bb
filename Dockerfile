# unet with the CUDA backend, cuDNN and NCCL, and Open MPI for CPU runs.
#   docker build -t unet .
#   docker run --gpus all -v $PWD/data:/data unet unet train --data /data/train.h5 ...
# The apt packages are scripts/setup.sh's PACKAGES (tests/cpu/test_packaging.py keeps the two in step).
FROM nvidia/cuda:13.0.1-cudnn-devel-ubuntu24.04

ARG DEBIAN_FRONTEND=noninteractive
# Versions come from the pinned base image's release; pinning each package again would only break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config libhdf5-dev libjson-c-dev libpng-dev libtiff-dev \
      python3 python3-pip python3-numpy python3-scipy python3-h5py python3-matplotlib python3-pytest \
      python3-torch python3-torchvision python3-pil libopenmpi-dev openmpi-bin \
      libonnx-dev protobuf-c-compiler libprotobuf-c-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/unet
COPY . .
# No GPU is needed to build: nvcc compiles for the architectures CMakeLists.txt names.
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DUNET_CUDA=ON \
 && cmake --build build -j"$(nproc)" \
 && install -m 755 build/unet /usr/local/bin/unet

# Several ranks reading one HDF5 file on a shared file system; mpirun as the container's root.
ENV HDF5_USE_FILE_LOCKING=FALSE \
    OMPI_ALLOW_RUN_AS_ROOT=1 \
    OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
CMD ["unet", "--help"]
