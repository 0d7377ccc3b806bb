/* The arithmetic of the augmentation warp (include/unet/augment.h), written
 * once for its two twins: the CPU version (src/host/data/augment.c, compiled
 * by gcc) and the CUDA version (src/kernels/cuda/augment.cu, compiled by
 * nvcc, where these functions run on the device). It belongs to neither
 * side, so it lives here, in src/common, which both include: a kernel never
 * includes host code.
 *
 * Both sides execute the same double-precision operations in the same order,
 * so that a tile pixel gets the same source position on the CPU and on the
 * GPU to the last bit, and the nearest-pixel labels are then the same labels
 * (a position one rounding away from a half pixel could otherwise round to
 * another pixel). That holds only while neither compiler fuses a * b + c into
 * one FMA: gcc does not in ISO C mode (-std=c11 implies -ffp-contract=off),
 * and augment.cu is compiled with -fmad=false (CMakeLists.txt). For the same
 * reason no libm function whose device and host versions may round
 * differently (pow, cos, sin) is called here: callers compute those on the
 * host and pass the values in (zn1, ca, sa). floor, fmod and fabs are exact
 * on both.
 *
 * Cubic sampling is a B-spline through the samples, as scipy.ndimage and the
 * elasticdeform package do it: the window is prefiltered once (Unser's
 * recursive filter with scipy's mirror boundary, spline_filter1d) and every
 * output pixel is 4 x 4 taps of the coefficients. The same interpolation
 * turns the coarse displacement grid into a per-pixel field. */
#ifndef UNET_WARP_MATH_H
#define UNET_WARP_MATH_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#ifndef UNET_HD
#if defined(__CUDACC__)
#define UNET_HD __host__ __device__ __forceinline__
#else
#define UNET_HD static inline
#endif
#endif

#define UNET_SPLINE_POLE   (-0.267949192431122706) /* sqrt(3) - 2 */
#define UNET_WARP_MAX_GRID 64

/* What a tile pixel is made of. */
enum { UNET_WARP_COPY = 0, UNET_WARP_CUBIC = 1, UNET_WARP_LINEAR = 2 };

/* One sample's warp with everything resolved: the transform, the per-axis
 * tables of the elastic field, the source window and the tile. Pointers are
 * host memory on the CPU, device memory on the GPU. */
typedef struct {
    int tile, context, channels; /* T, X, C: the source window is S = T + 2X pixels a side */
    int mode;                    /* UNET_WARP_*: COPY is a dihedral element alone (no interpolation) */
    int flip_x, rot90;           /* rot90 in 0..3 */
    double ca, sa;               /* cos(angle) / scale, sin(angle) / scale */
    int grid;                    /* g: points per side of the elastic grid; 0: no elastic field */
    const double *W;             /* (T, g): weight of grid line i at tile row or column t */
    const double *Ry, *Rx;       /* (T, g): the field's coefficient rows combined for tile row u */
    const float *src;            /* (C, S, S): raw, or for CUBIC its B-spline coefficients */
    const int32_t *src_label;    /* (S, S) */
    const float *src_weight;     /* (S, S) */
    float *raw;                  /* (C, T, T) */
    int32_t *label;              /* (T, T) */
    float *weight;               /* (T, T) */
} unet_warp_map;

/* Index i folded into [0, n) by mirroring without repeating the edge (period 2n - 2). */
UNET_HD int unet_fold(int i, int n) {
    if (n == 1) return 0;
    int period = 2 * n - 2;
    i %= period;
    if (i < 0) i += period;
    return i < n ? i : period - i;
}

/* A position mirrored into [0, n - 1], as scipy's mirror mode does. */
UNET_HD double unet_mirror_position(double c, int n) {
    if (c >= 0 && c <= n - 1) return c;
    if (n == 1) return 0;
    double period = 2.0 * n - 2;
    c = fmod(c, period);
    if (c < 0) c += period;
    return c <= n - 1 ? c : period - c;
}

/* Taps of a position already inside [0, n - 1]: first index and weights. */
UNET_HD int unet_cubic_taps(double c, double *wt) {
    double f = floor(c), t = c - f, u = 1.0 - t;
    wt[0] = u * u * u / 6.0;
    wt[1] = (3.0 * t * t * t - 6.0 * t * t + 4.0) / 6.0;
    wt[2] = (-3.0 * t * t * t + 3.0 * t * t + 3.0 * t + 1.0) / 6.0;
    wt[3] = t * t * t / 6.0;
    return (int)f - 1;
}

/* ---- cubic B-spline coefficients ------------------------------------------ */

