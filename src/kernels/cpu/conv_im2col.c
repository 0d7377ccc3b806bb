/* The CPU convolution at groups 1 for any k, stride and pad (conv_common.h):
 * ResNet's 7x7 stride-2 stem and its 3x3 and 1x1 stride-2 convolutions.
 *
 * A band of output rows of one image at a time: the band's windows are
 * copied into columns, col[(c, ky, kx)][(oy, ox)] = x[c][oy s - pad + ky]
 * [ox s - pad + kx] (zero in the padding), K = C k k rows of the band's P
 * pixels, and then
 *   forward  y[:, band] = W (O x K) . col            conv_gemm_run, bias and activation in its epilogue
 *   dweight  dW += dz[:, band] . col^T              conv_dot_run
 *   dinput   dcol = W^T . dz[:, band], added back onto dx window by window (col2im)
 * where dz is dout masked by the activation. Every output element is summed
 * by one thread in an order fixed by the shape: the same bits for any thread
 * count. dx's windows are added channel by channel, band after band, taps in
 * row-major order. */
#include <omp.h>
#include <string.h>

#include "kernels/cpu/conv_common.h"
#include "kernels/cpu/conv_gemm.h"

typedef struct {
    int n, c, h, w, o, ho, wo, k, stride, pad;
    int kk;   /* rows of col: c k k */
    int band; /* output rows per band */
} im2col_dims;

static im2col_dims dims_of(const unet_op_args *a) {
    unet_shape si = a->in_shape[0], so = a->out_shape;
    const unet_node *nd = a->node;
    im2col_dims d = {si.n, si.c, si.h, si.w, so.c, so.h, so.w, nd->k, nd->stride, nd->pad, si.c * nd->k * nd->k, 0};
    d.band = band_rows(d.ho, (size_t)d.kk * d.wo);
    return d;
}

/* Floats between rows of col (and dcol): a whole band's pixels. */
static size_t col_stride(const im2col_dims *d) { return (size_t)d->band * d->wo; }

typedef struct {
    float *threads, *col, *dcol;
    size_t thread_floats;
    long *rows_col, *rows_dz; /* B row tables: col's rows, dz's channels */
    double *dbias;
} im2col_ws;

static im2col_ws layout(const im2col_dims *d, int backward, carver *cv) {
    im2col_ws L = {0};
    L.thread_floats = round16(conv_gemm_thread_floats(backward ? d->kk : d->o, 0));
    L.threads = carve(cv, L.thread_floats * conv_thread_slots());
    L.col = carve(cv, (size_t)d->kk * col_stride(d));
    L.rows_col = carve_longs(cv, (size_t)d->kk);
    if (backward) {
        L.dcol = carve(cv, (size_t)d->kk * col_stride(d));
        L.rows_dz = carve_longs(cv, (size_t)d->o);
        L.dbias = (double *)carve(cv, 2 * (size_t)d->o);
    }
    return L;
}

size_t conv_im2col_workspace_bytes(const unet_op_args *a) {
    im2col_dims d = dims_of(a);
    carver f = {NULL, 0}, b = {NULL, 0};
    layout(&d, 0, &f);
    layout(&d, 1, &b);
    return (f.top > b.top ? f.top : b.top) * sizeof(float);
}

/* The output columns [*lo, *hi) whose input column ox s - pad + kx lies
 * inside the image; the others read padding. */
static void inside_columns(const im2col_dims *d, int kx, int *lo, int *hi) {
    int first = d->pad - kx, last = d->w - 1 + d->pad - kx; /* ox s must lie in [first, last] */
    *lo = first <= 0 ? 0 : (first + d->stride - 1) / d->stride;
    *hi = last < 0 ? 0 : last / d->stride + 1;
    if (*hi > d->wo) *hi = d->wo;
    if (*lo > *hi) *lo = *hi;
}

/* The input row that output row oy reads under tap row ky, or -1 (padding). */
static int input_row(const im2col_dims *d, int oy, int ky) {
    int iy = oy * d->stride - d->pad + ky;
    return iy >= 0 && iy < d->h ? iy : -1;
}

