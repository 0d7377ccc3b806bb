/* Element-wise ops on the GPU: ReLU (or ReLU6) and inverted dropout, twins
 * of src/kernels/cpu/elementwise.c. Memory-bound: one grid-stride pass, four
 * elements an access where every pointer is aligned to them (a float4, or 8
 * bytes of bf16), scalars for the tail.
 *
 * Every format of tensor_view.cuh, element by element over memory (padding
 * included) in each.
 *
 * Dropout draws the CPU's mask: element i (flat NCHW index) is kept iff
 * unet_uniform(key, i) >= p, the same integer hash on both sides
 * (include/unet/rng.h), and kept values are multiplied by the same float
 * 1/(1-p): the two backends agree bit for bit. */
#include <stdint.h>

#include "kernels/cuda/act.cuh"
#include "kernels/cuda/common.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/tensor_view.cuh"
#include "unet/rng.h"

/* Runs op.one(i) for every i < n, as op.quad(q) on indices 4q..4q+3 where vec. */
template <class Op> static __global__ void map_kernel(Op op, long long n, int vec) {
    long long n4 = vec ? n / 4 : 0;
    for (long long q = unet_global_thread(); q < n4; q += unet_grid_threads()) op.quad(q);
    for (long long i = n4 * 4 + unet_global_thread(); i < n; i += unet_grid_threads()) op.one(i);
}

template <class Op> static void launch_map(const unet_op_args *a, const Op &op, long long n, int vec) {
    if (n == 0) return;
    map_kernel<<<unet_blocks_for(vec ? n / 4 : n), UNET_THREADS, 0, unet_cuda_ctx_of(a)->stream>>>(op, n, vec);
    UNET_CUDA_LAUNCHED(a);
}

static __device__ __forceinline__ float relu_of(float v) { return v < 0.0f ? 0.0f : v; } /* NaN passes */

/* The relu node's activation: ReLU6 when asked, else ReLU (the CPU twin's rule). */
static int relu6_of(const unet_op_args *a) { return a->node->act == UNET_ACT_RELU6; }

/* A gradient store of four values at once (see unet_store_grad). */
template <class T> static __device__ __forceinline__ void store_grad4(T *d, long long q, float4 v, int accumulate) {
    if (accumulate) {
        float4 o = unet_ld4(d, q);
        v.x += o.x;
        v.y += o.y;
        v.z += o.z;
        v.w += o.w;
    }
    unet_st4(d, q, v);
}

/* ---- ReLU ----
 * Element by element over memory, padding included: bf16's zero padding
 * channels stay zero (relu(0) = 0, and their gradient is masked to 0). */

template <class T> struct relu_fwd {
    const T *x;
    T *y;
    int six;
    __device__ float f(float v) const { return six ? unet_relu6(v) : relu_of(v); }
    __device__ void one(long long i) const { unet_st(y, i, f(unet_ld(x, i))); }
    __device__ void quad(long long q) const {
        float4 v = unet_ld4(x, q);
        unet_st4(y, q, make_float4(f(v.x), f(v.y), f(v.z), f(v.w)));
    }
};

/* dx = dout where out > 0 (and, ReLU6, out < 6): the plan keeps out, not in,
 * for this backward. */
template <class T> struct relu_bwd {
    const T *y, *dy;
    T *dx;
    int acc, six;
    __device__ float pass(float y, float g) const { return y > 0.0f && (!six || y < 6.0f) ? g : 0.0f; }
    __device__ void one(long long i) const { unet_store_grad_t(dx, i, pass(unet_ld(y, i), unet_ld(dy, i)), acc); }
    __device__ void quad(long long q) const {
        float4 yv = unet_ld4(y, q), g = unet_ld4(dy, q);
        store_grad4(dx, q, make_float4(pass(yv.x, g.x), pass(yv.y, g.y), pass(yv.z, g.z), pass(yv.w, g.w)), acc);
    }
};

static void require_ptr(const unet_op_args *a, const void *p, const char *what) {
    if (!p) unet_cuda_fail(__FILE__, __LINE__, "argument check", what, a);
}

/* Four elements an access (unet_ld4) where every pointer is aligned to four elements. */
template <class T> static int vec_ok(const T *p, const T *q, const T *r = NULL) {
    return (((uintptr_t)p | (uintptr_t)q | (uintptr_t)r) & (4 * sizeof(T) - 1)) == 0;
}

template <class F> static void relu_forward_t(const unet_op_args *a) {
    typedef typename F::T T;
    relu_fwd<T> op = {(const T *)a->in[0], (T *)a->out, relu6_of(a)};
    launch_map(a, op, unet_cuda_act_elements(a, a->out_shape), vec_ok(op.x, op.y));
}

template <class F> static void relu_backward_t(const unet_op_args *a) {
    typedef typename F::T T;
    relu_bwd<T> op = {(const T *)a->out, (const T *)a->dout, (T *)a->din[0], a->din_accumulate[0], relu6_of(a)};
    launch_map(a, op, unet_cuda_act_elements(a, a->out_shape), vec_ok(op.y, op.dy, op.dx));
}

