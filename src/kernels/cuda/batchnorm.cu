/* Batch normalisation on the GPU with an optional fused activation (ReLU,
 * ReLU6) and the frozen mode of --freeze-encoder-bn: twin of
 * src/kernels/cpu/batchnorm.c (same aux: the C means and C inverse standard
 * deviations the forward normalised with).
 *
 * Reductions, deterministic without atomics: a channel's N*H*W values are
 * cut into slices fixed by the shape alone; a block sums its slice in double
 * through a fixed tree and writes one partial per channel; a second kernel,
 * one block per channel, sums the partials through a fixed tree. The same
 * input gives the same bits on every run and every GPU.
 *
 * Forward (training): one read of x for the statistics (sums of x - K and
 * (x - K)^2 in double, K the channel's first value: a shift that keeps the
 * variance's digits when the mean is large), a per-channel finish (mean,
 * invstd, running statistics with the unbiased variance), then one read of x
 * and one write of y, normalising and applying the activation in the same
 * pass. Backward: one read of dout (masked in place by the fused activation)
 * and x for the two per-channel sums, a finish that writes dgamma and dbeta,
 * then one pass for dx.
 *
 * Two sets of passes, by layout (tensor_view.cuh):
 *   NCHW float32: a channel's plane is contiguous. A reduction block is
 *     (slice, channel), a slice up to BN_TILE values of one image plane,
 *     read as float4 where aligned; the maps walk planes (n, c).
 *   NHWC (bf16, float32 with --layout nhwc): channels innermost (nhwc.cuh).
 *     The reductions are unet_nhwc_sums (a block sums every channel of its
 *     vectors over a slice of pixels), the maps take one 16-byte vector of
 *     channels a thread, and write zeros into the padding channels.
 * Per value both do the same float and double operations; the reductions
 * add in other orders. */
#include <math.h>
#include <stdio.h>

#include "kernels/cuda/act.cuh"
#include "kernels/cuda/common.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/nhwc.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/tensor_view.cuh"

/* Values of one plane a reduction block covers (UNET_THREADS x 16). */
#define BN_TILE 4096

/* Statistics from the batch when training unless frozen, and when no running
 * statistics exist (the CPU twin's rule). */
static int uses_batch_stats(const unet_op_args *a) {
    return (a->training && !a->node->frozen) || !a->state[0] || !a->state[1];
}

static int is_nhwc(const unet_op_args *a) { return unet_cuda_ctx_of(a)->act_format != UNET_FMT_NCHW_F32; }

typedef struct {
    int n, c;
    long long hw, m;  /* plane size, values per channel */
    int tiles;        /* NCHW: slices per plane */
    long long slices; /* per channel: NCHW n * tiles; NHWC the pixel slices of unet_nhwc_sums */
} bn_split;

static bn_split split_of(const unet_op_args *a, unet_shape s) {
    bn_split sp;
    sp.n = s.n;
    sp.c = s.c;
    sp.hw = (long long)s.h * s.w;
    sp.m = (long long)s.n * sp.hw;
    sp.tiles = (int)((sp.hw + BN_TILE - 1) / BN_TILE); /* hw <= 2^30: checked by require_launchable */
    if (sp.tiles < 1) sp.tiles = 1;
    sp.slices = is_nhwc(a) ? unet_nhwc_slices(sp.m) : (long long)s.n * sp.tiles;
    return sp;
}

static size_t align256(size_t b) { return (b + 255) / 256 * 256; }

/* Partials: two doubles per (channel, slice); then two doubles per channel
 * (the backward's sums of dy and dy * xhat, read by its dx pass). */
static size_t partial_bytes(const bn_split &sp) {
    return align256((size_t)sp.c * (size_t)sp.slices * 2 * sizeof(double));
}

static size_t bn_workspace_bytes(const unet_op_args *a) {
    bn_split sp = split_of(a, a->in_shape[0]);
    return partial_bytes(sp) + align256(2 * (size_t)sp.c * sizeof(double));
}