/* Coefficients of a line in place, mirror boundary
 * (scipy.ndimage.spline_filter1d(order=3, mode='mirror')). n >= 2;
 * zn1 = pow(UNET_SPLINE_POLE, n - 1), from the host. */
UNET_HD void unet_spline_line(double *c, int n, long stride, double zn1) {
#define C(i) c[(size_t)(i)*stride]
    const double z = UNET_SPLINE_POLE;
    for (int i = 0; i < n; i++) C(i) *= 6.0; /* (1 - z)(1 - 1/z) */
    double zi = z, c0 = C(0) + zn1 * C(n - 1);
    for (int i = 1; i < n - 1; i++) {
        c0 += zi * (C(i) + zn1 * C(n - 1 - i));
        zi *= z;
        if (fabs(zi) < 1e-17 && fabs(zn1) < 1e-30) break; /* the rest adds below double precision */
    }
    C(0) = c0 / (1 - zn1 * zn1);
    for (int i = 1; i < n; i++) C(i) += z * C(i - 1);
    C(n - 1) = (z * C(n - 2) + C(n - 1)) * z / (z * z - 1);
    for (int i = n - 2; i >= 0; i--) C(i) = z * (C(i + 1) - C(i));
#undef C
}

/* The row pass over a float image: one row of n samples in, its coefficients
 * out (in == out allowed), filtered in double in `line` (n values, stride
 * apart: the GPU interleaves the lines of neighbouring threads). */
UNET_HD void unet_spline_row(const float *in, float *out, int n, double *line, long stride, double zn1) {
    for (int x = 0; x < n; x++) line[(size_t)x * stride] = in[x];
    unet_spline_line(line, n, stride, zn1);
    for (int x = 0; x < n; x++) out[x] = (float)line[(size_t)x * stride];
}

/* The column pass over columns x0 .. x1 - 1 of a float image of h >= 2 rows
 * (after the row pass), in place: the CPU takes all columns at once, so that
 * memory is walked row by row; a GPU thread takes one. line holds x1 - x0
 * doubles; zn1 = pow(UNET_SPLINE_POLE, h - 1). */
UNET_HD void unet_spline_columns(float *img, int h, int w, int x0, int x1, double *line, double zn1) {
    const double z = UNET_SPLINE_POLE;
#define ROW(y) (img + (size_t)(y)*w)
    for (int x = x0; x < x1; x++) line[x - x0] = 6.0 * ROW(0)[x] + zn1 * 6.0 * ROW(h - 1)[x];
    double zi = z;
    for (int y = 1; y < h - 1; y++) {
        const float *a = ROW(y), *b = ROW(h - 1 - y);
        for (int x = x0; x < x1; x++) line[x - x0] += zi * 6.0 * (a[x] + zn1 * b[x]);
        zi *= z;
        if (fabs(zi) < 1e-12 && fabs(zn1) < 1e-30) break; /* below float precision */
    }
    for (int x = x0; x < x1; x++) ROW(0)[x] = (float)(line[x - x0] / (1 - zn1 * zn1));
    for (int y = 1; y < h; y++) {
        float *r = ROW(y);
        const float *p = ROW(y - 1);
        for (int x = x0; x < x1; x++) r[x] = (float)(6.0 * r[x] + z * p[x]);
    }
    {
        float *r = ROW(h - 1);
        const float *p = ROW(h - 2);
        for (int x = x0; x < x1; x++) r[x] = (float)((z * p[x] + r[x]) * z / (z * z - 1));
    }
    for (int y = h - 2; y >= 0; y--) {
        float *r = ROW(y);
        const float *nx = ROW(y + 1);
        for (int x = x0; x < x1; x++) r[x] = (float)(z * (nx[x] - r[x]));
    }
#undef ROW
}

/* ---- the elastic field ---------------------------------------------------- */

/* The g x g displacement values in place -> their B-spline coefficients
 * (rows, then columns); zn1 = pow(UNET_SPLINE_POLE, g - 1). */
UNET_HD void unet_warp_grid_coefficients(double *c, int g, double zn1) {
    for (int i = 0; i < g; i++) unet_spline_line(c + i * g, g, 1, zn1);
    for (int j = 0; j < g; j++) unet_spline_line(c + j, g, g, zn1);
}

/* Row t of W: the weights of the g grid lines at tile position t (grid point
 * i sits at pixel i (T - 1) / (g - 1)), the 4 taps folded onto the grid. */
