/* The CUDA backend: device selection, the context (stream, cuDNN and
 * cuBLASLt handles), memory and transfers, the fused optimizer passes,
 * the capture and replay of a whole step as a CUDA graph, and the one error
 * reporter every CUDA, cuDNN and cuBLASLt check goes through.
 *
 * Layout (layout.h): fp32 and tf32 keep NCHW float32 (labels int32),
 * exactly the CPU's, so transfers are plain copies and a tensor means the
 * same bytes on both; with --layout nhwc they keep activations and their
 * gradients NHWC float32 with channels padded to 4. bf16 keeps them NHWC
 * bfloat16 with channels padded to 8. The NHWC transfers convert on the
 * host (bf16: round to nearest even on the way in), and labels, weight maps
 * and loss values stay as on the CPU. Parameters, their gradients and the
 * optimizer state are float32 in every precision. Everything runs on the
 * context's stream and returns at once; only the downloads and sync wait for
 * the stream, and an upload for the copy before last into its destination
 * (staging.h: what a step uploads goes through page-locked buffers).
 *
 * Precision: fp32 (pure float math), tf32 (tensor cores in the
 * convolutions) and bf16 (bf16 storage and tensor cores, float32 master
 * weights and float32 reductions; compute capability 8.0 and newer). bf16
 * has been checked on the CPU only (kernels emulated, cuDNN graphs
 * finalized), so --precision auto stays tf32 until it has run on a GPU. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/common.h"
#include "kernels/cuda/cudnn_graph.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/layout.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/staging.h"

/* One backend per (device, precision), alive for the process: plans, the
 * arena and parameter blocks hold pointers into it, and there is no teardown
 * in the backend interface. ctx comes first so that backend.ctx, which points
 * at it, also points at the instance. */
typedef struct {
    unet_cuda_ctx ctx;
    unet_backend backend;
    char device_name[256];
    int cc_major, cc_minor;
    void *unpacking; /* host buffer of the NHWC downloads (unpacking_buffer()), kept between calls */
    size_t unpacking_bytes;
} cuda_instance;

#define MAX_INSTANCES 32
static cuda_instance *instances[MAX_INSTANCES];
static int n_instances;
/* UNET_CUDA_SYNC=1: wait after every launch (see unet_cuda_launched_at). */
static int sync_each_launch = -1;

static const char *precision_names[] = {"fp32", "tf32", "bf16"};
static const char *format_names[] = {"nchw", "nhwc", "nhwc"}; /* unet_cuda_format's order */

/* Op names live in the core (graph.c). A tool that links the backend but no
 * graph (the cuDNN graph check, the optimizer test) has no nodes to name, so
 * the reference is weak: such a link does not need graph.c, and messages fall
 * back to the op's number. */
extern "C" const char *unet_op_name(unet_op op) __attribute__((weak));

/* ---------------------------------------------------------------------------
 * Errors
 * ------------------------------------------------------------------------- */

static const cuda_instance *instance_of(const unet_backend *b) { return b ? (const cuda_instance *)b->ctx : NULL; }

/* snprintf that appends to buf and never overruns it. */
static void append(char *buf, size_t size, const char *fmt, ...) {
    size_t used = strlen(buf);
    if (used + 1 >= size) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + used, size - used, fmt, ap);
    va_end(ap);
}

static void append_shape(char *buf, size_t size, const char *name, unet_shape s) {
    append(buf, size, " %s %dx%dx%dx%d", name, s.n, s.c, s.h, s.w);
}

/* The device in words, for messages: the instance's when known, else the
 * current device's (which may itself fail to answer after a fault). */
static void describe_device(const cuda_instance *inst, char *buf, size_t size) {
    if (inst) {
        snprintf(buf, size, "cuda:%d (%s, sm_%d%d, %s %s)", inst->ctx.device, inst->device_name, inst->cc_major,
                 inst->cc_minor, precision_names[inst->ctx.precision], format_names[inst->ctx.act_format]);
        return;
    }
    int dev = -1;
    cudaDeviceProp prop;
    if (cudaGetDevice(&dev) == cudaSuccess && cudaGetDeviceProperties(&prop, dev) == cudaSuccess)
        snprintf(buf, size, "cuda:%d (%s, sm_%d%d)", dev, prop.name, prop.major, prop.minor);
    else
        snprintf(buf, size, "cuda:%d (device not identified)", dev);
}

/* Errors of a kernel surface at the next synchronising call; the message says
 * where to look instead of blaming the call that noticed. */
#define ASYNC_HINT                                                                                                     \
    " (this may be an earlier kernel's fault surfacing here: rerun with UNET_CUDA_SYNC=1, which also runs the "        \
    "step without a CUDA graph, to stop at the op that failed)"

