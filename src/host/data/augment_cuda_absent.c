/* Builds without the CUDA backend answer the GPU warp (unet/augment.h) with
 * a clear reason, as core/cuda_absent.c does for --device cuda. */
#ifndef UNET_HAVE_CUDA
#include <stdio.h>

#include "unet/augment.h"

static const char *const WHY =
    "the GPU augmentation warp: this unet was built without CUDA (configure with -DUNET_CUDA=ON where nvcc is "
    "installed)";

unet_cuda_warper *unet_cuda_warper_create(const unet_backend *b, int batch, int channels, int tile, int context,
                                          int grid, unet_interp interp, char *err, size_t errlen) {
    (void)b, (void)batch, (void)channels, (void)tile, (void)context, (void)grid, (void)interp;
    snprintf(err, errlen, "%s", WHY);
    return NULL;
}

int unet_cuda_warp_batch(unet_cuda_warper *w, int count, const unet_warp *warps, const float *src_raw,
                         const int32_t *src_label, const float *src_weight, float *raw, int32_t *label,
                         float *weight, char *err, size_t errlen) {
    (void)w, (void)count, (void)warps, (void)src_raw, (void)src_label, (void)src_weight, (void)raw, (void)label,
        (void)weight;
    snprintf(err, errlen, "%s", WHY);
    return -1;
}

void unet_cuda_warper_free(unet_cuda_warper *w) { (void)w; }
#endif
