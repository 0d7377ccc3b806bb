/* Skip fusion: every input centre-cropped to input 0's H,W, then either
 * concatenated along channels (crop_concat) or summed (crop_add). */
#include <string.h>

#include "kernels/cpu/grad.h"
#include "kernels/cpu/ops.h"

/* out[:, c0 : c0 + C_in] (= or +=) the centre crop of in. */
static void put_crop(float *out, unet_shape so, int c0, const float *in, unet_shape si, int add) {
    int oy = unet_crop_offset(si.h, so.h), ox = unet_crop_offset(si.w, so.w);
    long planes = (long)si.n * si.c;
#pragma omp parallel for schedule(static)
    for (long pl = 0; pl < planes; pl++) {
        int n = (int)(pl / si.c), c = (int)(pl % si.c);
        const float *src = in + (size_t)pl * si.h * si.w + (size_t)oy * si.w + ox;
        float *dst = out + ((size_t)n * so.c + c0 + c) * so.h * so.w;
        if (!add && si.w == so.w) { /* the crop keeps whole rows: one contiguous run */
            memcpy(dst, src, (size_t)so.h * so.w * sizeof(float));
            continue;
        }
        for (int y = 0; y < so.h; y++, src += si.w, dst += so.w)
            if (add)
                for (int x = 0; x < so.w; x++) dst[x] += src[x];
            else
                memcpy(dst, src, (size_t)so.w * sizeof(float));
    }
}

/* The gradient of a centre crop: din = dout[:, c0 : c0 + C_in] inside the
 * crop window, zero outside it (untouched outside when accumulating). */
static void crop_grad(float *din, unet_shape si, int accumulate, const float *dout, unet_shape so, int c0) {
    int oy = unet_crop_offset(si.h, so.h), ox = unet_crop_offset(si.w, so.w);
    long planes = (long)si.n * si.c;
#pragma omp parallel for schedule(static)
    for (long pl = 0; pl < planes; pl++) {
        int n = (int)(pl / si.c), c = (int)(pl % si.c);
        float *dst = din + (size_t)pl * si.h * si.w;
        const float *src = dout + ((size_t)n * so.c + c0 + c) * so.h * so.w;
        for (int y = 0; y < si.h; y++) {
            float *row = dst + (size_t)y * si.w;
            if (y < oy || y >= oy + so.h) {
                for (int x = 0; x < si.w; x++) unet_grad_store(row, (size_t)x, 0.0f, accumulate);
                continue;
            }
            const float *g = src + (size_t)(y - oy) * so.w;
            for (int x = 0; x < ox; x++) unet_grad_store(row, (size_t)x, 0.0f, accumulate);
            for (int x = ox; x < ox + so.w; x++) unet_grad_store(row, (size_t)x, g[x - ox], accumulate);
            for (int x = ox + so.w; x < si.w; x++) unet_grad_store(row, (size_t)x, 0.0f, accumulate);
        }
    }
}

static void crop_concat_forward(const unet_op_args *a) {
    for (int i = 0, c0 = 0; i < a->n_in; c0 += a->in_shape[i].c, i++)
        put_crop(a->out, a->out_shape, c0, a->in[i], a->in_shape[i], 0);
}

static void crop_concat_backward(const unet_op_args *a) {
    for (int i = 0, c0 = 0; i < a->n_in; c0 += a->in_shape[i].c, i++)
        if (a->din[i]) crop_grad(a->din[i], a->in_shape[i], a->din_accumulate[i], a->dout, a->out_shape, c0);
}

/* Summed in input order, so the rounding is the same every run. */
static void crop_add_forward(const unet_op_args *a) {
    for (int i = 0; i < a->n_in; i++) put_crop(a->out, a->out_shape, 0, a->in[i], a->in_shape[i], i > 0);
}

static void crop_add_backward(const unet_op_args *a) {
    for (int i = 0; i < a->n_in; i++)
        if (a->din[i]) crop_grad(a->din[i], a->in_shape[i], a->din_accumulate[i], a->dout, a->out_shape, 0);
}

const unet_op_impl unet_cpu_crop_concat = {.forward = crop_concat_forward, .backward = crop_concat_backward};
const unet_op_impl unet_cpu_crop_add = {.forward = crop_add_forward, .backward = crop_add_backward};
