/* Batch normalisation on the GPU with an optional fused activation (ReLU,
 * ReLU6) and the frozen mode of --freeze-encoder-bn: twin of
 * src/kernels/cpu/batchnorm.c (same aux: the C means and C inverse standard
 * deviations the forward normalised with).
 *
 * Reductions, deterministic without atomics: a channel's N*H*W values are
 * cut into slices fixed by the shape alone (one slice = up to BN_TILE values
 * of one image plane); block (slice, channel) sums its slice in double
 * through a fixed tree and writes one partial; a second kernel, one block per
 * channel, sums the partials through a fixed tree. The same input gives the
 * same bits on every run and every GPU.
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
 * Both layouts of tensor_view.cuh: float32 NCHW, and bf16 NHWC padded
 * (a channel's values cp apart; the passes that write a tensor plane by
 * plane cover the padding planes with zeros). */
#include <math.h>
#include <stdio.h>

#include "kernels/cuda/act.cuh"
#include "kernels/cuda/common.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/tensor_view.cuh"

/* Values of one plane a reduction block covers (UNET_THREADS x 16). */
#define BN_TILE 4096

/* Statistics from the batch when training unless frozen, and when no running
 * statistics exist (the CPU twin's rule). */
static int uses_batch_stats(const unet_op_args *a) {
    return (a->training && !a->node->frozen) || !a->state[0] || !a->state[1];
}

typedef struct {
    int n, c;
    long long hw, m;    /* plane size, values per channel */
    int tiles;          /* slices per plane */
    long long slices;   /* per channel: n * tiles */
} bn_split;

static bn_split split_of(unet_shape s) {
    bn_split sp;
    sp.n = s.n;
    sp.c = s.c;
    sp.hw = (long long)s.h * s.w;
    sp.m = (long long)s.n * sp.hw;
    sp.tiles = (int)((sp.hw + BN_TILE - 1) / BN_TILE); /* hw <= 2^30: checked by require_launchable */
    if (sp.tiles < 1) sp.tiles = 1;
    sp.slices = (long long)s.n * sp.tiles;
    return sp;
}

static size_t align256(size_t b) { return (b + 255) / 256 * 256; }

/* Partials: two doubles per (channel, slice); then two doubles per channel
 * (the backward's sums of dy and dy * xhat, read by its dx pass). */
static size_t partial_bytes(const bn_split &sp) { return align256((size_t)sp.c * (size_t)sp.slices * 2 * sizeof(double)); }

static size_t bn_workspace_bytes(const unet_op_args *a) {
    bn_split sp = split_of(a->in_shape[0]);
    return partial_bytes(sp) + align256(2 * (size_t)sp.c * sizeof(double));
}

static size_t bn_aux_bytes(const unet_op_args *a) { return 2 * (size_t)a->in_shape[0].c * sizeof(float); }

/* The range of plane values a reduction block (blockIdx.x = slice, blockIdx.y = channel) covers. */
typedef struct {
    int n;          /* the image */
    long long base; /* NCHW: index of the plane's first value */
    int begin, end; /* within the plane */
} bn_slice;

static __device__ __forceinline__ bn_slice slice_of(int c, int channels, long long hw, int tiles) {
    int n = (int)(blockIdx.x / (unsigned)tiles), t = (int)(blockIdx.x % (unsigned)tiles);
    bn_slice s;
    s.n = n;
    s.base = ((long long)n * channels + c) * hw;
    long long b = (long long)t * BN_TILE, e = b + BN_TILE < hw ? b + BN_TILE : hw;
    s.begin = (int)b;
    s.end = (int)e;
    return s;
}

/* ---- forward ----
 * Both layouts of tensor_view.cuh: a channel's plane is contiguous in
 * float32 NCHW (read as float4 where aligned), strided by cp in bf16 NHWC.
 * cp: channels in memory (= channels in NCHW). */

