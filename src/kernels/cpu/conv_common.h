/* What the CPU convolutions share (conv.c, conv_im2col.c, conv_depthwise.c):
 * how a parallel region splits work, a bump allocator over the workspace,
 * band sizes and the bias gradient's sum in double. Static inline: each file
 * carries what it calls.
 *
 * The other two convolutions are unet_cpu_conv's (conv.c) for the attributes
 * its own 3x3 / 1x1 stride-1 kernels do not cover:
 *   conv_im2col_*     groups 1, any k, stride and pad: the windows copied into
 *                     columns (im2col), then conv_gemm.h's products;
 *   conv_depthwise_*  groups = channels: a direct kernel over zero-padded
 *                     planes split into stride phases.
 * And one that replaces conv.c's 3x3 forward where it is faster:
 *   conv_winograd_*   3x3 stride 1, forward only, where it measured faster
 *                     (UNET_CONV_WINOGRAD=0: never, 1: wherever C >= 8):
 *                     Winograd's F(2x2, 3x3), 16 products over transformed
 *                     tiles. */
#ifndef UNET_CPU_CONV_COMMON_H
#define UNET_CPU_CONV_COMMON_H

#include <stddef.h>

#include "kernels/cpu/act.h"
#include "unet/backend.h"

/* Band buffers are sized to about this many floats (8 MB): well inside L3,
 * large enough that each product over a band has plenty of columns. */
#define BAND_FLOATS ((size_t)2 << 20)

static inline size_t round16(size_t n) { return (n + 15) / 16 * 16; }

/* Contiguous share [lo, hi) of n items for thread tid. */
static inline void share(long n, int tid, int nthreads, long *lo, long *hi) {
    long per = (n + nthreads - 1) / nthreads;
    *lo = per * tid < n ? per * tid : n;
    *hi = *lo + per < n ? *lo + per : n;
}

/* Rows per band: as many as fit `budget` floats at row_floats each, at least
 * one; band_rows with the default budget BAND_FLOATS. */
static inline int band_rows_within(int rows, size_t row_floats, size_t budget) {
    size_t r = budget / (row_floats ? row_floats : 1);
    if (r < 1) r = 1;
    return r < (size_t)rows ? (int)r : rows;
}

static inline int band_rows(int rows, size_t row_floats) { return band_rows_within(rows, row_floats, BAND_FLOATS); }

/* A bump allocator over the workspace, in floats, 64-byte aligned pieces; with
 * base NULL it only measures (workspace_bytes). */
typedef struct {
    float *base;
    size_t top;
} carver;

static inline float *carve(carver *cv, size_t floats) {
    float *p = cv->base ? cv->base + cv->top : NULL;
    cv->top += round16(floats);
    return p;
}

static inline long *carve_longs(carver *cv, size_t n) { return (long *)carve(cv, n * sizeof(long) / sizeof(float)); }

/* Sum in double with four interleaved partial sums added in a fixed order. */
static inline double sum_f64(const float *p, size_t n) {
    double s[4] = {0.0, 0.0, 0.0, 0.0};
    size_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int l = 0; l < 4; l++) s[l] += p[i + l];
    for (; i < n; i++) s[0] += p[i];
    return (s[0] + s[1]) + (s[2] + s[3]);
}

/* dst = act(src + b), each activation its own loop; dst may be src. */
static inline void bias_act_run(float *dst, const float *src, int n, float b, unet_act act) {
    if (act == UNET_ACT_RELU)
        for (int i = 0; i < n; i++) dst[i] = src[i] + b > 0.0f ? src[i] + b : 0.0f;
    else if (act == UNET_ACT_RELU6)
        for (int i = 0; i < n; i++) dst[i] = unet_relu6(src[i] + b);
    else
        for (int i = 0; i < n; i++) dst[i] = src[i] + b;
}

/* A product's epilogue (conv_gemm.h) when it wrote straight into the
 * output: adds the bias (NULL: none) and the activation there. */
typedef struct {
    int m;
    const float *bias;
    unet_act act;
} bias_act_ctx;

static inline void bias_act_epilogue(const void *vctx, float *cb, size_t ldc, int i0, int i1, long q0, int nq) {
    const bias_act_ctx *e = vctx;
    (void)q0;
    for (int i = i0; i < i1; i++) {
        float *row = cb + (size_t)i * ldc; /* the output itself: the job's c */
        bias_act_run(row, row, nq, e->bias ? e->bias[i] : 0.0f, e->act);
    }
}

/* Whether unet_cpu_conv's own kernels run a node: 3x3 (valid or same) or
 * 1x1, stride 1, groups 1. */
static inline int conv_is_direct(const unet_node *n) {
    return n->stride == 1 && n->groups == 1 &&
           ((n->k == 3 && (n->pad == 0 || n->pad == 1)) || (n->k == 1 && n->pad == 0));
}

void conv_im2col_forward(const unet_op_args *a);
void conv_im2col_backward(const unet_op_args *a);
size_t conv_im2col_workspace_bytes(const unet_op_args *a);

/* Whether conv_winograd_forward runs a node's forward. */
int conv_winograd_fits(const unet_op_args *a);
void conv_winograd_forward(const unet_op_args *a);
size_t conv_winograd_workspace_bytes(const unet_op_args *a);

void conv_depthwise_forward(const unet_op_args *a);
void conv_depthwise_backward(const unet_op_args *a);
size_t conv_depthwise_workspace_bytes(const unet_op_args *a);

#endif
