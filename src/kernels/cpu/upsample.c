/* Bilinear x2 upsampling, align_corners = False (PyTorch's default). */
#include <string.h>

#include "kernels/cpu/ops.h"

/* The two source taps of output index o along an axis of in_size inputs:
 * PyTorch's source index (o + 0.5) / 2 - 0.5, clamped at 0, its floor and
 * the next index (clamped at the border), with their weights. For x2 the
 * weights are 1, 0.75 or 0.25: exact in float. */
typedef struct {
    int i0, i1;
    float w0, w1;
} lerp_taps;

static inline lerp_taps taps_of(int o, int in_size) {
    float src = 0.5f * ((float)o + 0.5f) - 0.5f;
    if (src < 0.0f) src = 0.0f;
    lerp_taps t;
    t.i0 = (int)src;
    t.i1 = t.i0 + (t.i0 < in_size - 1);
    t.w1 = src - (float)t.i0;
    t.w0 = 1.0f - t.w1;
    return t;
}

static void upsample2_forward(const unet_op_args *a) {
    unet_shape si = a->in_shape[0], so = a->out_shape;
    const float *x = a->in[0];
    float *y = a->out;
    long planes = (long)so.n * so.c;
#pragma omp parallel for schedule(static)
    for (long pl = 0; pl < planes; pl++) {
        const float *xp = x + (size_t)pl * si.h * si.w;
        float *yp = y + (size_t)pl * so.h * so.w;
        for (int oy = 0; oy < so.h; oy++) {
            lerp_taps ty = taps_of(oy, si.h);
            const float *r0 = xp + (size_t)ty.i0 * si.w, *r1 = xp + (size_t)ty.i1 * si.w;
            float *yrow = yp + (size_t)oy * so.w;
            for (int ox = 0; ox < so.w; ox++) {
                lerp_taps tx = taps_of(ox, si.w);
                yrow[ox] = ty.w0 * (tx.w0 * r0[tx.i0] + tx.w1 * r0[tx.i1]) +
                           ty.w1 * (tx.w0 * r1[tx.i0] + tx.w1 * r1[tx.i1]);
            }
        }
    }
}

/* The adjoint of the forward, scattered with the forward's own taps. One
 * thread owns a whole plane and walks it in a fixed order: deterministic. */
static void upsample2_backward(const unet_op_args *a) {
    float *dx = a->din[0];
    if (!dx) return;
    unet_shape si = a->in_shape[0], so = a->out_shape;
    const float *dy = a->dout;
    int acc = a->din_accumulate[0];
    long planes = (long)so.n * so.c;
#pragma omp parallel for schedule(static)
    for (long pl = 0; pl < planes; pl++) {
        float *dxp = dx + (size_t)pl * si.h * si.w;
        const float *dyp = dy + (size_t)pl * so.h * so.w;
        if (!acc) memset(dxp, 0, (size_t)si.h * si.w * sizeof(float));
        for (int oy = 0; oy < so.h; oy++) {
            lerp_taps ty = taps_of(oy, si.h);
            float *r0 = dxp + (size_t)ty.i0 * si.w, *r1 = dxp + (size_t)ty.i1 * si.w;
            const float *grow = dyp + (size_t)oy * so.w;
            for (int ox = 0; ox < so.w; ox++) {
                lerp_taps tx = taps_of(ox, si.w);
                float g0 = ty.w0 * grow[ox], g1 = ty.w1 * grow[ox];
                r0[tx.i0] += tx.w0 * g0;
                r0[tx.i1] += tx.w1 * g0;
                r1[tx.i0] += tx.w0 * g1;
                r1[tx.i1] += tx.w1 * g1;
            }
        }
    }
}

const unet_op_impl unet_cpu_upsample2 = {.forward = upsample2_forward, .backward = upsample2_backward};
