/* Convolution, transposed convolution and bias on the GPU: twins of
 * src/kernels/cpu/conv.c. The convolutions run through cuDNN's graph API
 * (cudnn_graph.c), whose plans are built when the compiler asks each op for
 * its workspace; forward and backward only look plans up and execute them.
 * The small kernels here do what cuDNN is not asked to: the bias and the
 * activation (ReLU, ReLU6) when no engine runs the fused graph or there is
 * no bias, the activation's mask of the backward pass fused with the bias
 * gradient, and accumulation when no engine adds into its output. Strided
 * and depthwise convolutions are cuDNN's too (groups inferred from the
 * filter's channels, cudnn_graph.h).
 * A 1x1 convolution's forward may instead run as a cuBLASLt matmul (gemm.h),
 * when that measured faster for its shape as the plans were built.
 *
 * Workspace of a backward pass, used in stream order (each phase may reuse
 * all of it because the previous phase has finished on the same stream):
 *   1. bias gradient: per-channel partial sums (double) at offset 0;
 *   2. weight gradient: the cuDNN plan's workspace at offset 0;
 *   3. input gradient: the plan's workspace at offset 0, or, when it must be
 *      added into an existing gradient and no beta = 1 engine exists, a
 *      scratch tensor at offset 0 and the plan's workspace after it.
 *
 * NHWC (bf16, and fp32/tf32 with --layout nhwc; cudnn_graph.c, layout.h):
 * activations are channels last with padded channels, and cuDNN reads the
 * weights channels last too, in the activations' element type. Every
 * workspace then starts with a prefix holding that copy of the weights (Kp,
 * R, S, Cp) and of the bias (Kp), Kp and Cp padded as channels are, made
 * from the float32 master copies before each use; the weight gradient comes
 * out there in that form too and is converted into the float32 gradient
 * block. The offsets above count from the end of the prefix. In NCHW the
 * prefix is empty: cuDNN reads the parameters where they are. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/act.cuh"
#include "kernels/cuda/common.h"
#include "kernels/cuda/cudnn_graph.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/nhwc.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/tensor_view.cuh"

#define THREADS 256
/* A scratch region inside the workspace starts on this boundary. */
#define WORKSPACE_ALIGN 256

static size_t align_up(size_t bytes) { return (bytes + WORKSPACE_ALIGN - 1) / WORKSPACE_ALIGN * WORKSPACE_ALIGN; }
static size_t max_size(size_t a, size_t b) { return a > b ? a : b; }

/* Grid-stride loops cover any size; this many blocks keep every SM busy. */
static unsigned blocks_for(long long n) {
    long long b = (n + THREADS - 1) / THREADS;
    return (unsigned)(b < 1 ? 1 : b > 65536 ? 65536 : b);
}

/* ---------------------------------------------------------------------------
 * Kernels
 * ------------------------------------------------------------------------- */

/* x + b[c] (b NULL: no bias), then the activation act. */
static __device__ __forceinline__ float bias_act_of(float x, const float *b, int c, int act) {
    float v = b ? x + b[c] : x;
    return act == UNET_ACT_RELU ? (v > 0.0f ? v : 0.0f) : act == UNET_ACT_RELU6 ? unet_relu6(v) : v;
}

/* NCHW: grid.x planes (n, c), so that a block's channel is one number, grid.y along the plane; in may be out. */
static __global__ void bias_act_nchw_kernel(const float *in, float *out, const float *b, int channels, int hw,
                                            int act) {
    int c = (int)(blockIdx.x % (unsigned)channels);
    long long base = (long long)blockIdx.x * hw;
    for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < hw; i += gridDim.y * blockDim.x)
        out[base + i] = bias_act_of(in[base + i], b, c, act);
}

/* NHWC: one thread per (pixel, channel vector) (nhwc.cuh), the padding channels written as zeros. */
template <class F>
static __global__ void bias_act_nhwc_kernel(const typename F::T *in, typename F::T *out, const float *b, int channels,
                                            int vectors, unsigned items, int act) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < items; i += gridDim.x * blockDim.x) {
        int c0 = (int)(i % (unsigned)vectors) * F::V;
        unet_vec<F> v = unet_ldv<F>(in, (long long)i * F::V);
#pragma unroll
        for (int j = 0; j < F::V; j++) v.v[j] = c0 + j < channels ? bias_act_of(v.v[j], b, c0 + j, act) : 0.0f;
        unet_stv<F>(out, (long long)i * F::V, v);
    }
}

template <class T> static __global__ void add_kernel(T *dst, const T *src, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        unet_st(dst, i, unet_ld(dst, i) + unet_ld(src, i));
}

/* NHWC: the (Kp, R, S, Cp) copy of float32 weights w (K, C, R, S) in
 * element type T, and of the bias (K) into bk (Kp) when given; zeros in the
 * padding. */
template <class T>
static __global__ void weights_to_krsc_kernel(const float *w, T *wk, const float *b, T *bk, int k, int kp, int c,
                                              int cp, int r) {
    long long total = (long long)kp * r * r * cp;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        int ci = (int)(i % cp);
        long long t = i / cp;
        int sx = (int)(t % r), ry = (int)(t / r % r), ko = (int)(t / ((long long)r * r));
        float v = ko < k && ci < c ? w[(((long long)ko * c + ci) * r + ry) * r + sx] : 0.0f;
        unet_st(wk, i, v);
        if (bk && i < kp) unet_st(bk, i, i < k ? b[i] : 0.0f);
    }
}

