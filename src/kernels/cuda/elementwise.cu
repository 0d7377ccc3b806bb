/* Element-wise ops on the GPU: ReLU and inverted dropout, twins of
 * src/kernels/cpu/elementwise.c. Memory-bound: one grid-stride pass, float4
 * where every pointer is 16-byte aligned, scalars for the tail.
 *
 * Dropout draws the CPU's mask: element i (flat NCHW index) is kept iff
 * unet_uniform(key, i) >= p, the same integer hash on both sides
 * (include/unet/rng.h), and kept values are multiplied by the same float
 * 1/(1-p): the two backends agree bit for bit. */
#include <stdint.h>

#include "kernels/cuda/common.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops.h"
#include "unet/rng.h"

/* Runs op.one(i) for every i < n, as op.quad(q) on indices 4q..4q+3 where vec. */
template <class Op>
static __global__ void map_kernel(Op op, long long n, int vec) {
    long long n4 = vec ? n / 4 : 0;
    for (long long q = unet_global_thread(); q < n4; q += unet_grid_threads()) op.quad(q);
    for (long long i = n4 * 4 + unet_global_thread(); i < n; i += unet_grid_threads()) op.one(i);
}

template <class Op>
static void launch_map(const unet_op_args *a, const Op &op, long long n, int vec) {
    if (n == 0) return;
    map_kernel<<<unet_blocks_for(vec ? n / 4 : n), UNET_THREADS, 0, unet_cuda_ctx_of(a)->stream>>>(op, n, vec);
    UNET_CUDA_LAUNCHED(a);
}

static __device__ __forceinline__ float relu_of(float v) { return v < 0.0f ? 0.0f : v; } /* NaN passes */

static __device__ __forceinline__ float4 load4(const float *p, long long q) {
    return reinterpret_cast<const float4 *>(p)[q];
}
static __device__ __forceinline__ void store4(float *p, long long q, float4 v) { reinterpret_cast<float4 *>(p)[q] = v; }

/* A gradient store of four values at once (see unet_store_grad). */
static __device__ __forceinline__ void store_grad4(float *d, long long q, float4 v, int accumulate) {
    if (accumulate) {
        float4 o = load4(d, q);
        v.x += o.x;
        v.y += o.y;
        v.z += o.z;
        v.w += o.w;
    }
    store4(d, q, v);
}

/* ---- ReLU ---- */

struct relu_fwd {
    const float *x;
    float *y;
    __device__ void one(long long i) const { y[i] = relu_of(x[i]); }
    __device__ void quad(long long q) const {
        float4 v = load4(x, q);
        store4(y, q, make_float4(relu_of(v.x), relu_of(v.y), relu_of(v.z), relu_of(v.w)));
    }
};

/* dx = dout * (out > 0): the plan keeps out, not in, for this backward. */
struct relu_bwd {
    const float *y, *dy;
    float *dx;
    int acc;
    static __device__ __forceinline__ float pass(float y, float g) { return y > 0.0f ? g : 0.0f; }
    __device__ void one(long long i) const { unet_store_grad(dx, i, pass(y[i], dy[i]), acc); }
    __device__ void quad(long long q) const {
        float4 yv = load4(y, q), g = load4(dy, q);
        store_grad4(dx, q, make_float4(pass(yv.x, g.x), pass(yv.y, g.y), pass(yv.z, g.z), pass(yv.w, g.w)), acc);
    }
};

static void require_ptr(const unet_op_args *a, const void *p, const char *what) {
    if (!p) unet_cuda_fail(__FILE__, __LINE__, "argument check", what, a);
}

static void relu_forward(const unet_op_args *a) {
    relu_fwd op = {(const float *)a->in[0], (float *)a->out};
    launch_map(a, op, (long long)unet_shape_count(a->out_shape), unet_aligned16(op.x) && unet_aligned16(op.y));
}

