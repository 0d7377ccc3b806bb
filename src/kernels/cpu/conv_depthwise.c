/* The CPU depthwise convolution (groups = channels = output channels,
 * conv_common.h): MobileNetV2's 3x3 at stride 1 and 2, any k, stride, pad.
 *
 * Each plane (n, c) is copied into a zero-padded buffer split into stride x
 * stride phases: phase (fy, fx) holds the padded rows r = fy (mod stride) and
 * columns j = fx (mod stride), at (r / stride, j / stride), in rows pw wide.
 * Output (oy, ox) reads under tap (ky, kx) the padded (oy s + ky, ox s + kx),
 * element (oy + ky / s, ox + kx / s) of phase (ky % s, kx % s): with the
 * output laid out "wide", q = oy pw + ox, that is element q + (ky / s) pw +
 * kx / s of the phase, so a tap is one contiguous run of ho pw values for the
 * whole plane (the last pw - wo columns of each wide row are garbage,
 * dropped when the output is stored):
 *   forward  wide y = sum over taps of w[ky][kx] * run, then bias, activation
 *   dinput   runs of a second buffer += w[ky][kx] * wide dz (zeros in its
 *            garbage columns), tap by tap; the buffer unpadded into dx
 *   dweight  dw[ky][kx] += wide dz . run (float lanes, summed in double)
 * where dz is dout masked by the activation. The forward runs over planes;
 * the backward over channels, a thread summing its channels' weight and bias
 * gradients over the batch in a fixed order: the same bits for any thread
 * count. */
#include <omp.h>
#include <string.h>

#include "kernels/cpu/conv_common.h"
#include "kernels/cpu/conv_gemm.h"

typedef struct {
    int n, c, h, w, ho, wo, k, stride, pad;
    int pw;        /* columns of a phase row, and of a wide row */
    size_t phase;  /* floats of one phase: its rows, and a tail the garbage columns' reads run into */
    size_t buffer; /* floats of a buffer: stride^2 phases */
    size_t wide;   /* floats of a wide plane: ho pw */
} dw_dims;

static dw_dims dims_of(const unet_op_args *a) {
    unet_shape si = a->in_shape[0], so = a->out_shape;
    const unet_node *nd = a->node;
    dw_dims d = {si.n, si.c, si.h, si.w, so.h, so.w, nd->k, nd->stride, nd->pad, 0, 0, 0, 0};
    int s = d.stride, rows = (d.h + 2 * d.pad + s - 1) / s;
    d.pw = (d.w + 2 * d.pad + s - 1) / s;
    d.phase = (size_t)rows * d.pw + (size_t)d.k;
    d.buffer = round16(d.phase * s * s);
    d.wide = (size_t)d.ho * d.pw;
    return d;
}

/* Per thread: the input buffer, the gradient buffer, a wide plane; the
 * weight gradient of the channel at hand (doubles). */
typedef struct {
    float *threads;
    size_t thread_floats;
    double *taps;
} dw_ws;

static dw_ws layout(const dw_dims *d, carver *cv) {
    dw_ws L;
    L.thread_floats = 2 * d->buffer + round16(d->wide);
    L.threads = carve(cv, L.thread_floats * conv_thread_slots());
    L.taps = (double *)carve(cv, 2 * round16((size_t)d->k * d->k) * conv_thread_slots()); /* doubles: 2 floats */
    return L;
}

size_t conv_depthwise_workspace_bytes(const unet_op_args *a) {
    dw_dims d = dims_of(a);
    carver cv = {NULL, 0};
    layout(&d, &cv);
    return cv.top * sizeof(float);
}

/* The run of buffer buf that tap (ky, kx) reads for the wide plane. */
static inline float *tap_run(const dw_dims *d, float *buf, int ky, int kx) {
    int s = d->stride;
    return buf + (size_t)((ky % s) * s + kx % s) * d->phase + (size_t)(ky / s) * d->pw + kx / s;
}

/* Where padded (r, j) lies in a buffer. */
static inline size_t padded_at(const dw_dims *d, int r, int j) {
    int s = d->stride;
    return (size_t)((r % s) * s + j % s) * d->phase + (size_t)(r / s) * d->pw + j / s;
}

/* The image columns x of phase column fx, (x + pad) % stride == fx: from
 * *x0 on, stride apart, consecutive in the phase from *at (in a buffer row r). */
static inline void phase_columns(const dw_dims *d, int r, int fx, int *x0, size_t *at) {
    *x0 = ((fx - d->pad) % d->stride + d->stride) % d->stride;
    *at = padded_at(d, r, *x0 + d->pad);
}

/* A plane into a zeroed buffer, split into phases. */
static void fill_buffer(const dw_dims *d, const float *plane, float *buf) {
    memset(buf, 0, d->buffer * sizeof(float));
    for (int y = 0; y < d->h; y++) {
        const float *src = plane + (size_t)y * d->w;
        for (int fx = 0; fx < d->stride; fx++) {
            int x0;
            size_t at;
            phase_columns(d, y + d->pad, fx, &x0, &at);
            if (d->stride == 1) {
                memcpy(buf + at, src, (size_t)d->w * sizeof(float));
                continue;
            }
            for (int x = x0, i = 0; x < d->w; x += d->stride, i++) buf[at + i] = src[x];
        }
    }
}

