/* The CPU backend: NCHW float32 in host memory; the reference every other
 * backend is held against. */
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

#include "kernels/cpu/conv_gemm.h"
#include "kernels/cpu/ops.h"

static size_t cpu_tensor_bytes(const unet_backend *b, unet_shape s, unet_dtype t) {
    (void)b;
    return unet_shape_count(s) * unet_dtype_size(t);
}

static void *cpu_alloc(const unet_backend *b, size_t bytes) {
    (void)b;
    /* 64-byte alignment for vector loads; never zero bytes, so NULL means failure */
    size_t rounded = (bytes + 63) / 64 * 64;
    return aligned_alloc(64, rounded ? rounded : 64);
}

static void cpu_free(const unet_backend *b, void *p) {
    (void)b;
    free(p);
}

static void cpu_memset0(const unet_backend *b, void *p, size_t bytes) {
    (void)b;
    memset(p, 0, bytes);
}

static void cpu_upload(const unet_backend *b, void *dst, const void *host, unet_shape s, unet_dtype t) {
    (void)b;
    memcpy(dst, host, unet_shape_count(s) * unet_dtype_size(t));
}

static void cpu_download(const unet_backend *b, void *host, const void *src, unet_shape s, unet_dtype t) {
    (void)b;
    memcpy(host, src, unet_shape_count(s) * unet_dtype_size(t));
}

static void cpu_copy_f32(const unet_backend *b, float *dst, const float *src, size_t n) {
    (void)b;
    memcpy(dst, src, n * sizeof(float));
}

static void cpu_upload_bytes(const unet_backend *b, void *dst, const void *host, size_t bytes) {
    (void)b;
    memcpy(dst, host, bytes);
}

static void cpu_sync(const unet_backend *b) { (void)b; }

static void cpu_sgd(const unet_backend *b, float *p, const float *g, float *buf, size_t n, const unet_optim_scalars *s,
                    float momentum, float wd) {
    (void)b;
    if (s->skip) return;
    const float lr = s->lr;
    const int first = s->first;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float d = g[i] + wd * p[i];
        if (momentum != 0.0f) {
            buf[i] = first ? d : momentum * buf[i] + d;
            d = buf[i];
        }
        p[i] -= lr * d;
    }
}

static void cpu_adam(const unet_backend *b, float *p, const float *g, float *m, float *v, size_t n,
                     const unet_optim_scalars *s, float beta1, float beta2, float eps, float wd, int adamw) {
    (void)b;
    if (s->skip) return;
    const float decay = s->decay, step_size = s->step_size, bc2_sqrt = s->bc2_sqrt;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float gi = g[i];
        if (adamw)
            p[i] *= decay;
        else
            gi += wd * p[i];
        m[i] = beta1 * m[i] + (1.0f - beta1) * gi;
        v[i] = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        float denom = sqrtf(v[i]) / bc2_sqrt + eps;
        p[i] -= step_size * m[i] / denom;
    }
}

static int any_nonfinite(const float *x, size_t n) {
    int found = 0;
#pragma omp parallel for reduction(| : found) schedule(static)
    for (size_t i = 0; i < n; i++) found |= !isfinite(x[i]);
    return found;
}

static void cpu_guard(const unet_backend *b, const float *g, size_t n, float *state, float *state_good, size_t n_state,
                      unet_optim_scalars *s, unet_update_guard *guard) {
    (void)b;
    if (any_nonfinite(g, n) || any_nonfinite(state, n_state)) {
        guard->bad_steps++;
        guard->last_bad = s->step + 1;
        if (!guard->first_bad) guard->first_bad = s->step + 1;
        if (!guard->skip_policy) guard->latched = 1;
        s->skip = 1;
    }
    if (guard->latched) s->skip = 1;
    if (s->skip)
        memcpy(state, state_good, n_state * sizeof(float));
    else
        memcpy(state_good, state, n_state * sizeof(float));
}

static const unet_backend cpu_backend = {
    .name = "cpu",
    .ops =
        {
            [UNET_OP_CONV] = &unet_cpu_conv,
            [UNET_OP_CONV_T2] = &unet_cpu_conv_t2,
            [UNET_OP_BIAS] = &unet_cpu_bias,
            [UNET_OP_RELU] = &unet_cpu_relu,
            [UNET_OP_MAXPOOL2] = &unet_cpu_maxpool2,
            [UNET_OP_MAXPOOL] = &unet_cpu_maxpool,
            [UNET_OP_CROP_CONCAT] = &unet_cpu_crop_concat,
            [UNET_OP_CROP_ADD] = &unet_cpu_crop_add,
            [UNET_OP_UPSAMPLE2] = &unet_cpu_upsample2,
            [UNET_OP_BATCHNORM] = &unet_cpu_batchnorm,
            [UNET_OP_DROPOUT] = &unet_cpu_dropout,
            [UNET_OP_SOFTMAX_CE] = &unet_cpu_softmax_ce,
            [UNET_OP_BCE_DICE] = &unet_cpu_bce_dice,
        },
    .tensor_bytes = cpu_tensor_bytes,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .memset0 = cpu_memset0,
    .upload = cpu_upload,
    .download = cpu_download,
    .upload_f32 = cpu_copy_f32,
    .download_f32 = cpu_copy_f32,
    .upload_bytes = cpu_upload_bytes,
    .sync = cpu_sync,
    .sgd = cpu_sgd,
    .adam = cpu_adam,
    .guard = cpu_guard,
    /* The optional slots stay NULL: no recorded steps, no device memory to
     * measure, no warp of its own (the loader's threads warp), no
     * communicator between devices (its ranks sum over MPI). */
};

/* Subnormal floats flushed to zero (FTZ) and read as zero (DAZ) on the
 * threads that compute: on x86 every operation on a subnormal takes a
 * microcode assist, about a hundred times a normal one. Training reaches
 * them: tiny gradients of deep layers, their Adam moments. A UNet+ run on the
 * mnfinder set trained 2.9x faster from the same checkpoint with them flushed
 * (its losses the same to the printed digits). The calling thread and every
 * OpenMP worker are set (libgomp's pool may exist already); threads created
 * later inherit the creator's setting. Values below 1.2e-38 are lost: far
 * below anything a float32 network's result depends on. The CUDA kernels
 * keep nvcc's default -ftz=false: NVIDIA GPUs take subnormals at full speed
 * in the FMA pipeline (adds and multiplies); only multi-instruction
 * sequences such as Adam's one square root per parameter take a slower path. */
static void flush_subnormals_here(void) {
#if defined(__x86_64__)
    _mm_setcsr(_mm_getcsr() | 0x8040); /* FTZ (bit 15) and DAZ (bit 6) */
#endif
}

static void flush_subnormals(void) {
    flush_subnormals_here();
#pragma omp parallel num_threads(conv_thread_slots())
    flush_subnormals_here();
}

const unet_backend *unet_cpu_backend(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, flush_subnormals);
    return &cpu_backend;
}