/* Rows [r0, r1) of col for output rows [oy0, oy0 + rows) of image xn. */
static void fill_cols(const im2col_dims *d, const float *xn, int oy0, int rows, float *col, long r0, long r1) {
    int taps = d->k * d->k;
    for (long r = r0; r < r1; r++) {
        int c = (int)(r / taps), ky = (int)(r % taps) / d->k, kx = (int)(r % taps) % d->k, lo, hi;
        inside_columns(d, kx, &lo, &hi);
        const float *xc = xn + (size_t)c * d->h * d->w;
        for (int i = 0; i < rows; i++) {
            float *dst = col + (size_t)r * col_stride(d) + (size_t)i * d->wo;
            int iy = input_row(d, oy0 + i, ky);
            if (iy < 0) {
                memset(dst, 0, (size_t)d->wo * sizeof(float));
                continue;
            }
            const float *src = xc + (size_t)iy * d->w;
            int shift = kx - d->pad;
            for (int ox = 0; ox < lo; ox++) dst[ox] = 0.0f;
            if (d->stride == 1)
                memcpy(dst + lo, src + lo + shift, (size_t)(hi - lo) * sizeof(float));
            else
                for (int ox = lo; ox < hi; ox++) dst[ox] = src[ox * d->stride + shift];
            for (int ox = hi; ox < d->wo; ox++) dst[ox] = 0.0f;
        }
    }
}

/* dx[c] of image n += the band's dcol rows of channels [c0, c1), each
 * window's value onto the input it read. */
static void add_cols(const im2col_dims *d, float *dxn, int oy0, int rows, const float *dcol, long c0, long c1) {
    for (long c = c0; c < c1; c++) {
        float *dxc = dxn + (size_t)c * d->h * d->w;
        for (int ky = 0; ky < d->k; ky++)
            for (int kx = 0; kx < d->k; kx++) {
                const float *src = dcol + ((size_t)(c * d->k + ky) * d->k + kx) * col_stride(d);
                int lo, hi, shift = kx - d->pad;
                inside_columns(d, kx, &lo, &hi);
                for (int i = 0; i < rows; i++) {
                    int iy = input_row(d, oy0 + i, ky);
                    if (iy < 0) continue;
                    float *dst = dxc + (size_t)iy * d->w;
                    const float *g = src + (size_t)i * d->wo;
                    for (int ox = lo; ox < hi; ox++) dst[ox * d->stride + shift] += g[ox];
                }
            }
    }
}

void conv_im2col_forward(const unet_op_args *a) {
    im2col_dims d = dims_of(a);
    carver cv = {a->workspace, 0};
    im2col_ws L = layout(&d, 0, &cv);
    size_t hw = (size_t)d.h * d.w, ohw = (size_t)d.ho * d.wo;
    bias_act_ctx e = {d.o, a->param[1], a->node->act};
    conv_gemm_job job = {.m = d.o, .k = d.kk, .a = a->param[0], .a_row = (size_t)d.kk, .a_col = 1, .src = L.col,
                         .row_offset = L.rows_col, .ldc = ohw, .epilogue = bias_act_epilogue, .ctx = &e};
    long no_shift[CONV_MAX_TAPS] = {0};
#pragma omp parallel num_threads(conv_threads())
    {
        int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        long r0, r1;
        share(d.kk, tid, nth, &r0, &r1);
        conv_row_offsets(L.rows_col, r0, r1, col_stride(&d), 1, no_shift);
        for (int n = 0; n < d.n; n++)
            for (int oy0 = 0; oy0 < d.ho; oy0 += d.band) {
                int rows = d.ho - oy0 < d.band ? d.ho - oy0 : d.band;
                fill_cols(&d, (const float *)a->in[0] + n * d.c * hw, oy0, rows, L.col, r0, r1);
#pragma omp barrier
                conv_gemm_job j = job;
                j.n = rows * d.wo;
                j.c = (float *)a->out + n * d.o * ohw + (size_t)oy0 * d.wo;
                conv_gemm_run(&j, L.threads + (size_t)tid * L.thread_floats, tid, nth);
#pragma omp barrier
            }
    }
}

