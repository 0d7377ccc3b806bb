/* Convolution, transposed convolution and bias on the GPU: twins of
 * src/kernels/cpu/conv.c. The convolutions run through cuDNN's graph API
 * (cudnn_graph.c), whose plans are built when the compiler asks each op for
 * its workspace; forward and backward only look plans up and execute them.
 * The small kernels here do what cuDNN is not asked to: the bias (+ ReLU)
 * when no engine runs the fused graph, the ReLU mask of the backward pass
 * fused with the bias gradient, and accumulation when no engine adds into
 * its output.
 *
 * Workspace of a backward pass, used in stream order (each phase may reuse
 * all of it because the previous phase has finished on the same stream):
 *   1. bias gradient: per-channel partial sums (double) at offset 0;
 *   2. weight gradient: the cuDNN plan's workspace at offset 0;
 *   3. input gradient: the plan's workspace at offset 0, or, when it must be
 *      added into an existing gradient and no beta = 1 engine exists, a
 *      scratch tensor at offset 0 and the plan's workspace after it. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "kernels/cuda/common.h"
#include "kernels/cuda/cudnn_graph.h"
#include "kernels/cuda/ops.h"

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

/* out = in + b[c], then ReLU when asked; in may be out. NCHW. */
static __global__ void bias_act_kernel(const float *in, float *out, const float *b, int channels, long long hw,
                                       long long total, int relu) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        float v = in[i] + b[(i / hw) % channels];
        out[i] = relu ? (v > 0.0f ? v : 0.0f) : v;
    }
}

static __global__ void add_kernel(float *dst, const float *src, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        dst[i] += src[i];
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
 * With a mask (the forward output of a fused ReLU), each value first becomes
 * dz = dout * (out > 0) and is written back, so that the weight and data
 * gradients read dz. The partition depends on the shape alone and every sum
 * has a fixed order: the result is the same bits on every run, no atomics. */
static __global__ void channel_partial_kernel(float *dz, const float *mask, int channels, long long hw,
                                              long long per_channel, long long chunk, int slices, double *partial) {
    __shared__ double sh[THREADS];
    int c = blockIdx.y, s = blockIdx.x;
    long long begin = s * chunk, end = begin + chunk < per_channel ? begin + chunk : per_channel;
    double acc = 0.0;
    for (long long j = begin + threadIdx.x; j < end; j += THREADS) {
        long long n = j / hw;
        long long idx = (n * channels + c) * hw + (j - n * hw);
        float v = dz[idx];
        if (mask) {
            v = mask[idx] > 0.0f ? v : 0.0f;
            dz[idx] = v;
        }
        acc += v;
    }
    block_sum(sh, acc);
    if (threadIdx.x == 0) partial[(long long)c * slices + s] = sh[0];
}

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

static size_t channel_sum_workspace(unet_shape s) {
    long long per_channel = (long long)s.n * s.h * s.w;
    return align_up((size_t)s.c * (size_t)split_channel(per_channel).slices * sizeof(double));
}

/* sum[c] = sum of dz over n, y, x (NULL: no sum wanted); with mask, dz is first
 * replaced by dz * (mask > 0) in place. */
static void channel_sums(const unet_op_args *a, float *dz, const float *mask, unet_shape s, float *sum,
                         void *workspace) {
    if (!sum && !mask) return;
    unet_cuda_ctx *ctx = unet_cuda_ctx_of(a);
    long long per_channel = (long long)s.n * s.h * s.w;
    channel_split sp = split_channel(per_channel);
    double *partial = (double *)workspace;
    channel_partial_kernel<<<dim3((unsigned)sp.slices, (unsigned)s.c), THREADS, 0, ctx->stream>>>(
        dz, mask, s.c, (long long)s.h * s.w, per_channel, sp.chunk, sp.slices, partial);
    UNET_CUDA_LAUNCHED(a);
    if (sum) {
        channel_finish_kernel<<<(unsigned)s.c, THREADS, 0, ctx->stream>>>(partial, sp.slices, sum);
        UNET_CUDA_LAUNCHED(a);
    }
}

static void bias_act(const unet_op_args *a, const float *in, float *out, const float *b, unet_shape s, int relu) {
    unet_cuda_ctx *ctx = unet_cuda_ctx_of(a);
    long long total = (long long)unet_shape_count(s);
    bias_act_kernel<<<blocks_for(total), THREADS, 0, ctx->stream>>>(in, out, b, s.c, (long long)s.h * s.w, total, relu);
    UNET_CUDA_LAUNCHED(a);
}

static void add_into(const unet_op_args *a, float *dst, const float *src, size_t count) {
    unet_cuda_ctx *ctx = unet_cuda_ctx_of(a);
    add_kernel<<<blocks_for((long long)count), THREADS, 0, ctx->stream>>>(dst, src, (long long)count);
    UNET_CUDA_LAUNCHED(a);
}

static size_t f32_bytes(unet_shape s) { return unet_shape_count(s) * sizeof(float); }

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

static void run_output(const unet_op_args *a, unet_conv_problem p, unet_conv_tensors t, int accumulate,
                       size_t out_count) {
    unet_cuda_ctx *ctx = unet_cuda_ctx_of(a);
    if (accumulate) {
        p.accumulate = 1;
        const unet_cudnn_plan *acc = unet_cudnn_plan_find(ctx, &p, a);
        if (acc) {
            unet_cudnn_execute(ctx, acc, &t, a->workspace, a);
            return;
        }
        /* no beta = 1 engine: overwrite scratch, then add */
        p.accumulate = 0;
        const void **slot = output_slot(&t, p.dir);
        float *dst = (float *)*slot;
        float *scratch = (float *)a->workspace;
        *slot = scratch;
        unet_cudnn_execute(ctx, unet_cudnn_plan_find(ctx, &p, a), &t,
                           (char *)a->workspace + align_up(out_count * sizeof(float)), a);
        add_into(a, dst, scratch, out_count);
        return;
    }
    p.accumulate = 0;
    unet_cudnn_execute(ctx, unet_cudnn_plan_find(ctx, &p, a), &t, a->workspace, a);
}

/* ---------------------------------------------------------------------------
 * conv: y = conv(x, w) + b [ReLU]
 * ------------------------------------------------------------------------- */

static void check_conv_shapes(const unet_op_args *a) {
    unet_shape x = a->in_shape[0], y = a->out_shape;
    int k = a->node->k, pad = a->node->pad;
    if (k >= 1 && pad >= 0 && y.n == x.n && y.c >= 1 && y.h == unet_conv_out_size(x.h, k, 1, pad) &&
        y.w == unet_conv_out_size(x.w, k, 1, pad) && y.h >= 1 && y.w >= 1)
        return;
    char msg[256];
    snprintf(msg, sizeof msg, "conv k %d pad %d cannot map x (%d,%d,%d,%d) to y (%d,%d,%d,%d)", k, pad, x.n, x.c, x.h,
             x.w, y.n, y.c, y.h, y.w);
    unet_cuda_fail(__FILE__, __LINE__, "shape check", msg, a);
}

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
    p.stride = 1;
    p.pad = a->node->pad;
    return p;
}

