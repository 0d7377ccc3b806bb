/* The forward of the CPU 3x3 convolution (stride 1, groups 1, valid or same)
 * by Winograd's minimal filtering F(2x2, 3x3) (Lavin and Gray, "Fast
 * Algorithms for Convolutional Neural Networks", 2016). Each 2x2 block of
 * output pixels (a tile) of output channel o is
 *   Y = A^T [ sum over c of U_oc (.) V_c ] A,   U_oc = G g_oc G^T,  V_c = B^T d_c B,
 * where d_c is the 4x4 input window under the tile and (.) the elementwise
 * product: 16 multiplications per tile and channel pair where the direct
 * convolution takes 36, 2.25 times fewer, for the price of transforming the
 * weight (once a call), the input (4 floats a pixel) and the output.
 *
 * The sum over c is 16 matrix products (conv_gemm.h), one per position xi
 * of the 4x4 transform:  M_xi (O x T) = U_xi (O x C) . V_xi (C x T)  over the
 * T tiles of a band of tile rows; bands are sized so that V and M stay in
 * a core's L2 between the transforms and the products, and count the
 * batch's tile rows as one sequence, so that where an image has few (the
 * deep layers) a band holds several images and the products stay long.
 * Where there are at least as many bands as threads, each thread takes
 * whole bands, with V and M of its own and no barrier between them (a
 * barrier per band cost more than the transform saved where waiting threads
 * sleep); else the threads share each band's transforms and products.
 *
 * Numerics: the transforms' coefficients are 0, +-1 and +-1/2, exact in
 * binary, and each product sums C terms where the direct one sums 9 C. On
 * random data at 64..512 channels its norm-wise error against float64 was
 * 1.8-4.7e-7, the direct product's 2.9-7.9e-7 (tests: PyTorch in float64 at
 * the 1e-5 every CPU convolution meets). Every output element is computed by
 * one thread in an order fixed by the shape: the same bits for any thread
 * count. (cuDNN's fp32 rules pass over its Winograd engines, F(4x4) and
 * larger tiles among them, whose transforms carry coefficients up to 8 and
 * lose accuracy; this F(2x2) does not.)
 *
 * Forward only: the backward passes stay the direct ones (conv.c), whose
 * activation mask reads this forward's output. */
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/conv_common.h"
#include "kernels/cpu/conv_gemm.h"

#define XI 16 /* positions of the 4x4 transform, xi = 4 i + j */

/* The transforms are loops of loads and adds the compiler vectorizes: built
 * for AVX-512 and AVX2 as well, the widest the CPU runs picked at load time
 * (UNET_CONV_ISA picks the products' kernels, not these). With SSE2's 128-bit
 * vectors they took as long as the products, and 32 -> 32 at 256x256 ran at
 * 0.96x the direct product; with AVX-512 at 1.16x. They hold no product to
 * be fused into an FMA, so every version gives the same bits. */
#if defined(__x86_64__)
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif

/* V and M of one band together, in floats: 2 MB, the L2 of one core of the
 * machine this was measured on (not tuned further). */
#define BAND_TRANSFORM_FLOATS ((size_t)1 << 19)

/* Fewer input channels than this never run it: with a K of C per product
 * the 16 products are too short (the first layer's C = 1 above all). */
#define MIN_CHANNELS 8

/* Where it runs by default: the shapes where it measured faster than the
 * direct product (unet_convbench, one thread, UNET_CONV_WINOGRAD=1 against 0;
 * U-Net's layers in bench/results/inference_layers_cpu-2026-12-07*.md).
 * The weight's transform, 16 O C floats each call, must be spread over
 * enough tiles: 256 (a 32x32 plane) won 1.06-1.23x, 128 tied or lost
 * (0.92-0.99x), 64 lost (0.77x). With fewer than 32 output or 16 input
 * channels the transforms outweigh the products (16 -> 16: 0.90x, 8 -> 32:
 * 0.87x; 16 -> 32 won 1.08x). */
#define AUTO_MIN_CHANNELS 16
#define AUTO_MIN_OUT      32
#define AUTO_MIN_TILES    256

