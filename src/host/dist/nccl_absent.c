/* Builds without CUDA: no NCCL face and no devices; --dist nccl says why. */
#ifndef UNET_HAVE_CUDA
#include <stdio.h>

#include "host/dist/dist_internal.h"

static const char *why = "--dist nccl: this unet was built without CUDA (configure with -DUNET_CUDA=ON where nvcc "
                         "and NCCL are installed)";

int unet_dist_nccl_unique_id(unsigned char id[UNET_NCCL_ID_BYTES], char *err, size_t errlen) {
    (void)id;
    snprintf(err, errlen, "%s", why);
    return -1;
}

unet_dist_face *unet_dist_nccl_open(const unet_backend *b, int rank, int world,
                                    const unsigned char id[UNET_NCCL_ID_BYTES], char *err, size_t errlen) {
    (void)b, (void)rank, (void)world, (void)id;
    snprintf(err, errlen, "%s", why);
    return NULL;
}

int unet_dist_nccl_built(void) { return 0; }
int unet_dist_cuda_devices(void) { return 0; }
#endif