static unet_conv_problem conv_forward_problem(const unet_op_args *a, int fused) {
    unet_conv_problem p = conv_problem(a, UNET_CONV_FWD);
    p.bias = fused;
    p.relu = fused && a->node->relu;
    return p;
}

static size_t conv_workspace_bytes(const unet_op_args *a) {
    check_conv_shapes(a);
    unet_cuda_ctx *ctx = unet_cuda_ctx_of(a);
    unet_conv_problem fwd = conv_forward_problem(a, 1);
    const unet_cudnn_plan *fused = unet_cudnn_plan_build(ctx, &fwd, 0, a);
    if (!fused) {
        fwd = conv_forward_problem(a, 0);
        fused = unet_cudnn_plan_build(ctx, &fwd, 1, a);
    }
    size_t ws = unet_cudnn_plan_workspace(fused);
    if (a->training) {
        unet_conv_problem wgrad = conv_problem(a, UNET_CONV_WGRAD);
        ws = max_size(ws, channel_sum_workspace(a->out_shape));
        ws = max_size(ws, unet_cudnn_plan_workspace(unet_cudnn_plan_build(ctx, &wgrad, 1, a)));
        ws = max_size(ws, build_output_plans(ctx, conv_problem(a, UNET_CONV_DGRAD), f32_bytes(a->in_shape[0]), a));
    }
    return ws;
}

static void conv_forward(const unet_op_args *a) {
    check_conv_shapes(a);
    require(a, a->param[0], "conv weight (param[0])");
    require(a, a->param[1], "conv bias (param[1])");
    unet_cuda_ctx *ctx = unet_cuda_ctx_of(a);
    unet_conv_tensors t = {a->in[0], a->param[0], a->out, a->param[1]};
    unet_conv_problem p = conv_forward_problem(a, 1);
    const unet_cudnn_plan *fused = unet_cudnn_plan_find(ctx, &p, a);
    if (fused) {
        unet_cudnn_execute(ctx, fused, &t, a->workspace, a);
        return;
    }
    p = conv_forward_problem(a, 0);
    unet_cudnn_execute(ctx, unet_cudnn_plan_find(ctx, &p, a), &t, a->workspace, a);
    bias_act(a, (const float *)a->out, (float *)a->out, a->param[1], a->out_shape, a->node->relu);
}

/* dz = dout * (out > 0) with ReLU (in place: dout has no other reader);
 * db = sum of dz; dw = correlate(x, dz); dx = conv_transpose(dz, w). */