typedef struct {
    int n, c, h, w, o, ho, wo, pad;
    int th, tw; /* tile rows and columns: ceil(ho / 2), ceil(wo / 2) */
    int band;   /* tile rows per band, counted over the batch: global row g is row g % th of image g / th */
} wino_dims;

static wino_dims dims_of(const unet_op_args *a) {
    unet_shape si = a->in_shape[0], so = a->out_shape;
    wino_dims d = {si.n, si.c, si.h, si.w, so.c, so.h, so.w, a->node->pad, (so.h + 1) / 2, (so.w + 1) / 2, 0};
    d.band = band_rows_within(d.n * d.th, (size_t)XI * (d.c + d.o) * d.tw, BAND_TRANSFORM_FLOATS);
    return d;
}

/* UNET_CONV_WINOGRAD: 0 never, 1 wherever the shape allows (to test and
 * compare it), unset (or anything else) where it is faster. Read once: the
 * workspace is sized by the same answer as the forward gives. */
enum { WINO_OFF, WINO_AUTO, WINO_ALWAYS };
static int wino_mode = WINO_AUTO;
static pthread_once_t wino_once = PTHREAD_ONCE_INIT;

static void read_mode(void) {
    const char *e = getenv("UNET_CONV_WINOGRAD");
    if (e && !strcmp(e, "0")) wino_mode = WINO_OFF;
    if (e && !strcmp(e, "1")) wino_mode = WINO_ALWAYS;
}

int conv_winograd_fits(const unet_op_args *a) {
    const unet_node *nd = a->node;
    unet_shape si = a->in_shape[0], so = a->out_shape;
    pthread_once(&wino_once, read_mode);
    if (nd->k != 3 || !conv_is_direct(nd) || si.c < MIN_CHANNELS || wino_mode == WINO_OFF) return 0;
    long tiles = (long)so.n * ((so.h + 1) / 2) * ((so.w + 1) / 2);
    return wino_mode == WINO_ALWAYS || (si.c >= AUTO_MIN_CHANNELS && so.c >= AUTO_MIN_OUT && tiles >= AUTO_MIN_TILES);
}

typedef struct {
    float *u, *v, *m, *threads;               /* v, m: one band's per thread slot */
    size_t thread_floats, vplane, mplane, tb; /* tb: columns between a band's rows of V and M */
    long *rows;                               /* B rows of the products: channel c at c * tb */
} wino_ws;

/* A thread's scratch after the product's: one input row split into its even
 * and odd columns, and a ring of four rows transformed along x; or, for the
 * output, eight rows of A^T M. Each is a row of round16(tw + 1) floats. */
static size_t scratch_row(const wino_dims *d) { return round16((size_t)d->tw + 1); }
static size_t transform_scratch_floats(const wino_dims *d) { return 18 * scratch_row(d); }

static wino_ws layout(const wino_dims *d, carver *cv) {
    wino_ws L = {0};
    L.tb = (size_t)d->band * d->tw;
    L.vplane = round16((size_t)d->c * L.tb);
    L.mplane = round16((size_t)d->o * L.tb);
    L.u = carve(cv, (size_t)XI * d->o * d->c);
    L.v = carve(cv, XI * L.vplane * conv_thread_slots());
    L.m = carve(cv, XI * L.mplane * conv_thread_slots());
    L.rows = carve_longs(cv, (size_t)d->c);
    L.thread_floats = round16(conv_gemm_thread_floats(d->o, 0)) + transform_scratch_floats(d);
    L.threads = carve(cv, L.thread_floats * conv_thread_slots());
    return L;
}

size_t conv_winograd_workspace_bytes(const unet_op_args *a) {
    wino_dims d = dims_of(a);
    carver cv = {NULL, 0};
    layout(&d, &cv);
    return cv.top * sizeof(float);
}

/* U_xi[o][c] = (G g G^T)[xi] for the 3x3 weight g = w[o][c] and
 * G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]; output channels [o0, o1).
 * WB input channels at a time, their taps gathered first, so that the
 * arithmetic runs across channels in vectors and each U_xi row is written
 * in runs rather than one float in 16 places. */
