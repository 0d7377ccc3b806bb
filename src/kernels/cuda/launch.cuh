/* Launch shapes and device helpers shared by the custom kernels of the CUDA
 * backend (elementwise.cu, pool.cu, concat.cu, upsample.cu, batchnorm.cu,
 * loss.cu, backend.cu, augment.cu).
 *
 * Determinism: every reduction here runs in an order fixed by the shape
 * alone (never by the device, the number of SMs or timing): a block sums its
 * threads' values through the same shuffle tree every run, and the number of
 * blocks and what each covers are functions of the shape. No atomics. */
#ifndef UNET_CUDA_LAUNCH_CUH
#define UNET_CUDA_LAUNCH_CUH

#include <stdint.h>
#include <stdio.h>

#include "kernels/cuda/common.h"

/* Threads of a block; reductions assume exactly this many (a multiple of 32). */
#define UNET_THREADS 256

/* A grid-stride loop needs no more blocks than this to fill any current GPU
 * (132 SMs x 2048 threads is 1056 blocks of 256); more only adds scheduling. */
#define UNET_MAX_BLOCKS 8192

/* Blocks for a grid-stride loop over `items` work items, one per thread per pass. */
static inline unsigned unet_blocks_for(long long items) {
    long long b = (items + UNET_THREADS - 1) / UNET_THREADS;
    return (unsigned)(b < 1 ? 1 : b > UNET_MAX_BLOCKS ? UNET_MAX_BLOCKS : b);
}

/* Threads for a block that walks one small plane: a whole number of warps,
 * no more than the plane needs, so that 2x2 planes do not idle 256 threads. */
static inline unsigned unet_threads_for(long long items) {
    long long t = (items + 31) / 32 * 32;
    return (unsigned)(t < 32 ? 32 : t > UNET_THREADS ? UNET_THREADS : t);
}

/* Per-plane launches: grid.x = planes (N*C), grid.y = blocks along one
 * plane, each block walking its plane with stride gridDim.y * blockDim.x.
 * The y extent is capped (by the hardware's 65535 among others); the loop
 * covers the rest. */
typedef struct {
    dim3 grid, block;
} unet_plane_launch;

static inline unet_plane_launch unet_plane_launch_for(const unet_op_args *a, long long planes, long long items) {
    /* planes index grid.x; a plane's own indices are int, with headroom for the stride */
    if (planes > 0x7fffffffLL || items > (1LL << 30)) {
        char msg[160];
        snprintf(msg, sizeof msg,
                 "%lld planes of %lld elements exceed the launch limits (2^31 - 1 planes, 2^30 per plane)", planes,
                 items);
        unet_cuda_fail(__FILE__, __LINE__, "launch shape", msg, a);
    }
    unet_plane_launch l;
    unsigned threads = unet_threads_for(items);
    long long by = (items + threads - 1) / threads;
    /* about UNET_MAX_BLOCKS blocks in all: a large plane is walked by fewer,
     * longer-lived blocks instead of one element per thread */
    long long by_cap = (UNET_MAX_BLOCKS + planes - 1) / (planes < 1 ? 1 : planes);
    if (by > by_cap) by = by_cap;
    l.grid = dim3((unsigned)(planes < 1 ? 1 : planes), (unsigned)(by < 1 ? 1 : by > 65535 ? 65535 : by), 1);
    l.block = dim3(threads, 1, 1);
    return l;
}

/* Whether a pointer may be read or written as float4. */
static inline int unet_aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

#ifdef __CUDACC__

/* A gradient store: the first consumer's backward overwrites, later ones add. */
static __device__ __forceinline__ void unet_store_grad(float *d, long long i, float v, int accumulate) {
    d[i] = accumulate ? d[i] + v : v;
}

static __device__ __forceinline__ long long unet_global_thread() {
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}
static __device__ __forceinline__ long long unet_grid_threads() { return (long long)gridDim.x * blockDim.x; }

/* Sums K doubles over a block of UNET_THREADS threads in a fixed order (a
 * shuffle tree in each warp, then one over the warps). The sums are valid in
 * thread 0 only. Every thread of the block must call it. */
template <int K> static __device__ void unet_block_sum(double (&v)[K]) {
    __shared__ double warp_sums[K][UNET_THREADS / 32];
    const unsigned full = 0xffffffffu;
    int lane = (int)(threadIdx.x & 31), warp = (int)(threadIdx.x >> 5);
#pragma unroll
    for (int k = 0; k < K; k++)
        for (int off = 16; off > 0; off >>= 1) v[k] += __shfl_down_sync(full, v[k], off);
    if (lane == 0)
#pragma unroll
        for (int k = 0; k < K; k++) warp_sums[k][warp] = v[k];
    __syncthreads();
    /* Every warp runs the second tree, though only warp 0's result is used:
     * no shuffle sits under a branch (costless here, and it lets CPU
     * emulators that implement shuffles with block barriers run this). */
#pragma unroll
    for (int k = 0; k < K; k++) {
        v[k] = lane < UNET_THREADS / 32 ? warp_sums[k][lane] : 0.0;
        for (int off = 16; off > 0; off >>= 1) v[k] += __shfl_down_sync(full, v[k], off);
    }
    __syncthreads(); /* warp_sums may be reused by the caller's next call */
}

#endif /* __CUDACC__ */

#endif
