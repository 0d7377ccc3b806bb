/* Counter-based random numbers: a value is a pure function of (seed, index),
 * so the CPU and CUDA twins draw the same dropout masks, any thread order
 * gives the same bits, and a resumed run needs no saved generator state. */
#ifndef UNET_RNG_H
#define UNET_RNG_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__CUDACC__)
#define UNET_HD __host__ __device__ __forceinline__
#else
#define UNET_HD static inline
#endif

/* splitmix64 finaliser: a bijective mix of a 64-bit counter. */
UNET_HD uint64_t unet_mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* A stream key from a seed and up to two counters (step, node, image, ...). */
UNET_HD uint64_t unet_rng_key(uint64_t seed, uint64_t a, uint64_t b) {
    return unet_mix64(unet_mix64(unet_mix64(seed) ^ a) ^ b);
}

/* Uniform in [0, 1) with 24 random bits (exact in float32). */
UNET_HD float unet_uniform(uint64_t key, uint64_t index) {
    return (float)(unet_mix64(key ^ unet_mix64(index)) >> 40) * (1.0f / 16777216.0f);
}

#ifdef __cplusplus
}
#endif

#endif
