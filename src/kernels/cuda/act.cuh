/* The activations (unet_act) on the device, twins of src/kernels/cpu/act.h:
 * ReLU6, and whether the backward passes the gradient of an output. Each
 * kernel keeps its own ReLU expression, as its CPU twin does. */
#ifndef UNET_CUDA_ACT_CUH
#define UNET_CUDA_ACT_CUH

#include "unet/graph.h"

/* min(max(v, 0), 6); a NaN passes. */
static __device__ __forceinline__ float unet_relu6(float v) { return v < 0.0f ? 0.0f : v > 6.0f ? 6.0f : v; }

/* Everywhere without an activation; where y > 0 for ReLU; where 0 < y < 6 for ReLU6. */
static __device__ __forceinline__ bool unet_act_passes(int act, float y) {
    return act == UNET_ACT_NONE || (y > 0.0f && (act == UNET_ACT_RELU || y < 6.0f));
}

#endif