/* NHWC: the float32 weight gradient dw (K, C, R, S) from cuDNN's (Kp, R, S, Cp) one. */
template <class T>
static __global__ void dweights_from_krsc_kernel(const T *dwk, float *dw, int k, int c, int cp, int r) {
    long long total = (long long)k * c * r * r;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        int sx = (int)(i % r), ry = (int)(i / r % r);
        long long t = i / ((long long)r * r);
        int ci = (int)(t % c), ko = (int)(t / c);
        dw[i] = unet_ld(dwk, (((long long)ko * r + ry) * r + sx) * cp + ci);
    }
}

/* Sums a block's values in a fixed tree order; the result is in sh[0]. */
static __device__ void block_sum(double *sh, double v) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int stride = THREADS / 2; stride > 0; stride >>= 1) {
        if ((int)threadIdx.x < stride) sh[threadIdx.x] += sh[threadIdx.x + stride];
        __syncthreads();
    }
}

/* Block (s, c) sums slice s of channel c's n*hw values (the channel's values
 * in (n, y, x) order, cut into equal slices) into partial[c * slices + s].
 * With a mask (the forward output of a fused activation act), each value
 * first becomes dz = dout where the activation passes it, else 0, and is
 * written back, so that the weight and data gradients read dz. The
 * partition depends on the shape alone and every sum has a fixed order: the
 * result is the same bits on every run, no atomics. */
template <class F>
static __global__ void channel_partial_kernel(typename F::T *dz, const typename F::T *mask, int act, int channels,
                                              int cp, long long hw, long long per_channel, long long chunk, int slices,
                                              double *partial) {
    __shared__ double sh[THREADS];
    int s = blockIdx.x;
    long long begin = s * chunk, end = begin + chunk < per_channel ? begin + chunk : per_channel;
    /* grid.y is capped at 65535 (channel_grid): a block takes every gridDim.y-th channel, the whole block
     * together, so that block_sum's barriers are reached by all its threads */
    for (int c = blockIdx.y; c < channels; c += gridDim.y) {
        double acc = 0.0;
        for (long long j = begin + threadIdx.x; j < end; j += THREADS) {
            long long n = j / hw;
            long long idx = F::plane_at(n, c, cp, hw, j - n * hw);
            float v = unet_ld(dz, idx);
            if (mask) {
                v = unet_act_passes(act, unet_ld(mask, idx)) ? v : 0.0f;
                unet_st(dz, idx, v); /* v or 0: exact in bf16 too */
            }
            acc += v;
        }
        block_sum(sh, acc);
        if (threadIdx.x == 0) partial[(long long)c * slices + s] = sh[0];
        __syncthreads(); /* sh is refilled by the next channel */
    }
}

/* NHWC: the same sums through unet_nhwc_sums (nhwc.cuh): the partials of a
 * channel vector's channels over a slice of pixels. */
template <class F> struct bias_sums_op {
    typename F::T *dz;
    const typename F::T *mask;
    int act;
    int cp;
    struct state {};
    __device__ state begin(int) const { return state(); }
    __device__ void add(const state &, long long p, int vec, double (&acc)[F::V]) const {
        long long i = p * cp + (long long)vec * F::V;
        unet_vec<F> v = unet_ldv<F>(dz, i);
        if (mask) {
            unet_vec<F> m = unet_ldv<F>(mask, i);
            for (int j = 0; j < F::V; j++) v.v[j] = unet_act_passes(act, m.v[j]) ? v.v[j] : 0.0f;
            unet_stv<F>(dz, i, v); /* v or 0: exact in bf16 too */
        }
#pragma unroll
        for (int j = 0; j < F::V; j++) acc[j] += v.v[j];
    }
};

static __global__ void channel_finish_kernel(const double *partial, int slices, float *sum) {
    __shared__ double sh[THREADS];
    int c = blockIdx.x;
    double acc = 0.0;
    for (int s = threadIdx.x; s < slices; s += THREADS) acc += partial[(long long)c * slices + s];
    block_sum(sh, acc);
    if (threadIdx.x == 0) sum[c] = (float)sh[0];
}

/* ---------------------------------------------------------------------------
 * Host helpers around the kernels
 * ------------------------------------------------------------------------- */

/* Slices per channel for the bias gradient: about 4096 values per block, at
 * most 1024 slices (the finishing block sums them). */
typedef struct {
    int slices;
    long long chunk;
} channel_split;

static channel_split split_channel(long long per_channel) {
    long long s = (per_channel + 4095) / 4096;
    channel_split sp;
    sp.slices = (int)(s < 1 ? 1 : s > 1024 ? 1024 : s);
    sp.chunk = (per_channel + sp.slices - 1) / sp.slices;
    return sp;
}

/* The launch of channel_partial_kernel: one block per (slice, channel), the
 * channels on grid.y up to the hardware's 65535, beyond which each block
 * loops over channels (a layer may have more, a 1x1 convolution's for one). */
#define MAX_GRID_Y 65535
static dim3 channel_grid(int slices, int channels) {
    return dim3((unsigned)slices, (unsigned)(channels < MAX_GRID_Y ? channels : MAX_GRID_Y));
}

/* Slices per channel: NCHW's split_channel, NHWC's unet_nhwc_sums. */
static int channel_slices(const unet_op_args *a, long long per_channel) {
    return unet_cuda_ctx_of(a)->act_format != UNET_FMT_NCHW_F32 ? unet_nhwc_slices(per_channel)
                                                                : split_channel(per_channel).slices;
}

static size_t channel_sum_workspace(const unet_op_args *a, unet_shape s) {
    long long per_channel = (long long)s.n * s.h * s.w;
    return align_up((size_t)s.c * (size_t)channel_slices(a, per_channel) * sizeof(double));
}