extern "C" void unet_cuda_fail_at(const char *file, int line, const char *call, const char *msg, unet_cuda_site at) {
    char where[1024] = "";
    const unet_op_args *a = at.op;
    if (a && a->node) {
        if (unet_op_name)
            append(where, sizeof where, " in op %s (%s)", a->node->name, unet_op_name(a->node->op));
        else
            append(where, sizeof where, " in op %s (op %d)", a->node->name, (int)a->node->op);
        for (int i = 0; i < a->n_in && i < UNET_MAX_IN; i++) {
            char name[8];
            snprintf(name, sizeof name, "in%d", i);
            append_shape(where, sizeof where, name, a->in_shape[i]);
        }
        append_shape(where, sizeof where, "out", a->out_shape);
        if (a->training) append(where, sizeof where, " training");
    }
    if (at.work) append(where, sizeof where, " (%s)", at.work);
    if (at.waits) append(where, sizeof where, "%s", ASYNC_HINT);
    const cuda_instance *inst = instance_of(at.backend);
    if (!inst && n_instances == 1) inst = instances[0];
    if (inst && inst->ctx.capturing) {
        /* the one state a report changes in an instance its callers hold as const */
        unet_cuda_ctx *ctx = (unet_cuda_ctx *)&inst->ctx;
        if (!ctx->capture_failure[0])
            snprintf(ctx->capture_failure, sizeof ctx->capture_failure, "%s: %s%s [%s:%d]", call, msg, where, file,
                     line);
        return;
    }
    char dev[512];
    describe_device(inst, dev, sizeof dev);
    fprintf(stderr, "unet: CUDA failure: %s: %s%s on %s [%s:%d]\n", call, msg, where, dev, file, line);
    fflush(stderr);
    exit(1);
}

extern "C" void unet_cuda_fail(const char *file, int line, const char *call, const char *msg, const unet_op_args *a) {
    unet_cuda_fail_at(file, line, call, msg, unet_at_op(a));
}

/* The backend's own calls, outside any op: on inst's device; a call that
 * waits for the stream may see an earlier kernel's fault. */
static unet_cuda_site on(const cuda_instance *inst) { return unet_at_work(&inst->backend, NULL, 0); }
static unet_cuda_site waiting_on(const cuda_instance *inst) { return unet_at_work(&inst->backend, NULL, 1); }

static int env_flag(const char *name) {
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0") != 0;
}

extern "C" void unet_cuda_launched_at(const char *file, int line, const char *kernel, unet_cuda_site at) {
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) unet_cuda_fail_at(file, line, kernel, cudaGetErrorString(e), at);
    if (sync_each_launch < 0) sync_each_launch = env_flag("UNET_CUDA_SYNC");
    if (!sync_each_launch) return;
    const cuda_instance *inst = instance_of(at.backend);
    cudaStream_t stream = inst ? inst->ctx.stream : 0;
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    if (stream && cudaStreamIsCapturing(stream, &capture) == cudaSuccess && capture != cudaStreamCaptureStatusNone)
        return; /* waiting is illegal while a CUDA graph is being captured */
    e = stream ? cudaStreamSynchronize(stream) : cudaDeviceSynchronize();
    if (e != cudaSuccess)
        unet_cuda_fail_at(file, line, "kernel execution (UNET_CUDA_SYNC=1)", cudaGetErrorString(e), at);
}

/* ---------------------------------------------------------------------------
 * Memory and transfers
 * ------------------------------------------------------------------------- */

static unet_cuda_layout layout_of(const unet_backend *b, unet_shape s, unet_dtype t) {
    return unet_cuda_layout_of(instance_of(b)->ctx.act_format, s, t);
}

static unet_layout cuda_layout(const unet_backend *b, unet_dtype t) {
    unet_shape one = {1, 1, 1, 1};
    unet_cuda_format f = layout_of(b, one, t).format;
    return f == UNET_FMT_NHWC_BF16  ? UNET_LAYOUT_NHWC_BF16
           : f == UNET_FMT_NHWC_F32 ? UNET_LAYOUT_NHWC_F32
                                    : UNET_LAYOUT_NCHW;
}

static size_t cuda_tensor_bytes(const unet_backend *b, unet_shape s, unet_dtype t) {
    return unet_cuda_layout_bytes(layout_of(b, s, t));
}

static void *cuda_alloc(const unet_backend *b, size_t bytes) {
    const cuda_instance *inst = instance_of(b);
    /* never zero bytes (cudaMalloc would answer NULL, which means failure here) */
    size_t rounded = (bytes + 255) / 256 * 256;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, rounded ? rounded : 256);
    if (e == cudaErrorMemoryAllocation) {
        /* out of memory is an answer, not a fault: clear it, or the next launch check would report it */
        cudaGetLastError();
        return NULL;
    }
    /* any other error is most likely an earlier kernel's */
    if (e != cudaSuccess) unet_cuda_fail_at(__FILE__, __LINE__, "cudaMalloc", cudaGetErrorString(e), waiting_on(inst));
    return p;
}