#define WB 16
VECTOR_CLONES
static void transform_weight(const float *w, const wino_dims *d, float *u, long o0, long o1) {
    size_t oc = (size_t)d->o * d->c;
    for (long o = o0; o < o1; o++)
        for (int c0 = 0; c0 < d->c; c0 += WB) {
            int nb = d->c - c0 < WB ? d->c - c0 : WB;
            const float *src = w + ((size_t)o * d->c + c0) * 9;
            float g[9][WB] = {{0}}, t[4][3][WB], s[XI][WB];
            for (int l = 0; l < nb; l++)
                for (int k = 0; k < 9; k++) g[k][l] = src[l * 9 + k];
            for (int x = 0; x < 3; x++) /* t = G g: down the columns */
                for (int l = 0; l < WB; l++) {
                    t[0][x][l] = g[x][l];
                    t[1][x][l] = 0.5f * (g[x][l] + g[3 + x][l] + g[6 + x][l]);
                    t[2][x][l] = 0.5f * (g[x][l] - g[3 + x][l] + g[6 + x][l]);
                    t[3][x][l] = g[6 + x][l];
                }
            for (int i = 0; i < 4; i++) /* s = t G^T: along the rows */
                for (int l = 0; l < WB; l++) {
                    s[4 * i][l] = t[i][0][l];
                    s[4 * i + 1][l] = 0.5f * (t[i][0][l] + t[i][1][l] + t[i][2][l]);
                    s[4 * i + 2][l] = 0.5f * (t[i][0][l] - t[i][1][l] + t[i][2][l]);
                    s[4 * i + 3][l] = t[i][2][l];
                }
            for (int xi = 0; xi < XI; xi++)
                memcpy(u + xi * oc + (size_t)o * d->c + c0, s[xi], (size_t)nb * sizeof(float));
        }
}

/* Input row iy of plane s transformed along x: e[j][tx] = (d B)[j] over the
 * row's four columns 2 tx - pad .. 2 tx - pad + 3 (zero outside the image),
 * B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]. The row is first split into
 * its even and odd padded columns, so that every loop runs at unit stride. */
static inline void transform_row(const float *s, const wino_dims *d, int iy, float *split, float *e, size_t e_row) {
    size_t half = scratch_row(d);
    if (iy < 0 || iy >= d->h) {
        for (int j = 0; j < 4; j++) memset(e + j * e_row, 0, (size_t)d->tw * sizeof(float));
        return;
    }
    float *restrict ev = split, *restrict od = split + half; /* padded columns 2 k and 2 k + 1 */
    const float *restrict row = s + (size_t)iy * d->w;
    int tw = d->tw, x0 = -d->pad; /* image column of padded column 0 */
    /* columns 1 .. tw - 1 lie inside the image (2 tw - 1 - pad < w); 0 and tw may not */
    for (int k = 0; k <= tw; k += k == 0 ? tw : 1) {
        int xe = x0 + 2 * k, xo = xe + 1;
        ev[k] = xe >= 0 && xe < d->w ? row[xe] : 0.0f;
        od[k] = xo >= 0 && xo < d->w ? row[xo] : 0.0f;
    }
#pragma GCC ivdep
    for (int k = 1; k < tw; k++) {
        ev[k] = row[x0 + 2 * k];
        od[k] = row[x0 + 2 * k + 1];
    }
    float *restrict e0 = e, *restrict e1 = e + e_row, *restrict e2 = e1 + e_row, *restrict e3 = e2 + e_row;
#pragma GCC ivdep
    for (int tx = 0; tx < tw; tx++) {
        e0[tx] = ev[tx] - ev[tx + 1];
        e1[tx] = od[tx] + ev[tx + 1];
        e2[tx] = ev[tx + 1] - od[tx];
        e3[tx] = od[tx] - od[tx + 1];
    }
}

