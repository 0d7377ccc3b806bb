/* The U-Net paper's border weight map (include/unet/weightmap.h).
 *
 * d1 and d2 need every cell's own distance transform, and a full-image
 * transform per cell costs K passes over the image (100 cells on 512x512:
 * 26 M pixel visits). But the border term of a pixel whose d1 + d2 exceeds
 * the cutoff D (unet_weight_map_cutoff) is below a quarter of the spacing of
 * floats near w_c, so the float32 weight there is w_c whatever d1 + d2 is.
 * And when d1 + d2 <= D, both of the two nearest cells lie within D of the
 * pixel, so the pixel is inside both cells' bounding boxes grown by D. So each
 * cell's transform runs only over its grown box, where it is exact (the
 * transform is a minimum over the cell's pixels, all of which are inside the
 * box), and a pixel's two smallest distances over the boxes that contain it
 * are d1 and d2 exactly whenever they matter; where the sum found exceeds D
 * the true sum does too, and the term is dropped. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "unet/weightmap.h"

typedef struct {
    int y0, y1, x0, x1; /* bounding box, inclusive */
} box;

double unet_weight_map_cutoff(const unet_weightmap_cfg *cfg) {
    const double tiny = ldexp(1.0, -27); /* a quarter of the float spacing at 0.5, the smallest w_c */
    if (!(cfg->w0 > tiny) || !(cfg->sigma > 0)) return 0;
    return cfg->sigma * sqrt(2.0 * log(cfg->w0 / tiny));
}

/* 4-connected components of fg into ids 1..K (0 elsewhere); returns K. */
static int components(const int32_t *label, int h, int w, int32_t *ids, int *stack) {
    size_t n = (size_t)h * w;
    memset(ids, 0, n * sizeof *ids);
    int k = 0;
    for (size_t p = 0; p < n; p++) {
        if (label[p] <= 0 || ids[p]) continue;
        ids[p] = ++k;
        size_t top = 0;
        stack[top++] = (int)p;
        while (top) {
            int q = stack[--top], y = q / w, x = q % w;
            int nb[4] = {y > 0 ? q - w : -1, y < h - 1 ? q + w : -1, x > 0 ? q - 1 : -1, x < w - 1 ? q + 1 : -1};
            for (int i = 0; i < 4; i++)
                if (nb[i] >= 0 && label[nb[i]] > 0 && !ids[nb[i]]) {
                    ids[nb[i]] = k;
                    stack[top++] = nb[i];
                }
        }
    }
    return k;
}

static int compare_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Instance ids (any non-zero values) renumbered 1..K in increasing order. */
static int renumber(const int32_t *cells, size_t n, int32_t *ids) {
    size_t m = 0;
    for (size_t p = 0; p < n; p++)
        if (cells[p]) ids[m++] = cells[p];
    if (!m) {
        memset(ids, 0, n * sizeof *ids);
        return 0;
    }
    qsort(ids, m, sizeof *ids, compare_i32);
    size_t k = 0;
    for (size_t i = 0; i < m; i++)
        if (!i || ids[i] != ids[k - 1]) ids[k++] = ids[i];
    int32_t *unique = malloc(k * sizeof *unique);
    if (!unique) return -1;
    memcpy(unique, ids, k * sizeof *unique);
    for (size_t p = 0; p < n; p++) {
        if (!cells[p]) {
            ids[p] = 0;
            continue;
        }
        size_t lo = 0, hi = k; /* unique[lo] <= cells[p] < unique[hi] */
        while (hi - lo > 1) {
            size_t mid = (lo + hi) / 2;
            if (unique[mid] <= cells[p])
                lo = mid;
            else
                hi = mid;
        }
        ids[p] = (int32_t)lo + 1;
    }
    free(unique);
    return (int)k;
}

/* Felzenszwalb-Huttenlocher: d[q] = min_p (q - p)^2 + f[p] over finite f. */
static void squared_edt_1d(const double *f, int n, double *d, int *v, double *z) {
    int k = -1;
    for (int q = 0; q < n; q++) {
        if (!isfinite(f[q])) continue;
        if (k < 0) {
            k = 0, v[0] = q, z[0] = -INFINITY, z[1] = INFINITY;
            continue;
        }
        double s;
        for (;;) {
            int p = v[k];
            s = ((f[q] + (double)q * q) - (f[p] + (double)p * p)) / (2.0 * (q - p));
            if (s > z[k]) break;
            k--; /* z[0] = -inf stops this at k = 0 */
        }
        k++;
        v[k] = q, z[k] = s, z[k + 1] = INFINITY;
    }
    if (k < 0) {
        for (int q = 0; q < n; q++) d[q] = INFINITY;
        return;
    }
    k = 0;
    for (int q = 0; q < n; q++) {
        while (z[k + 1] < q) k++;
        double dq = q - v[k];
        d[q] = dq * dq + f[v[k]];
    }
}