static size_t bn_aux_bytes(const unet_op_args *a) { return 2 * (size_t)a->in_shape[0].c * sizeof(float); }

/* y = (x - mean) * (gamma * invstd) + beta, then the activation: each
 * operation rounded on its own, as the CPU twin computes it. */
static __device__ __forceinline__ float bn_apply(float x, float mu, float scale, float shift, int act) {
    float v = __fadd_rn(__fmul_rn(__fsub_rn(x, mu), scale), shift);
    return act == UNET_ACT_RELU6 ? unet_relu6(v) : act == UNET_ACT_RELU && v < 0.0f ? 0.0f : v;
}

/* dx of one value, in double as on the CPU: gamma * invstd * (dy - mean(dy)
 * - xhat * mean(dy * xhat)) with batch statistics (the means in sums),
 * gamma * invstd * dy with running ones (both means 0). */
typedef struct {
    double mu, invstd, k, mean_dy, mean_dy_xhat;
} bn_dx_coef;

static __device__ __forceinline__ bn_dx_coef bn_dx_coef_of(int c, int channels, long long m, const float *mean,
                                                           const float *invstd, const float *gamma, const double *sums,
                                                           int batch_stats) {
    bn_dx_coef k;
    k.mu = mean[c];
    k.invstd = invstd[c];
    k.k = (double)gamma[c] * k.invstd;
    k.mean_dy = batch_stats ? sums[c] / (double)m : 0.0;
    k.mean_dy_xhat = batch_stats ? sums[channels + c] / (double)m : 0.0;
    return k;
}

static __device__ __forceinline__ float bn_dx(const bn_dx_coef &k, float x, float dy) {
    double xhat = ((double)x - k.mu) * k.invstd;
    return (float)(k.k * ((double)dy - k.mean_dy - xhat * k.mean_dy_xhat));
}

/* ---- NCHW float32: planes ---- */

/* The range of plane values a reduction block (blockIdx.x = slice, blockIdx.y = channel) covers. */
typedef struct {
    long long base; /* index of the plane's first value */
    int begin, end; /* within the plane */
} bn_slice;

static __device__ __forceinline__ bn_slice slice_of(int c, int channels, long long hw, int tiles) {
    int n = (int)(blockIdx.x / (unsigned)tiles), t = (int)(blockIdx.x % (unsigned)tiles);
    bn_slice s;
    s.base = ((long long)n * channels + c) * hw;
    long long b = (long long)t * BN_TILE, e = b + BN_TILE < hw ? b + BN_TILE : hw;
    s.begin = (int)b;
    s.end = (int)e;
    return s;
}

/* Writes a reduction block's two sums (valid in thread 0) as its partial. */
static __device__ __forceinline__ void bn_write_partial(double *partial, int c, const double (&v)[2]) {
    if (threadIdx.x != 0) return;
    double *out = partial + 2 * ((long long)c * gridDim.x + blockIdx.x);
    out[0] = v[0];
    out[1] = v[1];
}

static __global__ void bn_stats_kernel(const float *x, int channels, long long hw, int tiles, int vec,
                                       double *partial) {
    int c = blockIdx.y;
    bn_slice sl = slice_of(c, channels, hw, tiles);
    const float *p = x + sl.base;
    double k = x[(long long)c * hw]; /* the shift: image 0's first value of this channel */
    double v[2] = {0.0, 0.0};
    if (vec) {
        for (int i = sl.begin + 4 * (int)threadIdx.x; i < sl.end; i += 4 * UNET_THREADS) {
            float4 q = *reinterpret_cast<const float4 *>(p + i);
            double d0 = q.x - k, d1 = q.y - k, d2 = q.z - k, d3 = q.w - k;
            v[0] += (d0 + d1) + (d2 + d3);
            v[1] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
        }
    } else {
        for (int i = sl.begin + (int)threadIdx.x; i < sl.end; i += UNET_THREADS) {
            double d = p[i] - k;
            v[0] += d;
            v[1] += d * d;
        }
    }
    unet_block_sum<2>(v);
    bn_write_partial(partial, c, v);
}