/* sum[c] = sum of dz over n, y, x (NULL: no sum wanted); with mask, dz is first
 * masked in place where the activation act stops the gradient of mask. */
template <class F>
static void channel_sums_t(const unet_op_args *a, void *dz, const void *mask, int act, unet_shape s, float *sum,
                           void *workspace) {
    typedef typename F::T T;
    unet_cuda_ctx *ctx = unet_cuda_ctx_of(a);
    long long per_channel = (long long)s.n * s.h * s.w;
    double *partial = (double *)workspace;
    if constexpr (F::nhwc) {
        bias_sums_op<F> op = {(T *)dz, (const T *)mask, act, F::channels(s.c)};
        unet_nhwc_split ns = unet_nhwc_split_of<F>(s);
        unet_nhwc_sums_kernel<F, 1>
            <<<ns.grid, ns.block, 0, ctx->stream>>>(op, s.c, ns.vectors, ns.pixels, ns.per_slice, partial);
        UNET_CUDA_LAUNCHED(a);
    } else {
        channel_split sp = split_channel(per_channel);
        channel_partial_kernel<F><<<channel_grid(sp.slices, s.c), THREADS, 0, ctx->stream>>>(
            (T *)dz, (const T *)mask, act, s.c, unet_cuda_planes_c(a, s), (long long)s.h * s.w, per_channel, sp.chunk,
            sp.slices, partial);
        UNET_CUDA_LAUNCHED(a);
    }
    if (sum) {
        channel_finish_kernel<<<(unsigned)s.c, THREADS, 0, ctx->stream>>>(partial, channel_slices(a, per_channel), sum);
        UNET_CUDA_LAUNCHED(a);
    }
}

static void channel_sums(const unet_op_args *a, void *dz, const void *mask, int act, unet_shape s, float *sum,
                         void *workspace) {
    if (!sum && !mask) return;
    unet_dispatch(a, [&](auto f) { channel_sums_t<decltype(f)>(a, dz, mask, act, s, sum, workspace); });
}

/* out = in + b[c] (b NULL: none), then the activation act; in may be out. */
template <class F>
static void bias_act_t(const unet_op_args *a, const void *in, void *out, const float *b, unet_shape s, int act) {
    typedef typename F::T T;
    cudaStream_t stream = unet_cuda_ctx_of(a)->stream;
    if constexpr (F::nhwc) {
        unsigned items = unet_vec_items<F>(a, s);
        bias_act_nhwc_kernel<F><<<unet_blocks_for(items), UNET_THREADS, 0, stream>>>(
            (const T *)in, (T *)out, b, s.c, F::channels(s.c) / F::V, items, act);
    } else {
        unet_plane_launch l = unet_plane_launch_for(a, (long long)s.n * s.c, (long long)s.h * s.w);
        bias_act_nchw_kernel<<<l.grid, l.block, 0, stream>>>((const float *)in, (float *)out, b, s.c, s.h * s.w, act);
    }
    UNET_CUDA_LAUNCHED(a);
}

static void bias_act(const unet_op_args *a, const void *in, void *out, const float *b, unet_shape s, int act) {
    unet_dispatch(a, [&](auto f) { bias_act_t<decltype(f)>(a, in, out, b, s, act); });
}

/* dst += src over an activation tensor of shape s (memory elements, padding included). */
template <class F> static void add_into_t(const unet_op_args *a, void *dst, const void *src, unet_shape s) {
    typedef typename F::T T;
    long long count = unet_cuda_act_elements(a, s);
    add_kernel<<<blocks_for(count), THREADS, 0, unet_cuda_ctx_of(a)->stream>>>((T *)dst, (const T *)src, count);
    UNET_CUDA_LAUNCHED(a);
}

static void add_into(const unet_op_args *a, void *dst, const void *src, unet_shape s) {
    unet_dispatch(a, [&](auto f) { add_into_t<decltype(f)>(a, dst, src, s); });
}

/* Bytes of an activation tensor of shape s in this backend's layout. */
static size_t act_bytes(const unet_op_args *a, unet_shape s) {
    return unet_cuda_layout_bytes(unet_cuda_act_layout(a, s));
}

/* ---------------------------------------------------------------------------
 * NHWC weights: the workspace prefix (see the top of the file)
 * ------------------------------------------------------------------------- */

static int is_nhwc(const unet_op_args *a) { return unet_cuda_ctx_of(a)->act_format != UNET_FMT_NCHW_F32; }

/* Channels c as the activations hold them (padded in NHWC). */
static int padded(const unet_op_args *a, int c) {
    return unet_cuda_channels_in_memory(unet_cuda_ctx_of(a)->act_format, c);
}

/* A filter's input channels (C / groups) and, in its NHWC copy, their count
 * with padding: Cp, or 1 for a depthwise filter (cudnn_graph.h). */
static int filter_c(const unet_conv_problem &p) { return p.c / p.groups; }
static int filter_cp(const unet_op_args *a, const unet_conv_problem &p) {
    return p.groups > 1 ? filter_c(p) : padded(a, p.c);
}

/* Bytes of the (Kp, R, S, filter_cp) copy of a problem's filter (K, C / groups, R, R). */
static size_t filter_copy_bytes(const unet_op_args *a, const unet_conv_problem &p) {
    return align_up((size_t)padded(a, p.k) * p.r * p.r * filter_cp(a, p) *
                    unet_cuda_element_bytes(unet_cuda_ctx_of(a)->act_format));
}

/* Bytes of the prefix: the weight (or weight gradient) copy and the bias
 * copy; 0 in NCHW. */