int unet_weight_map(const int32_t *label, const int32_t *cells, int h, int w, const unet_weightmap_cfg *cfg,
                    float *out) {
    const size_t n = (size_t)h * w;
    size_t n_fg = 0;
    for (size_t p = 0; p < n; p++) n_fg += label[p] > 0;
    size_t n_bg = n - n_fg;
    double wc_bg = 1, wc_fg = 1;
    if (cfg->balance && n_fg && n_bg) wc_bg = (double)n / (2.0 * n_bg), wc_fg = (double)n / (2.0 * n_fg);
    for (size_t p = 0; p < n; p++) out[p] = (float)(label[p] > 0 ? wc_fg : wc_bg);

    int32_t *ids = malloc(n * sizeof *ids);
    int *stack = cells ? NULL : malloc(n * sizeof *stack);
    if (!ids || (!cells && !stack)) {
        free(ids), free(stack);
        return -1;
    }
    int k_cells = cells ? renumber(cells, n, ids) : components(label, h, w, ids, stack);
    free(stack);
    const double cut = unet_weight_map_cutoff(cfg);
    if (k_cells < 2 || cut <= 0 || !n_bg) {
        free(ids);
        return k_cells;
    }

    box *boxes = malloc((size_t)k_cells * sizeof *boxes);
    double *best1 = malloc(n * sizeof *best1), *best2 = malloc(n * sizeof *best2); /* squared distances */
    int longest = h > w ? h : w;
    double *g = malloc(n * sizeof *g), *f = malloc((size_t)longest * sizeof *f),
           *d = malloc((size_t)longest * sizeof *d);
    double *z = malloc(((size_t)longest + 1) * sizeof *z);
    int *v = malloc((size_t)longest * sizeof *v);
    if (!boxes || !best1 || !best2 || !g || !f || !d || !z || !v) {
        free(boxes), free(best1), free(best2), free(g), free(f), free(d), free(z), free(v), free(ids);
        return -1;
    }
    for (int c = 0; c < k_cells; c++) boxes[c] = (box){h, -1, w, -1};
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            int c = ids[(size_t)y * w + x];
            if (!c) continue;
            box *b = &boxes[c - 1];
            if (y < b->y0) b->y0 = y;
            if (y > b->y1) b->y1 = y;
            if (x < b->x0) b->x0 = x;
            if (x > b->x1) b->x1 = x;
        }
    for (size_t p = 0; p < n; p++) best1[p] = best2[p] = INFINITY;

    const int margin = (int)ceil(cut);
    for (int c = 1; c <= k_cells; c++) {
        const box *b = &boxes[c - 1];
        int y0 = b->y0 - margin < 0 ? 0 : b->y0 - margin, y1 = b->y1 + margin >= h ? h - 1 : b->y1 + margin;
        int x0 = b->x0 - margin < 0 ? 0 : b->x0 - margin, x1 = b->x1 + margin >= w ? w - 1 : b->x1 + margin;
        int rh = y1 - y0 + 1, rw = x1 - x0 + 1;
        /* columns: squared distance to the cell's nearest pixel in the same column (g is rh x rw) */
        for (int x = 0; x < rw; x++) {
            for (int y = 0; y < rh; y++) f[y] = ids[(size_t)(y0 + y) * w + x0 + x] == c ? 0.0 : INFINITY;
            squared_edt_1d(f, rh, d, v, z);
            for (int y = 0; y < rh; y++) g[(size_t)y * rw + x] = d[y];
        }
        /* rows: the exact squared distance to the cell, kept where it is among a background pixel's two smallest */
        for (int y = 0; y < rh; y++) {
            squared_edt_1d(g + (size_t)y * rw, rw, d, v, z);
            for (int x = 0; x < rw; x++) {
                size_t p = (size_t)(y0 + y) * w + x0 + x;
                if (label[p] > 0) continue;
                double s = d[x];
                if (s < best1[p])
                    best2[p] = best1[p], best1[p] = s;
                else if (s < best2[p])
                    best2[p] = s;
            }
        }
    }
    const double two_sigma2 = 2.0 * cfg->sigma * cfg->sigma;
    for (size_t p = 0; p < n; p++) {
        if (label[p] > 0 || !isfinite(best2[p])) continue;
        double sum = sqrt(best1[p]) + sqrt(best2[p]);
        if (sum > cut) continue;
        out[p] = (float)(wc_bg + cfg->w0 * exp(-sum * sum / two_sigma2));
    }
    free(boxes), free(best1), free(best2), free(g), free(f), free(d), free(z), free(v), free(ids);
    return k_cells;
}