/* grid.x: planes (n, c), grid.y along the plane. vec: float4. */
static __global__ void bn_normalize_kernel(const float *x, float *y, int channels, int hw, const float *mean,
                                           const float *invstd, const float *gamma, const float *beta, int act,
                                           int vec) {
    int c = (int)(blockIdx.x % (unsigned)channels);
    int stride = gridDim.y * blockDim.x, first = blockIdx.y * blockDim.x + threadIdx.x;
    float mu = mean[c], scale = __fmul_rn(gamma[c], invstd[c]), shift = beta[c];
    long long base = (long long)blockIdx.x * hw;
    if (vec) {
        const float4 *xs = reinterpret_cast<const float4 *>(x + base);
        float4 *ys = reinterpret_cast<float4 *>(y + base);
        for (int q = first; q < hw / 4; q += stride) {
            float4 v = xs[q];
            ys[q] = make_float4(bn_apply(v.x, mu, scale, shift, act), bn_apply(v.y, mu, scale, shift, act),
                                bn_apply(v.z, mu, scale, shift, act), bn_apply(v.w, mu, scale, shift, act));
        }
        return;
    }
    for (int i = first; i < hw; i += stride) y[base + i] = bn_apply(x[base + i], mu, scale, shift, act);
}

/* Block (slice, channel): sums of dy and dy * (x - mean); with a fused
 * activation, dy = dout where it passes the gradient of out, else 0,
 * written back for the dx pass. */
static __global__ void bn_grad_sums_kernel(float *dy, const float *x, const float *y, const float *mean, int channels,
                                           long long hw, int tiles, int act, double *partial) {
    int c = blockIdx.y;
    bn_slice sl = slice_of(c, channels, hw, tiles);
    double mu = mean[c];
    double v[2] = {0.0, 0.0};
    for (int i = sl.begin + (int)threadIdx.x; i < sl.end; i += UNET_THREADS) {
        long long idx = sl.base + i;
        float g = dy[idx];
        if (act != UNET_ACT_NONE) {
            g = unet_act_passes(act, y[idx]) ? g : 0.0f;
            dy[idx] = g;
        }
        v[0] += g;
        v[1] += (double)g * ((double)x[idx] - mu);
    }
    unet_block_sum<2>(v);
    bn_write_partial(partial, c, v);
}

/* grid.x: planes (n, c), grid.y along the plane. */
static __global__ void bn_dx_kernel(const float *dy, const float *x, float *dx, int channels, int hw, long long m,
                                    const float *mean, const float *invstd, const float *gamma, const double *sums,
                                    int batch_stats, int accumulate) {
    int c = (int)(blockIdx.x % (unsigned)channels);
    bn_dx_coef k = bn_dx_coef_of(c, channels, m, mean, invstd, gamma, sums, batch_stats);
    long long base = (long long)blockIdx.x * hw;
    for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < hw; i += gridDim.y * blockDim.x)
        unet_store_grad(dx, base + i, bn_dx(k, x[base + i], dy[base + i]), accumulate);
}

/* ---- NHWC: channel vectors (nhwc.cuh) ---- */

/* Statistics: sums of x - K and (x - K)^2, K the channel's value at pixel 0. */
template <class F> struct bn_stats_op {
    const typename F::T *x;
    int cp;
    typedef unet_vec<F> state;
    __device__ state begin(int vec) const { return unet_ldv<F>(x, (long long)vec * F::V); }
    __device__ void add(const state &k, long long p, int vec, double (&acc)[2 * F::V]) const {
        unet_vec<F> v = unet_ldv<F>(x, p * cp + (long long)vec * F::V);
#pragma unroll
        for (int j = 0; j < F::V; j++) {
            double d = (double)v.v[j] - (double)k.v[j];
            acc[j] += d;
            acc[F::V + j] += d * d;
        }
    }
};