static void cuda_free(const unet_backend *b, void *p) {
    if (p) UNET_CUDA_CHECK(cudaFree(p), waiting_on(instance_of(b)));
}

static void cuda_memset0(const unet_backend *b, void *p, size_t bytes) {
    const cuda_instance *inst = instance_of(b);
    UNET_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, inst->ctx.stream), on(inst));
}

/* Host to device, once in a run (the parameters, the optimizer state): from
 * pageable memory, which the driver stages before cudaMemcpyAsync returns,
 * so the host buffer may be reused at once. What a step uploads anew goes
 * through staging.h's page-locked buffers instead. */
static void copy_in(const cuda_instance *inst, void *dst, const void *host, size_t bytes) {
    if (bytes) UNET_CUDA_CHECK(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, inst->ctx.stream), on(inst));
}

/* Device to host, waiting for the copy (and so for everything before it). */
static void copy_out(const cuda_instance *inst, void *host, const void *src, size_t bytes) {
    if (bytes)
        UNET_CUDA_CHECK(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, inst->ctx.stream), waiting_on(inst));
    UNET_CUDA_CHECK(cudaStreamSynchronize(inst->ctx.stream), waiting_on(inst));
}

/* The host buffer an NHWC download unpacks from, grown when a larger one is
 * asked for and kept. Reusing it at once is safe: copy_out waits. Out of
 * host memory ends the run (as a failed call would). */
static void *unpacking_buffer(const unet_backend *b, size_t bytes) {
    cuda_instance *inst = (cuda_instance *)b->ctx;
    if (bytes > inst->unpacking_bytes) {
        void *p = realloc(inst->unpacking, bytes);
        if (!p) {
            char msg[96];
            snprintf(msg, sizeof msg, "out of host memory for %zu bytes of a download", bytes);
            unet_cuda_fail_at(__FILE__, __LINE__, "realloc", msg, on(inst));
        }
        inst->unpacking = p;
        inst->unpacking_bytes = bytes;
    }
    return inst->unpacking;
}

/* A step's inputs (and any tensor): staged in page-locked memory (staging.h),
 * NHWC activations converted on the host straight into it. */
static void cuda_upload(const unet_backend *b, void *dst, const void *host, unet_shape s, unet_dtype t) {
    cuda_instance *inst = (cuda_instance *)b->ctx;
    unet_cuda_layout l = layout_of(b, s, t);
    size_t bytes = unet_cuda_layout_bytes(l);
    if (!bytes) return;
    void *pinned = unet_cuda_stage(&inst->ctx, dst, bytes, on(inst));
    if (l.format != UNET_FMT_NCHW_F32)
        unet_cuda_pack(l, pinned, (const float *)host);
    else
        memcpy(pinned, host, bytes);
    unet_cuda_stage_copy(&inst->ctx, dst, bytes, on(inst));
}

static void cuda_download(const unet_backend *b, void *host, const void *src, unet_shape s, unet_dtype t) {
    const cuda_instance *inst = instance_of(b);
    unet_cuda_layout l = layout_of(b, s, t);
    if (l.format == UNET_FMT_NCHW_F32) {
        copy_out(inst, host, src, unet_shape_count(s) * unet_dtype_size(t));
        return;
    }
    void *packed = unpacking_buffer(b, unet_cuda_layout_bytes(l));
    copy_out(inst, packed, src, unet_cuda_layout_bytes(l));
    unet_cuda_unpack(l, (float *)host, packed);
}

static void cuda_upload_f32(const unet_backend *b, float *dst, const float *host, size_t n) {
    copy_in(instance_of(b), dst, host, n * sizeof(float));
}

static void cuda_download_f32(const unet_backend *b, float *host, const float *src, size_t n) {
    copy_out(instance_of(b), host, src, n * sizeof(float));
}

/* The per-step values (seed, optimizer scalars): staged like the inputs. */
static void cuda_upload_bytes(const unet_backend *b, void *dst, const void *host, size_t bytes) {
    cuda_instance *inst = (cuda_instance *)b->ctx;
    unet_cuda_upload_staged(&inst->ctx, dst, host, bytes, on(inst));
}

/* cudaMemGetInfo of the instance's device: an answer for planning, not a fault, so a failure is returned. */
static int cuda_memory_info(const unet_backend *b, size_t *free_bytes, size_t *total_bytes, char *err, size_t errlen) {
    const cuda_instance *inst = instance_of(b);
    cudaError_t e = cudaSetDevice(inst->ctx.device);
    if (e == cudaSuccess) e = cudaMemGetInfo(free_bytes, total_bytes);
    if (e != cudaSuccess) {
        snprintf(err, errlen, "cudaMemGetInfo on cuda:%d: %s", inst->ctx.device, cudaGetErrorString(e));
        cudaGetLastError(); /* leave no error for the next check */
        return -1;
    }
    return 0;
}

