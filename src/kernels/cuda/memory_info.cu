/* The device's free memory, for planning (include/unet/device_memory.h). */
#include <stdio.h>

#include "kernels/cuda/common.h"
#include "unet/device_memory.h"

extern "C" int unet_cuda_memory(const unet_backend *b, size_t *free_bytes, size_t *total_bytes, char *err,
                                size_t errlen) {
    const unet_cuda_ctx *ctx = (const unet_cuda_ctx *)b->ctx;
    cudaError_t e = cudaSetDevice(ctx->device);
    if (e == cudaSuccess) e = cudaMemGetInfo(free_bytes, total_bytes);
    if (e != cudaSuccess) {
        snprintf(err, errlen, "cudaMemGetInfo on cuda:%d: %s", ctx->device, cudaGetErrorString(e));
        cudaGetLastError(); /* an answer, not a fault: leave no error for the next check */
        return -1;
    }
    return 0;
}
