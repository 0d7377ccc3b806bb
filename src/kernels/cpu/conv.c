/* CPU convolutions: conv, conv_t2 (2x2 stride-2 transposed) and bias,
 * forward and backward, as the matrix products of conv_gemm.h. conv's
 * kernels here take k = 1 or 3, valid or same, stride 1, groups 1 (U-Net's),
 * with an optional bias and fused activation; other attributes go to
 * conv_im2col.c (groups 1) and conv_depthwise.c (conv_common.h).
 *
 * 3x3 convolution, forward: the "wide" output trick. Over a source of width
 * w (the image, or for same padding a zero-padded copy of a band of rows),
 * output pixel q = y*w + x of a valid 3x3 correlation is
 *   sum over taps (dy,dx) of W_tap . src[q + dy*w + dx],
 * one matrix product whose B rows are the source shifted by each tap; the
 * last two columns of each wide row are garbage, dropped when the epilogue
 * compacts the block into the output (adding bias, the activation).
 *
 * Backward data is the same product with the flipped, transposed weight over
 * dz in a zero-margined buffer ("Z band"): for valid padding dz row y' sits at
 * columns 2.. of row y'+2 of a buffer as wide as the input, so that the two
 * zero columns of each row are exactly the zeros a full correlation needs at
 * both edges and the wide output is the input gradient itself (no
 * compaction). Backward weight sums dz (the same buffer, its garbage columns
 * zero) times the shifted source over all pixels: conv_dot_run. Same padding
 * runs the same products over zero-padded copies of a band (dz padded by one,
 * x padded by one for the weight gradient), its input gradient compacted like
 * the forward. Bands of rows bound the buffers and keep them in cache between
 * the two products.
 *
 * Every output element is summed by one thread in one order: the same bits
 * for any thread count (conv_gemm.h). Bias gradients are sums in double,
 * channel by channel. */
#include <omp.h>
#include <string.h>

#include "kernels/cpu/act.h"
#include "kernels/cpu/conv_common.h"
#include "kernels/cpu/conv_gemm.h"
#include "kernels/cpu/grad.h"
#include "kernels/cpu/ops.h"

/* ---------------------------------------------------------------- bands -- */

/* Band row r holds source row y_first + r at columns [left, left + sw) of a
 * row bw wide, zeros elsewhere; rows outside the source are zero; `tail` zero
 * floats follow the rows. mask (optional): keep a value only where the
 * activation act passes the gradient of mask (the forward output). sums
 * (optional): add each channel's band rows [own0, own1) to sums[ch], so that
 * a pixel shared by two bands counts once. */
typedef struct {
    const float *src, *mask;
    unet_act act;
    int sh, sw;
    float *band;
    size_t bplane;
    int bw, rows, y_first, left, tail;
    double *sums;
    int own0, own1;
} band_fill;

static void fill_band(const band_fill *f, long ch0, long ch1) {
    size_t splane = (size_t)f->sh * f->sw;
    for (long ch = ch0; ch < ch1; ch++) {
        const float *s = f->src + ch * splane, *m = f->mask ? f->mask + ch * splane : NULL;
        float *b = f->band + ch * f->bplane;
        double sum = 0.0;
        for (int r = 0; r < f->rows; r++) {
            float *row = b + (size_t)r * f->bw;
            int y = f->y_first + r;
            if (y < 0 || y >= f->sh) {
                memset(row, 0, (size_t)f->bw * sizeof(float));
                continue;
            }
            const float *sr = s + (size_t)y * f->sw;
            memset(row, 0, (size_t)f->left * sizeof(float));
            float *dst = row + f->left;
            if (m) {
                const float *mr = m + (size_t)y * f->sw;
                for (int x = 0; x < f->sw; x++) dst[x] = unet_act_passes(f->act, mr[x]) ? sr[x] : 0.0f;
            } else {
                memcpy(dst, sr, (size_t)f->sw * sizeof(float));
            }
            memset(dst + f->sw, 0, (size_t)(f->bw - f->left - f->sw) * sizeof(float));
            if (f->sums && r >= f->own0 && r < f->own1) sum += sum_f64(dst, (size_t)f->sw);
        }
        memset(b + (size_t)f->rows * f->bw, 0, (size_t)f->tail * sizeof(float));
        if (f->sums) f->sums[ch] += sum;
    }
}