template <class T>
static __global__ void bn_stats_kernel(const T *x, int channels, int cp, long long hw, int tiles, int vec,
                                       double *partial) {
    int c = blockIdx.y;
    bn_slice sl = slice_of(c, cp, hw, tiles);
    double k = unet_ld(x, unet_plane_at(x, 0, c, cp, hw, 0)); /* the shift: image 0's first value of this channel */
    double v[2] = {0.0, 0.0};
    if (vec) {
        const float *p = (const float *)x + sl.base; /* vec: float32 only */
        for (int i = sl.begin + 4 * (int)threadIdx.x; i < sl.end; i += 4 * UNET_THREADS) {
            float4 q = *reinterpret_cast<const float4 *>(p + i);
            double d0 = q.x - k, d1 = q.y - k, d2 = q.z - k, d3 = q.w - k;
            v[0] += (d0 + d1) + (d2 + d3);
            v[1] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
        }
    } else {
        for (int i = sl.begin + (int)threadIdx.x; i < sl.end; i += UNET_THREADS) {
            double d = unet_ld(x, unet_plane_at(x, sl.n, c, cp, hw, i)) - k;
            v[0] += d;
            v[1] += d * d;
        }
    }
    unet_block_sum<2>(v);
    if (threadIdx.x == 0) {
        double *out = partial + 2 * ((long long)c * gridDim.x + blockIdx.x);
        out[0] = v[0];
        out[1] = v[1];
    }
}

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

/* One block per channel: mean, invstd into aux, and the running statistics. */
template <class T>
static __global__ void bn_finish_stats_kernel(const T *x, int cp, long long hw, const double *partial,
                                              long long slices, long long m, double eps, double momentum, float *mean,
                                              float *invstd, float *running_mean, float *running_var) {
    double v[2];
    sum_partials(partial, slices, v);
    if (threadIdx.x != 0) return;
    int c = blockIdx.x;
    double k = unet_ld(x, unet_plane_at(x, 0, c, cp, hw, 0));
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

/* y = (x - mean) * (gamma * invstd) + beta, then the activation: each
 * operation rounded on its own, as the CPU twin computes it. */
static __device__ __forceinline__ float bn_apply(float x, float mu, float scale, float shift, int act) {
    float v = __fadd_rn(__fmul_rn(__fsub_rn(x, mu), scale), shift);
    return act == UNET_ACT_RELU6 ? unet_relu6(v) : act == UNET_ACT_RELU && v < 0.0f ? 0.0f : v;
}

/* grid.x: planes (n, c), padding planes included (zeros), grid.y along the plane. */
template <class T>
static __global__ void bn_normalize_kernel(const T *x, T *y, int channels, int cp, int hw, const float *mean,
                                           const float *invstd, const float *gamma, const float *beta, int act,
                                           int vec) {
    int n = (int)(blockIdx.x / (unsigned)cp), c = (int)(blockIdx.x % (unsigned)cp);
    int stride = gridDim.y * blockDim.x, first = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= channels) {
        for (int i = first; i < hw; i += stride) unet_st(y, unet_plane_at(y, n, c, cp, hw, i), 0.0f);
        return;
    }
    float mu = mean[c], scale = __fmul_rn(gamma[c], invstd[c]), shift = beta[c];
    if (vec) { /* float32 only */
        long long base = (long long)blockIdx.x * hw;
        const float4 *xs = reinterpret_cast<const float4 *>((const float *)x + base);
        float4 *ys = reinterpret_cast<float4 *>((float *)y + base);
        for (int q = first; q < hw / 4; q += stride) {
            float4 v = xs[q];
            ys[q] = make_float4(bn_apply(v.x, mu, scale, shift, act), bn_apply(v.y, mu, scale, shift, act),
                                bn_apply(v.z, mu, scale, shift, act), bn_apply(v.w, mu, scale, shift, act));
        }
        return;
    }
    for (int i = first; i < hw; i += stride) {
        long long idx = unet_plane_at(x, n, c, cp, hw, i);
        unet_st(y, idx, bn_apply(unet_ld(x, idx), mu, scale, shift, act));
    }
}

/* ---- backward ---- */

/* Block (slice, channel): sums of dy and dy * (x - mean); with a fused
 * activation, dy = dout where it passes the gradient of out, else 0,
 * written back for the dx pass. */
