/* The CUDA emulator's bfloat16 (tests/emu/README.md): 16 bits, the upper
 * half of a float. Narrowing rounds to nearest, ties to even, and makes
 * every NaN the canonical 0x7fff, as the device's cvt.rn.bf16.f32 does;
 * widening is exact. */
#ifndef UNET_EMU_CUDA_BF16_H
#define UNET_EMU_CUDA_BF16_H

#include <stdint.h>
#include <string.h>

#include "cuda_runtime.h"

static inline unsigned short unet_emu_bf16_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

static inline float unet_emu_bf16_float(unsigned short b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

struct __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : __x(unet_emu_bf16_bits(f)) {}
    __nv_bfloat16(double f) : __x(unet_emu_bf16_bits((float)f)) {}
    operator float() const { return unet_emu_bf16_float(__x); }
};
typedef __nv_bfloat16 nv_bfloat16;

struct __nv_bfloat162 {
    __nv_bfloat16 x, y;
};

static inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    __nv_bfloat16 b;
    b.__x = unet_emu_bf16_bits(f);
    return b;
}
static inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
static inline float __bfloat162float(__nv_bfloat16 b) { return unet_emu_bf16_float(b.__x); }
static inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
static inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) {
    __nv_bfloat16 b;
    b.__x = u;
    return b;
}

#endif