/* Gradient sums: of dy and dy * (x - mean), dy masked (and written back) where a fused activation stops the
 * gradient of out. */
template <class F> struct bn_grad_sums_op {
    typename F::T *dy;
    const typename F::T *x, *y;
    const float *mean;
    int channels, cp, act;
    struct state {
        double mu[F::V];
    };
    __device__ state begin(int vec) const {
        state st;
        for (int j = 0; j < F::V; j++) st.mu[j] = vec * F::V + j < channels ? mean[vec * F::V + j] : 0.0;
        return st;
    }
    __device__ void add(const state &st, long long p, int vec, double (&acc)[2 * F::V]) const {
        long long i = p * cp + (long long)vec * F::V;
        unet_vec<F> g = unet_ldv<F>(dy, i), xv = unet_ldv<F>(x, i);
        if (act != UNET_ACT_NONE) {
            unet_vec<F> yv = unet_ldv<F>(y, i);
            for (int j = 0; j < F::V; j++) g.v[j] = unet_act_passes(act, yv.v[j]) ? g.v[j] : 0.0f;
            unet_stv<F>(dy, i, g); /* g or 0: exact in bf16 too */
        }
#pragma unroll
        for (int j = 0; j < F::V; j++) {
            acc[j] += g.v[j];
            acc[F::V + j] += (double)g.v[j] * ((double)xv.v[j] - st.mu[j]);
        }
    }
};

/* One thread per (pixel, channel vector); item i is memory index i * V. */
template <class F>
static __global__ void bn_normalize_nhwc_kernel(const typename F::T *x, typename F::T *y, int channels, int vectors,
                                                unsigned items, const float *mean, const float *invstd,
                                                const float *gamma, const float *beta, int act) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < items; i += gridDim.x * blockDim.x) {
        int c0 = (int)(i % (unsigned)vectors) * F::V;
        unet_vec<F> v = unet_ldv<F>(x, (long long)i * F::V);
#pragma unroll
        for (int j = 0; j < F::V; j++) {
            int c = c0 + j;
            v.v[j] = c < channels ? bn_apply(v.v[j], mean[c], __fmul_rn(gamma[c], invstd[c]), beta[c], act) : 0.0f;
        }
        unet_stv<F>(y, (long long)i * F::V, v);
    }
}

template <class F>
static __global__ void bn_dx_nhwc_kernel(const typename F::T *dy, const typename F::T *x, typename F::T *dx,
                                         int channels, int vectors, unsigned items, long long m, const float *mean,
                                         const float *invstd, const float *gamma, const double *sums, int batch_stats,
                                         int accumulate) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < items; i += gridDim.x * blockDim.x) {
        int c0 = (int)(i % (unsigned)vectors) * F::V;
        long long at = (long long)i * F::V;
        unet_vec<F> g = unet_ldv<F>(dy, at), xv = unet_ldv<F>(x, at), out;
        if (accumulate) out = unet_ldv<F>(dx, at);
#pragma unroll
        for (int j = 0; j < F::V; j++) {
            int c = c0 + j;
            float d = 0.0f;
            if (c < channels) {
                d = bn_dx(bn_dx_coef_of(c, channels, m, mean, invstd, gamma, sums, batch_stats), xv.v[j], g.v[j]);
                if (accumulate) d = out.v[j] + d;
            }
            out.v[j] = d;
        }
        unet_stv<F>(dx, at, out);
    }
}

/* ---- both: the finishing kernels, one block per channel ---- */

/* Sums a channel's partials (pairs of doubles) in a fixed order; valid in thread 0. */
static __device__ void sum_partials(const double *partial, long long slices, double (&v)[2]) {
    const double *p = partial + 2 * (long long)blockIdx.x * slices;
    v[0] = v[1] = 0.0;
    for (long long s = threadIdx.x; s < slices; s += UNET_THREADS) {
        v[0] += p[2 * s];
        v[1] += p[2 * s + 1];
    }
    unet_block_sum<2>(v);
}