static size_t weight_prefix(const unet_op_args *a, const unet_conv_problem &p) {
    if (!is_nhwc(a)) return 0;
    return filter_copy_bytes(a, p) +
           align_up((size_t)padded(a, p.k) * unet_cuda_element_bytes(unet_cuda_ctx_of(a)->act_format));
}

static void *bias_copy(const unet_op_args *a, const unet_conv_problem &p) {
    return (char *)a->workspace + filter_copy_bytes(a, p);
}

template <class F>
static void weights_to_krsc_t(const unet_op_args *a, const unet_conv_problem &p, const float *w, const float *b) {
    typedef typename F::T T;
    long long total = (long long)padded(a, p.k) * p.r * p.r * filter_cp(a, p);
    weights_to_krsc_kernel<<<blocks_for(total), THREADS, 0, unet_cuda_ctx_of(a)->stream>>>(
        w, (T *)a->workspace, b, b ? (T *)bias_copy(a, p) : (T *)NULL, p.k, padded(a, p.k), filter_c(p),
        filter_cp(a, p), p.r);
    UNET_CUDA_LAUNCHED(a);
}

/* The weights cuDNN reads for problem p: the float32 parameters (NCHW), or
 * their NHWC copy made in the prefix now, with the bias's when b is given. */
static const void *weights_for(const unet_op_args *a, const unet_conv_problem &p, const float *w, const float *b) {
    if (!is_nhwc(a)) return w;
    unet_dispatch(a, [&](auto f) { weights_to_krsc_t<decltype(f)>(a, p, w, b); });
    return a->workspace;
}

/* The weight gradient's slot for cuDNN: dw itself (NCHW), or the prefix. */
static void *dweights_slot(const unet_op_args *a, float *dw) { return is_nhwc(a) ? a->workspace : (void *)dw; }

template <class F> static void dweights_from_krsc_t(const unet_op_args *a, const unet_conv_problem &p, float *dw) {
    long long total = (long long)p.k * filter_c(p) * p.r * p.r;
    dweights_from_krsc_kernel<<<blocks_for(total), THREADS, 0, unet_cuda_ctx_of(a)->stream>>>(
        (const typename F::T *)a->workspace, dw, p.k, filter_c(p), filter_cp(a, p), p.r);
    UNET_CUDA_LAUNCHED(a);
}

/* NHWC: converts the prefix's weight gradient into dw (float32, KCRS). */
static void dweights_finish(const unet_op_args *a, const unet_conv_problem &p, float *dw) {
    if (!is_nhwc(a)) return;
    unet_dispatch(a, [&](auto f) { dweights_from_krsc_t<decltype(f)>(a, p, dw); });
}

/* Aborts when an op is handed a pointer it cannot do without. */
static void require(const unet_op_args *a, const void *ptr, const char *what) {
    if (ptr) return;
    char msg[160];
    snprintf(msg, sizeof msg, "%s is NULL", what);
    unet_cuda_fail(__FILE__, __LINE__, "argument check", msg, a);
}

/* ---------------------------------------------------------------------------
 * Convolutions whose output may have to be added into (a gradient another
 * consumer wrote first). beta = 1 in the graph when an engine supports it;
 * otherwise the result goes to scratch at the front of the workspace and a
 * kernel adds it. Both paths are decided when the plans are built.
 * ------------------------------------------------------------------------- */

static const void **output_slot(unet_conv_tensors *t, unet_conv_dir dir) {
    return dir == UNET_CONV_FWD ? &t->y : dir == UNET_CONV_DGRAD ? &t->x : &t->w;
}

/* Compile time: builds the overwriting plan and, when the output may be
 * accumulated into, the beta = 1 plan or the fallback's needs. Returns the workspace. */
static size_t build_output_plans(unet_cuda_ctx *ctx, unet_conv_problem p, size_t out_bytes, const unet_op_args *a) {
    p.accumulate = 0;
    size_t plain = unet_cudnn_plan_workspace(unet_cudnn_plan_build(ctx, &p, 1, a));
    p.accumulate = 1;
    const unet_cudnn_plan *acc = unet_cudnn_plan_build(ctx, &p, 0, a);
    size_t accumulating = acc ? unet_cudnn_plan_workspace(acc) : align_up(out_bytes) + plain;
    return max_size(plain, accumulating);
}

/* ws: the workspace after the prefix. out_shape: the output slot's tensor. */
static void run_output(const unet_op_args *a, unet_conv_problem p, unet_conv_tensors t, int accumulate,
                       unet_shape out_shape, char *ws) {
    unet_cuda_ctx *ctx = unet_cuda_ctx_of(a);
    if (accumulate) {
        p.accumulate = 1;
        const unet_cudnn_plan *acc = unet_cudnn_plan_find(ctx, &p, a);
        if (acc) {
            unet_cudnn_execute(ctx, acc, &t, ws, a);
            return;
        }
        /* no beta = 1 engine: overwrite scratch, then add */
        p.accumulate = 0;
        const void **slot = output_slot(&t, p.dir);
        void *dst = (void *)*slot;
        *slot = ws;
        unet_cudnn_execute(ctx, unet_cudnn_plan_find(ctx, &p, a), &t, ws + align_up(act_bytes(a, out_shape)), a);
        add_into(a, dst, ws, out_shape);
        return;
    }
    p.accumulate = 0;
    unet_cudnn_execute(ctx, unet_cudnn_plan_find(ctx, &p, a), &t, ws, a);
}

/* ---------------------------------------------------------------------------
 * conv: y = act(conv(x, w) [+ b]); stride, pad, groups 1 or depthwise
 * ------------------------------------------------------------------------- */

