/* The CPU convolution at groups 1 for any k, stride and pad (conv_common.h):
 * ResNet's 7x7 stride-2 stem and its 3x3 and 1x1 stride-2 convolutions.
 *
 * The batch's output rows are taken a band at a time: rows of one image, or,
 * where an image has fewer rows than a band holds (the small planes of deep
 * layers), whole images, so that the products stay long. The band's windows
 * are copied into columns, col[(c, ky, kx)][p] = x[c][oy s - pad + ky]
 * [ox s - pad + kx] for band pixel p = (n, oy, ox) (zero in the padding),
 * K = C k k rows, and then
 *   forward  Y = W (O x K) . col       conv_gemm_run; bias and activation in its epilogue (which
 *                                      also stores each image's pixels when a band holds several)
 *   dweight  dW += dz . col^T          conv_dot_run
 *   dinput   dcol = W^T . dz, added back onto dx window by window (col2im)
 * where dz is dout masked by the activation (a band of several images reads
 * it copied contiguous). Every output element is summed by one thread in an
 * order fixed by the shape: the same bits for any thread count. dx's windows
 * are added channel by channel, band after band, taps in row-major order. */
#include <omp.h>
#include <string.h>

#include "kernels/cpu/conv_common.h"
#include "kernels/cpu/conv_gemm.h"

/* Planes of at most this many output pixels go several to a band: a product
 * over one alone would be too narrow to keep the vector kernels busy (ResNet's
 * 16x16 and 8x8 stages at a 256 tile). Larger ones go a band of rows at a
 * time, written in place, which measured faster for them. */
#define SPAN_PIXELS 128

typedef struct {
    int n, c, h, w, o, ho, wo, k, stride, pad;
    int kk;   /* rows of col: c k k */
    int band; /* output rows per band, counted over the batch */
    int span; /* a band holds whole images (band a multiple of ho), else rows of one image */
} im2col_dims;

static im2col_dims dims_of(const unet_op_args *a) {
    unet_shape si = a->in_shape[0], so = a->out_shape;
    const unet_node *nd = a->node;
    im2col_dims d = {si.n, si.c, si.h, si.w, so.c, so.h, so.w, nd->k, nd->stride, nd->pad, si.c * nd->k * nd->k, 0, 0};
    d.band = band_rows(d.n * d.ho, (size_t)(d.kk > d.o ? d.kk : d.o) * d.wo);
    d.span = d.band >= 2 * d.ho && (size_t)d.ho * d.wo <= SPAN_PIXELS;
    d.band = d.span ? d.band / d.ho * d.ho : d.band < d.ho ? d.band : d.ho;
    return d;
}

/* The global output row after the band starting at g0 (global row g is row
 * g % ho of image g / ho). */
static int band_end(const im2col_dims *d, int g0) {
    int limit = d->span ? d->n * d->ho : (g0 / d->ho + 1) * d->ho;
    return g0 + d->band < limit ? g0 + d->band : limit;
}

/* Floats between rows of col, dcol and the band's dz: a whole band's pixels. */
static size_t band_stride(const im2col_dims *d) { return (size_t)d->band * d->wo; }

/* Floats of a row buffer: an input row zero-padded and split into stride
 * phases of pw columns (padded column j at phase j % stride, j / stride). */
static int phase_width(const im2col_dims *d) { return (d->w + 2 * d->pad + d->stride - 1) / d->stride; }
static size_t row_buffer_floats(const im2col_dims *d) { return round16((size_t)d->stride * phase_width(d)); }

typedef struct {
    float *threads, *rows_buf, *col, *dcol, *dz; /* rows_buf: each thread's row buffer; dz: span only */
    size_t thread_floats;
    long *rows_col, *rows_dz; /* B row tables: col's rows, the band's dz rows */
    double *dbias;
} im2col_ws;