static void conv_backward(const unet_op_args *a) {
    check_conv_shapes(a);
    unet_cuda_ctx *ctx = unet_cuda_ctx_of(a);
    float *dz = (float *)a->dout;
    require(a, dz, "conv dout");
    if (a->node->relu) require(a, a->out, "conv out (the ReLU mask)");
    channel_sums(a, dz, a->node->relu ? (const float *)a->out : NULL, a->out_shape, a->dparam[1], a->workspace);
    if (a->dparam[0]) {
        require(a, a->in[0], "conv x (in[0])");
        unet_conv_problem p = conv_problem(a, UNET_CONV_WGRAD);
        unet_conv_tensors t = {a->in[0], a->dparam[0], dz, NULL};
        unet_cudnn_execute(ctx, unet_cudnn_plan_find(ctx, &p, a), &t, a->workspace, a);
    }
    if (a->din[0]) {
        require(a, a->param[0], "conv weight (param[0])");
        unet_conv_tensors t = {a->din[0], a->param[0], dz, NULL};
        run_output(a, conv_problem(a, UNET_CONV_DGRAD), t, a->din_accumulate[0], unet_shape_count(a->in_shape[0]));
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
    return p;
}

static size_t conv_t2_workspace_bytes(const unet_op_args *a) {
    check_conv_t2_shapes(a);
    unet_cuda_ctx *ctx = unet_cuda_ctx_of(a);
    unet_conv_problem fwd = conv_t2_problem(a, UNET_CONV_DGRAD);
    size_t ws = unet_cudnn_plan_workspace(unet_cudnn_plan_build(ctx, &fwd, 1, a));
    if (a->training) {
        unet_conv_problem wgrad = conv_t2_problem(a, UNET_CONV_WGRAD);
        ws = max_size(ws, channel_sum_workspace(a->out_shape));
        ws = max_size(ws, unet_cudnn_plan_workspace(unet_cudnn_plan_build(ctx, &wgrad, 1, a)));
        ws = max_size(ws, build_output_plans(ctx, conv_t2_problem(a, UNET_CONV_FWD), f32_bytes(a->in_shape[0]), a));
    }
    return ws;
}

static void conv_t2_forward(const unet_op_args *a) {
    check_conv_t2_shapes(a);
    require(a, a->param[0], "conv_t2 weight (param[0])");
    require(a, a->param[1], "conv_t2 bias (param[1])");
    unet_cuda_ctx *ctx = unet_cuda_ctx_of(a);
    unet_conv_problem p = conv_t2_problem(a, UNET_CONV_DGRAD);
    unet_conv_tensors t = {a->out, a->param[0], a->in[0], NULL};
    unet_cudnn_execute(ctx, unet_cudnn_plan_find(ctx, &p, a), &t, a->workspace, a);
    bias_act(a, (const float *)a->out, (float *)a->out, a->param[1], a->out_shape, 0);
}

static void conv_t2_backward(const unet_op_args *a) {
    check_conv_t2_shapes(a);
    unet_cuda_ctx *ctx = unet_cuda_ctx_of(a);
    require(a, a->dout, "conv_t2 dout");
    channel_sums(a, (float *)a->dout, NULL, a->out_shape, a->dparam[1], a->workspace);
    if (a->dparam[0]) {
        require(a, a->in[0], "conv_t2 x (in[0])");
        unet_conv_problem p = conv_t2_problem(a, UNET_CONV_WGRAD);
        unet_conv_tensors t = {a->dout, a->dparam[0], a->in[0], NULL};
        unet_cudnn_execute(ctx, unet_cudnn_plan_find(ctx, &p, a), &t, a->workspace, a);
    }
    if (a->din[0]) {
        require(a, a->param[0], "conv_t2 weight (param[0])");
        unet_conv_tensors t = {a->dout, a->param[0], a->din[0], NULL};
        run_output(a, conv_t2_problem(a, UNET_CONV_FWD), t, a->din_accumulate[0], unet_shape_count(a->in_shape[0]));
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
    return a->training ? channel_sum_workspace(a->out_shape) : 0;
}

static void bias_forward(const unet_op_args *a) {
    check_bias_shapes(a);
    require(a, a->param[0], "bias (param[0])");
    bias_act(a, (const float *)a->in[0], (float *)a->out, a->param[0], a->out_shape, 0);
}

static void bias_backward(const unet_op_args *a) {
    check_bias_shapes(a);
    require(a, a->dout, "bias dout");
    if (a->din[0]) {
        size_t n = unet_shape_count(a->in_shape[0]);
        if (a->din_accumulate[0])
            add_into(a, (float *)a->din[0], (const float *)a->dout, n);
        else
            UNET_CUDA_CHECK(cudaMemcpyAsync(a->din[0], a->dout, n * sizeof(float), cudaMemcpyDeviceToDevice,
                                            unet_cuda_ctx_of(a)->stream),
                            a);
    }
    channel_sums(a, (float *)a->dout, NULL, a->out_shape, a->dparam[0], a->workspace);
}

/* Positional: the fields of unet_op_impl are forward, backward, workspace_bytes, aux_bytes. */
const unet_op_impl unet_cuda_conv = {conv_forward, conv_backward, conv_workspace_bytes, NULL};
const unet_op_impl unet_cuda_conv_t2 = {conv_t2_forward, conv_t2_backward, conv_t2_workspace_bytes, NULL};
const unet_op_impl unet_cuda_bias = {bias_forward, bias_backward, bias_workspace_bytes, NULL};
