/* Builds without the CUDA backend answer --device cuda with a clear reason. */
#ifndef UNET_HAVE_CUDA
#include <stdio.h>

#include "unet/backend.h"

const unet_backend *unet_cuda_backend(int device, const char *precision, int deterministic, char *err,
                                      size_t errlen) {
    (void)device;
    (void)precision;
    (void)deterministic;
    snprintf(err, errlen, "this unet was built without CUDA (configure with -DUNET_CUDA=ON where nvcc is installed)");
    return NULL;
}

int unet_cuda_devices(void) { return 0; }
#endif
