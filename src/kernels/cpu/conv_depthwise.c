/* The CPU depthwise convolution (groups = channels = output channels,
 * conv_common.h): MobileNetV2's 3x3 at stride 1 and 2, any k, stride, pad.
 *
 * Each plane (n, c) is copied into a zero-padded buffer split into `stride`
 * phases by column, phase f holding the padded columns j stride + f; the
 * input that output column ox reads under tap kx, padded column
 * ox stride + kx, is then element ox + kx / stride of phase kx % stride, so
 * every tap is a contiguous run of a buffer row, with no edge cases:
 *   forward  y row += w[ky][kx] * buffer row, tap by tap, then bias, activation
 *   dinput   the same runs of a second buffer += w[ky][kx] * dz row, tap by
 *            tap, then unpadded into dx
 *   dweight  dw[ky][kx] += dz row . buffer row (float lanes, summed in double)
 * where dz is dout masked by the activation. The forward runs over planes;
 * the backward over channels, a thread summing its channels' weight and
 * bias gradients over the batch in a fixed order: the same bits for any
 * thread count. */
#include <omp.h>
#include <string.h>

#include "kernels/cpu/conv_common.h"
#include "kernels/cpu/conv_gemm.h"
#include "kernels/cpu/grad.h"

typedef struct {
    int n, c, h, w, ho, wo, k, stride, pad;
    int rows, pw;  /* padded rows, and columns of each phase */
    size_t phase;  /* floats of one phase */
    size_t buffer; /* floats of a buffer: stride phases */
} dw_dims;

static dw_dims dims_of(const unet_op_args *a) {
    unet_shape si = a->in_shape[0], so = a->out_shape;
    const unet_node *nd = a->node;
    dw_dims d = {si.n, si.c, si.h, si.w, so.h, so.w, nd->k, nd->stride, nd->pad, 0, 0, 0, 0};
    d.rows = d.h + 2 * d.pad;
    d.pw = (d.w + 2 * d.pad + d.stride - 1) / d.stride;
    d.phase = (size_t)d.rows * d.pw;
    d.buffer = round16(d.phase * d.stride);
    return d;
}

typedef struct {
    float *threads; /* per thread: the input buffer, the gradient buffer */
    double *taps;   /* per thread: the weight gradient of the channel at hand */
} dw_ws;

static dw_ws layout(const dw_dims *d, carver *cv) {
    dw_ws L;
    L.threads = carve(cv, 2 * d->buffer * conv_thread_slots());
    L.taps = (double *)carve(cv, 2 * round16((size_t)d->k * d->k) * conv_thread_slots()); /* doubles: 2 floats */
    return L;
}

size_t conv_depthwise_workspace_bytes(const unet_op_args *a) {
    dw_dims d = dims_of(a);
    carver cv = {NULL, 0};
    layout(&d, &cv);
    return cv.top * sizeof(float);
}

/* The run of a buffer that output row oy reads under tap (ky, kx). */
static inline float *tap_run(const dw_dims *d, float *buf, int oy, int ky, int kx) {
    return buf + (size_t)(kx % d->stride) * d->phase + (size_t)(oy * d->stride + ky) * d->pw + kx / d->stride;
}

/* Padded column j of a buffer row r (phase j % stride). */
static inline size_t padded_at(const dw_dims *d, int r, int j) {
    return (size_t)(j % d->stride) * d->phase + (size_t)r * d->pw + j / d->stride;
}

/* A plane into a zeroed buffer, split into phases. */
static void fill_buffer(const dw_dims *d, const float *plane, float *buf) {
    memset(buf, 0, d->buffer * sizeof(float));
    for (int y = 0; y < d->h; y++) {
        const float *src = plane + (size_t)y * d->w;
        if (d->stride == 1) {
            memcpy(buf + padded_at(d, y + d->pad, d->pad), src, (size_t)d->w * sizeof(float));
            continue;
        }
        for (int x = 0; x < d->w; x++) buf[padded_at(d, y + d->pad, x + d->pad)] = src[x];
    }
}

static void plane_forward(const dw_dims *d, const float *w, float b, unet_act act, float *buf, float *restrict y) {
    for (int oy = 0; oy < d->ho; oy++) {
        float *restrict row = y + (size_t)oy * d->wo;
        memset(row, 0, (size_t)d->wo * sizeof(float));
        for (int ky = 0; ky < d->k; ky++)
            for (int kx = 0; kx < d->k; kx++) {
                const float *restrict src = tap_run(d, buf, oy, ky, kx);
                float wv = w[ky * d->k + kx];
                for (int ox = 0; ox < d->wo; ox++) row[ox] += wv * src[ox];
            }
        bias_act_run(row, row, d->wo, b, act);
    }
}