template <class T>
static __global__ void bn_grad_sums_kernel(T *dy, const T *x, const T *y, const float *mean, int cp, long long hw,
                                           int tiles, int act, double *partial) {
    int c = blockIdx.y;
    bn_slice sl = slice_of(c, cp, hw, tiles);
    double mu = mean[c];
    double v[2] = {0.0, 0.0};
    for (int i = sl.begin + (int)threadIdx.x; i < sl.end; i += UNET_THREADS) {
        long long idx = unet_plane_at(x, sl.n, c, cp, hw, i);
        float g = unet_ld(dy, idx);
        if (act != UNET_ACT_NONE) {
            g = unet_act_passes(act, unet_ld(y, idx)) ? g : 0.0f;
            unet_st(dy, idx, g); /* g or 0: exact in bf16 too */
        }
        v[0] += g;
        v[1] += (double)g * ((double)unet_ld(x, idx) - mu);
    }
    unet_block_sum<2>(v);
    if (threadIdx.x == 0) {
        double *out = partial + 2 * ((long long)c * gridDim.x + blockIdx.x);
        out[0] = v[0];
        out[1] = v[1];
    }
}

/* One block per channel: sums[c] = sum dy, sums[C + c] = sum dy * xhat; dgamma, dbeta. */
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

/* dx = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat)) with batch
 * statistics, gamma * invstd * dy with running ones; in double as on the CPU.
 * grid.x: planes (n, c), padding planes included (zeros). */
template <class T>
static __global__ void bn_dx_kernel(const T *dy, const T *x, T *dx, int channels, int cp, int hw, long long m,
                                    const float *mean, const float *invstd, const float *gamma, const double *sums,
                                    int batch_stats, int accumulate) {
    int n = (int)(blockIdx.x / (unsigned)cp), c = (int)(blockIdx.x % (unsigned)cp);
    if (c >= channels) {
        for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < hw; i += gridDim.y * blockDim.x)
            unet_st(dx, unet_plane_at(dx, n, c, cp, hw, i), 0.0f);
        return;
    }
    double mu = mean[c], is = invstd[c], k = (double)gamma[c] * is;
    double mean_dy = batch_stats ? sums[c] / (double)m : 0.0;
    double mean_dy_xhat = batch_stats ? sums[channels + c] / (double)m : 0.0;
    for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < hw; i += gridDim.y * blockDim.x) {
        long long idx = unet_plane_at(x, n, c, cp, hw, i);
        double xhat = ((double)unet_ld(x, idx) - mu) * is;
        unet_store_grad_t(dx, idx, (float)(k * ((double)unet_ld(dy, idx) - mean_dy - xhat * mean_dy_xhat)),
                          accumulate);
    }
}

/* ---- host side ---- */

static void require(const unet_op_args *a, int ok, const char *what) {
    if (!ok) unet_cuda_fail(__FILE__, __LINE__, "argument check", what, a);
}

/* Channels index grid.y (at most 65535); a plane's indices are int. */
static void require_launchable(const unet_op_args *a, const bn_split &sp) {
    if (sp.c > 65535 || sp.hw > (1LL << 30))
        unet_cuda_fail(__FILE__, __LINE__, "launch shape",
                       "batchnorm supports at most 65535 channels and 2^30 values per plane", a);
}

template <class T>
static void bn_forward_t(const unet_op_args *a) {
    unet_shape s = a->in_shape[0];
    bn_split sp = split_of(s);
    int cp = unet_cuda_planes_c(a, s);
    cudaStream_t stream = unet_cuda_ctx_of(a)->stream;
    const T *x = (const T *)a->in[0];
    float *mean = (float *)a->aux, *invstd = mean + s.c;
    double eps = a->node->eps, momentum = a->node->momentum;
    if (uses_batch_stats(a)) {
        require(a, a->workspace != NULL, "batchnorm needs its workspace");
        double *partial = (double *)a->workspace;
        int vec = sizeof(T) == 4 && sp.hw % 4 == 0 && unet_aligned16(x);
        bn_stats_kernel<<<dim3((unsigned)sp.slices, (unsigned)s.c), UNET_THREADS, 0, stream>>>(x, s.c, cp, sp.hw,
                                                                                              sp.tiles, vec, partial);
        UNET_CUDA_LAUNCHED(a);
        int update = a->training && !a->node->frozen && a->state[0] && a->state[1];
        bn_finish_stats_kernel<<<(unsigned)s.c, UNET_THREADS, 0, stream>>>(
            x, cp, sp.hw, partial, sp.slices, sp.m, eps, momentum, mean, invstd, update ? a->state[0] : NULL,
            update ? a->state[1] : NULL);
        UNET_CUDA_LAUNCHED(a);
    } else {
        bn_running_aux_kernel<<<unet_blocks_for(s.c), UNET_THREADS, 0, stream>>>(a->state[0], a->state[1], s.c, eps,
                                                                                 mean, invstd);
        UNET_CUDA_LAUNCHED(a);
    }
    int vec = sizeof(T) == 4 && sp.hw % 4 == 0 && unet_aligned16(x) && unet_aligned16(a->out);
    unet_plane_launch l = unet_plane_launch_for(a, (long long)s.n * cp, vec ? sp.hw / 4 : sp.hw);
    bn_normalize_kernel<<<l.grid, l.block, 0, stream>>>(x, (T *)a->out, s.c, cp, (int)sp.hw, mean, invstd,
                                                        a->param[0], a->param[1], a->node->act, vec);
    UNET_CUDA_LAUNCHED(a);
}