static const char *cuda_nondeterminism(const unet_backend *b) {
    return unet_cudnn_nondeterminism(&((cuda_instance *)b->ctx)->ctx);
}

static void cuda_sync(const unet_backend *b) {
    const cuda_instance *inst = instance_of(b);
    UNET_CUDA_CHECK(cudaStreamSynchronize(inst->ctx.stream), waiting_on(inst));
}

/* ---------------------------------------------------------------------------
 * Optimizers: one pass over the contiguous block, the CPU twins'
 * (src/kernels/cpu/backend.c) arithmetic operation for operation. The
 * intrinsics round each operation on its own, as the CPU does (C11 mode
 * contracts nothing into FMA), so both backends produce the same bits.
 * ------------------------------------------------------------------------- */

/* What the kernels compute with: the constants come by value, lr and first
 * from the step's unet_optim_scalars in device memory, read when the kernel
 * runs (so that a replayed graph takes each step's values). */
typedef struct {
    float lr, momentum, wd;
    int first;
} sgd_args;

static __device__ __forceinline__ void sgd_one(float &p, float g, float *buf, const sgd_args &s) {
    float d = __fadd_rn(g, __fmul_rn(s.wd, p));
    if (s.momentum != 0.0f) {
        float m = s.first ? d : __fadd_rn(__fmul_rn(s.momentum, *buf), d);
        *buf = m;
        d = m;
    }
    p = __fsub_rn(p, __fmul_rn(s.lr, d));
}

/* vec: every pointer 16-byte aligned, so the first n/4*4 values go as float4. */
static __global__ void sgd_kernel(float *p, const float *g, float *buf, long long n, const unet_optim_scalars *step,
                                  sgd_args s, int vec) {
    if (step->skip) return;
    s.lr = step->lr;
    s.first = step->first;
    long long n4 = vec ? n / 4 : 0;
    for (long long q = unet_global_thread(); q < n4; q += unet_grid_threads()) {
        float4 pv = reinterpret_cast<float4 *>(p)[q];
        float4 gv = reinterpret_cast<const float4 *>(g)[q];
        float4 bv = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (s.momentum != 0.0f) bv = reinterpret_cast<float4 *>(buf)[q];
        sgd_one(pv.x, gv.x, &bv.x, s);
        sgd_one(pv.y, gv.y, &bv.y, s);
        sgd_one(pv.z, gv.z, &bv.z, s);
        sgd_one(pv.w, gv.w, &bv.w, s);
        reinterpret_cast<float4 *>(p)[q] = pv;
        if (s.momentum != 0.0f) reinterpret_cast<float4 *>(buf)[q] = bv;
    }
    for (long long i = n4 * 4 + unet_global_thread(); i < n; i += unet_grid_threads()) {
        float pi = p[i];
        sgd_one(pi, g[i], s.momentum != 0.0f ? &buf[i] : NULL, s);
        p[i] = pi;
    }
}

typedef struct {
    float decay; /* per step: AdamW's 1 - lr * wd */
    float wd;    /* Adam: L2 added to the gradient */
    int adamw;
    float beta1, one_minus_beta1, beta2, one_minus_beta2, eps;
    float step_size; /* per step: lr / (1 - beta1^t) */
    float bc2_sqrt;  /* per step: sqrt(1 - beta2^t) */
} adam_args;

static __device__ __forceinline__ void adam_one(float &p, float g, float &m, float &v, const adam_args &s) {
    if (s.adamw)
        p = __fmul_rn(p, s.decay);
    else
        g = __fadd_rn(g, __fmul_rn(s.wd, p));
    m = __fadd_rn(__fmul_rn(s.beta1, m), __fmul_rn(s.one_minus_beta1, g));
    v = __fadd_rn(__fmul_rn(s.beta2, v), __fmul_rn(__fmul_rn(s.one_minus_beta2, g), g));
    float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), s.bc2_sqrt), s.eps);
    p = __fsub_rn(p, __fdiv_rn(__fmul_rn(s.step_size, m), denom));
}

static __global__ void adam_kernel(float *p, const float *g, float *m, float *v, long long n,
                                   const unet_optim_scalars *step, adam_args s, int vec) {
    if (step->skip) return;
    s.decay = step->decay;
    s.step_size = step->step_size;
    s.bc2_sqrt = step->bc2_sqrt;
    long long n4 = vec ? n / 4 : 0;
    for (long long q = unet_global_thread(); q < n4; q += unet_grid_threads()) {
        float4 pv = reinterpret_cast<float4 *>(p)[q];
        float4 gv = reinterpret_cast<const float4 *>(g)[q];
        float4 mv = reinterpret_cast<float4 *>(m)[q];
        float4 vv = reinterpret_cast<float4 *>(v)[q];
        adam_one(pv.x, gv.x, mv.x, vv.x, s);
        adam_one(pv.y, gv.y, mv.y, vv.y, s);
        adam_one(pv.z, gv.z, mv.z, vv.z, s);
        adam_one(pv.w, gv.w, mv.w, vv.w, s);
        reinterpret_cast<float4 *>(p)[q] = pv;
        reinterpret_cast<float4 *>(m)[q] = mv;
        reinterpret_cast<float4 *>(v)[q] = vv;
    }
    for (long long i = n4 * 4 + unet_global_thread(); i < n; i += unet_grid_threads()) {
        float pi = p[i], mi = m[i], vi = v[i];
        adam_one(pi, g[i], mi, vi, s);
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
    }
}