void conv_depthwise_forward(const unet_op_args *a) {
    dw_dims d = dims_of(a);
    carver cv = {a->workspace, 0};
    dw_ws L = layout(&d, &cv);
    const float *x = a->in[0], *w = a->param[0], *bias = a->param[1];
    float *y = a->out;
    long planes = (long)d.n * d.c;
#pragma omp parallel for schedule(static) num_threads(conv_threads())
    for (long pl = 0; pl < planes; pl++) {
        float *buf = L.threads + 2 * d.buffer * (size_t)omp_get_thread_num();
        int c = (int)(pl % d.c);
        fill_buffer(&d, x + (size_t)pl * d.h * d.w, buf);
        plane_forward(&d, w + (size_t)c * d.k * d.k, bias ? bias[c] : 0.0f, a->node->act, buf,
                      y + (size_t)pl * d.ho * d.wo);
    }
}

/* sum of a[i] * b[i]: eight float lanes, added in a fixed order */
static float dot_lanes(const float *a, const float *b, int n) {
    float s[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) s[l] += a[i + l] * b[i + l];
    for (; i < n; i++) s[0] += a[i] * b[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

/* The weight gradient of one plane added to taps (k k doubles). */
static void plane_dweight(const dw_dims *d, const float *dz, float *buf, double *taps) {
    for (int oy = 0; oy < d->ho; oy++)
        for (int ky = 0; ky < d->k; ky++)
            for (int kx = 0; kx < d->k; kx++)
                taps[ky * d->k + kx] += dot_lanes(dz + (size_t)oy * d->wo, tap_run(d, buf, oy, ky, kx), d->wo);
}

/* dx of one plane (stored, or added when accumulating) from dz, through the gradient buffer. */
static void plane_dinput(const dw_dims *d, const float *w, const float *dz, float *gbuf, float *dx, int acc) {
    memset(gbuf, 0, d->buffer * sizeof(float));
    for (int oy = 0; oy < d->ho; oy++) {
        const float *restrict g = dz + (size_t)oy * d->wo;
        for (int ky = 0; ky < d->k; ky++)
            for (int kx = 0; kx < d->k; kx++) {
                float *restrict dst = tap_run(d, gbuf, oy, ky, kx), wv = w[ky * d->k + kx];
                for (int ox = 0; ox < d->wo; ox++) dst[ox] += wv * g[ox];
            }
    }
    for (int y = 0; y < d->h; y++)
        for (int x = 0; x < d->w; x++)
            unet_grad_store(dx, (size_t)y * d->w + x, gbuf[padded_at(d, y + d->pad, x + d->pad)], acc);
}

void conv_depthwise_backward(const unet_op_args *a) {
    dw_dims d = dims_of(a);
    carver cv = {a->workspace, 0};
    dw_ws L = layout(&d, &cv);
    const float *x = a->in[0], *w = a->param[0], *out = a->out;
    float *dz = a->dout, *dx = a->din[0], *dw = a->dparam[0], *db = a->dparam[1];
    unet_act act = a->node->act;
    size_t hw = (size_t)d.h * d.w, ohw = (size_t)d.ho * d.wo, kk = (size_t)d.k * d.k;
#pragma omp parallel for schedule(static) num_threads(conv_threads())
    for (int c = 0; c < d.c; c++) {
        int tid = omp_get_thread_num();
        float *buf = L.threads + 2 * d.buffer * (size_t)tid, *gbuf = buf + d.buffer;
        double *taps = L.taps + round16(kk) * (size_t)tid, bias_sum = 0.0;
        for (size_t t = 0; t < kk; t++) taps[t] = 0.0;
        for (int n = 0; n < d.n; n++) {
            size_t pl = (size_t)n * d.c + c;
            float *g = dz + pl * ohw;
            if (act != UNET_ACT_NONE) unet_act_mask(act, g, out + pl * ohw, ohw);
            bias_sum += sum_f64(g, ohw);
            if (dw) {
                fill_buffer(&d, x + pl * hw, buf);
                plane_dweight(&d, g, buf, taps);
            }
            if (dx) plane_dinput(&d, w + c * kk, g, gbuf, dx + pl * hw, a->din_accumulate[0]);
        }
        if (dw)
            for (size_t t = 0; t < kk; t++) dw[c * kk + t] = (float)taps[t];
        if (db) db[c] = (float)bias_sum;
    }
}
