/* What `unet --version` says of the CUDA backend: the toolkit, cuDNN and
 * NCCL it was built against, and the cuDNN and NCCL loaded now. */
#include <stdio.h>

#include <cuda_runtime.h>
#include <cudnn.h>
#ifdef UNET_HAVE_NCCL
#include <nccl.h>
#endif

#include "unet/backend.h"

void unet_cuda_versions(char *buf, size_t n) {
    size_t cudnn = cudnnGetVersion(); /* major * 10000 + minor * 100 + patch since cuDNN 9 */
    int len = snprintf(buf, n, "CUDA %d.%d, cuDNN %d.%d.%d (loaded %zu.%zu.%zu)", CUDART_VERSION / 1000,
                       CUDART_VERSION % 1000 / 10, CUDNN_MAJOR, CUDNN_MINOR, CUDNN_PATCHLEVEL, cudnn / 10000,
                       cudnn / 100 % 100, cudnn % 100);
    if (len < 0 || (size_t)len >= n) return;
#if defined(UNET_HAVE_NCCL) && defined(NCCL_MAJOR)
    int loaded = 0;
    if (ncclGetVersion(&loaded) != ncclSuccess) loaded = 0;
    snprintf(buf + len, n - (size_t)len, ", NCCL %d.%d.%d (loaded %d.%d.%d)", NCCL_MAJOR, NCCL_MINOR, NCCL_PATCH,
             loaded / 10000, loaded / 100 % 100, loaded % 100);
#elif defined(UNET_HAVE_NCCL)
    snprintf(buf + len, n - (size_t)len, ", NCCL");
#else
    snprintf(buf + len, n - (size_t)len, ", no NCCL (--dist nccl is not built in)");
#endif
}