/* ------------------------------------------------------------ epilogues -- */

/* Wide product columns -> output rows: column q is (row0 + q / ww, q % ww),
 * kept when q % ww < ow; plus bias, the activation, or added to the output. */
typedef struct {
    float *y;
    size_t plane;
    int m, ww, ow, row0;
    const float *bias;
    unet_act act;
    int accumulate;
} compact_ctx;

static void store_run(float *restrict dst, const float *restrict src, int n, float b, unet_act act, int accumulate) {
    if (accumulate)
        for (int i = 0; i < n; i++) dst[i] += src[i];
    else
        bias_act_run(dst, src, n, b, act);
}

static void compact_epilogue(const void *vctx, float *cb, size_t ldc, int i0, int i1, long q0, int nq) {
    const compact_ctx *e = vctx;
    for (int i = i0; i < i1; i++) {
        const float *crow = cb + (size_t)i * ldc;
        float *yp = e->y + (size_t)i * e->plane;
        float b = e->bias ? e->bias[i] : 0.0f;
        for (long q = q0; q < q0 + nq;) {
            long row = q / e->ww;
            int x = (int)(q - row * e->ww);
            long row_end = (row + 1) * e->ww < q0 + nq ? (row + 1) * e->ww : q0 + nq;
            int n = (int)(row_end - q);
            if (x + n > e->ow) n = e->ow - x;
            if (n > 0)
                store_run(yp + (size_t)(e->row0 + row) * e->ow + x, crow + (q - q0), n, b, e->act, e->accumulate);
            q = row_end;
        }
    }
}

/* conv_t2: product row (o, a, b), column (i, j) -> output (o, 2i + a, 2j + b), plus bias. */
typedef struct {
    float *y;
    int o, h, w;
    const float *bias;
} scatter_ctx;

static void scatter_epilogue(const void *vctx, float *cb, size_t ldc, int i0, int i1, long q0, int nq) {
    const scatter_ctx *e = vctx;
    size_t ow = 2 * (size_t)e->w, oplane = 4 * (size_t)e->h * e->w;
    /* rows (o, a, 0) and (o, a, 1) together: they interleave into one output
     * row (a thread's rows start at a multiple of MR, which is even) */
    for (int m = i0; m < i1; m += 2) {
        int o = m / 4, da = (m / 2) % 2;
        float b = e->bias ? e->bias[o] : 0.0f;
        const float *even = cb + (size_t)m * ldc, *odd = even + ldc;
        float *yp = e->y + (size_t)o * oplane;
        for (long q = q0; q < q0 + nq;) {
            long i = q / e->w;
            int j = (int)(q - i * e->w);
            int run = (int)(((i + 1) * e->w < q0 + nq ? (i + 1) * e->w : q0 + nq) - q);
            float *restrict dst = yp + (size_t)(2 * i + da) * ow + 2 * (size_t)j;
            const float *s0 = even + (q - q0), *s1 = odd + (q - q0);
            for (int jj = 0; jj < run; jj++) {
                dst[2 * jj] = s0[jj] + b;
                dst[2 * jj + 1] = s1[jj] + b;
            }
            q += run;
        }
    }
}

/* ----------------------------------------------------------------- conv -- */

typedef struct {
    int n, c, h, w, o, ho, wo, k, pad;
    int taps;
} conv_dims;

static conv_dims conv_dims_of(const unet_op_args *a) {
    unet_shape si = a->in_shape[0], so = a->out_shape;
    conv_dims d = {si.n, si.c, si.h, si.w, so.c, so.h, so.w, a->node->k, a->node->pad, a->node->k * a->node->k};
    return d;
}

/* Tap offsets of a k x k correlation over rows w floats wide. */
static void tap_offsets(long *off, int k, long w) {
    for (int dy = 0; dy < k; dy++)
        for (int dx = 0; dx < k; dx++) off[dy * k + dx] = dy * w + dx;
}

/* Rows per band and band planes: forward with same padding (padded x), and
 * backward (valid: the Z band; same: padded dz and padded x). */