/* Mean, invstd into aux, and the running statistics. k: the statistics'
 * shift, channel c's value at pixel 0 (read through F's layout). */
template <class F>
static __global__ void bn_finish_stats_kernel(const typename F::T *x, int cp, long long hw, const double *partial,
                                              long long slices, long long m, double eps, double momentum, float *mean,
                                              float *invstd, float *running_mean, float *running_var) {
    double v[2];
    sum_partials(partial, slices, v);
    if (threadIdx.x != 0) return;
    int c = blockIdx.x;
    double k = unet_ld(x, F::plane_at(0, c, cp, hw, 0));
    double mean_d = v[0] / (double)m;
    double ss = v[1] - v[0] * mean_d; /* sum of squared deviations from the mean */
    if (ss < 0.0) ss = 0.0;
    double mu = k + mean_d, var = ss / (double)m;
    mean[c] = (float)mu;
    invstd[c] = (float)(1.0 / sqrt(var + eps));
    if (running_mean && running_var) {
        /* one value per channel has no unbiased variance: the biased one, 0 (the CPU twin's choice) */
        double unbiased = m > 1 ? ss / (double)(m - 1) : var;
        running_mean[c] = (float)((1.0 - momentum) * running_mean[c] + momentum * mu);
        running_var[c] = (float)((1.0 - momentum) * running_var[c] + momentum * unbiased);
    }
}

/* Evaluation: aux from the running statistics. */
static __global__ void bn_running_aux_kernel(const float *running_mean, const float *running_var, int channels,
                                             double eps, float *mean, float *invstd) {
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < channels; c += gridDim.x * blockDim.x) {
        mean[c] = running_mean[c];
        invstd[c] = (float)(1.0 / sqrt((double)running_var[c] + eps));
    }
}

/* sums[c] = sum dy, sums[C + c] = sum dy * xhat; dgamma, dbeta. */
static __global__ void bn_finish_grads_kernel(const double *partial, long long slices, const float *invstd,
                                              double *sums, float *dgamma, float *dbeta) {
    double v[2];
    sum_partials(partial, slices, v);
    if (threadIdx.x != 0) return;
    int c = blockIdx.x;
    double sd = v[0], sdx = v[1] * (double)invstd[c];
    sums[c] = sd;
    sums[gridDim.x + c] = sdx;
    if (dgamma) dgamma[c] = (float)sdx;
    if (dbeta) dbeta[c] = (float)sd;
}

/* ---- host side ---- */

static void require(const unet_op_args *a, int ok, const char *what) {
    if (!ok) unet_cuda_fail(__FILE__, __LINE__, "argument check", what, a);
}

/* NCHW reductions put channels on grid.y (at most 65535); a plane's indices are int. NHWC
 * launches over channel vectors (nhwc.cuh) have neither limit. */
static void require_launchable(const unet_op_args *a, const bn_split &sp) {
    if (is_nhwc(a)) return;
    if (sp.c > 65535 || sp.hw > (1LL << 30))
        unet_cuda_fail(__FILE__, __LINE__, "launch shape",
                       "batchnorm supports at most 65535 channels and 2^30 values per plane", a);
}

/* NHWC: the partials of op's two per-channel sums into the workspace (nhwc.cuh). */
template <class F, class Op> static void bn_nhwc_sums(const unet_op_args *a, const Op &op, double *partial) {
    unet_shape s = a->in_shape[0];
    unet_nhwc_split ns = unet_nhwc_split_of<F>(s);
    unet_nhwc_sums_kernel<F, 2>
        <<<ns.grid, ns.block, 0, unet_cuda_ctx_of(a)->stream>>>(op, s.c, ns.vectors, ns.pixels, ns.per_slice, partial);
    UNET_CUDA_LAUNCHED(a);
}

