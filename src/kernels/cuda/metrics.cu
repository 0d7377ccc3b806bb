/* Confusion counts on the GPU (see metrics.h). Each block counts a chunk of
 * pixels fixed by the shape into shared-memory integers, writes them as its
 * partial, and one block sums the partials per counter. Integer sums are
 * exact, so the shared-memory atomic increments (whose order varies) give
 * the same counts every run: deterministic, unlike float atomics. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "kernels/cuda/common.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/metrics.h"
#include "kernels/cuda/tensor_view.cuh"

#define COUNT_CHUNK 4096 /* pixels per block */
/* Counters: tp[64], fp[64], fn[64], correct. */
#define N_COUNTERS (3 * UNET_MAX_CLASSES + 1)

static long long chunks_of(unet_shape s) {
    long long pixels = (long long)s.n * s.h * s.w;
    return (pixels + COUNT_CHUNK - 1) / COUNT_CHUNK;
}

static size_t partial_bytes(unet_shape s) {
    size_t b = (size_t)chunks_of(s) * N_COUNTERS * sizeof(uint32_t);
    return (b + 255) / 256 * 256;
}

extern "C" size_t unet_cuda_seg_counts_workspace_bytes(unet_shape logits) {
    return partial_bytes(logits) + N_COUNTERS * sizeof(unsigned long long);
}

/* The CPU's pixel_class: the first channel with the largest logit (a NaN
 * never wins), or logit > 0 for one channel. Pixel r of image n; the logits
 * in either layout of tensor_view.cuh (kp channels in memory). */
template <class T>
static __device__ __forceinline__ int pixel_class(const T *z, long long n, long long r, int kp, long long hw, int k) {
    float z0 = unet_ld(z, unet_plane_at(z, n, 0, kp, hw, r));
    if (k == 1) return z0 > 0.0f;
    int best = 0;
    float bv = z0;
    for (int c = 1; c < k; c++) {
        float v = unet_ld(z, unet_plane_at(z, n, c, kp, hw, r));
        if (v > bv) best = c, bv = v;
    }
    return best;
}

template <class T>
static __global__ void count_kernel(const T *logits, int n_img, int k, int kp, int h, int w, const int32_t *label,
                                    int label_h, int label_w, uint32_t *partial) {
    __shared__ uint32_t counts[N_COUNTERS];
    for (int i = threadIdx.x; i < N_COUNTERS; i += blockDim.x) counts[i] = 0;
    __syncthreads();
    long long hw = (long long)h * w, pixels = (long long)n_img * hw;
    int oy = (label_h - h) / 2, ox = (label_w - w) / 2;
    long long begin = (long long)blockIdx.x * COUNT_CHUNK;
    long long end = begin + COUNT_CHUNK < pixels ? begin + COUNT_CHUNK : pixels;
    for (long long p = begin + threadIdx.x; p < end; p += blockDim.x) {
        int n = (int)(p / hw);
        long long r = p - n * hw;
        int y = (int)(r / w), x = (int)(r - (long long)y * w);
        int pred = pixel_class(logits, n, r, kp, hw, k);
        int32_t t = label[((long long)n * label_h + oy + y) * label_w + ox + x];
        if (pred == t) {
            atomicAdd(&counts[3 * UNET_MAX_CLASSES], 1u);
            if (pred < UNET_MAX_CLASSES) atomicAdd(&counts[pred], 1u);
            continue;
        }
        if (pred < UNET_MAX_CLASSES) atomicAdd(&counts[UNET_MAX_CLASSES + pred], 1u);
        if (t >= 0 && t < UNET_MAX_CLASSES) atomicAdd(&counts[2 * UNET_MAX_CLASSES + t], 1u);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < N_COUNTERS; i += blockDim.x) partial[(long long)blockIdx.x * N_COUNTERS + i] = counts[i];
}

/* One thread per counter sums the blocks' partials. */
static __global__ void count_finish_kernel(const uint32_t *partial, long long chunks, unsigned long long *total) {
    for (int i = threadIdx.x; i < N_COUNTERS; i += blockDim.x) {
        unsigned long long s = 0;
        for (long long b = 0; b < chunks; b++) s += partial[b * N_COUNTERS + i];
        total[i] = s;
    }
}

extern "C" void unet_cuda_seg_stats_add(const unet_backend *b, unet_seg_stats *s, const void *logits,
                                        unet_shape shape, const int32_t *label, int label_h, int label_w,
                                        void *workspace) {
    unet_cuda_ctx *ctx = (unet_cuda_ctx *)b->ctx;
    if (label_h < shape.h || label_w < shape.w)
        unet_cuda_fail(__FILE__, __LINE__, "metrics shape check", "the label is smaller than the logits", NULL);
    long long chunks = chunks_of(shape);
    if (chunks == 0) return;
    uint32_t *partial = (uint32_t *)workspace;
    unsigned long long *total = (unsigned long long *)((char *)workspace + partial_bytes(shape));
    int bf16 = ctx->precision == UNET_PREC_BF16;
    int kp = (int)unet_cuda_layout_of(bf16, shape, UNET_F32).cp;
    if (bf16)
        count_kernel<<<(unsigned)chunks, UNET_THREADS, 0, ctx->stream>>>(
            (const unet_bf16 *)logits, shape.n, shape.c, kp, shape.h, shape.w, label, label_h, label_w, partial);
    else
        count_kernel<<<(unsigned)chunks, UNET_THREADS, 0, ctx->stream>>>(
            (const float *)logits, shape.n, shape.c, kp, shape.h, shape.w, label, label_h, label_w, partial);
    UNET_CUDA_LAUNCHED(NULL);
    count_finish_kernel<<<1, UNET_THREADS, 0, ctx->stream>>>(partial, chunks, total);
    UNET_CUDA_LAUNCHED(NULL);
    unsigned long long host[N_COUNTERS];
    UNET_CUDA_CHECK(cudaMemcpyAsync(host, total, sizeof host, cudaMemcpyDeviceToHost, ctx->stream), NULL);
    UNET_CUDA_CHECK(cudaStreamSynchronize(ctx->stream), NULL);
    for (int c = 0; c < UNET_MAX_CLASSES; c++) {
        s->tp[c] += (double)host[c];
        s->fp[c] += (double)host[UNET_MAX_CLASSES + c];
        s->fn[c] += (double)host[2 * UNET_MAX_CLASSES + c];
    }
    s->correct += (double)host[3 * UNET_MAX_CLASSES];
    s->total += (double)((long long)shape.n * shape.h * shape.w);
}