static int conv_fwd_band_rows(const conv_dims *d) { return band_rows(d->ho, (size_t)d->c * (d->w + 2)); }
static size_t conv_pad_plane(const conv_dims *d, int rows) { return round16((size_t)(rows + 2) * (d->w + 2)); }
static int conv_bwd_band_rows(const conv_dims *d) {
    if (d->pad == 0) return band_rows(d->h, (size_t)d->o * d->w);
    return band_rows(d->h, (size_t)(d->o + d->c) * (d->w + 2));
}
static size_t conv_z_plane(const conv_dims *d, int rows) { return round16((size_t)(rows + 2) * d->w + 2); }

typedef struct {
    float *wflip, *threads, *band_z, *band_x;
    size_t thread_floats;
    long *rows_gemm, *rows_dot; /* row offset tables of the two products */
    double *dbias;
} conv_ws;

static conv_ws conv_forward_layout(const conv_dims *d, carver *cv) {
    conv_ws L = {0};
    L.thread_floats = round16(conv_gemm_thread_floats(d->o, d->k == 3));
    L.threads = carve(cv, L.thread_floats * conv_thread_slots());
    L.rows_gemm = carve_longs(cv, (size_t)d->c * d->taps);
    if (d->k == 3 && d->pad == 1) L.band_x = carve(cv, (size_t)d->c * conv_pad_plane(d, conv_fwd_band_rows(d)));
    return L;
}

static conv_ws conv_backward_layout(const conv_dims *d, carver *cv) {
    conv_ws L = {0};
    if (d->k == 3) L.wflip = carve(cv, (size_t)d->c * d->o * d->taps);
    L.thread_floats = round16(conv_gemm_thread_floats(d->c, d->k == 3 && d->pad == 1));
    L.threads = carve(cv, L.thread_floats * conv_thread_slots());
    L.rows_gemm = carve_longs(cv, (size_t)d->o * d->taps);
    L.rows_dot = carve_longs(cv, (size_t)d->c * d->taps);
    if (d->k == 3) {
        int rows = conv_bwd_band_rows(d);
        if (d->pad == 0) {
            L.band_z = carve(cv, (size_t)d->o * conv_z_plane(d, rows));
        } else {
            L.band_z = carve(cv, (size_t)d->o * conv_pad_plane(d, rows));
            L.band_x = carve(cv, (size_t)d->c * conv_pad_plane(d, rows));
        }
    }
    L.dbias = (double *)carve(cv, 2 * (size_t)d->o);
    return L;
}

static size_t direct_workspace_bytes(const unet_op_args *a) {
    conv_dims d = conv_dims_of(a);
    carver f = {NULL, 0}, b = {NULL, 0};
    conv_forward_layout(&d, &f);
    conv_backward_layout(&d, &b);
    return (f.top > b.top ? f.top : b.top) * sizeof(float);
}

static void direct_forward(const unet_op_args *a) {
    conv_dims d = conv_dims_of(a);
    carver cv = {a->workspace, 0};
    conv_ws L = conv_forward_layout(&d, &cv);
    const float *x = a->in[0], *w = a->param[0], *bias = a->param[1];
    float *y = a->out;
    size_t hw = (size_t)d.h * d.w, ohw = (size_t)d.ho * d.wo;
    unet_act act = a->node->act;
    int band = conv_fwd_band_rows(&d), same = d.k == 3 && d.pad == 1;
    size_t xplane = conv_pad_plane(&d, band);
    /* B rows (c, tap) over the image, or over the padded band (same) */
    long taps[CONV_MAX_TAPS] = {0};
    tap_offsets(taps, d.k, same ? d.w + 2 : d.w);
    conv_gemm_job job = {
        .m = d.o, .k = d.c * d.taps, .a = w, .a_row = (size_t)d.c * d.taps, .a_col = 1, .row_offset = L.rows_gemm};
#pragma omp parallel num_threads(conv_threads())
    {
        int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        float *scratch = L.threads + (size_t)tid * L.thread_floats;
        long ch0, ch1, r0, r1;
        share(d.c, tid, nth, &ch0, &ch1);
        share((long)d.c * d.taps, tid, nth, &r0, &r1);
        conv_row_offsets(L.rows_gemm, r0, r1, same ? xplane : hw, d.taps, taps);
#pragma omp barrier
        for (int n = 0; n < d.n; n++) {
            const float *xn = x + (size_t)n * d.c * hw;
            float *yn = y + (size_t)n * d.o * ohw;
            conv_gemm_job j = job;
            if (d.k == 1) {
                bias_act_ctx e = {d.o, bias, act};
                j.n = (int)hw;
                j.src = xn;
                j.c = yn;
                j.ldc = ohw;
                j.epilogue = bias_act_epilogue;
                j.ctx = &e;
                conv_gemm_run(&j, scratch, tid, nth);
            } else if (d.pad == 0) {
                compact_ctx e = {yn, ohw, d.o, d.w, d.wo, 0, bias, act, 0};
                /* the last two wide columns are garbage and would read past the image */
                j.n = d.ho * d.w - 2;
                j.src = xn;
                j.epilogue = compact_epilogue;
                j.ctx = &e;
                conv_gemm_run(&j, scratch, tid, nth);
            } else {
                for (int y0 = 0; y0 < d.ho; y0 += band) {
                    int rows = d.ho - y0 < band ? d.ho - y0 : band;
                    band_fill f = {.src = xn,
                                   .sh = d.h,
                                   .sw = d.w,
                                   .band = L.band_x,
                                   .bplane = xplane,
                                   .bw = d.w + 2,
                                   .rows = rows + 2,
                                   .y_first = y0 - 1,
                                   .left = 1};
                    fill_band(&f, ch0, ch1);
#pragma omp barrier
                    compact_ctx e = {yn, ohw, d.o, d.w + 2, d.wo, y0, bias, act, 0};
                    j.n = rows * (d.w + 2) - 2;
                    j.src = L.band_x;
                    j.epilogue = compact_epilogue;
                    j.ctx = &e;
                    conv_gemm_run(&j, scratch, tid, nth);
#pragma omp barrier
                }
            }
        }
    }
}