/* The statistics' partials of x into the workspace. */
template <class F> static void bn_stats_t(const unet_op_args *a, const bn_split &sp, double *partial) {
    unet_shape s = a->in_shape[0];
    if constexpr (F::nhwc) {
        bn_stats_op<F> op = {(const typename F::T *)a->in[0], F::channels(s.c)};
        bn_nhwc_sums<F>(a, op, partial);
    } else {
        const float *x = (const float *)a->in[0];
        int vec = sp.hw % 4 == 0 && unet_aligned16(x);
        bn_stats_kernel<<<dim3((unsigned)sp.slices, (unsigned)s.c), UNET_THREADS, 0, unet_cuda_ctx_of(a)->stream>>>(
            x, s.c, sp.hw, sp.tiles, vec, partial);
        UNET_CUDA_LAUNCHED(a);
    }
}

/* y from x with the statistics in aux. */
template <class F>
static void bn_normalize_t(const unet_op_args *a, const bn_split &sp, const float *mean, const float *invstd) {
    unet_shape s = a->in_shape[0];
    cudaStream_t stream = unet_cuda_ctx_of(a)->stream;
    int act = a->node->act;
    if constexpr (F::nhwc) {
        unsigned items = unet_vec_items<F>(a, s);
        bn_normalize_nhwc_kernel<F><<<unet_blocks_for(items), UNET_THREADS, 0, stream>>>(
            (const typename F::T *)a->in[0], (typename F::T *)a->out, s.c, F::channels(s.c) / F::V, items, mean, invstd,
            a->param[0], a->param[1], act);
    } else {
        int vec = sp.hw % 4 == 0 && unet_aligned16(a->in[0]) && unet_aligned16(a->out);
        unet_plane_launch l = unet_plane_launch_for(a, (long long)s.n * s.c, vec ? sp.hw / 4 : sp.hw);
        bn_normalize_kernel<<<l.grid, l.block, 0, stream>>>((const float *)a->in[0], (float *)a->out, s.c, (int)sp.hw,
                                                            mean, invstd, a->param[0], a->param[1], act, vec);
    }
    UNET_CUDA_LAUNCHED(a);
}

template <class F> static void bn_forward_t(const unet_op_args *a) {
    unet_shape s = a->in_shape[0];
    bn_split sp = split_of(a, s);
    cudaStream_t stream = unet_cuda_ctx_of(a)->stream;
    float *mean = (float *)a->aux, *invstd = mean + s.c;
    double eps = a->node->eps, momentum = a->node->momentum;
    if (uses_batch_stats(a)) {
        require(a, a->workspace != NULL, "batchnorm needs its workspace");
        double *partial = (double *)a->workspace;
        bn_stats_t<F>(a, sp, partial);
        int update = a->training && !a->node->frozen && a->state[0] && a->state[1];
        bn_finish_stats_kernel<F><<<(unsigned)s.c, UNET_THREADS, 0, stream>>>(
            (const typename F::T *)a->in[0], F::channels(s.c), sp.hw, partial, sp.slices, sp.m, eps, momentum, mean,
            invstd, update ? a->state[0] : NULL, update ? a->state[1] : NULL);
        UNET_CUDA_LAUNCHED(a);
    } else {
        bn_running_aux_kernel<<<unet_blocks_for(s.c), UNET_THREADS, 0, stream>>>(a->state[0], a->state[1], s.c, eps,
                                                                                 mean, invstd);
        UNET_CUDA_LAUNCHED(a);
    }
    bn_normalize_t<F>(a, sp, mean, invstd);
}

static void bn_forward(const unet_op_args *a) {
    unet_shape s = a->in_shape[0];
    bn_split sp = split_of(a, s);
    require_launchable(a, sp);
    require(a, a->param[0] && a->param[1] && a->aux, "batchnorm needs gamma, beta and aux");
    require(a, s.n == a->out_shape.n && s.c == a->out_shape.c && s.h == a->out_shape.h && s.w == a->out_shape.w,
            "batchnorm output must have the input's shape");
    if (sp.m == 0 || s.c == 0) return;
    unet_dispatch(a, [&](auto f) { bn_forward_t<decltype(f)>(a); });
}

