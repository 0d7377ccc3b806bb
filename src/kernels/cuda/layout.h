/* How the CUDA backend lays a tensor out in memory, and the conversions of
 * the host's NCHW float32 to and from it. Plain C without CUDA headers, so
 * that the host code, the kernels (UNET_LAYOUT_FN is __host__ __device__
 * under nvcc) and a test on a machine without a GPU (tests/tools/
 * unet_layouttest.c) share one definition.
 *
 * Activations and their gradients (UNET_F32 tensors of a plan) are held in
 * one of three formats, fixed per backend instance (unet_cuda_format):
 *   NCHW float32   fp32 and tf32 by default: the CPU backend's layout,
 *                  byte for byte, so transfers are copies.
 *   NHWC float32   fp32 and tf32 with --layout nhwc: channels last, padded
 *                  to a multiple of UNET_NHWC_F32_CHANNELS (4) with zeros.
 *   NHWC bfloat16  bf16: channels last, padded to a multiple of
 *                  UNET_BF16_CHANNELS (8) with zeros.
 * Channels last is the layout cuDNN's tensor-core engines read without a
 * transpose. Both NHWC formats pad a pixel's channels to whole 16-byte
 * groups: every pixel starts on 16 bytes, so a kernel moves channels as
 * 16-byte vectors (4 floats, 8 bf16) and cuDNN may assume 16-byte aligned
 * pixels (its vectorised tensor-core loads). The cost is small: only tensors
 * with a channel count not a multiple of the group grow (the input image,
 * the logits), and they are the smallest of a U-Net. The padding channels
 * hold +0.0 (bits 0), so a convolution over the padded channels (zero
 * weights there) adds nothing and no stale NaN can leak in.
 * int32 tensors (labels) and UNET_F32_EXACT ones (weight maps, loss values)
 * are NCHW in every format: a weight map in NHWC would be padded four or
 * eight times larger, and in bf16 rounded to 3 digits, as would a loss.
 *
 * bf16 values are the float's upper 16 bits rounded to nearest even, as
 * __float2bfloat16_rn rounds them on the device: the host's conversions
 * (uploads) and the kernels' stores round alike, and a NaN becomes the
 * device's canonical NaN 0x7fff. Widening back to float is exact. */
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

/* Channels of an NHWC tensor are padded to a multiple of these: 16 bytes,
 * the vector width of the kernels and of tensor-core loads. */
#define UNET_BF16_CHANNELS     8
#define UNET_NHWC_F32_CHANNELS 4

/* How a backend instance holds its activations and their gradients. */
typedef enum { UNET_FMT_NCHW_F32, UNET_FMT_NHWC_F32, UNET_FMT_NHWC_BF16 } unet_cuda_format;

typedef struct {
    unet_cuda_format format; /* this tensor's: UNET_FMT_NCHW_F32 also for int32 (4-byte elements) */
    int n, c, h, w;          /* logical shape */
    int cp;                  /* channels in memory: c, or c rounded up to the format's channel group */
} unet_cuda_layout;

/* Channels in memory of a tensor of c channels in format f. */
UNET_LAYOUT_FN int unet_cuda_channels_in_memory(unet_cuda_format f, int c) {
    int g = f == UNET_FMT_NHWC_BF16 ? UNET_BF16_CHANNELS : f == UNET_FMT_NHWC_F32 ? UNET_NHWC_F32_CHANNELS : 1;
    return (c + g - 1) / g * g;
}

/* The layout of a tensor of type t on a backend whose activations are in format act. */
UNET_LAYOUT_FN unet_cuda_layout unet_cuda_layout_of(unet_cuda_format act, unet_shape s, unet_dtype t) {
    unet_cuda_layout l;
    l.format = t == UNET_F32 ? act : UNET_FMT_NCHW_F32;
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

/* Bytes of one element of a tensor in format f. */
UNET_LAYOUT_FN size_t unet_cuda_element_bytes(unet_cuda_format f) { return f == UNET_FMT_NHWC_BF16 ? 2u : 4u; }

UNET_LAYOUT_FN size_t unet_cuda_layout_bytes(unet_cuda_layout l) {
    return unet_cuda_layout_elements(l) * unet_cuda_element_bytes(l.format);
}

/* The memory index of logical element (n, c, y, x). */
UNET_LAYOUT_FN size_t unet_cuda_layout_index(unet_cuda_layout l, int n, int c, int y, int x) {
    if (l.format != UNET_FMT_NCHW_F32) return (((size_t)n * l.h + y) * l.w + x) * l.cp + c;
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

/* Host NCHW float32 (l's logical shape) -> l's NHWC format with zero padding
 * channels; dst holds unet_cuda_layout_bytes(l). */
static inline void unet_cuda_pack(unet_cuda_layout l, void *dst, const float *src) {
    size_t hw = (size_t)l.h * l.w;
    for (int n = 0; n < l.n; n++)
        for (size_t p = 0; p < hw; p++) {
            size_t d = ((size_t)n * hw + p) * l.cp;
            const float *s = src + (size_t)n * l.c * hw + p;
            for (int c = 0; c < l.cp; c++) {
                float v = c < l.c ? s[(size_t)c * hw] : 0.0f;
                if (l.format == UNET_FMT_NHWC_BF16)
                    ((uint16_t *)dst)[d + c] = unet_bf16_from_float(v);
                else
                    ((float *)dst)[d + c] = v;
            }
        }
}

/* l's NHWC format -> host NCHW float32, the padding channels dropped. */
static inline void unet_cuda_unpack(unet_cuda_layout l, float *dst, const void *src) {
    size_t hw = (size_t)l.h * l.w;
    for (int n = 0; n < l.n; n++)
        for (size_t p = 0; p < hw; p++) {
            size_t s = ((size_t)n * hw + p) * l.cp;
            float *d = dst + (size_t)n * l.c * hw + p;
            for (int c = 0; c < l.c; c++)
                d[(size_t)c * hw] = l.format == UNET_FMT_NHWC_BF16
                                        ? unet_float_from_bf16(((const uint16_t *)src)[s + c])
                                        : ((const float *)src)[s + c];
        }
}

#endif