static void relu_backward(const unet_op_args *a) {
    if (!a->din[0]) return;
    require_ptr(a, a->out, "relu backward needs the forward output (out is NULL)");
    relu_bwd op = {(const float *)a->out, (const float *)a->dout, (float *)a->din[0], a->din_accumulate[0]};
    int vec = unet_aligned16(op.y) && unet_aligned16(op.dy) && unet_aligned16(op.dx);
    launch_map(a, op, (long long)unet_shape_count(a->out_shape), vec);
}

extern "C" const unet_op_impl unet_cuda_relu = {relu_forward, relu_backward, NULL, NULL};

/* ---- dropout ---- */

/* The seed is read on the device when the kernel runs (a replayed CUDA
 * graph reuses the launch, not the step): the key is the CPU twin's
 * unet_rng_key(seed, node, 0), computed from it there. */
typedef struct {
    const uint64_t *seed;
    uint64_t node;
    uint64_t base; /* the global flat index of this batch's first element */
    float p, scale;
} dropout_mask;

/* The CPU twin's dropout_mask_of, value for value. */
static dropout_mask dropout_mask_of(const unet_op_args *a) {
    dropout_mask m;
    m.seed = a->seed;
    m.node = (uint64_t)a->node_index;
    m.base = a->first_sample * (uint64_t)a->out_shape.c * (uint64_t)a->out_shape.h * (uint64_t)a->out_shape.w;
    m.p = a->node->p;
    m.scale = m.p < 1.0f ? 1.0f / (1.0f - m.p) : 0.0f;
    return m;
}

static __device__ __forceinline__ uint64_t dropout_key(const dropout_mask &m) {
    return unet_rng_key(*m.seed, m.node, 0);
}

static __device__ __forceinline__ float dropout_apply(const dropout_mask &m, uint64_t key, long long i, float v) {
    /* rounded on its own, as on the CPU, even where an accumulation follows */
    return unet_uniform(key, m.base + (uint64_t)i) >= m.p ? __fmul_rn(v, m.scale) : 0.0f;
}

/* Forward (acc = 0, dst = out) and backward (dst = din) are the same map. */
struct dropout_map {
    dropout_mask m;
    const float *src;
    float *dst;
    int acc;
    __device__ void one(long long i) const {
        unet_store_grad(dst, i, dropout_apply(m, dropout_key(m), i, src[i]), acc);
    }
    __device__ void quad(long long q) const {
        float4 v = load4(src, q);
        long long i = 4 * q;
        uint64_t key = dropout_key(m);
        store_grad4(dst, q,
                    make_float4(dropout_apply(m, key, i, v.x), dropout_apply(m, key, i + 1, v.y),
                                dropout_apply(m, key, i + 2, v.z), dropout_apply(m, key, i + 3, v.w)),
                    acc);
    }
};

/* Evaluation: identity, and its gradient a plain (accumulated) copy. */
struct copy_map {
    const float *src;
    float *dst;
    int acc;
    __device__ void one(long long i) const { unet_store_grad(dst, i, src[i], acc); }
    __device__ void quad(long long q) const { store_grad4(dst, q, load4(src, q), acc); }
};

static void dropout_pass(const unet_op_args *a, const float *src, float *dst, int acc) {
    long long n = (long long)unet_shape_count(a->out_shape);
    int vec = unet_aligned16(src) && unet_aligned16(dst);
    if (!a->training) {
        copy_map op = {src, dst, acc};
        launch_map(a, op, n, vec);
        return;
    }
    require_ptr(a, a->seed, "dropout needs the step seed (seed is NULL)");
    dropout_map op = {dropout_mask_of(a), src, dst, acc};
    launch_map(a, op, n, vec);
}

static void dropout_forward(const unet_op_args *a) { dropout_pass(a, (const float *)a->in[0], (float *)a->out, 0); }

static void dropout_backward(const unet_op_args *a) {
    if (!a->din[0]) return;
    dropout_pass(a, (const float *)a->dout, (float *)a->din[0], a->din_accumulate[0]);
}

extern "C" const unet_op_impl unet_cuda_dropout = {dropout_forward, dropout_backward, NULL, NULL};