/* The gradient sums' partials into the workspace (dout masked in place by the fused activation). */
template <class F>
static void bn_grad_sums_t(const unet_op_args *a, const bn_split &sp, const float *mean, double *partial) {
    unet_shape s = a->in_shape[0];
    typedef typename F::T T;
    if constexpr (F::nhwc) {
        bn_grad_sums_op<F> op = {(T *)a->dout, (const T *)a->in[0], (const T *)a->out, mean,
                                 s.c,          F::channels(s.c),    a->node->act};
        bn_nhwc_sums<F>(a, op, partial);
    } else {
        bn_grad_sums_kernel<<<dim3((unsigned)sp.slices, (unsigned)s.c), UNET_THREADS, 0, unet_cuda_ctx_of(a)->stream>>>(
            (float *)a->dout, (const float *)a->in[0], (const float *)a->out, mean, s.c, sp.hw, sp.tiles, a->node->act,
            partial);
        UNET_CUDA_LAUNCHED(a);
    }
}

template <class F>
static void bn_dx_t(const unet_op_args *a, const bn_split &sp, const float *mean, const float *invstd,
                    const double *sums) {
    unet_shape s = a->in_shape[0];
    typedef typename F::T T;
    cudaStream_t stream = unet_cuda_ctx_of(a)->stream;
    int batch_stats = uses_batch_stats(a), acc = a->din_accumulate[0];
    if constexpr (F::nhwc) {
        unsigned items = unet_vec_items<F>(a, s);
        bn_dx_nhwc_kernel<F><<<unet_blocks_for(items), UNET_THREADS, 0, stream>>>(
            (const T *)a->dout, (const T *)a->in[0], (T *)a->din[0], s.c, F::channels(s.c) / F::V, items, sp.m, mean,
            invstd, a->param[0], sums, batch_stats, acc);
    } else {
        unet_plane_launch l = unet_plane_launch_for(a, (long long)s.n * s.c, sp.hw);
        bn_dx_kernel<<<l.grid, l.block, 0, stream>>>((const float *)a->dout, (const float *)a->in[0],
                                                     (float *)a->din[0], s.c, (int)sp.hw, sp.m, mean, invstd,
                                                     a->param[0], sums, batch_stats, acc);
    }
    UNET_CUDA_LAUNCHED(a);
}

template <class F> static void bn_backward_t(const unet_op_args *a) {
    unet_shape s = a->in_shape[0];
    bn_split sp = split_of(a, s);
    const float *mean = (const float *)a->aux, *invstd = mean + s.c;
    double *partial = (double *)a->workspace;
    double *sums = (double *)((char *)a->workspace + partial_bytes(sp));
    bn_grad_sums_t<F>(a, sp, mean, partial);
    bn_finish_grads_kernel<<<(unsigned)s.c, UNET_THREADS, 0, unet_cuda_ctx_of(a)->stream>>>(
        partial, sp.slices, invstd, sums, a->dparam[0], a->dparam[1]);
    UNET_CUDA_LAUNCHED(a);
    if (a->din[0]) bn_dx_t<F>(a, sp, mean, invstd, sums);
}

static void bn_backward(const unet_op_args *a) {
    unet_shape s = a->in_shape[0];
    bn_split sp = split_of(a, s);
    require_launchable(a, sp);
    if (sp.m == 0 || s.c == 0) return;
    require(a, a->in[0] && a->dout && a->aux && a->param[0] && a->workspace,
            "batchnorm backward needs x, dout, aux, gamma and its workspace");
    require(a, a->node->act == UNET_ACT_NONE || a->out,
            "batchnorm backward with a fused activation needs the forward output (out is NULL)");
    unet_dispatch(a, [&](auto f) { bn_backward_t<decltype(f)>(a); });
}

extern "C" const unet_op_impl unet_cuda_batchnorm = {bn_forward, bn_backward, bn_workspace_bytes, bn_aux_bytes};