static void check_conv_shapes(const unet_op_args *a) {
    unet_shape x = a->in_shape[0], y = a->out_shape;
    const unet_node *nd = a->node;
    int k = nd->k, pad = nd->pad, stride = nd->stride, groups = nd->groups;
    if (k >= 1 && pad >= 0 && stride >= 1 && (groups == 1 || (groups == x.c && y.c == x.c)) && y.n == x.n && y.c >= 1 &&
        y.h == unet_conv_out_size(x.h, k, stride, pad) && y.w == unet_conv_out_size(x.w, k, stride, pad) && y.h >= 1 &&
        y.w >= 1)
        return;
    char msg[256];
    snprintf(msg, sizeof msg, "conv k %d stride %d pad %d groups %d cannot map x (%d,%d,%d,%d) to y (%d,%d,%d,%d)", k,
             stride, pad, groups, x.n, x.c, x.h, x.w, y.n, y.c, y.h, y.w);
    unet_cuda_fail(__FILE__, __LINE__, "shape check", msg, a);
}

/* Whether the node has a bias: the graph's fact, known when plans are built
 * (workspace_bytes sees no pointers). */
static int has_bias(const unet_op_args *a) { return a->node->param[1] >= 0; }

static unet_conv_problem conv_problem(const unet_op_args *a, unet_conv_dir dir) {
    unet_conv_problem p;
    memset(&p, 0, sizeof p);
    p.dir = dir;
    p.n = a->in_shape[0].n;
    p.c = a->in_shape[0].c;
    p.h = a->in_shape[0].h;
    p.w = a->in_shape[0].w;
    p.k = a->out_shape.c;
    p.r = a->node->k;
    p.stride = a->node->stride;
    p.pad = a->node->pad;
    p.groups = a->node->groups;
    return p;
}

/* fused: with the bias and the activation as pointwise nodes of the graph. */
static unet_conv_problem conv_forward_problem(const unet_op_args *a, int fused) {
    unet_conv_problem p = conv_problem(a, UNET_CONV_FWD);
    p.bias = fused;
    p.act = fused ? a->node->act : UNET_ACT_NONE;
    return p;
}

/* The forward by cuDNN: the fused graph when the node has a bias and an
 * engine runs it; else the convolution alone, then the bias and the
 * activation by bias_act. */
static void conv_forward_cudnn(const unet_op_args *a) {
    unet_cuda_ctx *ctx = unet_cuda_ctx_of(a);
    unet_conv_problem p = conv_forward_problem(a, has_bias(a));
    char *ws = (char *)a->workspace + weight_prefix(a, p);
    const unet_cudnn_plan *fused = has_bias(a) ? unet_cudnn_plan_find(ctx, &p, a) : NULL;
    const void *w = weights_for(a, p, a->param[0], fused ? a->param[1] : NULL);
    if (fused) {
        unet_conv_tensors t = {a->in[0], w, a->out, is_nhwc(a) ? (const void *)bias_copy(a, p) : a->param[1]};
        unet_cudnn_execute(ctx, fused, &t, ws, a);
        return;
    }
    unet_conv_tensors t = {a->in[0], w, a->out, NULL};
    p = conv_forward_problem(a, 0);
    unet_cudnn_execute(ctx, unet_cudnn_plan_find(ctx, &p, a), &t, ws, a);
    if (has_bias(a) || a->node->act != UNET_ACT_NONE)
        bias_act(a, a->out, a->out, has_bias(a) ? a->param[1] : NULL, a->out_shape, a->node->act);
}

/* The forward of a 1x1 convolution with a bias by a cuBLASLt matmul, the bias and a ReLU in its epilogue (gemm.h). */
static void conv_forward_gemm(const unet_op_args *a, const unet_gemm_plan *g) {
    unet_conv_problem p = conv_forward_problem(a, 1);
    const void *w = weights_for(a, p, a->param[0], a->param[1]);
    const void *b = is_nhwc(a) ? (const void *)bias_copy(a, p) : a->param[1];
    unet_gemm_execute(unet_cuda_ctx_of(a), g, a->in[0], w, b, a->out, (char *)a->workspace + weight_prefix(a, p), a);
}

static void conv_forward_by(const unet_op_args *a, unet_1x1_path path) {
    unet_conv_problem p = conv_forward_problem(a, has_bias(a));
    const unet_gemm_plan *g = path == UNET_1X1_GEMM ? unet_gemm_plan_find(unet_cuda_ctx_of(a), &p) : NULL;
    if (g)
        conv_forward_gemm(a, g);
    else
        conv_forward_cudnn(a);
}

/* ---------------------------------------------------------------------------
 * 1x1 convolutions: a cuBLASLt matmul or cuDNN, whichever ran the shape
 * faster when the plans were built
 * ------------------------------------------------------------------------- */

/* UNET_CONV1X1=cublaslt or cudnn: that path, unmeasured (gemm.h). */
static unet_1x1_path forced_1x1(void) {
    const char *v = getenv("UNET_CONV1X1");
    if (v && !strcmp(v, "cublaslt")) return UNET_1X1_GEMM;
    if (v && !strcmp(v, "cudnn")) return UNET_1X1_CUDNN;
    return UNET_1X1_UNDECIDED;
}

/* Milliseconds of one forward by a path on t's buffers: the least of three after one to warm up, timed by events
 * on the stream (compile time: nothing is being captured, and the wait is allowed). */