/* The weight of the input-gradient product, w[o][c][t] -> [c][o][8 - t]: the
 * transposed convolution as a correlation; channels [c0, c1). */
static void flip_transpose(const float *w, int o_count, int c_count, int taps, float *dst, long c0, long c1) {
    for (long c = c0; c < c1; c++)
        for (int o = 0; o < o_count; o++) {
            const float *src = w + ((size_t)o * c_count + c) * taps;
            float *d = dst + ((size_t)c * o_count + o) * taps;
            for (int t = 0; t < taps; t++) d[t] = src[taps - 1 - t];
        }
}

/* dz of image n in place (1x1 conv: masked by the activation of out when
 * given), its per-channel sums added to sums; channels [ch0, ch1). */
static void mask_and_sum(float *dz, unet_act act, const float *out, size_t hw, long ch0, long ch1, double *sums) {
    for (long ch = ch0; ch < ch1; ch++) {
        float *g = dz + ch * hw;
        if (out) unet_act_mask(act, g, out + ch * hw, hw);
        sums[ch] += sum_f64(g, hw);
    }
}

static void direct_backward(const unet_op_args *a) {
    conv_dims d = conv_dims_of(a);
    carver cv = {a->workspace, 0};
    conv_ws L = conv_backward_layout(&d, &cv);
    unet_act act = a->node->act;
    const float *x = a->in[0], *w = a->param[0], *out = act != UNET_ACT_NONE ? a->out : NULL;
    float *dout = a->dout, *dx = a->din[0], *dw = a->dparam[0], *db = a->dparam[1];
    int band = conv_bwd_band_rows(&d), same = d.k == 3 && d.pad == 1;
    size_t hw = (size_t)d.h * d.w, ohw = (size_t)d.ho * d.wo, nw = (size_t)d.o * d.c * d.taps;
    size_t zplane = d.k == 1 ? ohw : same ? conv_pad_plane(&d, band) : conv_z_plane(&d, band);
    size_t xplane = same ? conv_pad_plane(&d, band) : hw;
    long taps[CONV_MAX_TAPS] = {0};
    tap_offsets(taps, d.k, same ? d.w + 2 : d.w);
    /* input gradient: A[c][(o, t)] is the flipped, transposed weight (3x3), or
     * w read transposed (1x1); B rows (o, t) over dz's band */
    conv_gemm_job gx = {.m = d.c, .k = d.o * d.taps, .row_offset = L.rows_gemm, .accumulate = a->din_accumulate[0]};
    if (d.k == 3) {
        gx.a = L.wflip;
        gx.a_row = (size_t)d.o * d.taps;
        gx.a_col = 1;
    } else {
        gx.a = w;
        gx.a_row = 1;
        gx.a_col = (size_t)d.c;
    }
    /* weight gradient: rows o of dz times rows (c, t) of the shifted x */
    conv_dot_job gw = {.m = d.o, .n = d.c * d.taps, .row_offset = L.rows_dot, .c = dw, .ldc = (size_t)d.c * d.taps};
#pragma omp parallel num_threads(conv_threads())
    {
        int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        float *scratch = L.threads + (size_t)tid * L.thread_floats;
        long o0, o1, c0, c1, w0, w1, r0, r1;
        share(d.o, tid, nth, &o0, &o1);
        share(d.c, tid, nth, &c0, &c1);
        share((long)nw, tid, nth, &w0, &w1);
        if (dx && d.k == 3) flip_transpose(w, d.o, d.c, d.taps, L.wflip, c0, c1);
        share((long)d.o * d.taps, tid, nth, &r0, &r1);
        conv_row_offsets(L.rows_gemm, r0, r1, zplane, d.taps, taps);
        share((long)d.c * d.taps, tid, nth, &r0, &r1);
        conv_row_offsets(L.rows_dot, r0, r1, xplane, d.taps, taps);
        if (dw) memset(dw + w0, 0, (size_t)(w1 - w0) * sizeof(float));
        for (long o = o0; o < o1; o++) L.dbias[o] = 0.0;
#pragma omp barrier
        for (int n = 0; n < d.n; n++) {
            const float *xn = x + (size_t)n * d.c * hw;
            float *gn = dout + (size_t)n * d.o * ohw, *dxn = dx ? dx + (size_t)n * d.c * hw : NULL;
            const float *on = out ? out + (size_t)n * d.o * ohw : NULL;
            if (d.k == 1) {
                mask_and_sum(gn, act, on, ohw, o0, o1, L.dbias);
#pragma omp barrier
                if (dxn) {
                    conv_gemm_job j = gx;
                    j.n = (int)hw;
                    j.src = gn;
                    j.c = dxn;
                    j.ldc = hw;
                    conv_gemm_run(&j, scratch, tid, nth);
                }
                if (dw) {
                    conv_dot_job j = gw;
                    j.k = (long)hw;
                    j.a = gn;
                    j.a_stride = ohw;
                    j.b = xn;
                    conv_dot_run(&j, tid, nth);
                }
                continue;
            }
            for (int y0 = 0; y0 < d.h; y0 += band) {
                int rows = d.h - y0 < band ? d.h - y0 : band;
                if (!same) {
                    /* dz row y' at row y' + 2 of the band's frame, columns 2 .. w-1 */
                    band_fill fz = {.src = gn,
                                    .mask = on,
                                    .act = act,
                                    .sh = d.ho,
                                    .sw = d.wo,
                                    .band = L.band_z,
                                    .bplane = zplane,
                                    .bw = d.w,
                                    .rows = rows + 2,
                                    .y_first = y0 - 2,
                                    .left = 2,
                                    .tail = 2,
                                    .sums = L.dbias,
                                    .own0 = 0,
                                    .own1 = rows};
                    fill_band(&fz, o0, o1);
                } else {
                    band_fill fz = {.src = gn,
                                    .mask = on,
                                    .act = act,
                                    .sh = d.h,
                                    .sw = d.w,
                                    .band = L.band_z,
                                    .bplane = zplane,
                                    .bw = d.w + 2,
                                    .rows = rows + 2,
                                    .y_first = y0 - 1,
                                    .left = 1,
                                    .sums = L.dbias,
                                    .own0 = 1,
                                    .own1 = rows + 1};
                    fill_band(&fz, o0, o1);
                    if (dw) {
                        band_fill fx = {.src = xn,
                                        .sh = d.h,
                                        .sw = d.w,
                                        .band = L.band_x,
                                        .bplane = xplane,
                                        .bw = d.w + 2,
                                        .rows = rows + 2,
                                        .y_first = y0 - 1,
                                        .left = 1};
                        fill_band(&fx, c0, c1);
                    }
                }
#pragma omp barrier
                conv_gemm_job j = gx;
                conv_dot_job jw = gw;
                j.src = L.band_z;
                jw.a_stride = zplane;
                if (!same) {
                    j.n = rows * d.w;
                    j.c = dxn ? dxn + (size_t)y0 * d.w : NULL;
                    j.ldc = hw;
                    /* Band row r is dz row y0 + r - 2, paired with x rows from
                     * y0 + r - 2; rows of dz above the image (first band) and
                     * the two leading zero columns are skipped, so that no
                     * read starts before x. */
                    long k0 = y0 < 2 ? (long)(2 - y0) * d.w + 2 : 0;
                    jw.k = (long)rows * d.w - k0;
                    jw.a = L.band_z + k0;
                    jw.b = xn + ((long)y0 * d.w - 2L * d.w - 2 + k0);
                } else {
                    compact_ctx e = {dxn, hw, d.c, d.w + 2, d.w, y0, NULL, 0, a->din_accumulate[0]};
                    j.n = rows * (d.w + 2) - 2;
                    j.epilogue = compact_epilogue;
                    j.ctx = &e;
                    /* dz rows of this band: band rows 1 .. rows, from column 1;
                     * the matching x pixels start at the padded band's origin */
                    jw.k = (long)rows * (d.w + 2) - 2;
                    jw.a = L.band_z + (d.w + 2) + 1;
                    jw.b = L.band_x;
                    if (dxn) conv_gemm_run(&j, scratch, tid, nth);
                }
                if (dxn && !same) conv_gemm_run(&j, scratch, tid, nth);
                if (dw && jw.k > 0) conv_dot_run(&jw, tid, nth);
#pragma omp barrier
            }
        }
#pragma omp barrier
        if (db)
            for (long o = o0; o < o1; o++) db[o] = (float)L.dbias[o];
    }
}

