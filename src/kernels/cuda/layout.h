/* How the CUDA backend lays a tensor out in memory, and the conversions of
 * the host's NCHW float32 to and from it. Plain C without CUDA headers, so
 * that the host code, the kernels (UNET_LAYOUT_FN is __host__ __device__
 * under nvcc) and a test on a machine without a GPU (tests/tools/
 * unet_layouttest.c) share one definition.
 *
 * Two layouts:
 *   NCHW float32   fp32 and tf32, and in every precision int32 tensors
 *                  (labels) and UNET_F32_EXACT ones (weight maps, loss
 *                  values): the CPU backend's layout, byte for byte, so
 *                  transfers are copies.
 *   NHWC bfloat16  bf16 activations and their gradients: channels last and
 *                  padded to a multiple of UNET_BF16_CHANNELS with zeros,
 *                  the layout cuDNN's bf16 tensor-core engines read without
 *                  a transpose. The padding channels hold +0.0 (bits 0), so
 *                  a convolution over the padded channels (zero weights
 *                  there) adds nothing and no stale NaN can leak in.
 *
 * bf16 values are the float's upper 16 bits rounded to nearest even, as
 * __float2bfloat16_rn rounds them on the device: the host's conversions
 * (uploads) and the kernels' stores round alike, and a NaN becomes the
 * device's canonical NaN 0x7fff. Widening back to float is exact.
 *
 * Weight maps and loss values (UNET_F32_EXACT) stay float32 NCHW under
 * bf16: a weight map in bf16 NHWC would be eight times larger and rounded
 * to 3 digits, and so would a loss value. */
#ifndef UNET_CUDA_LAYOUT_H
#define UNET_CUDA_LAYOUT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "unet/tensor.h"

#ifdef __CUDACC__
#define UNET_LAYOUT_FN static inline __host__ __device__
#else
#define UNET_LAYOUT_FN static inline
#endif

/* Channels of an NHWC bf16 tensor are padded to a multiple of this: 8 bf16
 * values are 16 bytes, the vector width tensor-core engines load. */
#define UNET_BF16_CHANNELS 8

/* How a backend instance holds its activations and their gradients. */
typedef enum { UNET_ACT_NCHW_F32, UNET_ACT_NHWC_BF16 } unet_act_format;

typedef struct {
    unet_act_format format; /* this tensor's: UNET_ACT_NCHW_F32 also for int32 (4-byte elements) */
    int n, c, h, w;         /* logical shape */
    int cp;                 /* channels in memory: c, or c rounded up to the format's channel group */
} unet_cuda_layout;

/* Channels in memory of a tensor of c channels in format f. */
UNET_LAYOUT_FN int unet_cuda_channels_in_memory(unet_act_format f, int c) {
    int g = f == UNET_ACT_NHWC_BF16 ? UNET_BF16_CHANNELS : 1;
    return (c + g - 1) / g * g;
}

/* The layout of a tensor of type t on a backend whose activations are in format act. */
UNET_LAYOUT_FN unet_cuda_layout unet_cuda_layout_of(unet_act_format act, unet_shape s, unet_dtype t) {
    unet_cuda_layout l;
    l.format = t == UNET_F32 ? act : UNET_ACT_NCHW_F32;
    l.n = s.n;
    l.c = s.c;
    l.h = s.h;
    l.w = s.w;
    l.cp = unet_cuda_channels_in_memory(l.format, s.c);
    return l;
}

/* Elements in memory, padding included. */
UNET_LAYOUT_FN size_t unet_cuda_layout_elements(unet_cuda_layout l) {
    return (size_t)l.n * (size_t)l.cp * (size_t)l.h * (size_t)l.w;
}

UNET_LAYOUT_FN size_t unet_cuda_layout_bytes(unet_cuda_layout l) {
    return unet_cuda_layout_elements(l) * (l.format == UNET_ACT_NHWC_BF16 ? 2u : 4u);
}

/* The memory index of logical element (n, c, y, x). */
UNET_LAYOUT_FN size_t unet_cuda_layout_index(unet_cuda_layout l, int n, int c, int y, int x) {
    if (l.format == UNET_ACT_NHWC_BF16) return (((size_t)n * l.h + y) * l.w + x) * l.cp + c;
    return (((size_t)n * l.c + c) * l.h + y) * l.w + x;
}

/* float -> bf16 bits, round to nearest even; NaN -> 0x7fff (the device's). */
UNET_LAYOUT_FN uint16_t unet_bf16_from_float(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
    u += 0x7fffu + ((u >> 16) & 1u); /* a tie rounds up only when that makes the kept bits even */
    return (uint16_t)(u >> 16);
}

/* bf16 bits -> float, exact. */
UNET_LAYOUT_FN float unet_float_from_bf16(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Host NCHW float32 (l's logical shape) -> NHWC bf16 with zero padding
 * channels; dst holds unet_cuda_layout_elements(l) values. */
static inline void unet_cuda_pack_bf16(unet_cuda_layout l, uint16_t *dst, const float *src) {
    size_t hw = (size_t)l.h * l.w;
    for (int n = 0; n < l.n; n++)
        for (size_t p = 0; p < hw; p++) {
            uint16_t *d = dst + ((size_t)n * hw + p) * l.cp;
            const float *s = src + (size_t)n * l.c * hw + p;
            for (int c = 0; c < l.c; c++) d[c] = unet_bf16_from_float(s[(size_t)c * hw]);
            for (int c = l.c; c < l.cp; c++) d[c] = 0;
        }
}

/* NHWC bf16 -> host NCHW float32, the padding channels dropped. */
static inline void unet_cuda_unpack_bf16(unet_cuda_layout l, float *dst, const uint16_t *src) {
    size_t hw = (size_t)l.h * l.w;
    for (int n = 0; n < l.n; n++)
        for (size_t p = 0; p < hw; p++) {
            const uint16_t *s = src + ((size_t)n * hw + p) * l.cp;
            float *d = dst + (size_t)n * l.c * hw + p;
            for (int c = 0; c < l.c; c++) d[(size_t)c * hw] = unet_float_from_bf16(s[c]);
        }
}

#endif