static float time_forward(const unet_op_args *t, unet_1x1_path path, cudaEvent_t start, cudaEvent_t stop) {
    cudaStream_t stream = unet_cuda_ctx_of(t)->stream;
    float best = -1.0f;
    for (int run = 0; run < 4; run++) {
        UNET_CUDA_CHECK(cudaEventRecord(start, stream), unet_at_op(t));
        conv_forward_by(t, path);
        UNET_CUDA_CHECK(cudaEventRecord(stop, stream), unet_at_op(t));
        UNET_CUDA_CHECK(cudaEventSynchronize(stop), unet_at_op(t));
        float ms = 0.0f;
        UNET_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop), unet_at_op(t));
        if (run > 0 && (best < 0.0f || ms < best)) best = ms;
    }
    return best;
}

/* Both paths timed on scratch buffers of the op's shapes: the matmul when strictly faster (a tie, as when the
 * device does not measure time, keeps cuDNN). Without the memory for the buffers, cuDNN, unmeasured. */
static unet_1x1_path measure_1x1(const unet_op_args *a, size_t workspace, float *ms_gemm, float *ms_cudnn) {
    unet_op_args t = *a;
    size_t bytes[5] = {act_bytes(a, a->in_shape[0]), act_bytes(a, a->out_shape),
                       (size_t)a->out_shape.c * a->in_shape[0].c * sizeof(float),
                       (size_t)a->out_shape.c * sizeof(float), workspace};
    void *buf[5] = {NULL, NULL, NULL, NULL, NULL};
    int ok = 1;
    for (int i = 0; i < 5 && ok; i++) {
        ok = cudaMalloc(&buf[i], bytes[i] ? bytes[i] : 256) == cudaSuccess;
        if (ok) UNET_CUDA_CHECK(cudaMemsetAsync(buf[i], 0, bytes[i], unet_cuda_ctx_of(a)->stream), unet_at_op(a));
    }
    unet_1x1_path path = UNET_1X1_CUDNN;
    *ms_gemm = *ms_cudnn = -1.0f;
    if (ok) {
        t.in[0] = buf[0], t.out = buf[1], t.param[0] = (const float *)buf[2], t.param[1] = (const float *)buf[3];
        t.workspace = buf[4];
        cudaEvent_t start, stop;
        UNET_CUDA_CHECK(cudaEventCreate(&start), unet_at_op(a));
        UNET_CUDA_CHECK(cudaEventCreate(&stop), unet_at_op(a));
        *ms_gemm = time_forward(&t, UNET_1X1_GEMM, start, stop);
        *ms_cudnn = time_forward(&t, UNET_1X1_CUDNN, start, stop);
        cudaEventDestroy(start);
        cudaEventDestroy(stop);
        if (*ms_gemm < *ms_cudnn) path = UNET_1X1_GEMM;
    } else {
        cudaGetLastError(); /* out of memory is an answer here, not a fault */
    }
    for (int i = 0; i < 5; i++)
        if (buf[i]) UNET_CUDA_CHECK(cudaFree(buf[i]), unet_at_op(a));
    return path;
}

/* Compile time, a 1x1 convolution with a bias whose plans are built: the
 * matmul's plan, and the path this shape takes from now on. workspace: what
 * the op needs so far. Returns the workspace the matmul needs more. */
static size_t choose_1x1(const unet_op_args *a, size_t workspace) {
    unet_conv_problem p = conv_forward_problem(a, has_bias(a));
    if (!unet_gemm_runs(&p)) return 0;
    unet_gemm_plan *g = unet_gemm_plan_build(unet_cuda_ctx_of(a), &p, a);
    if (!g) return 0;
    size_t need = weight_prefix(a, p) + unet_gemm_plan_workspace(g);
    if (unet_gemm_path(g) != UNET_1X1_UNDECIDED) return need; /* the shape was measured at another node */
    if (a->sizing_only) return need; /* unet info asks dozens of batches: a plan that runs measures its own */
    float ms_gemm = -1.0f, ms_cudnn = -1.0f;
    unet_1x1_path path = forced_1x1();
    const char *why = "UNET_CONV1X1";
    if (path == UNET_1X1_UNDECIDED) {
        path = measure_1x1(a, max_size(workspace, need), &ms_gemm, &ms_cudnn);
        why = ms_gemm < 0.0f ? "not measured: no device memory for the scratch buffers" : "measured";
    }
    unet_gemm_set_path(g, path);
    const char *log = getenv("UNET_CUDNN_LOG");
    if (log && *log && strcmp(log, "0") != 0) {
        char times[96] = "";
        if (ms_gemm >= 0.0f) snprintf(times, sizeof times, ": cuBLASLt %.4f ms, cuDNN %.4f ms", ms_gemm, ms_cudnn);
        fprintf(stderr, "unet conv1x1: x (%d,%d,%d,%d) -> %d channels: %s (%s%s)\n", p.n, p.c, p.h, p.w, p.k,
                path == UNET_1X1_GEMM ? "cuBLASLt" : "cuDNN", why, times);
    }
    return need;
}

static size_t conv_workspace_bytes(const unet_op_args *a) {
    check_conv_shapes(a);
    unet_cuda_ctx *ctx = unet_cuda_ctx_of(a);
    unet_conv_problem fwd = conv_forward_problem(a, has_bias(a));
    size_t prefix = weight_prefix(a, fwd);
    const unet_cudnn_plan *plan = has_bias(a) ? unet_cudnn_plan_build(ctx, &fwd, 0, a) : NULL;
    if (!plan) {
        fwd = conv_forward_problem(a, 0);
        plan = unet_cudnn_plan_build(ctx, &fwd, 1, a);
    }
    size_t ws = unet_cudnn_plan_workspace(plan);
    if (a->training) {
        unet_conv_problem wgrad = conv_problem(a, UNET_CONV_WGRAD);
        ws = max_size(ws, channel_sum_workspace(a, a->out_shape));
        ws = max_size(ws, unet_cudnn_plan_workspace(unet_cudnn_plan_build(ctx, &wgrad, 1, a)));
        ws = max_size(ws, build_output_plans(ctx, conv_problem(a, UNET_CONV_DGRAD), act_bytes(a, a->in_shape[0]), a));
    }
    return max_size(prefix + ws, choose_1x1(a, prefix + ws));
}