/* The band's V for channels [c0, c1): global tile rows g0 .. g0 + rows - 1
 * at band rows 0 .. rows - 1, V_xi[c][r tw + tx] = (B^T d B)[xi]. Input rows
 * transformed along x go round a ring of four: consecutive tile rows of an
 * image share two of their four. */
VECTOR_CLONES
static void transform_input(const float *x, const wino_dims *d, const wino_ws *L, float *v, int g0, int rows, long c0,
                            long c1, float *split, float *ring) {
    size_t e_row = scratch_row(d), e_slot = 4 * e_row, hw = (size_t)d->h * d->w;
    for (long c = c0; c < c1; c++) {
        for (int r = 0; r < rows; r++) {
            int n = (g0 + r) / d->th, ty = (g0 + r) % d->th;
            const float *s = x + ((size_t)n * d->c + c) * hw;
            int iy = 2 * ty - d->pad; /* >= -1: ring slot (y + 4) % 4 */
            for (int i = r == 0 || ty == 0 ? 0 : 2; i < 4; i++)
                transform_row(s, d, iy + i, split, ring + (size_t)((iy + i + 4) % 4) * e_slot, e_row);
            const float *e[4];
            for (int i = 0; i < 4; i++) e[i] = ring + (size_t)((iy + i + 4) % 4) * e_slot;
            float *dst = v + (size_t)c * L->tb + (size_t)r * d->tw;
            for (int j = 0; j < 4; j++) { /* V = B^T e: down the rows */
                const float *restrict r0 = e[0] + j * e_row, *restrict r1 = e[1] + j * e_row;
                const float *restrict r2 = e[2] + j * e_row, *restrict r3 = e[3] + j * e_row;
                float *restrict v0 = dst + j * L->vplane, *restrict v1 = dst + (4 + j) * L->vplane;
                float *restrict v2 = dst + (8 + j) * L->vplane, *restrict v3 = dst + (12 + j) * L->vplane;
#pragma GCC ivdep
                for (int tx = 0; tx < d->tw; tx++) {
                    v0[tx] = r0[tx] - r2[tx];
                    v1[tx] = r1[tx] + r2[tx];
                    v2[tx] = r2[tx] - r1[tx];
                    v3[tx] = r1[tx] - r3[tx];
                }
            }
        }
    }
}

/* One output row from two rows of A^T M: columns 2 tx and 2 tx + 1 are
 * (t0 + t1 + t2)[tx] and (t1 - t2 - t3)[tx], plus bias and the activation; a
 * last odd column takes only the first. */
static inline void store_row(float *restrict y, int wo, const float *restrict t0, const float *restrict t1,
                             const float *restrict t2, const float *restrict t3, float b, unet_act act) {
    int pairs = wo / 2;
#pragma GCC ivdep
    for (int tx = 0; tx < pairs; tx++) {
        y[2 * tx] = t0[tx] + t1[tx] + t2[tx];
        y[2 * tx + 1] = t1[tx] - t2[tx] - t3[tx];
    }
    if (wo % 2) y[wo - 1] = t0[pairs] + t1[pairs] + t2[pairs];
    bias_act_run(y, y, wo, b, act);
}

/* The band's output rows for channels [o0, o1): Y = A^T M A with
 * A^T = [1 1 1 0; 0 1 -1 -1] (down the rows into t, then along them), plus
 * bias and the activation; a last odd row of the image takes only the first
 * of its tile's two. */
