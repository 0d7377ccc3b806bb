/* Shapes and element types shared by the core and every backend. */
#ifndef UNET_TENSOR_H
#define UNET_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    UNET_F32 = 0,       /* activations and their gradients: float32 to the host, in the backend's own layout
                         * and type on the device (CUDA under bf16: NHWC bfloat16) */
    UNET_I32 = 1,       /* labels */
    UNET_F32_EXACT = 2, /* float32 NCHW on every backend: weight maps and loss values, which the
                         * losses read and write in float32 whatever the precision */
} unet_dtype;

/* Every tensor of the graph is 4-D, in PyTorch's logical order (N, C, H, W).
 * A backend decides how it lays one out in memory (the CPU backend: NCHW
 * float32); the core only ever asks the backend for byte sizes. */
typedef struct {
    int n, c, h, w;
} unet_shape;

static inline size_t unet_shape_count(unet_shape s) { return (size_t)s.n * (size_t)s.c * (size_t)s.h * (size_t)s.w; }

static inline size_t unet_dtype_size(unet_dtype t) {
    (void)t;
    return 4;
}

#ifdef __cplusplus
}
#endif

#endif