/* The node's attributes pick the kernels: this file's for 3x3 and 1x1 at
 * stride 1 (but Winograd's for the 3x3 forwards where it is faster),
 * depthwise's for groups > 1, im2col's for the rest. */
static void conv_forward(const unet_op_args *a) {
    if (conv_winograd_fits(a))
        conv_winograd_forward(a);
    else if (conv_is_direct(a->node))
        direct_forward(a);
    else if (a->node->groups > 1)
        conv_depthwise_forward(a);
    else
        conv_im2col_forward(a);
}

static void conv_backward(const unet_op_args *a) {
    if (conv_is_direct(a->node))
        direct_backward(a);
    else if (a->node->groups > 1)
        conv_depthwise_backward(a);
    else
        conv_im2col_backward(a);
}

static size_t conv_workspace_bytes(const unet_op_args *a) {
    if (conv_is_direct(a->node)) {
        /* the backward is direct's either way */
        size_t direct = direct_workspace_bytes(a), wino = conv_winograd_fits(a) ? conv_winograd_workspace_bytes(a) : 0;
        return direct > wino ? direct : wino;
    }
    return a->node->groups > 1 ? conv_depthwise_workspace_bytes(a) : conv_im2col_workspace_bytes(a);
}

const unet_op_impl unet_cpu_conv = {
    .forward = conv_forward,
    .backward = conv_backward,
    .workspace_bytes = conv_workspace_bytes,
};