static im2col_ws layout(const im2col_dims *d, int backward, carver *cv) {
    im2col_ws L = {0};
    L.thread_floats = round16(conv_gemm_thread_floats(backward ? d->kk : d->o, !backward && d->span));
    L.threads = carve(cv, L.thread_floats * conv_thread_slots());
    L.rows_buf = carve(cv, row_buffer_floats(d) * conv_thread_slots());
    L.col = carve(cv, (size_t)d->kk * band_stride(d));
    L.rows_col = carve_longs(cv, (size_t)d->kk);
    if (backward) {
        L.dcol = carve(cv, (size_t)d->kk * band_stride(d));
        if (d->span) L.dz = carve(cv, (size_t)d->o * band_stride(d));
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

/* An input row into the row buffer. */
static void split_row(const im2col_dims *d, const float *src, float *buf) {
    int pw = phase_width(d);
    memset(buf, 0, (size_t)d->stride * pw * sizeof(float));
    if (d->stride == 1) {
        memcpy(buf + d->pad, src, (size_t)d->w * sizeof(float));
        return;
    }
    for (int f = 0; f < d->stride; f++) {
        /* the columns x of phase f, (x + pad) % stride == f, consecutive there */
        int x0 = ((f - d->pad) % d->stride + d->stride) % d->stride;
        float *dst = buf + (size_t)f * pw + (x0 + d->pad) / d->stride;
        for (int x = x0, i = 0; x < d->w; x += d->stride, i++) dst[i] = src[x];
    }
}

/* Rows [r0, r1) of col for the band's output rows: global rows
 * [g0, g0 + rows), global row g being row g % ho of image g / ho. Output
 * column ox under tap kx reads padded column ox s + kx: element ox + kx / s
 * of phase kx % s of the row buffer, so each tap's row is one copy. */
static void fill_cols(const im2col_dims *d, const float *x, int g0, int rows, float *col, long r0, long r1,
                      float *buf) {
    int taps = d->k * d->k, pw = phase_width(d);
    /* the thread's rows, a tap row (c, ky) at a time: its k taps read one input row */
    for (long r = r0; r < r1;) {
        int c = (int)(r / taps), ky = (int)(r % taps) / d->k;
        long end = ((long)c * d->k + ky + 1) * d->k < r1 ? ((long)c * d->k + ky + 1) * d->k : r1;
        for (int i = 0; i < rows; i++) {
            int n = (g0 + i) / d->ho, iy = input_row(d, (g0 + i) % d->ho, ky);
            if (iy >= 0) split_row(d, x + (((size_t)n * d->c + c) * d->h + iy) * d->w, buf);
            for (long t = r; t < end; t++) {
                int kx = (int)(t % d->k);
                float *restrict dst = col + (size_t)t * band_stride(d) + (size_t)i * d->wo;
                const float *restrict src = buf + (size_t)(kx % d->stride) * pw + kx / d->stride;
                /* loops, not memcpy: the rows are short (tens of floats) */
                if (iy < 0)
                    for (int ox = 0; ox < d->wo; ox++) dst[ox] = 0.0f;
                else
                    for (int ox = 0; ox < d->wo; ox++) dst[ox] = src[ox];
            }
        }
        r = end;
    }
}

/* dx[:, c] += the band's dcol rows of channels [c0, c1), each window's value
 * onto the input it read. */
static void add_cols(const im2col_dims *d, float *dx, int g0, int rows, const float *dcol, long c0, long c1) {
    for (long c = c0; c < c1; c++)
        for (int ky = 0; ky < d->k; ky++)
            for (int kx = 0; kx < d->k; kx++) {
                const float *src = dcol + ((size_t)(c * d->k + ky) * d->k + kx) * band_stride(d);
                int lo, hi, shift = kx - d->pad;
                inside_columns(d, kx, &lo, &hi);
                for (int i = 0; i < rows; i++) {
                    int n = (g0 + i) / d->ho, iy = input_row(d, (g0 + i) % d->ho, ky);
                    if (iy < 0) continue;
                    float *dst = dx + (((size_t)n * d->c + c) * d->h + iy) * d->w;
                    const float *g = src + (size_t)i * d->wo;
                    for (int ox = lo; ox < hi; ox++) dst[ox * d->stride + shift] += g[ox];
                }
            }
}

/* The forward's epilogue: band pixels [q0, q0 + nq) of output channels [i0, i1),
 * plus bias and activation, into their images. */
typedef struct {
    const im2col_dims *d;
    float *y;
    int g0;
    const float *bias;
    unet_act act;
} store_ctx;

static void store_epilogue(const void *vctx, float *cb, size_t ldc, int i0, int i1, long q0, int nq) {
    const store_ctx *e = vctx;
    const im2col_dims *d = e->d;
    size_t ohw = (size_t)d->ho * d->wo;
    for (long q = q0; q < q0 + nq;) {
        /* a run of pixels within one image */
        long p = (long)e->g0 * d->wo + q, n = p / (long)ohw, in_image = p - n * (long)ohw;
        int run = (int)((long)ohw - in_image < q0 + nq - q ? (long)ohw - in_image : q0 + nq - q);
        for (int o = i0; o < i1; o++)
            bias_act_run(e->y + ((size_t)n * d->o + o) * ohw + in_image, cb + (size_t)o * ldc + (q - q0), run,
                         e->bias ? e->bias[o] : 0.0f, e->act);
        q += run;
    }
}

void conv_im2col_forward(const unet_op_args *a) {
    im2col_dims d = dims_of(a);
    carver cv = {a->workspace, 0};
    im2col_ws L = layout(&d, 0, &cv);
    size_t ohw = (size_t)d.ho * d.wo;
    bias_act_ctx direct = {d.o, a->param[1], a->node->act};
    conv_gemm_job job = {.m = d.o,
                         .k = d.kk,
                         .a = a->param[0],
                         .a_row = (size_t)d.kk,
                         .a_col = 1,
                         .src = L.col,
                         .row_offset = L.rows_col,
                         .ldc = ohw,
                         .epilogue = bias_act_epilogue,
                         .ctx = &direct};
    long no_shift[CONV_MAX_TAPS] = {0};
#pragma omp parallel num_threads(conv_threads())
    {
        int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        long r0, r1;
        share(d.kk, tid, nth, &r0, &r1);
        conv_row_offsets(L.rows_col, r0, r1, band_stride(&d), 1, no_shift);
        for (int g0 = 0, g1; g0 < d.n * d.ho; g0 = g1) {
            g1 = band_end(&d, g0);
            fill_cols(&d, a->in[0], g0, g1 - g0, L.col, r0, r1, L.rows_buf + (size_t)tid * row_buffer_floats(&d));
#pragma omp barrier
            conv_gemm_job j = job;
            j.n = (g1 - g0) * d.wo;
            store_ctx e = {&d, a->out, g0, a->param[1], a->node->act};
            if (d.span) {
                j.epilogue = store_epilogue;
                j.ctx = &e;
            } else {
                /* the band's rows of one image: the product writes them where they go */
                j.c = (float *)a->out + (size_t)(g0 / d.ho) * d.o * ohw + (size_t)(g0 % d.ho) * d.wo;
            }
            conv_gemm_run(&j, L.threads + (size_t)tid * L.thread_floats, tid, nth);
#pragma omp barrier
        }
    }
}

/* The band's dz rows of channels [o0, o1) into dzb, contiguous. */
static void gather_dz(const im2col_dims *d, const float *dz, int g0, int rows, float *dzb, long o0, long o1) {
    size_t ohw = (size_t)d->ho * d->wo;
    for (long o = o0; o < o1; o++)
        for (int i = 0; i < rows; i++) {
            int n = (g0 + i) / d->ho, oy = (g0 + i) % d->ho;
            memcpy(dzb + (size_t)o * band_stride(d) + (size_t)i * d->wo,
                   dz + ((size_t)n * d->o + o) * ohw + (size_t)oy * d->wo, (size_t)d->wo * sizeof(float));
        }
}

void conv_im2col_backward(const unet_op_args *a) {
    im2col_dims d = dims_of(a);
    carver cv = {a->workspace, 0};
    im2col_ws L = layout(&d, 1, &cv);
    size_t hw = (size_t)d.h * d.w, ohw = (size_t)d.ho * d.wo, nw = (size_t)d.o * d.kk;
    /* the band's dz: rows ohw apart in the image, or band_stride apart in the copy */
    size_t dz_stride = d.span ? band_stride(&d) : ohw;
    unet_act act = a->node->act;
    const float *x = a->in[0], *w = a->param[0], *out = a->out;
    float *dz = a->dout, *dx = a->din[0], *dw = a->dparam[0], *db = a->dparam[1];
    /* dcol = W^T . dz: A[(c, t)][o] = w[o][(c, t)], read transposed */
    conv_gemm_job gx = {.m = d.kk,
                        .k = d.o,
                        .a = w,
                        .a_row = 1,
                        .a_col = (size_t)d.kk,
                        .row_offset = L.rows_dz,
                        .c = L.dcol,
                        .ldc = band_stride(&d)};
    conv_dot_job gw = {
        .m = d.o, .n = d.kk, .a_stride = dz_stride, .b = L.col, .row_offset = L.rows_col, .c = dw, .ldc = (size_t)d.kk};
    long no_shift[CONV_MAX_TAPS] = {0};
#pragma omp parallel num_threads(conv_threads())
    {
        int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        float *scratch = L.threads + (size_t)tid * L.thread_floats;
        float *rows_buf = L.rows_buf + (size_t)tid * row_buffer_floats(&d);
        long o0, o1, c0, c1, r0, r1, w0, w1;
        share(d.o, tid, nth, &o0, &o1);
        share(d.c, tid, nth, &c0, &c1);
        share(d.kk, tid, nth, &r0, &r1);
        share((long)nw, tid, nth, &w0, &w1);
        conv_row_offsets(L.rows_col, r0, r1, band_stride(&d), 1, no_shift);
        conv_row_offsets(L.rows_dz, o0, o1, dz_stride, 1, no_shift);
        if (dw) memset(dw + w0, 0, (size_t)(w1 - w0) * sizeof(float));
        for (long o = o0; o < o1; o++) {
            L.dbias[o] = 0.0;
            for (int n = 0; n < d.n; n++) {
                float *g = dz + ((size_t)n * d.o + o) * ohw;
                if (act != UNET_ACT_NONE) unet_act_mask(act, g, out + ((size_t)n * d.o + o) * ohw, ohw);
                L.dbias[o] += sum_f64(g, ohw);
            }
        }
        if (dx && !a->din_accumulate[0])
            for (int n = 0; n < d.n; n++)
                memset(dx + ((size_t)n * d.c + c0) * hw, 0, (size_t)(c1 - c0) * hw * sizeof(float));
        for (int g0 = 0, g1; g0 < d.n * d.ho; g0 = g1) {
            g1 = band_end(&d, g0);
            const float *dzb = L.dz;
            if (d.span)
                gather_dz(&d, dz, g0, g1 - g0, L.dz, o0, o1);
            else
                dzb = dz + (size_t)(g0 / d.ho) * d.o * ohw + (size_t)(g0 % d.ho) * d.wo;
            if (dw) fill_cols(&d, x, g0, g1 - g0, L.col, r0, r1, rows_buf);
#pragma omp barrier
            if (dx) {
                conv_gemm_job j = gx;
                j.n = (g1 - g0) * d.wo;
                j.src = dzb;
                conv_gemm_run(&j, scratch, tid, nth);
            }
            if (dw) {
                conv_dot_job j = gw;
                j.k = (long)(g1 - g0) * d.wo;
                j.a = dzb;
                conv_dot_run(&j, tid, nth);
            }
#pragma omp barrier
            if (dx) add_cols(&d, dx, g0, g1 - g0, L.dcol, c0, c1);
        }
        if (db)
            for (long o = o0; o < o1; o++) db[o] = (float)L.dbias[o];
    }
}
