/* Skip fusion: every input centre-cropped to input 0's H,W, then either
 * concatenated along channels (crop_concat) or summed (crop_add, also the
 * residual sum of equal shapes, with an optional fused activation). */
#include <string.h>

#include "kernels/cpu/act.h"
#include "kernels/cpu/grad.h"
#include "kernels/cpu/ops.h"

/* The activation crop_add fuses after its sum (the relu op's ReLU). */
static inline float act_of(unet_act act, float v) {
    return act == UNET_ACT_RELU ? (v < 0.0f ? 0.0f : v) : act == UNET_ACT_RELU6 ? unet_relu6(v) : v;
}

/* out[:, c0 : c0 + C_in] (= or +=) the centre crop of in, then act. */
static void put_crop(float *out, unet_shape so, int c0, const float *in, unet_shape si, int add, unet_act act) {
    int oy = unet_crop_offset(si.h, so.h), ox = unet_crop_offset(si.w, so.w);
    long planes = (long)si.n * si.c;
#pragma omp parallel for schedule(static)
    for (long pl = 0; pl < planes; pl++) {
        int n = (int)(pl / si.c), c = (int)(pl % si.c);
        const float *src = in + (size_t)pl * si.h * si.w + (size_t)oy * si.w + ox;
        float *dst = out + ((size_t)n * so.c + c0 + c) * so.h * so.w;
        if (!add && act == UNET_ACT_NONE && si.w == so.w) { /* the crop keeps whole rows: one contiguous run */
            memcpy(dst, src, (size_t)so.h * so.w * sizeof(float));
            continue;
        }
        for (int y = 0; y < so.h; y++, src += si.w, dst += so.w)
            if (add || act != UNET_ACT_NONE)
                for (int x = 0; x < so.w; x++) dst[x] = act_of(act, add ? dst[x] + src[x] : src[x]);
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
        put_crop(a->out, a->out_shape, c0, a->in[i], a->in_shape[i], 0, UNET_ACT_NONE);
}

static void crop_concat_backward(const unet_op_args *a) {
    for (int i = 0, c0 = 0; i < a->n_in; c0 += a->in_shape[i].c, i++)
        if (a->din[i]) crop_grad(a->din[i], a->in_shape[i], a->din_accumulate[i], a->dout, a->out_shape, c0);
}

/* Summed in input order, so the rounding is the same every run; the
 * activation applied as the last input is added. */
static void crop_add_forward(const unet_op_args *a) {
    for (int i = 0; i < a->n_in; i++)
        put_crop(a->out, a->out_shape, 0, a->in[i], a->in_shape[i], i > 0,
                 i == a->n_in - 1 ? a->node->act : UNET_ACT_NONE);
}

/* dout masked by the activation in place (it has no other reader), then
 * handed to every input. */
static void crop_add_backward(const unet_op_args *a) {
    if (a->node->act != UNET_ACT_NONE) {
        size_t n = unet_shape_count(a->out_shape);
        long chunks = (long)((n + 4095) / 4096);
#pragma omp parallel for schedule(static)
        for (long ch = 0; ch < chunks; ch++) {
            size_t i0 = (size_t)ch * 4096, len = n - i0 < 4096 ? n - i0 : 4096;
            unet_act_mask(a->node->act, (float *)a->dout + i0, (const float *)a->out + i0, len);
        }
    }
    for (int i = 0; i < a->n_in; i++)
        if (a->din[i]) crop_grad(a->din[i], a->in_shape[i], a->din_accumulate[i], a->dout, a->out_shape, 0);
}

const unet_op_impl unet_cpu_crop_concat = {.forward = crop_concat_forward, .backward = crop_concat_backward};
const unet_op_impl unet_cpu_crop_add = {.forward = crop_add_forward, .backward = crop_add_backward};
