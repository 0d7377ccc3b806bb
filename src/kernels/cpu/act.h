/* ReLU6 and the backward's mask by the output, shared by the CPU ops that
 * fuse an activation (unet_act: conv, batch norm, crop_add) and the relu op.
 * Each op keeps its own ReLU expression (they differ at -0 and NaN, and the
 * existing results stay bit for bit); ReLU6 is one expression everywhere. */
#ifndef UNET_CPU_ACT_H
#define UNET_CPU_ACT_H

#include <stddef.h>

#include "unet/graph.h"

/* min(max(v, 0), 6); a NaN passes, as in PyTorch's hardtanh. */
static inline float unet_relu6(float v) { return v < 0.0f ? 0.0f : v > 6.0f ? 6.0f : v; }

/* Whether the gradient passes an activation whose output is y: everywhere
 * without one, where y > 0 for ReLU, where 0 < y < 6 for ReLU6 (PyTorch's
 * hardtanh_backward: none at either bound). */
static inline int unet_act_passes(unet_act act, float y) {
    return act == UNET_ACT_NONE || (y > 0.0f && (act == UNET_ACT_RELU || y < 6.0f));
}

/* g[i] = 0 where the activation stops the gradient of output y[i], in place
 * (a backward's dout, which has no other reader); nothing without one. */
static inline void unet_act_mask(unet_act act, float *g, const float *y, size_t n) {
    if (act == UNET_ACT_RELU)
        for (size_t i = 0; i < n; i++) g[i] = y[i] > 0.0f ? g[i] : 0.0f;
    else if (act == UNET_ACT_RELU6)
        for (size_t i = 0; i < n; i++) g[i] = y[i] > 0.0f && y[i] < 6.0f ? g[i] : 0.0f;
}

#endif
