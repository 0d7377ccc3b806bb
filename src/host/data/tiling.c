/* Overlap-tile prediction. With valid padding, tiles start on the pooling
 * grid of the mirrored image, so every tile computes exactly what one pass
 * over the whole mirrored image would at those pixels, and stitching is a
 * plain copy. With same padding, tiles overlap and are blended with a
 * Gaussian window, which hides the weaker predictions near tile borders. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unet/tiling.h"

int unet_tiling_init(unet_tiling *t, unet_plan *plan, int pool_levels, float overlap, char *err, size_t errlen) {
    memset(t, 0, sizeof *t);
    unet_shape in = unet_plan_input_shape(plan, 0);
    /* the smallest output (the deepest head under valid padding) sets the stride */
    int out = in.h;
    for (int o = 0; o < unet_plan_num_outputs(plan); o++)
        if (unet_plan_output_shape(plan, o).h < out) out = unet_plan_output_shape(plan, o).h;
    t->tile = in.h;
    t->out = out;
    t->margin = (in.h - out) / 2;
    t->align = 1 << pool_levels;
    t->same = out == in.h;
    if (!(overlap >= 0.0f && overlap < 1.0f)) {
        snprintf(err, errlen, "--overlap must be in [0, 1), got %g", (double)overlap);
        return -1;
    }
    int reach = t->same ? (int)((1.0f - overlap) * (float)t->tile) : t->out;
    t->stride = reach / t->align * t->align;
    if (t->stride < 1) {
        snprintf(err, errlen,
                 "tile %d gives outputs of %d pixels, less than one pooling cell (%d): use a larger --tile", t->tile,
                 t->out, t->align);
        return -1;
    }
    return 0;
}

static int tiles_along(int size, int out, int stride) {
    return size <= out ? 1 : (size - out + stride - 1) / stride + 1;
}

/* A separable Gaussian, sigma = tile / 8, never exactly zero at the border. */
static float window(int i, int n) {
    double c = (n - 1) / 2.0, s = n / 8.0;
    return (float)fmax(exp(-(i - c) * (i - c) / (2 * s * s)), 1e-3);
}

/* Adds (same padding) or copies (valid) one tile's output into an image map:
 * its O x O centre, which starts `off` pixels into the S x S output (a head
 * of a deep-supervised valid network is larger than the deepest, whose size
 * O is; the rest of it belongs to the neighbouring tiles, so that every
 * pixel of every head comes from one tile, the one whose centre it is in). */
static void stitch(const unet_tiling *t, const float *src, int K, int S, int off, int O, int ty, int tx, float *dst,
                   float *wsum, int height, int width) {
    for (int k = 0; k < K; k++)
        for (int y = 0; y < O; y++) {
            int iy = ty + y;
            if (iy < 0 || iy >= height) continue;
            const float *s = src + ((size_t)k * S + off + y) * S + off;
            float *d = dst + ((size_t)k * height + iy) * width;
            for (int x = 0; x < O; x++) {
                int ix = tx + x;
                if (ix < 0 || ix >= width) continue;
                if (!t->same) {
                    d[ix] = s[x];
                } else {
                    float w = window(y, O) * window(x, O);
                    d[ix] += w * s[x];
                    if (k == 0 && wsum) wsum[(size_t)iy * width + ix] += w;
                }
            }
        }
}

int unet_predict_tiled(unet_plan *plan, const unet_tiling *t, const float *image, int channels, int height, int width,
                       float **logits, void (*progress)(int done, int total, void *ctx), void *ctx) {
    unet_shape in = unet_plan_input_shape(plan, 0);
    const int B = in.n, T = t->tile, n_out = unet_plan_num_outputs(plan);
    const int ny = tiles_along(height, t->out, t->stride), nx = tiles_along(width, t->out, t->stride);
    const int total = ny * nx;
    size_t out_floats = 0;
    for (int o = 0; o < n_out; o++) {
        size_t n = unet_shape_count(unet_plan_output_shape(plan, o));
        if (n > out_floats) out_floats = n;
    }
    float *batch = calloc((size_t)B * channels * T * T, sizeof(float));
    float *outs = malloc(out_floats * sizeof(float));
    float *wsum = t->same ? calloc((size_t)height * width, sizeof(float)) : NULL;
    if (!batch || !outs || (t->same && !wsum)) {
        free(batch);
        free(outs);
        free(wsum);
        return -1;
    }
    int weighed = -1; /* the output whose stitching accumulates the blend weights */
    for (int o = 0; o < n_out; o++)
        if (logits[o] && weighed < 0) weighed = o;
    for (int o = 0; o < n_out; o++)
        if (logits[o] && t->same)
            memset(logits[o], 0, (size_t)unet_plan_output_shape(plan, o).c * height * width * sizeof(float));
    for (int first = 0; first < total; first += B) {
        int count = total - first < B ? total - first : B;
        for (int b = 0; b < count; b++) {
            int y0 = (first + b) / nx * t->stride - t->margin, x0 = (first + b) % nx * t->stride - t->margin;
            for (int c = 0; c < channels; c++)
                for (int y = 0; y < T; y++) {
                    const float *row = image + ((size_t)c * height + unet_reflect(y0 + y, height)) * width;
                    float *dst = batch + (((size_t)b * channels + c) * T + y) * T;
                    for (int x = 0; x < T; x++) dst[x] = row[unet_reflect(x0 + x, width)];
                }
        }
        unet_plan_set_input(plan, 0, batch);
        unet_plan_forward(plan);
        for (int o = 0; o < n_out; o++) {
            if (!logits[o]) continue;
            unet_shape os = unet_plan_output_shape(plan, o);
            unet_plan_read_output(plan, o, outs);
            /* the centre of a head larger than the deepest (valid padding) sits at the tile's output origin */
            int off = (os.h - t->out) / 2;
            for (int b = 0; b < count; b++) {
                int ty = (first + b) / nx * t->stride, tx = (first + b) % nx * t->stride;
                stitch(t, outs + (size_t)b * os.c * os.h * os.w, os.c, os.h, off, t->out, ty, tx, logits[o],
                       o == weighed ? wsum : NULL, height, width);
            }
        }
        if (progress) progress(first + count, total, ctx);
    }
    if (t->same)
        for (int o = 0; o < n_out; o++) {
            if (!logits[o]) continue;
            int K = unet_plan_output_shape(plan, o).c;
            for (int k = 0; k < K; k++)
                for (size_t i = 0; i < (size_t)height * width; i++)
                    logits[o][(size_t)k * height * width + i] /= wsum[i];
        }
    free(batch);
    free(outs);
    free(wsum);
    return 0;
}