/* A launch of an optimizer pass, checked: a failure names the pass and its size (there is no op node). */
static void check_pass(const cuda_instance *inst, const char *pass, size_t n, const char *file, int line) {
    char work[96];
    snprintf(work, sizeof work, "%s over %zu parameters", pass, n);
    unet_cuda_launched_at(file, line, "kernel launch", unet_at_work(&inst->backend, work, 0));
}

static void cuda_sgd(const unet_backend *b, float *p, const float *g, float *buf, size_t n,
                     const unet_optim_scalars *step, float momentum, float wd) {
    if (n == 0) return;
    const cuda_instance *inst = instance_of(b);
    sgd_args s = {0.0f, momentum, wd, 0};
    int vec = unet_aligned16(p) && unet_aligned16(g) && (momentum == 0.0f || unet_aligned16(buf));
    sgd_kernel<<<unet_blocks_for((long long)(vec ? n / 4 : n)), UNET_THREADS, 0, inst->ctx.stream>>>(
        p, g, buf, (long long)n, step, s, vec);
    check_pass(inst, "sgd", n, __FILE__, __LINE__);
}

static void cuda_adam(const unet_backend *b, float *p, const float *g, float *m, float *v, size_t n,
                      const unet_optim_scalars *step, float beta1, float beta2, float eps, float wd, int adamw) {
    if (n == 0) return;
    const cuda_instance *inst = instance_of(b);
    adam_args s;
    memset(&s, 0, sizeof s);
    s.wd = wd;
    s.adamw = adamw;
    s.beta1 = beta1;
    s.one_minus_beta1 = 1.0f - beta1;
    s.beta2 = beta2;
    s.one_minus_beta2 = 1.0f - beta2;
    s.eps = eps;
    int vec = unet_aligned16(p) && unet_aligned16(g) && unet_aligned16(m) && unet_aligned16(v);
    adam_kernel<<<unet_blocks_for((long long)(vec ? n / 4 : n)), UNET_THREADS, 0, inst->ctx.stream>>>(
        p, g, m, v, (long long)n, step, s, vec);
    check_pass(inst, "adam", n, __FILE__, __LINE__);
}

/* The guard before the update (the CPU twin's cpu_guard): the check finds any
 * non-finite gradient or statistic, each finder raising guard->found (a
 * maximum, so the order of the finders does not matter); one thread then
 * decides for the step, counts it and clears found; the statistics go back to
 * the last finite step's, or are kept as those. Three launches in stream
 * order, recorded in a CUDA graph like the update they guard. */
static __global__ void guard_check_kernel(const float *g, long long n, const float *state, long long n_state,
                                          unet_update_guard *guard) {
    for (long long i = unet_global_thread(); i < n + n_state; i += unet_grid_threads())
        if (!isfinite(i < n ? g[i] : state[i - n])) {
            atomicMax(&guard->found, 1);
            return;
        }
}

static __global__ void guard_decide_kernel(unet_optim_scalars *s, unet_update_guard *guard) {
    if (guard->found) {
        guard->found = 0;
        guard->bad_steps++;
        guard->last_bad = s->step + 1;
        if (!guard->first_bad) guard->first_bad = s->step + 1;
        if (!guard->skip_policy) guard->latched = 1;
        s->skip = 1;
    }
    if (guard->latched) s->skip = 1;
}

static __global__ void guard_state_kernel(float *state, float *state_good, long long n, const unet_optim_scalars *s) {
    const int skip = s->skip;
    for (long long i = unet_global_thread(); i < n; i += unet_grid_threads()) {
        if (skip)
            state[i] = state_good[i];
        else
            state_good[i] = state[i];
    }
}

static void cuda_guard(const unet_backend *b, const float *g, size_t n, float *state, float *state_good, size_t n_state,
                       unet_optim_scalars *s, unet_update_guard *guard) {
    const cuda_instance *inst = instance_of(b);
    cudaStream_t stream = inst->ctx.stream;
    if (n + n_state) {
        guard_check_kernel<<<unet_blocks_for((long long)(n + n_state)), UNET_THREADS, 0, stream>>>(
            g, (long long)n, state, (long long)n_state, guard);
        check_pass(inst, "guard check", n + n_state, __FILE__, __LINE__);
    }
    guard_decide_kernel<<<1, 1, 0, stream>>>(s, guard);
    check_pass(inst, "guard decision", n, __FILE__, __LINE__);
    if (n_state) {
        guard_state_kernel<<<unet_blocks_for((long long)n_state), UNET_THREADS, 0, stream>>>(state, state_good,
                                                                                             (long long)n_state, s);
        check_pass(inst, "guard statistics", n_state, __FILE__, __LINE__);
    }
}

