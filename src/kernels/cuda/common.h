/* State and error checking shared by the CUDA backend's files. Every CUDA,
 * cuDNN and cuBLAS call goes through a check that names the call, the op and
 * the device, and aborts the run: a failed kernel is not a user error. */
#ifndef UNET_CUDA_COMMON_H
#define UNET_CUDA_COMMON_H

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include "unet/backend.h"

/* C linkage: the backend's C file (cudnn_graph.c) calls the reporter defined in backend.cu. */
#ifdef __cplusplus
extern "C" {
#endif

typedef enum { UNET_PREC_FP32, UNET_PREC_TF32, UNET_PREC_BF16 } unet_precision;

typedef struct {
    int device;
    unet_precision precision;
    int deterministic; /* 1 unless --fast-nondeterministic */
    cudaStream_t stream;
    cudnnHandle_t cudnn;
    cublasHandle_t cublas;
    struct unet_cudnn_cache *plans; /* cudnn_graph.c: execution plans keyed by op and shapes */
    /* While a step is being captured as a CUDA graph (backend.cu), a failing
     * CUDA, cuDNN or cuBLAS call does not end the process: the first failure
     * is kept here, the capture ends without a graph, and the run goes on
     * eagerly. Nothing runs during a capture, so no data is lost. */
    int capturing;
    char capture_failure[1024];
} unet_cuda_ctx;

static inline unet_cuda_ctx *unet_cuda_ctx_of(const unet_op_args *a) { return (unet_cuda_ctx *)a->backend->ctx; }

/* Report and abort (during a capture: record, see unet_cuda_ctx). `what` names the call, `op` the node (or
 * NULL), with the shapes when known. */
void unet_cuda_fail(const char *file, int line, const char *call, const char *msg, const unet_op_args *a);

#define UNET_CUDA_CHECK(call, a)                                                               \
    do {                                                                                       \
        cudaError_t e_ = (call);                                                               \
        if (e_ != cudaSuccess) unet_cuda_fail(__FILE__, __LINE__, #call, cudaGetErrorString(e_), (a)); \
    } while (0)
#define UNET_CUDNN_CHECK(call, a)                                                              \
    do {                                                                                       \
        cudnnStatus_t s_ = (call);                                                             \
        if (s_ != CUDNN_STATUS_SUCCESS) unet_cuda_fail(__FILE__, __LINE__, #call, cudnnGetErrorString(s_), (a)); \
    } while (0)
#define UNET_CUBLAS_CHECK(call, a)                                                             \
    do {                                                                                       \
        cublasStatus_t s_ = (call);                                                            \
        if (s_ != CUBLAS_STATUS_SUCCESS) unet_cuda_fail(__FILE__, __LINE__, #call, cublasGetStatusString(s_), (a)); \
    } while (0)
/* After every kernel launch: a launch error aborts naming the op. With
 * UNET_CUDA_SYNC=1 in the environment it also waits for the kernel, so that a
 * fault inside it (an illegal address, say) is reported at this op rather
 * than at a later, unrelated call (slow: for debugging only). */
void unet_cuda_launched(const char *file, int line, const unet_op_args *a);
#define UNET_CUDA_LAUNCHED(a) unet_cuda_launched(__FILE__, __LINE__, (a))

#ifdef __cplusplus
}
#endif

#endif