/* wide[q] = sum over taps of w[t] * run_t[q], taps in row-major order
 * (a 3x3 in one pass, with the sum in a register). */
static void wide_forward(const dw_dims *d, const float *w, float *buf, float *restrict wide) {
    size_t n = d->wide;
    if (d->k == 3) {
        const float *r[9];
        for (int t = 0; t < 9; t++) r[t] = tap_run(d, buf, t / 3, t % 3);
        for (size_t q = 0; q < n; q++) {
            float v = 0.0f;
            v += w[0] * r[0][q];
            v += w[1] * r[1][q];
            v += w[2] * r[2][q];
            v += w[3] * r[3][q];
            v += w[4] * r[4][q];
            v += w[5] * r[5][q];
            v += w[6] * r[6][q];
            v += w[7] * r[7][q];
            v += w[8] * r[8][q];
            wide[q] = v;
        }
        return;
    }
    memset(wide, 0, n * sizeof(float));
    for (int t = 0; t < d->k * d->k; t++) {
        const float *restrict run = tap_run(d, buf, t / d->k, t % d->k);
        float wv = w[t];
        for (size_t q = 0; q < n; q++) wide[q] += wv * run[q];
    }
}

void conv_depthwise_forward(const unet_op_args *a) {
    dw_dims d = dims_of(a);
    carver cv = {a->workspace, 0};
    dw_ws L = layout(&d, &cv);
    const float *x = a->in[0], *w = a->param[0], *bias = a->param[1];
    size_t kk = (size_t)d.k * d.k;
    long planes = (long)d.n * d.c;
#pragma omp parallel for schedule(static) num_threads(conv_threads())
    for (long pl = 0; pl < planes; pl++) {
        float *buf = L.threads + L.thread_floats * (size_t)omp_get_thread_num(), *wide = buf + 2 * d.buffer;
        int c = (int)(pl % d.c);
        fill_buffer(&d, x + (size_t)pl * d.h * d.w, buf);
        wide_forward(&d, w + c * kk, buf, wide);
        float *y = (float *)a->out + (size_t)pl * d.ho * d.wo;
        for (int oy = 0; oy < d.ho; oy++)
            bias_act_run(y + (size_t)oy * d.wo, wide + (size_t)oy * d.pw, d.wo, bias ? bias[c] : 0.0f, a->node->act);
    }
}

/* sum of a[i] * b[i]: eight float lanes, added in a fixed order */
static float dot_lanes(const float *a, const float *b, size_t n) {
    float s[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) s[l] += a[i + l] * b[i + l];
    for (; i < n; i++) s[0] += a[i] * b[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

/* dz of one plane into wide rows, zeros in the garbage columns. */
static void widen(const dw_dims *d, const float *dz, float *wide) {
    for (int oy = 0; oy < d->ho; oy++) {
        float *row = wide + (size_t)oy * d->pw;
        memcpy(row, dz + (size_t)oy * d->wo, (size_t)d->wo * sizeof(float));
        memset(row + d->wo, 0, (size_t)(d->pw - d->wo) * sizeof(float));
    }
}

/* dx of one plane (stored, or added when accumulating) from the wide dz,
 * through the gradient buffer. */
static void plane_dinput(const dw_dims *d, const float *w, const float *restrict wide, float *gbuf, float *dx,
                         int acc) {
    memset(gbuf, 0, d->buffer * sizeof(float));
    for (int t = 0; t < d->k * d->k; t++) {
        float *restrict run = tap_run(d, gbuf, t / d->k, t % d->k), wv = w[t];
        for (size_t q = 0; q < d->wide; q++) run[q] += wv * wide[q];
    }
    for (int y = 0; y < d->h; y++) {
        float *row = dx + (size_t)y * d->w;
        for (int fx = 0; fx < d->stride; fx++) {
            int x0;
            size_t at;
            phase_columns(d, y + d->pad, fx, &x0, &at);
            const float *src = gbuf + at;
            if (acc)
                for (int x = x0, i = 0; x < d->w; x += d->stride, i++) row[x] += src[i];
            else
                for (int x = x0, i = 0; x < d->w; x += d->stride, i++) row[x] = src[i];
        }
    }
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
        float *buf = L.threads + L.thread_floats * (size_t)tid, *gbuf = buf + d.buffer, *wide = gbuf + d.buffer;
        double *taps = L.taps + round16(kk) * (size_t)tid, bias_sum = 0.0;
        for (size_t t = 0; t < kk; t++) taps[t] = 0.0;
        for (int n = 0; n < d.n; n++) {
            size_t pl = (size_t)n * d.c + c;
            float *g = dz + pl * ohw;
            if (act != UNET_ACT_NONE) unet_act_mask(act, g, out + pl * ohw, ohw);
            bias_sum += sum_f64(g, ohw);
            widen(&d, g, wide);
            if (dw) {
                fill_buffer(&d, x + pl * hw, buf);
                for (size_t t = 0; t < kk; t++) taps[t] += dot_lanes(wide, tap_run(&d, buf, t / d.k, t % d.k), d.wide);
            }
            if (dx) plane_dinput(&d, w + c * kk, wide, gbuf, dx + pl * hw, a->din_accumulate[0]);
        }
        if (dw)
            for (size_t t = 0; t < kk; t++) dw[c * kk + t] = (float)taps[t];
        if (db) db[c] = (float)bias_sum;
    }
}