/* ---------------------------------------------------------------------------
 * CUDA graphs: the step's launches recorded once by stream capture and
 * replayed. Every pointer the step uses is fixed by the plan, and every value
 * that changes between steps lives in device memory (the seed, the optimizer
 * scalars, the inputs), so one recording serves every later step.
 * ------------------------------------------------------------------------- */

struct unet_capture {
    cudaGraphExec_t exec;
};

static int cuda_begin_capture(const unet_backend *b, char *why, size_t whylen) {
    cuda_instance *inst = (cuda_instance *)b->ctx;
    if (sync_each_launch == 1) {
        snprintf(why, whylen, "UNET_CUDA_SYNC=1 waits for every kernel as it is launched, which a graph cannot do");
        return -1;
    }
    /* a fault of the eager steps before shows here as what it is, not as a failed capture */
    UNET_CUDA_CHECK(cudaStreamSynchronize(inst->ctx.stream), waiting_on(inst));
    /* thread-local: the loader's threads may call what they like meanwhile */
    cudaError_t e = cudaStreamBeginCapture(inst->ctx.stream, cudaStreamCaptureModeThreadLocal);
    if (e != cudaSuccess) {
        snprintf(why, whylen, "cudaStreamBeginCapture: %s", cudaGetErrorString(e));
        cudaGetLastError();
        return -1;
    }
    inst->ctx.capture_failure[0] = '\0';
    inst->ctx.capturing = 1;
    return 0;
}

static unet_capture *cuda_end_capture(const unet_backend *b, size_t *nodes, char *why, size_t whylen) {
    cuda_instance *inst = (cuda_instance *)b->ctx;
    inst->ctx.capturing = 0;
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    unet_capture *c = NULL;
    *nodes = 0;
    /* ends the capture whatever happened inside it (an invalidated capture still has to be ended) */
    cudaError_t e = cudaStreamEndCapture(inst->ctx.stream, &graph);
    if (inst->ctx.capture_failure[0])
        snprintf(why, whylen, "%s", inst->ctx.capture_failure); /* the cause; a failed end is its consequence */
    else if (e != cudaSuccess || !graph)
        snprintf(why, whylen, "cudaStreamEndCapture: %s", cudaGetErrorString(e));
    else if ((e = cudaGraphGetNodes(graph, NULL, nodes)) != cudaSuccess)
        snprintf(why, whylen, "cudaGraphGetNodes: %s", cudaGetErrorString(e));
    else if ((e = cudaGraphInstantiate(&exec, graph, 0)) != cudaSuccess)
        snprintf(why, whylen, "cudaGraphInstantiate (%zu nodes): %s", *nodes, cudaGetErrorString(e));
    else if ((e = cudaGraphUpload(exec, inst->ctx.stream)) != cudaSuccess) /* the first replay pays no setup */
        snprintf(why, whylen, "cudaGraphUpload (%zu nodes): %s", *nodes, cudaGetErrorString(e));
    else if (!(c = (unet_capture *)calloc(1, sizeof *c)))
        snprintf(why, whylen, "out of host memory for the graph");
    if (graph) cudaGraphDestroy(graph); /* the executable graph is a copy */
    if (c) {
        c->exec = exec;
        return c;
    }
    if (exec) cudaGraphExecDestroy(exec);
    cudaGetLastError(); /* nothing of the failed capture may resurface in a later check */
    inst->ctx.capture_failure[0] = '\0';
    return NULL;
}

static void cuda_replay(const unet_backend *b, unet_capture *c) {
    const cuda_instance *inst = instance_of(b);
    UNET_CUDA_CHECK(cudaGraphLaunch(c->exec, inst->ctx.stream), on(inst));
}

static void cuda_release(const unet_backend *b, unet_capture *c) {
    if (!c) return;
    UNET_CUDA_CHECK(cudaGraphExecDestroy(c->exec), on(instance_of(b)));
    free(c);
}

/* ---------------------------------------------------------------------------
 * Creation
 * ------------------------------------------------------------------------- */

static int parse_precision(const char *s, unet_precision *out, char *err, size_t errlen) {
    if (!s || !strcmp(s, "fp32")) {
        *out = UNET_PREC_FP32;
        return 0;
    }
    if (!strcmp(s, "tf32")) {
        *out = UNET_PREC_TF32;
        return 0;
    }
    if (!strcmp(s, "bf16")) {
        *out = UNET_PREC_BF16;
        return 0;
    }
    snprintf(err, errlen, "unknown precision '%s': use fp32, tf32 or bf16", s);
    return -1;
}