VECTOR_CLONES
static void transform_output(const wino_dims *d, const wino_ws *L, const float *m, int g0, int rows, float *y,
                             const float *bias, unet_act act, long o0, long o1, float *t) {
    size_t ohw = (size_t)d->ho * d->wo, t_row = scratch_row(d);
    int tw = d->tw;
    for (long o = o0; o < o1; o++) {
        float b = bias ? bias[o] : 0.0f;
        for (int r = 0; r < rows; r++) {
            int n = (g0 + r) / d->th, oy = 2 * ((g0 + r) % d->th);
            const float *src = m + (size_t)o * L->tb + (size_t)r * tw;
            for (int j = 0; j < 4; j++) {
                const float *restrict m0 = src + (size_t)j * L->mplane, *restrict m1 = m0 + 4 * L->mplane;
                const float *restrict m2 = m1 + 4 * L->mplane, *restrict m3 = m2 + 4 * L->mplane;
                float *restrict t0 = t + (size_t)j * t_row, *restrict t1 = t0 + 4 * t_row;
#pragma GCC ivdep
                for (int tx = 0; tx < tw; tx++) {
                    t0[tx] = m0[tx] + m1[tx] + m2[tx];
                    t1[tx] = m1[tx] - m2[tx] - m3[tx];
                }
            }
            float *y0 = y + ((size_t)n * d->o + o) * ohw + (size_t)oy * d->wo;
            store_row(y0, d->wo, t, t + t_row, t + 2 * t_row, t + 3 * t_row, b, act);
            if (oy + 1 < d->ho)
                store_row(y0 + d->wo, d->wo, t + 4 * t_row, t + 5 * t_row, t + 6 * t_row, t + 7 * t_row, b, act);
        }
    }
}

/* One band's 16 products, M_xi = U_xi . V_xi, run by threads tid of nth. */
static void band_products(const wino_dims *d, const wino_ws *L, const float *v, float *m, int rows, float *scratch,
                          int tid, int nth) {
    size_t oc = (size_t)d->o * d->c;
    for (int xi = 0; xi < XI; xi++) {
        conv_gemm_job j = {.m = d->o,
                           .n = rows * d->tw,
                           .k = d->c,
                           .a = L->u + xi * oc,
                           .a_row = (size_t)d->c,
                           .a_col = 1,
                           .src = v + xi * L->vplane,
                           .row_offset = L->rows,
                           .c = m + xi * L->mplane,
                           .ldc = L->tb};
        conv_gemm_run(&j, scratch, tid, nth);
    }
}

void conv_winograd_forward(const unet_op_args *a) {
    wino_dims d = dims_of(a);
    carver cv = {a->workspace, 0};
    wino_ws L = layout(&d, &cv);
    const float *bias = a->param[1];
    unet_act act = a->node->act;
    int all = d.n * d.th, bands = (all + d.band - 1) / d.band;
#pragma omp parallel num_threads(conv_threads())
    {
        int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        float *scratch = L.threads + (size_t)tid * L.thread_floats;
        /* after the product's scratch: the split row (2 rows) and the ring (16), or t (8) */
        float *split = scratch + round16(conv_gemm_thread_floats(d.o, 0)), *ring = split + 2 * scratch_row(&d);
        long o0, o1, c0, c1;
        share(d.o, tid, nth, &o0, &o1);
        share(d.c, tid, nth, &c0, &c1);
        transform_weight(a->param[0], &d, L.u, o0, o1);
        for (long c = c0; c < c1; c++) L.rows[c] = (long)(c * L.tb);
#pragma omp barrier
        if (bands >= nth) {
            /* whole bands per thread: all channels, its own V and M, no barrier */
            float *v = L.v + (size_t)tid * XI * L.vplane, *m = L.m + (size_t)tid * XI * L.mplane;
            for (int b = tid; b < bands; b += nth) {
                int g0 = b * d.band, rows = all - g0 < d.band ? all - g0 : d.band;
                transform_input(a->in[0], &d, &L, v, g0, rows, 0, d.c, split, ring);
                band_products(&d, &L, v, m, rows, scratch, 0, 1);
                transform_output(&d, &L, m, g0, rows, a->out, bias, act, 0, d.o, split);
            }
        } else {
            /* fewer bands than threads (deep layers): each band shared */
            for (int g0 = 0; g0 < all; g0 += d.band) {
                int rows = all - g0 < d.band ? all - g0 : d.band;
                /* (the previous band's output transform reads only M: V is free) */
                transform_input(a->in[0], &d, &L, L.v, g0, rows, c0, c1, split, ring);
#pragma omp barrier
                band_products(&d, &L, L.v, L.m, rows, scratch, tid, nth);
#pragma omp barrier
                transform_output(&d, &L, L.m, g0, rows, a->out, bias, act, o0, o1, split);
            }
        }
    }
}
