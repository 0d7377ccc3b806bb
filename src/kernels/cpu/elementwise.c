/* Element-wise ops: ReLU (or ReLU6) and inverted dropout. */
#include <stdint.h>

#include "kernels/cpu/act.h"
#include "kernels/cpu/grad.h"
#include "kernels/cpu/ops.h"
#include "unet/rng.h"

/* The relu node's activation: ReLU6 when asked, else ReLU (a node's default, none, reads as ReLU). */
static unet_act relu_act(const unet_op_args *a) {
    return a->node->act == UNET_ACT_RELU6 ? UNET_ACT_RELU6 : UNET_ACT_RELU;
}

static void relu_forward(const unet_op_args *a) {
    const float *x = a->in[0];
    float *y = a->out;
    size_t n = unet_shape_count(a->out_shape);
    if (relu_act(a) == UNET_ACT_RELU6) {
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) y[i] = unet_relu6(x[i]);
        return;
    }
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) y[i] = x[i] < 0.0f ? 0.0f : x[i]; /* NaN passes, as in PyTorch */
}

/* The mask comes from the output (the plan keeps out, not in, for this backward). */
static void relu_backward(const unet_op_args *a) {
    float *dx = a->din[0];
    if (!dx) return;
    const float *y = a->out, *dy = a->dout;
    int acc = a->din_accumulate[0];
    size_t n = unet_shape_count(a->out_shape);
    if (relu_act(a) == UNET_ACT_RELU6) {
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) {
            float g = dy[i];
            unet_grad_store(dx, i, y[i] > 0.0f && y[i] < 6.0f ? g : 0.0f, acc);
        }
        return;
    }
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = dy[i]; /* loaded unconditionally: a conditional load keeps GCC from vectorising */
        unet_grad_store(dx, i, y[i] > 0.0f ? g : 0.0f, acc);
    }
}

const unet_op_impl unet_cpu_relu = {.forward = relu_forward, .backward = relu_backward};

/* The mask is a pure function of (step seed, node, flat NCHW index in the
 * global batch), so the backward recomputes it instead of saving it, the CUDA
 * twin draws the same one, and data-parallel ranks draw the slices of the
 * single-process batch's mask. Kept values are multiplied by 1/(1-p) rounded
 * to float, as PyTorch's scaled mask does. */
typedef struct {
    uint64_t key, base; /* base: the global flat index of this batch's first element */
    float p, scale;
} dropout_mask;

static dropout_mask dropout_mask_of(const unet_op_args *a) {
    unet_shape s = a->out_shape;
    dropout_mask m = {unet_rng_key(*a->seed, (uint64_t)a->node_index, 0),
                      a->first_sample * (uint64_t)s.c * (uint64_t)s.h * (uint64_t)s.w, a->node->p, 0.0f};
    m.scale = m.p < 1.0f ? 1.0f / (1.0f - m.p) : 0.0f;
    return m;
}

static inline float dropout_apply(const dropout_mask *m, size_t i, float v) {
    return unet_uniform(m->key, m->base + i) >= m->p ? v * m->scale : 0.0f;
}

static void dropout_forward(const unet_op_args *a) {
    const float *x = a->in[0];
    float *y = a->out;
    size_t n = unet_shape_count(a->out_shape);
    if (!a->training) {
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) y[i] = x[i];
        return;
    }
    dropout_mask m = dropout_mask_of(a);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) y[i] = dropout_apply(&m, i, x[i]);
}

static void dropout_backward(const unet_op_args *a) {
    float *dx = a->din[0];
    if (!dx) return;
    const float *dy = a->dout;
    int acc = a->din_accumulate[0];
    size_t n = unet_shape_count(a->out_shape);
    if (!a->training) {
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) unet_grad_store(dx, i, dy[i], acc);
        return;
    }
    dropout_mask m = dropout_mask_of(a);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) unet_grad_store(dx, i, dropout_apply(&m, i, dy[i]), acc);
}

const unet_op_impl unet_cpu_dropout = {.forward = dropout_forward, .backward = dropout_backward};
