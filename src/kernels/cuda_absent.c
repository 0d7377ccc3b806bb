/* A build without the CUDA backend (CMakeLists.txt compiles this file in its
 * place): the entry points of unet/backend.h that name CUDA answer with the
 * one reason, so that --device cuda, --augment-device cuda and --dist nccl
 * are each refused in one line and no caller needs an #ifdef. Everything
 * else CUDA does (device memory, the warp, NCCL) is a slot of a backend,
 * which such a build never makes. */
#include <stdio.h>

#include "unet/backend.h"

const char *unet_cuda_absent(void) {
    return "this unet was built without CUDA (configure with -DUNET_CUDA=ON where nvcc is installed)";
}

const unet_backend *unet_cuda_backend(int device, const char *precision, const char *layout, int deterministic,
                                      char *err, size_t errlen) {
    (void)device, (void)precision, (void)layout, (void)deterministic;
    snprintf(err, errlen, "%s", unet_cuda_absent());
    return NULL;
}

int unet_cuda_devices(void) { return 0; }

void unet_cuda_versions(char *buf, size_t n) { snprintf(buf, n, "not built"); }