/* -------------------------------------------------------------- conv_t2 -- */

typedef struct {
    int n, c, h, w, o;
} t2_dims;

static t2_dims t2_dims_of(const unet_op_args *a) {
    t2_dims d = {a->in_shape[0].n, a->in_shape[0].c, a->in_shape[0].h, a->in_shape[0].w, a->out_shape.c};
    return d;
}

/* backward: the band holds dy de-interleaved, row (o, a, b) = dy[o, 2i + a, 2j + b] */
static int t2_band_rows(const t2_dims *d) { return band_rows(d->h, 4 * (size_t)d->o * d->w); }

typedef struct {
    float *threads, *band, *wt;
    size_t thread_floats;
    long *rows;
    double *dbias;
} t2_ws;

static t2_ws t2_layout(const t2_dims *d, int backward, carver *cv) {
    t2_ws L = {0};
    L.thread_floats = round16(conv_gemm_thread_floats(backward ? d->c : 4 * d->o, !backward));
    L.threads = carve(cv, L.thread_floats * conv_thread_slots());
    L.rows = carve_longs(cv, backward ? 4 * (size_t)d->o : (size_t)d->c);
    if (backward) {
        L.band = carve(cv, 4 * (size_t)d->o * round16((size_t)t2_band_rows(d) * d->w));
        L.dbias = (double *)carve(cv, 2 * (size_t)d->o);
    } else {
        L.wt = carve(cv, 4 * (size_t)d->o * d->c);
    }
    return L;
}

