/* Builds without the CUDA backend answer --device cuda with a clear reason. */
#ifndef UNET_HAVE_CUDA
#include <stdio.h>

#include "unet/backend.h"
#include "unet/device_memory.h"

const unet_backend *unet_cuda_backend(int device, const char *precision, int deterministic, char *err,
                                      size_t errlen) {
    (void)device;
    (void)precision;
    (void)deterministic;
    snprintf(err, errlen, "this unet was built without CUDA (configure with -DUNET_CUDA=ON where nvcc is installed)");
    return NULL;
}

int unet_cuda_memory(const unet_backend *b, size_t *free_bytes, size_t *total_bytes, char *err, size_t errlen) {
    (void)b;
    *free_bytes = *total_bytes = 0;
    snprintf(err, errlen, "this unet was built without CUDA");
    return -1;
}
void unet_cuda_versions(char *buf, size_t n) { snprintf(buf, n, "not built"); }
#endif
