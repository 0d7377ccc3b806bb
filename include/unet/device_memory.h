/* How much memory the device under a backend has, for planning a run before
 * it allocates anything (unet info: the largest batch that fits). */
#ifndef UNET_DEVICE_MEMORY_H
#define UNET_DEVICE_MEMORY_H

#include <stddef.h>

#include "unet/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The free and total memory of the CUDA device a CUDA backend runs on
 * (cudaMemGetInfo: free counts what this process and every other holds
 * already, the backend's context and handles included). 0, or -1 with one
 * line in err; always -1 in a build without CUDA. */
int unet_cuda_memory(const unet_backend *b, size_t *free_bytes, size_t *total_bytes, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