/* By the path chosen for a 1x1 convolution's shape when the plans were built
 * (choose_1x1), else by cuDNN. */
static void conv_forward(const unet_op_args *a) {
    check_conv_shapes(a);
    require(a, a->param[0], "conv weight (param[0])");
    if (has_bias(a)) require(a, a->param[1], "conv bias (param[1])");
    unet_conv_problem p = conv_forward_problem(a, has_bias(a));
    conv_forward_by(a, unet_gemm_path(unet_gemm_plan_find(unet_cuda_ctx_of(a), &p)));
}

/* dz = dout masked by the activation (in place: dout has no other reader);
 * db = sum of dz; dw = correlate(x, dz); dx = conv_transpose(dz, w). */
static void conv_backward(const unet_op_args *a) {
    check_conv_shapes(a);
    unet_cuda_ctx *ctx = unet_cuda_ctx_of(a);
    void *dz = a->dout;
    int act = a->node->act;
    require(a, dz, "conv dout");
    if (act != UNET_ACT_NONE) require(a, a->out, "conv out (the activation's mask)");
    char *ws = (char *)a->workspace + weight_prefix(a, conv_problem(a, UNET_CONV_WGRAD));
    channel_sums(a, dz, act != UNET_ACT_NONE ? a->out : NULL, act, a->out_shape, a->dparam[1], ws);
    if (a->dparam[0]) {
        require(a, a->in[0], "conv x (in[0])");
        unet_conv_problem p = conv_problem(a, UNET_CONV_WGRAD);
        unet_conv_tensors t = {a->in[0], dweights_slot(a, a->dparam[0]), dz, NULL};
        unet_cudnn_execute(ctx, unet_cudnn_plan_find(ctx, &p, a), &t, ws, a);
        dweights_finish(a, p, a->dparam[0]);
    }
    if (a->din[0]) {
        require(a, a->param[0], "conv weight (param[0])");
        unet_conv_problem p = conv_problem(a, UNET_CONV_DGRAD);
        unet_conv_tensors t = {a->din[0], weights_for(a, p, a->param[0], NULL), dz, NULL};
        run_output(a, p, t, a->din_accumulate[0], a->in_shape[0], ws);
    }
}

/* ---------------------------------------------------------------------------
 * conv_t2: 2x2 stride-2 transposed convolution + bias, weight [C, O, 2, 2]
 * (PyTorch's ConvTranspose2d layout).
 *
 * Let x (N, C, H, W), w [C, O, 2, 2], y (N, O, 2H, 2W). PyTorch defines
 *     y[n, o, 2i+u, 2j+v] = b[o] + sum_c x[n, c, i, j] w[c, o, u, v].
 * Take the ordinary convolution G with stride 2, 2x2 filter, no padding,
 * from an input z (N, O, 2H, 2W) to an output (N, C, H, W), with filter
 * [K = C, O, 2, 2] = w read as is (K rows = w's first dimension):
 *     G(z)[n, c, i, j] = sum_{o,u,v} w[c, o, u, v] z[n, o, 2i+u, 2j+v].
 * Its backward-data maps an output gradient g (N, C, H, W) to
 *     dG(g)[n, o, 2i+u, 2j+v] = sum_c g[n, c, i, j] w[c, o, u, v]
 * (each input pixel belongs to exactly one 2x2 window), which is the
 * transposed convolution with g = x. So, in cuDNN terms of G (input z of
 * shape y, output of shape x, filter w):
 *   forward   y  = DGRAD(dy slot = x, w)  + b          (x slot: y)
 *   din       dx[n,c,i,j] = sum_{o,u,v} w[c,o,u,v] dout[n,o,2i+u,2j+v] = G(dout):
 *                FWD(x slot = dout, w), y slot: dx
 *   dweight   dw[c,o,u,v] = sum_{n,i,j} x[n,c,i,j] dout[n,o,2i+u,2j+v], which is
 *                G's weight gradient with G's input = dout and G's output
 *                gradient = x: WGRAD(x slot = dout, dy slot = x), w slot: dw
 *   dbias     db[o] = sum of dout over n, y, x.
 * ------------------------------------------------------------------------- */

static void check_conv_t2_shapes(const unet_op_args *a) {
    unet_shape x = a->in_shape[0], y = a->out_shape;
    if (y.n == x.n && y.c >= 1 && y.h == 2 * x.h && y.w == 2 * x.w && x.h >= 1 && x.w >= 1) return;
    char msg[256];
    snprintf(msg, sizeof msg, "conv_t2 cannot map x (%d,%d,%d,%d) to y (%d,%d,%d,%d): y must be (N, O, 2H, 2W)", x.n,
             x.c, x.h, x.w, y.n, y.c, y.h, y.w);
    unet_cuda_fail(__FILE__, __LINE__, "shape check", msg, a);
}

/* The convolution G above, in the direction asked. */
static unet_conv_problem conv_t2_problem(const unet_op_args *a, unet_conv_dir dir) {
    unet_conv_problem p;
    memset(&p, 0, sizeof p);
    p.dir = dir;
    p.n = a->out_shape.n;
    p.c = a->out_shape.c;
    p.h = a->out_shape.h;
    p.w = a->out_shape.w;
    p.k = a->in_shape[0].c;
    p.r = 2;
    p.stride = 2;
    p.pad = 0;
    p.groups = 1;
    return p;
}