UNET_HD void unet_warp_weights_at(int t, int tile, int g, double *Wt) {
    for (int i = 0; i < g; i++) Wt[i] = 0;
    double cp = tile > 1 ? (double)(g - 1) * t / (tile - 1) : 0, wt[4];
    int s = unet_cubic_taps(cp, wt);
    for (int k = 0; k < 4; k++) Wt[unet_fold(s + k, g)] += wt[k];
}

/* Row u of Ry and Rx: the coefficient grids cy, cx combined along i with W's
 * row u, so that a pixel (u, v) then needs g products per component. */
UNET_HD void unet_warp_field_row(const double *Wu, const double *cy, const double *cx, int g, double *Ryu,
                                 double *Rxu) {
    for (int j = 0; j < g; j++) {
        double sy = 0, sx = 0;
        for (int i = 0; i < g; i++) sy += Wu[i] * cy[i * g + j], sx += Wu[i] * cx[i * g + j];
        Ryu[j] = sy, Rxu[j] = sx;
    }
}

/* ---- one tile pixel -------------------------------------------------------- */

/* The dihedral element: tile pixel (y, x) -> (u, v). */
UNET_HD void unet_dihedral(int y, int x, int T, int flip_x, int rot90, int *u, int *v) {
    int a = y, b = flip_x ? T - 1 - x : x;
    for (int k = 0; k < rot90; k++) {
        int t = a;
        a = b, b = T - 1 - t;
    }
    *u = a, *v = b;
}

/* Writes tile pixel (y, x) of every channel, its label and its weight. */
UNET_HD void unet_warp_pixel(const unet_warp_map *m, int y, int x) {
    const int T = m->tile, ctx = m->context, S = T + 2 * ctx, C = m->channels, g = m->grid;
    const size_t plane = (size_t)T * T, splane = (size_t)S * S, d = (size_t)y * T + x;
    int u, v;
    unet_dihedral(y, x, T, m->flip_x, m->rot90, &u, &v);
    if (m->mode == UNET_WARP_COPY) {
        size_t s = (size_t)(u + ctx) * S + v + ctx;
        for (int c = 0; c < C; c++) m->raw[c * plane + d] = m->src[c * splane + s];
        m->label[d] = m->src_label[s];
        m->weight[d] = m->src_weight[s];
        return;
    }
    const double centre = (T - 1) / 2.0, ca = m->ca, sa = m->sa;
    double p = u - centre, q = v - centre;
    double sy = ctx + centre + ca * p - sa * q, sx = ctx + centre + sa * p + ca * q;
    for (int j = 0; j < g; j++) {
        double wv = m->W[(size_t)v * g + j];
        sy += wv * m->Ry[(size_t)u * g + j], sx += wv * m->Rx[(size_t)u * g + j];
    }
    sy = unet_mirror_position(sy, S), sx = unet_mirror_position(sx, S);
    /* labels and weights: the nearest pixel (scipy order 0 rounds halves up) */
    size_t near = (size_t)unet_fold((int)floor(sy + 0.5), S) * S + unet_fold((int)floor(sx + 0.5), S);
    m->label[d] = m->src_label[near];
    m->weight[d] = m->src_weight[near];
    if (m->mode == UNET_WARP_CUBIC) {
        double wy[4], wx[4];
        int y0 = unet_cubic_taps(sy, wy), x0 = unet_cubic_taps(sx, wx);
        size_t rows[4];
        int cols[4];
        for (int k = 0; k < 4; k++) rows[k] = (size_t)unet_fold(y0 + k, S) * S, cols[k] = unet_fold(x0 + k, S);
        for (int c = 0; c < C; c++) {
            const float *s = m->src + c * splane;
            double acc = 0;
            for (int i = 0; i < 4; i++) {
                const float *r = s + rows[i];
                acc += wy[i] * (wx[0] * r[cols[0]] + wx[1] * r[cols[1]] + wx[2] * r[cols[2]] + wx[3] * r[cols[3]]);
            }
            m->raw[c * plane + d] = (float)acc;
        }
    } else {
        double fy = floor(sy), fx = floor(sx), ty = sy - fy, tx = sx - fx;
        size_t r0 = (size_t)unet_fold((int)fy, S) * S, r1 = (size_t)unet_fold((int)fy + 1, S) * S;
        int c0 = unet_fold((int)fx, S), c1 = unet_fold((int)fx + 1, S);
        for (int c = 0; c < C; c++) {
            const float *s = m->src + c * splane;
            m->raw[c * plane + d] = (float)((1 - ty) * ((1 - tx) * s[r0 + c0] + tx * s[r0 + c1]) +
                                            ty * ((1 - tx) * s[r1 + c0] + tx * s[r1 + c1]));
        }
    }
}

#endif
