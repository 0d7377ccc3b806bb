/* What the channels-last kernels share (NHWC: bf16, and fp32/tf32 with
 * --layout nhwc; tensor_view.cuh). In NHWC a channel's values are cp apart,
 * so a kernel that walks one channel plane at a time reads 2 or 4 bytes a
 * cp-wide stride apart. These kernels put the channels innermost instead:
 * a thread takes one 16-byte vector of V channels of a pixel (unet_vec:
 * 8 bf16 or 4 floats; layout.h pads every pixel to whole vectors), and
 * consecutive threads take consecutive vectors, so that a warp reads and
 * writes whole contiguous lines.
 *
 *   - Maps (pool, upsample, crop, batch norm's normalisation and dx, the
 *     bias): a grid-stride loop over the items (pixel, vector) of a tensor,
 *     the vector fastest, with 32-bit indices (unet_vec_items).
 *   - Per-channel sums over N, H, W (batch norm's statistics and gradient
 *     sums, the bias gradient): unet_nhwc_sums_kernel below, deterministic
 *     without atomics like every reduction of the backend (launch.cuh).
 *
 * Padding channels: a map writes zeros into them (lanes c >= C), whatever
 * it reads there, as the plane-wise kernels write the padding planes. */
#ifndef UNET_CUDA_NHWC_CUH
#define UNET_CUDA_NHWC_CUH

#include <stdio.h>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/tensor_view.cuh"

/* Host: the (pixel, vector) items of an NHWC tensor of shape s, checked to
 * fit the kernels' 32-bit indices. */
template <class F> static inline unsigned unet_vec_items(const unet_op_args *a, unet_shape s) {
    long long items = (long long)s.n * s.h * s.w * (F::channels(s.c) / F::V);
    if (items > 0x7fffffffLL) {
        char msg[160];
        snprintf(msg, sizeof msg, "%lld channel vectors exceed the NHWC kernels' 2^31 - 1", items);
        unet_cuda_fail(__FILE__, __LINE__, "launch shape", msg, a);
    }
    return (unsigned)items;
}

/* Per-channel sums of S quantities over the pixels of an NHWC tensor.
 *
 * Block (slice, chunk): threadIdx.x picks a vector of channels within a chunk
 * of up to 32 consecutive vectors (blockIdx.y), threadIdx.y a row of pixels;
 * the block covers pixels [slice * per_slice, ...) of the N*H*W, each row
 * every blockDim.y-th of them, summing S x V doubles (op.add). The rows are
 * then summed through a fixed tree, and row 0 writes
 *     partial[(c * slices + slice) * S + k]
 * for each real channel c of its vector. A finishing kernel sums a
 * channel's slices in a fixed order. Slices, chunks and rows depend on the
 * shape alone: the same bits every run, on every GPU.
 *
 * Launched as
 *     unet_nhwc_split sp = unet_nhwc_split_of<F>(shape);
 *     unet_nhwc_sums_kernel<F, S><<<sp.grid, sp.block, 0, stream>>>(op, C, sp.vectors, sp.pixels, sp.per_slice,
 *                                                                   partial);
 * Op: a struct, passed by value, with
 *     typedef ... state;                                          per thread
 *     __device__ state begin(int vector) const;                   before its pixels
 *     __device__ void add(const state &, long long pixel, int vector, double (&acc)[S * V]) const;
 * acc[k * V + j] is quantity k of channel vector * V + j. */
struct unet_nhwc_split {
    long long pixels;    /* N * H * W */
    int vectors;         /* channel vectors a pixel */
    int slices;          /* blockIdx.x */
    long long per_slice; /* pixels a block covers */
    dim3 grid, block;    /* (slices, chunks of up to 32 vectors), (vectors of a chunk, pixel rows) */
};

/* A slice is at least this many pixels, and a channel has at most
 * UNET_NHWC_SLICES of them (its partials are summed by one block). */
#define UNET_NHWC_SLICE_PIXELS 1024
#define UNET_NHWC_SLICES       1024