/* The format of activations for a precision and a layout (NULL or "auto":
 * NCHW for fp32 and tf32 until a GPU has measured which is faster). */
static int parse_layout(const char *s, unet_precision precision, unet_cuda_format *out, char *err, size_t errlen) {
    int nhwc = s && !strcmp(s, "nhwc"), nchw = s && !strcmp(s, "nchw");
    if (s && strcmp(s, "auto") && !nhwc && !nchw) {
        snprintf(err, errlen, "unknown layout '%s': use auto, nchw or nhwc", s);
        return -1;
    }
    if (precision == UNET_PREC_BF16) {
        if (nchw) {
            snprintf(err, errlen,
                     "--layout nchw is for fp32 and tf32: bf16 keeps activations NHWC (channels last, "
                     "the layout of bf16 tensor cores); use --layout auto or nhwc with bf16");
            return -1;
        }
        *out = UNET_FMT_NHWC_BF16;
        return 0;
    }
    *out = nhwc ? UNET_FMT_NHWC_F32 : UNET_FMT_NCHW_F32;
    return 0;
}

/* Fills err and returns -1 when a setup call fails; the CUDA error is
 * cleared so that it does not resurface in a later, unrelated check. */
static int setup_failed(cudaError_t e, const char *what, int device, char *err, size_t errlen) {
    snprintf(err, errlen, "cannot use CUDA device %d: %s failed: %s", device, what, cudaGetErrorString(e));
    cudaGetLastError();
    return -1;
}

static int create_instance(cuda_instance *inst, int device, unet_precision precision, unet_cuda_format format,
                           int deterministic, char *err, size_t errlen) {
    cudaError_t e;
    int count = 0;
    e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        snprintf(err, errlen,
                 "no CUDA device: %s (run with --device cpu, or on a machine with an NVIDIA GPU and driver)",
                 e != cudaSuccess ? cudaGetErrorString(e) : "the driver lists none");
        cudaGetLastError();
        return -1;
    }
    if (device < 0 || device >= count) {
        snprintf(err, errlen, "CUDA device %d does not exist: this machine has %d (cuda:0 to cuda:%d)", device, count,
                 count - 1);
        return -1;
    }
    if ((e = cudaSetDevice(device)) != cudaSuccess) return setup_failed(e, "cudaSetDevice", device, err, errlen);
    cudaDeviceProp prop;
    if ((e = cudaGetDeviceProperties(&prop, device)) != cudaSuccess)
        return setup_failed(e, "cudaGetDeviceProperties", device, err, errlen);
    snprintf(inst->device_name, sizeof inst->device_name, "%s", prop.name);
    inst->cc_major = prop.major;
    inst->cc_minor = prop.minor;
    if (precision == UNET_PREC_BF16 && prop.major < 8) {
        /* refusals of bf16 begin with "precision bf16 " (tests/gpu/test_bf16_twins.py skips on them) */
        snprintf(err, errlen,
                 "precision bf16 needs a GPU of compute capability 8.0 or newer (bf16 tensor cores); CUDA device %d "
                 "(%s) is sm_%d%d: use --precision tf32 or fp32",
                 device, prop.name, prop.major, prop.minor);
        return -1;
    }
    /* A build without machine code for this GPU fails at its first launch;
     * asking for a kernel's attributes finds out now, with a clear remedy. */
    cudaFuncAttributes attr;
    if ((e = cudaFuncGetAttributes(&attr, sgd_kernel)) != cudaSuccess) {
        snprintf(err, errlen,
                 "this unet has no kernels for CUDA device %d (%s, sm_%d%d): %s; rebuild with "
                 "-DCMAKE_CUDA_ARCHITECTURES=%d%d-real",
                 device, prop.name, prop.major, prop.minor, cudaGetErrorString(e), prop.major, prop.minor);
        cudaGetLastError();
        return -1;
    }
    /* before any plan is built: an old cuDNN would otherwise surface as "no engine" at the first convolution */
    if (unet_cudnn_check_version(err, errlen)) return -1;

    unet_cuda_ctx *ctx = &inst->ctx;
    ctx->device = device;
    ctx->precision = precision;
    ctx->act_format = format;
    ctx->deterministic = deterministic;
    ctx->plans = NULL; /* cudnn_graph.c creates the cache on first use */
    if ((e = cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking)) != cudaSuccess)
        return setup_failed(e, "cudaStreamCreateWithFlags", device, err, errlen);
    cudnnStatus_t ds = cudnnCreate(&ctx->cudnn);
    if (ds == CUDNN_STATUS_SUCCESS) ds = cudnnSetStream(ctx->cudnn, ctx->stream);
    if (ds != CUDNN_STATUS_SUCCESS) {
        snprintf(err, errlen, "cannot use CUDA device %d: cuDNN initialisation failed: %s", device,
                 cudnnGetErrorString(ds));
        cudaGetLastError();
        return -1;
    }
    /* the 1x1 convolutions' matmuls (gemm.c); the stream and the precision go with each call */
    cublasStatus_t bs = cublasLtCreate(&ctx->cublaslt);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        snprintf(err, errlen, "cannot use CUDA device %d: cuBLASLt initialisation failed: %s", device,
                 cublasLtGetStatusString(bs));
        cudaGetLastError();
        return -1;
    }

    unet_backend *b = &inst->backend;
    memset(b, 0, sizeof *b);
    b->name = "cuda";
    b->ops[UNET_OP_CONV] = &unet_cuda_conv;
    b->ops[UNET_OP_CONV_T2] = &unet_cuda_conv_t2;
    b->ops[UNET_OP_BIAS] = &unet_cuda_bias;
    b->ops[UNET_OP_RELU] = &unet_cuda_relu;
    b->ops[UNET_OP_MAXPOOL2] = &unet_cuda_maxpool2;
    b->ops[UNET_OP_MAXPOOL] = &unet_cuda_maxpool;
    b->ops[UNET_OP_CROP_CONCAT] = &unet_cuda_crop_concat;
    b->ops[UNET_OP_CROP_ADD] = &unet_cuda_crop_add;
    b->ops[UNET_OP_UPSAMPLE2] = &unet_cuda_upsample2;
    b->ops[UNET_OP_BATCHNORM] = &unet_cuda_batchnorm;
    b->ops[UNET_OP_DROPOUT] = &unet_cuda_dropout;
    b->ops[UNET_OP_SOFTMAX_CE] = &unet_cuda_softmax_ce;
    b->ops[UNET_OP_BCE_DICE] = &unet_cuda_bce_dice;
    b->ctx = ctx;
    b->tensor_bytes = cuda_tensor_bytes;
    b->alloc = cuda_alloc;
    b->free = cuda_free;
    b->memset0 = cuda_memset0;
    b->upload = cuda_upload;
    b->download = cuda_download;
    b->upload_f32 = cuda_upload_f32;
    b->download_f32 = cuda_download_f32;
    b->upload_bytes = cuda_upload_bytes;
    b->sync = cuda_sync;
    b->sgd = cuda_sgd;
    b->adam = cuda_adam;
    b->guard = cuda_guard;
    b->begin_capture = cuda_begin_capture;
    b->end_capture = cuda_end_capture;
    b->replay = cuda_replay;
    b->release = cuda_release;
    b->memory_info = cuda_memory_info;
    b->layout = cuda_layout;
    b->nondeterminism = cuda_nondeterminism;
    b->warper_create = unet_cuda_warper_create;
    b->warp_batch = unet_cuda_warp_batch;
    b->warper_free = unet_cuda_warper_free;
    b->dist_id = unet_cuda_dist_id;
    b->dist_open = unet_cuda_dist_open;
    return 0;
}