void conv_im2col_backward(const unet_op_args *a) {
    im2col_dims d = dims_of(a);
    carver cv = {a->workspace, 0};
    im2col_ws L = layout(&d, 1, &cv);
    size_t hw = (size_t)d.h * d.w, ohw = (size_t)d.ho * d.wo, nw = (size_t)d.o * d.kk;
    unet_act act = a->node->act;
    const float *x = a->in[0], *w = a->param[0], *out = a->out;
    float *dz = a->dout, *dx = a->din[0], *dw = a->dparam[0], *db = a->dparam[1];
    int acc = a->din_accumulate[0];
    /* dcol = W^T . dz: A[(c, t)][o] = w[o][(c, t)], read transposed */
    conv_gemm_job gx = {.m = d.kk, .k = d.o, .a = w, .a_row = 1, .a_col = (size_t)d.kk, .row_offset = L.rows_dz,
                        .c = L.dcol, .ldc = col_stride(&d)};
    conv_dot_job gw = {.m = d.o, .n = d.kk, .a_stride = ohw, .b = L.col, .row_offset = L.rows_col, .c = dw,
                       .ldc = (size_t)d.kk};
    long no_shift[CONV_MAX_TAPS] = {0};
#pragma omp parallel num_threads(conv_threads())
    {
        int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        float *scratch = L.threads + (size_t)tid * L.thread_floats;
        long o0, o1, c0, c1, r0, r1, w0, w1;
        share(d.o, tid, nth, &o0, &o1);
        share(d.c, tid, nth, &c0, &c1);
        share(d.kk, tid, nth, &r0, &r1);
        share((long)nw, tid, nth, &w0, &w1);
        conv_row_offsets(L.rows_col, r0, r1, col_stride(&d), 1, no_shift);
        conv_row_offsets(L.rows_dz, o0, o1, ohw, 1, no_shift);
        if (dw) memset(dw + w0, 0, (size_t)(w1 - w0) * sizeof(float));
        for (long o = o0; o < o1; o++) L.dbias[o] = 0.0;
        for (int n = 0; n < d.n; n++) {
            float *dzn = dz + n * d.o * ohw, *dxn = dx ? dx + n * d.c * hw : NULL;
            for (long o = o0; o < o1; o++) {
                if (act != UNET_ACT_NONE) unet_act_mask(act, dzn + o * ohw, out + n * d.o * ohw + o * ohw, ohw);
                L.dbias[o] += sum_f64(dzn + o * ohw, ohw);
            }
            if (dxn && !acc) memset(dxn + c0 * hw, 0, (size_t)(c1 - c0) * hw * sizeof(float));
#pragma omp barrier
            for (int oy0 = 0; oy0 < d.ho; oy0 += d.band) {
                int rows = d.ho - oy0 < d.band ? d.ho - oy0 : d.band;
                if (dw) fill_cols(&d, x + n * d.c * hw, oy0, rows, L.col, r0, r1);
                if (dxn) {
                    conv_gemm_job j = gx;
                    j.n = rows * d.wo;
                    j.src = dzn + (size_t)oy0 * d.wo;
                    conv_gemm_run(&j, scratch, tid, nth);
                }
#pragma omp barrier
                if (dw) {
                    conv_dot_job j = gw;
                    j.k = (long)rows * d.wo;
                    j.a = dzn + (size_t)oy0 * d.wo;
                    conv_dot_run(&j, tid, nth);
                }
                if (dxn) add_cols(&d, dxn, oy0, rows, L.dcol, c0, c1);
#pragma omp barrier
            }
        }
        if (db)
            for (long o = o0; o < o1; o++) db[o] = (float)L.dbias[o];
    }
}
