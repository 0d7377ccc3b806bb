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
    unet_shape out = unet_plan_output_shape(plan, unet_plan_num_outputs(plan) - 1);
    t->tile = in.h;
    t->out = out.h;
    t->margin = (in.h - out.h) / 2;
    t->align = 1 << pool_levels;
    t->same = out.h == in.h;
    if (!(overlap >= 0.0f && overlap < 1.0f)) {
        snprintf(err, errlen, "--overlap must be in [0, 1), got %g", (double)overlap);
        return -1;
    }
    int reach = t->same ? (int)((1.0f - overlap) * (float)t->tile) : t->out;
    t->stride = reach / t->align * t->align;
    if (t->stride < 1) {
        snprintf(err, errlen, "tile %d gives outputs of %d pixels, less than one pooling cell (%d): use a larger --tile",
                 t->tile, t->out, t->align);
        return -1;
    }
    return 0;
}

static int tiles_along(int size, int out, int stride) { return size <= out ? 1 : (size - out + stride - 1) / stride + 1; }

/* A separable Gaussian, sigma = tile / 8, never exactly zero at the border. */
static float window(int i, int n) {
    double c = (n - 1) / 2.0, s = n / 8.0;
    return (float)fmax(exp(-(i - c) * (i - c) / (2 * s * s)), 1e-3);
}

int unet_predict_tiled(unet_plan *plan, int output, const unet_tiling *t, const float *image, int channels, int height,
                       int width, float *logits, void (*progress)(int done, int total, void *ctx), void *ctx) {
    unet_shape in = unet_plan_input_shape(plan, 0);
    unet_shape os = unet_plan_output_shape(plan, output);
    const int B = in.n, T = t->tile, O = os.h, K = os.c;
    const int ny = tiles_along(height, t->out, t->stride), nx = tiles_along(width, t->out, t->stride);
    const int total = ny * nx;
    const int oy_head = (t->out - O) / 2; /* a shallower head's output may be larger: centre it */
    float *batch = calloc((size_t)B * channels * T * T, sizeof(float));
    float *outs = malloc((size_t)B * K * O * O * sizeof(float));
    float *wsum = t->same ? calloc((size_t)height * width, sizeof(float)) : NULL;
    if (!batch || !outs || (t->same && !wsum)) {
        free(batch);
        free(outs);
        free(wsum);
        return -1;
    }
    if (t->same) memset(logits, 0, (size_t)K * height * width * sizeof(float));
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
        unet_plan_read_output(plan, output, outs);
        for (int b = 0; b < count; b++) {
            /* output pixel (y, x) of this tile sits at image (ty + y, tx + x) */
            int ty = (first + b) / nx * t->stride - oy_head, tx = (first + b) % nx * t->stride - oy_head;
            for (int k = 0; k < K; k++)
                for (int y = 0; y < O; y++) {
                    int iy = ty + y;
                    if (iy < 0 || iy >= height) continue;
                    const float *src = outs + (((size_t)b * K + k) * O + y) * O;
                    float *dst = logits + ((size_t)k * height + iy) * width;
                    for (int x = 0; x < O; x++) {
                        int ix = tx + x;
                        if (ix < 0 || ix >= width) continue;
                        if (!t->same) {
                            dst[ix] = src[x];
                        } else {
                            float w = window(y, O) * window(x, O);
                            dst[ix] += w * src[x];
                            if (k == 0) wsum[(size_t)iy * width + ix] += w;
                        }
                    }
                }
        }
        if (progress) progress(first + count, total, ctx);
    }
    if (t->same)
        for (int k = 0; k < K; k++)
            for (size_t i = 0; i < (size_t)height * width; i++) logits[(size_t)k * height * width + i] /= wsum[i];
    free(batch);
    free(outs);
    free(wsum);
    return 0;
}