extern "C" int unet_cuda_devices(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* no driver, no device: an answer, not a fault */
        return 0;
    }
    return n;
}

extern "C" const char *unet_cuda_absent(void) { return NULL; }

extern "C" const unet_backend *unet_cuda_backend(int device, const char *precision, const char *layout,
                                                 int deterministic, char *err, size_t errlen) {
    unet_precision prec;
    unet_cuda_format format;
    if (parse_precision(precision, &prec, err, errlen) || parse_layout(layout, prec, &format, err, errlen)) return NULL;
    deterministic = deterministic != 0;
    if (sync_each_launch < 0) sync_each_launch = env_flag("UNET_CUDA_SYNC");
    for (int i = 0; i < n_instances; i++)
        if (instances[i]->ctx.device == device && instances[i]->ctx.precision == prec &&
            instances[i]->ctx.act_format == format && instances[i]->ctx.deterministic == deterministic) {
            /* the calling thread works on this device from now on */
            cudaError_t e = cudaSetDevice(device);
            if (e != cudaSuccess) {
                setup_failed(e, "cudaSetDevice", device, err, errlen);
                return NULL;
            }
            return &instances[i]->backend;
        }
    if (n_instances == MAX_INSTANCES) {
        snprintf(err, errlen,
                 "too many CUDA backends in one process (%d choices of device, precision, layout, determinism)",
                 MAX_INSTANCES);
        return NULL;
    }
    cuda_instance *inst = (cuda_instance *)calloc(1, sizeof *inst);
    if (!inst) {
        snprintf(err, errlen, "out of host memory creating the CUDA backend");
        return NULL;
    }
    if (create_instance(inst, device, prec, format, deterministic, err, errlen)) {
        /* handles made before the failure stay: the process is about to report and stop */
        free(inst);
        return NULL;
    }
    instances[n_instances++] = inst;
    return &inst->backend;
}
