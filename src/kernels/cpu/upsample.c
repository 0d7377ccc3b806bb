/* x2 upsampling: bilinear with align_corners = False (PyTorch's default),
 * or nearest (input pixel (i, j) fills output (2i .. 2i+1, 2j .. 2j+1), as
 * F.interpolate(scale_factor = 2, mode = "nearest") takes floor(o / 2)). */
#include <string.h>

#include "kernels/cpu/grad.h"
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

static void bilinear_forward(const unet_op_args *a) {
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
                yrow[ox] =
                    ty.w0 * (tx.w0 * r0[tx.i0] + tx.w1 * r0[tx.i1]) + ty.w1 * (tx.w0 * r1[tx.i0] + tx.w1 * r1[tx.i1]);
            }
        }
    }
}

/* The adjoint of the forward, scattered with the forward's own taps. One
 * thread owns a whole plane and walks it in a fixed order: deterministic. */
static void bilinear_backward(const unet_op_args *a) {
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

static void nearest_forward(const unet_op_args *a) {
    unet_shape si = a->in_shape[0], so = a->out_shape;
    const float *x = a->in[0];
    float *y = a->out;
    long planes = (long)so.n * so.c;
#pragma omp parallel for schedule(static)
    for (long pl = 0; pl < planes; pl++) {
        const float *xp = x + (size_t)pl * si.h * si.w;
        float *yp = y + (size_t)pl * so.h * so.w;
        for (int oy = 0; oy < so.h; oy++) {
            const float *xrow = xp + (size_t)(oy / 2) * si.w;
            float *yrow = yp + (size_t)oy * so.w;
            for (int ox = 0; ox < so.w; ox++) yrow[ox] = xrow[ox / 2];
        }
    }
}

/* Each input's gradient is the sum of its four outputs', in row-major
 * order, then stored (added to what is there when accumulating). */
static void nearest_backward(const unet_op_args *a) {
    float *dx = a->din[0];
    if (!dx) return;
    unet_shape si = a->in_shape[0], so = a->out_shape;
    const float *dy = a->dout;
    int acc = a->din_accumulate[0];
    long planes = (long)si.n * si.c;
#pragma omp parallel for schedule(static)
    for (long pl = 0; pl < planes; pl++) {
        float *dxp = dx + (size_t)pl * si.h * si.w;
        const float *dyp = dy + (size_t)pl * so.h * so.w;
        for (int iy = 0; iy < si.h; iy++) {
            const float *g0 = dyp + (size_t)(2 * iy) * so.w, *g1 = g0 + so.w;
            for (int ix = 0; ix < si.w; ix++)
                unet_grad_store(dxp, (size_t)iy * si.w + ix, g0[2 * ix] + g0[2 * ix + 1] + g1[2 * ix] + g1[2 * ix + 1],
                                acc);
        }
    }
}

static void upsample2_forward(const unet_op_args *a) {
    if (a->node->upsample == UNET_UPSAMPLE_NEAREST)
        nearest_forward(a);
    else
        bilinear_forward(a);
}

static void upsample2_backward(const unet_op_args *a) {
    if (a->node->upsample == UNET_UPSAMPLE_NEAREST)
        nearest_backward(a);
    else
        bilinear_backward(a);
}

const unet_op_impl unet_cpu_upsample2 = {.forward = upsample2_forward, .backward = upsample2_backward};