static void bn_forward(const unet_op_args *a) {
    unet_shape s = a->in_shape[0];
    bn_split sp = split_of(s);
    require_launchable(a, sp);
    require(a, a->param[0] && a->param[1] && a->aux, "batchnorm needs gamma, beta and aux");
    require(a, s.n == a->out_shape.n && s.c == a->out_shape.c && s.h == a->out_shape.h && s.w == a->out_shape.w,
            "batchnorm output must have the input's shape");
    if (sp.m == 0 || s.c == 0) return;
    if (unet_cuda_is_bf16(a))
        bn_forward_t<unet_bf16>(a);
    else
        bn_forward_t<float>(a);
}

template <class T>
static void bn_backward_t(const unet_op_args *a) {
    unet_shape s = a->in_shape[0];
    bn_split sp = split_of(s);
    int cp = unet_cuda_planes_c(a, s);
    cudaStream_t stream = unet_cuda_ctx_of(a)->stream;
    const T *x = (const T *)a->in[0];
    const float *mean = (const float *)a->aux, *invstd = mean + s.c;
    double *partial = (double *)a->workspace;
    double *sums = (double *)((char *)a->workspace + partial_bytes(sp));
    bn_grad_sums_kernel<<<dim3((unsigned)sp.slices, (unsigned)s.c), UNET_THREADS, 0, stream>>>(
        (T *)a->dout, x, (const T *)a->out, mean, cp, sp.hw, sp.tiles, a->node->act, partial);
    UNET_CUDA_LAUNCHED(a);
    bn_finish_grads_kernel<<<(unsigned)s.c, UNET_THREADS, 0, stream>>>(partial, sp.slices, invstd, sums, a->dparam[0],
                                                                       a->dparam[1]);
    UNET_CUDA_LAUNCHED(a);
    if (!a->din[0]) return;
    unet_plane_launch l = unet_plane_launch_for(a, (long long)s.n * cp, sp.hw);
    bn_dx_kernel<<<l.grid, l.block, 0, stream>>>((const T *)a->dout, x, (T *)a->din[0], s.c, cp, (int)sp.hw, sp.m,
                                                 mean, invstd, a->param[0], sums, uses_batch_stats(a),
                                                 a->din_accumulate[0]);
    UNET_CUDA_LAUNCHED(a);
}

static void bn_backward(const unet_op_args *a) {
    unet_shape s = a->in_shape[0];
    bn_split sp = split_of(s);
    require_launchable(a, sp);
    if (sp.m == 0 || s.c == 0) return;
    require(a, a->in[0] && a->dout && a->aux && a->param[0] && a->workspace,
            "batchnorm backward needs x, dout, aux, gamma and its workspace");
    require(a, a->node->act == UNET_ACT_NONE || a->out,
            "batchnorm backward with a fused activation needs the forward output (out is NULL)");
    if (unet_cuda_is_bf16(a))
        bn_backward_t<unet_bf16>(a);
    else
        bn_backward_t<float>(a);
}

extern "C" const unet_op_impl unet_cuda_batchnorm = {bn_forward, bn_backward, bn_workspace_bytes, bn_aux_bytes};