static void relu_forward(const unet_op_args *a) {
    unet_dispatch(a, [&](auto f) { relu_forward_t<decltype(f)>(a); });
}

static void relu_backward(const unet_op_args *a) {
    if (!a->din[0]) return;
    require_ptr(a, a->out, "relu backward needs the forward output (out is NULL)");
    unet_dispatch(a, [&](auto f) { relu_backward_t<decltype(f)>(a); });
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
    /* NHWC (padded): the shape that turns a memory index into the logical
     * NCHW index the mask is keyed by; c == 0 for NCHW */
    int c, cp, h, w;
} dropout_mask;

/* The CPU twin's dropout_mask_of, value for value. */
static dropout_mask dropout_mask_of(const unet_op_args *a) {
    dropout_mask m;
    m.seed = a->seed;
    m.node = (uint64_t)a->node_index;
    m.base = a->first_sample * (uint64_t)a->out_shape.c * (uint64_t)a->out_shape.h * (uint64_t)a->out_shape.w;
    m.p = a->node->p;
    m.scale = m.p < 1.0f ? 1.0f / (1.0f - m.p) : 0.0f;
    unet_cuda_layout l = unet_cuda_act_layout(a, a->out_shape);
    m.c = l.format != UNET_FMT_NCHW_F32 ? l.c : 0;
    m.cp = l.cp;
    m.h = l.h;
    m.w = l.w;
    return m;
}

static __device__ __forceinline__ uint64_t dropout_key(const dropout_mask &m) {
    return unet_rng_key(*m.seed, m.node, 0);
}

/* The NCHW index of memory element i: the CPU's mask index. A padding
 * channel maps to some other element's index; its value is 0 and stays 0. */
static __device__ __forceinline__ long long logical_index(const dropout_mask &m, long long i) {
    if (m.c == 0) return i;
    long long pixel = i / m.cp, hw = (long long)m.h * m.w;
    int ch = (int)(i - pixel * m.cp);
    long long n = pixel / hw, r = pixel - n * hw;
    return (n * m.c + ch) * hw + r;
}

static __device__ __forceinline__ float dropout_apply(const dropout_mask &m, uint64_t key, long long i, float v) {
    /* rounded on its own, as on the CPU, even where an accumulation follows */
    return unet_uniform(key, m.base + (uint64_t)logical_index(m, i)) >= m.p ? __fmul_rn(v, m.scale) : 0.0f;
}

/* Forward (acc = 0, dst = out) and backward (dst = din) are the same map. */
template <class T> struct dropout_map {
    dropout_mask m;
    const T *src;
    T *dst;
    int acc;
    __device__ void one(long long i) const {
        unet_store_grad_t(dst, i, dropout_apply(m, dropout_key(m), i, unet_ld(src, i)), acc);
    }
    __device__ void quad(long long q) const {
        float4 v = unet_ld4(src, q);
        long long i = 4 * q;
        uint64_t key = dropout_key(m);
        store_grad4(dst, q,
                    make_float4(dropout_apply(m, key, i, v.x), dropout_apply(m, key, i + 1, v.y),
                                dropout_apply(m, key, i + 2, v.z), dropout_apply(m, key, i + 3, v.w)),
                    acc);
    }
};

/* Evaluation: identity, and its gradient a plain (accumulated) copy. */
template <class T> struct copy_map {
    const T *src;
    T *dst;
    int acc;
    __device__ void one(long long i) const { unet_store_grad_t(dst, i, unet_ld(src, i), acc); }
    __device__ void quad(long long q) const { store_grad4(dst, q, unet_ld4(src, q), acc); }
};

template <class F> static void dropout_pass_t(const unet_op_args *a, const void *src_v, void *dst_v, int acc) {
    typedef typename F::T T;
    const T *src = (const T *)src_v;
    T *dst = (T *)dst_v;
    long long n = unet_cuda_act_elements(a, a->out_shape);
    int vec = vec_ok(src, (const T *)dst);
    if (!a->training) {
        copy_map<T> op = {src, dst, acc};
        launch_map(a, op, n, vec);
        return;
    }
    require_ptr(a, a->seed, "dropout needs the step seed (seed is NULL)");
    dropout_map<T> op = {dropout_mask_of(a), src, dst, acc};
    launch_map(a, op, n, vec);
}

static void dropout_pass(const unet_op_args *a, const void *src, void *dst, int acc) {
    unet_dispatch(a, [&](auto f) { dropout_pass_t<decltype(f)>(a, src, dst, acc); });
}

static void dropout_forward(const unet_op_args *a) { dropout_pass(a, a->in[0], a->out, 0); }

static void dropout_backward(const unet_op_args *a) {
    if (!a->din[0]) return;
    dropout_pass(a, a->dout, a->din[0], a->din_accumulate[0]);
}

extern "C" const unet_op_impl unet_cuda_dropout = {dropout_forward, dropout_backward, NULL, NULL};