/* The slices of N*H*W pixels: what sizes the partials (slices per channel). */
static inline int unet_nhwc_slices(long long pixels) {
    long long slices = (pixels + UNET_NHWC_SLICE_PIXELS - 1) / UNET_NHWC_SLICE_PIXELS;
    return (int)(slices < 1 ? 1 : slices > UNET_NHWC_SLICES ? UNET_NHWC_SLICES : slices);
}

/* The launch of unet_nhwc_sums_kernel over a tensor of shape s (the
 * kernels' files write the launch: cu2cc.py rewrites launches in .cu files
 * only). */
template <class F> static inline unet_nhwc_split unet_nhwc_split_of(unet_shape s) {
    unet_nhwc_split sp;
    sp.pixels = (long long)s.n * s.h * s.w;
    sp.vectors = F::channels(s.c) / F::V;
    sp.slices = unet_nhwc_slices(sp.pixels);
    sp.per_slice = (sp.pixels + sp.slices - 1) / sp.slices;
    /* a warp reads cols consecutive vectors of a pixel, then the next pixel's: whole lines when cols = vectors */
    int cols = sp.vectors < 1 ? 1 : sp.vectors > 32 ? 32 : sp.vectors;
    sp.block = dim3((unsigned)cols, (unsigned)(UNET_THREADS / cols));
    sp.grid = dim3((unsigned)sp.slices, (unsigned)((sp.vectors + cols - 1) / cols));
    return sp;
}

#ifdef __CUDACC__

/* The pixel (n, y, x) of item i of a tensor of h x w pixels and `vectors`
 * channel vectors a pixel; its vector is i % vectors. */
static __device__ __forceinline__ void unet_pixel_of(unsigned i, int vectors, int h, int w, int &n, int &y, int &x) {
    unsigned p = i / (unsigned)vectors;
    x = (int)(p % (unsigned)w);
    unsigned t = p / (unsigned)w;
    y = (int)(t % (unsigned)h);
    n = (int)(t / (unsigned)h);
}

template <class F, int S, class Op>
static __global__ void unet_nhwc_sums_kernel(Op op, int channels, int vectors, long long pixels, long long per_slice,
                                             double *partial) {
    constexpr int K = S * F::V;
    __shared__ double sh[UNET_THREADS][K];
    int vec = blockIdx.y * blockDim.x + threadIdx.x;
    int t = threadIdx.y * blockDim.x + threadIdx.x;
    double acc[K];
#pragma unroll
    for (int k = 0; k < K; k++) acc[k] = 0.0;
    if (vec < vectors) {
        typename Op::state st = op.begin(vec);
        long long begin = (long long)blockIdx.x * per_slice;
        long long end = begin + per_slice < pixels ? begin + per_slice : pixels;
        for (long long p = begin + threadIdx.y; p < end; p += blockDim.y) op.add(st, p, vec, acc);
    }
#pragma unroll
    for (int k = 0; k < K; k++) sh[t][k] = acc[k];
    __syncthreads();
    /* the rows in a fixed tree: those past the largest power of two fold in first */
    int rows = blockDim.y, pow2 = 1;
    while (2 * pow2 <= rows) pow2 *= 2;
    if ((int)threadIdx.y < rows - pow2)
        for (int k = 0; k < K; k++) sh[t][k] += sh[t + pow2 * blockDim.x][k];
    __syncthreads();
    for (int half = pow2 / 2; half > 0; half /= 2) {
        if ((int)threadIdx.y < half)
            for (int k = 0; k < K; k++) sh[t][k] += sh[t + half * blockDim.x][k];
        __syncthreads();
    }
    if (threadIdx.y != 0 || vec >= vectors) return;
    for (int j = 0; j < F::V; j++) {
        int c = vec * F::V + j;
        if (c >= channels) break;
        for (int k = 0; k < S; k++) partial[((long long)c * gridDim.x + blockIdx.x) * S + k] = sh[t][k * F::V + j];
    }
}

#endif /* __CUDACC__ */

#endif