static size_t t2_workspace_bytes(const unet_op_args *a) {
    t2_dims d = t2_dims_of(a);
    carver f = {NULL, 0}, b = {NULL, 0};
    t2_layout(&d, 0, &f);
    t2_layout(&d, 1, &b);
    return (f.top > b.top ? f.top : b.top) * sizeof(float);
}

/* dst[r][c] = w[c][r] for rows [r0, r1) of the 4o x c product weight, in
 * 16 x 16 blocks: w's rows are 4o floats apart, a power of two, and read a
 * column at a time they would all fall in the same few sets of L1. */
static void transpose_weight(const float *w, int c_count, long r_count, float *dst, long r0, long r1) {
    for (long rb = r0; rb < r1; rb += 16)
        for (int cb = 0; cb < c_count; cb += 16) {
            long re = rb + 16 < r1 ? rb + 16 : r1;
            int ce = cb + 16 < c_count ? cb + 16 : c_count;
            for (int c = cb; c < ce; c++)
                for (long r = rb; r < re; r++) dst[(size_t)r * c_count + c] = w[(size_t)c * r_count + r];
        }
}

static void t2_forward(const unet_op_args *a) {
    t2_dims d = t2_dims_of(a);
    carver cv = {a->workspace, 0};
    t2_ws L = t2_layout(&d, 0, &cv);
    size_t hw = (size_t)d.h * d.w;
    long no_shift[CONV_MAX_TAPS] = {0};
#pragma omp parallel num_threads(conv_threads())
    {
        int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        long r0, r1;
        share(d.c, tid, nth, &r0, &r1);
        conv_row_offsets(L.rows, r0, r1, hw, 1, no_shift);
        share(4L * d.o, tid, nth, &r0, &r1);
        transpose_weight(a->param[0], d.c, 4L * d.o, L.wt, r0, r1);
#pragma omp barrier
        for (int n = 0; n < d.n; n++) {
            scatter_ctx e = {(float *)a->out + (size_t)n * d.o * 4 * hw, d.o, d.h, d.w, a->param[1]};
            /* product row (o, a, b) = weight column, A[(o, a, b)][c] = w[c][(o, a, b)]:
             * transposed once, so that the product reads it row-major */
            conv_gemm_job job = {.m = 4 * d.o,
                                 .n = (int)hw,
                                 .k = d.c,
                                 .a = L.wt,
                                 .a_row = (size_t)d.c,
                                 .a_col = 1,
                                 .src = (const float *)a->in[0] + (size_t)n * d.c * hw,
                                 .row_offset = L.rows,
                                 .epilogue = scatter_epilogue,
                                 .ctx = &e};
            conv_gemm_run(&job, L.threads + (size_t)tid * L.thread_floats, tid, nth);
        }
    }
}

/* Band rows [i0, i0 + rows) of dy de-interleaved, channels [o0, o1); the
 * per-channel sums of dy added to sums. */
static void deinterleave(const float *dy, const t2_dims *d, int i0, int rows, float *band, size_t plane, long o0,
                         long o1, double *sums) {
    size_t ow = 2 * (size_t)d->w, oplane = 4 * (size_t)d->h * d->w;
    for (long o = o0; o < o1; o++) {
        const float *g = dy + o * oplane;
        double s = 0.0;
        for (int r = 0; r < rows; r++)
            for (int da = 0; da < 2; da++) {
                const float *src = g + (size_t)(2 * (i0 + r) + da) * ow;
                s += sum_f64(src, ow);
                for (int db = 0; db < 2; db++) {
                    float *dst = band + (size_t)(4 * o + 2 * da + db) * plane + (size_t)r * d->w;
                    for (int j = 0; j < d->w; j++) dst[j] = src[2 * j + db];
                }
            }
        sums[o] += s;
    }
}