static size_t conv_t2_workspace_bytes(const unet_op_args *a) {
    check_conv_t2_shapes(a);
    unet_cuda_ctx *ctx = unet_cuda_ctx_of(a);
    unet_conv_problem fwd = conv_t2_problem(a, UNET_CONV_DGRAD);
    size_t prefix = weight_prefix(a, fwd);
    size_t ws = unet_cudnn_plan_workspace(unet_cudnn_plan_build(ctx, &fwd, 1, a));
    if (a->training) {
        unet_conv_problem wgrad = conv_t2_problem(a, UNET_CONV_WGRAD);
        ws = max_size(ws, channel_sum_workspace(a, a->out_shape));
        ws = max_size(ws, unet_cudnn_plan_workspace(unet_cudnn_plan_build(ctx, &wgrad, 1, a)));
        ws = max_size(ws, build_output_plans(ctx, conv_t2_problem(a, UNET_CONV_FWD), act_bytes(a, a->in_shape[0]), a));
    }
    return prefix + ws;
}

static void conv_t2_forward(const unet_op_args *a) {
    check_conv_t2_shapes(a);
    require(a, a->param[0], "conv_t2 weight (param[0])");
    require(a, a->param[1], "conv_t2 bias (param[1])");
    unet_cuda_ctx *ctx = unet_cuda_ctx_of(a);
    unet_conv_problem p = conv_t2_problem(a, UNET_CONV_DGRAD);
    unet_conv_tensors t = {a->out, weights_for(a, p, a->param[0], NULL), a->in[0], NULL};
    unet_cudnn_execute(ctx, unet_cudnn_plan_find(ctx, &p, a), &t, (char *)a->workspace + weight_prefix(a, p), a);
    bias_act(a, a->out, a->out, a->param[1], a->out_shape, UNET_ACT_NONE);
}

static void conv_t2_backward(const unet_op_args *a) {
    check_conv_t2_shapes(a);
    unet_cuda_ctx *ctx = unet_cuda_ctx_of(a);
    require(a, a->dout, "conv_t2 dout");
    char *ws = (char *)a->workspace + weight_prefix(a, conv_t2_problem(a, UNET_CONV_WGRAD));
    channel_sums(a, a->dout, NULL, UNET_ACT_NONE, a->out_shape, a->dparam[1], ws);
    if (a->dparam[0]) {
        require(a, a->in[0], "conv_t2 x (in[0])");
        unet_conv_problem p = conv_t2_problem(a, UNET_CONV_WGRAD);
        unet_conv_tensors t = {a->dout, dweights_slot(a, a->dparam[0]), a->in[0], NULL};
        unet_cudnn_execute(ctx, unet_cudnn_plan_find(ctx, &p, a), &t, ws, a);
        dweights_finish(a, p, a->dparam[0]);
    }
    if (a->din[0]) {
        require(a, a->param[0], "conv_t2 weight (param[0])");
        unet_conv_problem p = conv_t2_problem(a, UNET_CONV_FWD);
        unet_conv_tensors t = {a->dout, weights_for(a, p, a->param[0], NULL), a->din[0], NULL};
        run_output(a, p, t, a->din_accumulate[0], a->in_shape[0], ws);
    }
}

/* ---------------------------------------------------------------------------
 * bias: y = x + b[c]
 * ------------------------------------------------------------------------- */

static void check_bias_shapes(const unet_op_args *a) {
    unet_shape x = a->in_shape[0], y = a->out_shape;
    if (x.n == y.n && x.c == y.c && x.h == y.h && x.w == y.w) return;
    char msg[256];
    snprintf(msg, sizeof msg, "bias keeps the shape: x (%d,%d,%d,%d) vs y (%d,%d,%d,%d)", x.n, x.c, x.h, x.w, y.n, y.c,
             y.h, y.w);
    unet_cuda_fail(__FILE__, __LINE__, "shape check", msg, a);
}

static size_t bias_workspace_bytes(const unet_op_args *a) {
    check_bias_shapes(a);
    return a->training ? channel_sum_workspace(a, a->out_shape) : 0;
}

static void bias_forward(const unet_op_args *a) {
    check_bias_shapes(a);
    require(a, a->param[0], "bias (param[0])");
    bias_act(a, a->in[0], a->out, a->param[0], a->out_shape, UNET_ACT_NONE);
}

static void bias_backward(const unet_op_args *a) {
    check_bias_shapes(a);
    require(a, a->dout, "bias dout");
    if (a->din[0]) {
        if (a->din_accumulate[0])
            add_into(a, a->din[0], a->dout, a->in_shape[0]);
        else
            UNET_CUDA_CHECK(cudaMemcpyAsync(a->din[0], a->dout, act_bytes(a, a->in_shape[0]), cudaMemcpyDeviceToDevice,
                                            unet_cuda_ctx_of(a)->stream),
                            unet_at_op(a));
    }
    channel_sums(a, a->dout, NULL, UNET_ACT_NONE, a->out_shape, a->dparam[0], a->workspace);
}

/* Positional: the fields of unet_op_impl are forward, backward, workspace_bytes, aux_bytes. */
const unet_op_impl unet_cuda_conv = {conv_forward, conv_backward, conv_workspace_bytes, NULL};
const unet_op_impl unet_cuda_conv_t2 = {conv_t2_forward, conv_t2_backward, conv_t2_workspace_bytes, NULL};
const unet_op_impl unet_cuda_bias = {bias_forward, bias_backward, bias_workspace_bytes, NULL};