static void t2_backward(const unet_op_args *a) {
    t2_dims d = t2_dims_of(a);
    carver cv = {a->workspace, 0};
    t2_ws L = t2_layout(&d, 1, &cv);
    const float *x = a->in[0], *dy = a->dout;
    float *dx = a->din[0], *dw = a->dparam[0], *db = a->dparam[1];
    size_t hw = (size_t)d.h * d.w, nw = (size_t)d.c * 4 * d.o;
    int band = t2_band_rows(&d);
    size_t plane = round16((size_t)band * d.w);
    long no_shift[CONV_MAX_TAPS] = {0};
#pragma omp parallel num_threads(conv_threads())
    {
        int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        float *scratch = L.threads + (size_t)tid * L.thread_floats;
        long o0, o1, w0, w1, r0, r1;
        share(d.o, tid, nth, &o0, &o1);
        share((long)nw, tid, nth, &w0, &w1);
        share(4L * d.o, tid, nth, &r0, &r1);
        conv_row_offsets(L.rows, r0, r1, plane, 1, no_shift);
        if (dw) memset(dw + w0, 0, (size_t)(w1 - w0) * sizeof(float));
        for (long o = o0; o < o1; o++) L.dbias[o] = 0.0;
#pragma omp barrier
        for (int n = 0; n < d.n; n++) {
            const float *xn = x + (size_t)n * d.c * hw, *gn = dy + (size_t)n * d.o * 4 * hw;
            for (int i0 = 0; i0 < d.h; i0 += band) {
                int rows = d.h - i0 < band ? d.h - i0 : band;
                deinterleave(gn, &d, i0, rows, L.band, plane, o0, o1, L.dbias);
#pragma omp barrier
                if (dx) {
                    /* A[c][(o, a, b)] = w[c][(o, a, b)], row-major as it lies */
                    conv_gemm_job job = {.m = d.c,
                                         .n = rows * d.w,
                                         .k = 4 * d.o,
                                         .a = a->param[0],
                                         .a_row = 4 * (size_t)d.o,
                                         .a_col = 1,
                                         .src = L.band,
                                         .row_offset = L.rows,
                                         .c = dx + (size_t)n * d.c * hw + (size_t)i0 * d.w,
                                         .ldc = hw,
                                         .accumulate = a->din_accumulate[0]};
                    conv_gemm_run(&job, scratch, tid, nth);
                }
                if (dw) {
                    conv_dot_job job = {.m = d.c,
                                        .n = 4 * d.o,
                                        .k = (long)rows * d.w,
                                        .a = xn + (size_t)i0 * d.w,
                                        .a_stride = hw,
                                        .b = L.band,
                                        .row_offset = L.rows,
                                        .c = dw,
                                        .ldc = 4 * (size_t)d.o};
                    conv_dot_run(&job, tid, nth);
                }
#pragma omp barrier
            }
        }
        if (db)
            for (long o = o0; o < o1; o++) db[o] = (float)L.dbias[o];
    }
}

const unet_op_impl unet_cpu_conv_t2 = {
    .forward = t2_forward,
    .backward = t2_backward,
    .workspace_bytes = t2_workspace_bytes,
};

/* ----------------------------------------------------------------- bias -- */

static void bias_forward(const unet_op_args *a) {
    unet_shape s = a->in_shape[0];
    size_t hw = (size_t)s.h * s.w;
    const float *x = a->in[0], *b = a->param[0];
    float *y = a->out;
    long planes = (long)s.n * s.c;
#pragma omp parallel for schedule(static) num_threads(conv_threads())
    for (long p = 0; p < planes; p++) {
        float bc = b[p % s.c];
        const float *xp = x + (size_t)p * hw;
        float *yp = y + (size_t)p * hw;
        for (size_t i = 0; i < hw; i++) yp[i] = xp[i] + bc;
    }
}

static void bias_backward(const unet_op_args *a) {
    unet_shape s = a->in_shape[0];
    size_t hw = (size_t)s.h * s.w;
    const float *g = a->dout;
    float *dx = a->din[0], *db = a->dparam[0];
    int acc = a->din_accumulate[0];
    long planes = (long)s.n * s.c;
    if (dx) {
#pragma omp parallel for schedule(static) num_threads(conv_threads())
        for (long p = 0; p < planes; p++)
            for (size_t i = 0; i < hw; i++) unet_grad_store(dx + (size_t)p * hw, i, g[(size_t)p * hw + i], acc);
    }
    if (db) {
#pragma omp parallel for schedule(static) num_threads(conv_threads())
        for (int c = 0; c < s.c; c++) {
            double sum = 0.0;
            for (int n = 0; n < s.n; n++) sum += sum_f64(g + ((size_t)n * s.c + c) * hw, hw);
            db[c] = (float)sum;
        }
    }
}

const unet_op_impl unet_cpu_bias = {
    .forward = bias_forward,
    .backward = bias_backward,
};
