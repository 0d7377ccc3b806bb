/* State and error checking shared by the CUDA backend's files. Every CUDA,
 * cuDNN, cuBLASLt and NCCL call goes through one family of checks
 * (UNET_CUDA_CHECK and its siblings, below) and one reporter: a failure
 * names the call, where it was made (the op with its node and shapes, or
 * the work in words with its shapes) and the device, and ends the run: a
 * failed call is not a user error. */
#ifndef UNET_CUDA_COMMON_H
#define UNET_CUDA_COMMON_H

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include "kernels/cuda/layout.h"
#include "unet/backend.h"

/* C linkage: the backend's C files (cudnn_graph.c, dist_nccl.c) call the reporter defined in backend.cu. */
#ifdef __cplusplus
extern "C" {
#endif

typedef enum { UNET_PREC_FP32, UNET_PREC_TF32, UNET_PREC_BF16 } unet_precision;

typedef struct {
    int device;
    unet_precision precision;
    unet_cuda_format act_format; /* how activations are held (layout.h): from the precision and the layout asked */
    int deterministic;           /* 1 unless --fast-nondeterministic */
    cudaStream_t stream;
    cudnnHandle_t cudnn;
    cublasLtHandle_t cublaslt;
    struct unet_cudnn_cache *plans;    /* cudnn_graph.c: execution plans keyed by op and shapes */
    struct unet_gemm_cache *gemms;     /* gemm.c: cuBLASLt matmul plans of 1x1 convolutions */
    struct unet_cuda_staging *staging; /* staging.c: page-locked buffers of the uploads, per destination */
    /* While a step is being captured as a CUDA graph (backend.cu), a failing
     * CUDA, cuDNN or cuBLASLt call does not end the process: the first failure
     * is kept here, the capture ends without a graph, and the run goes on
     * eagerly. Nothing runs during a capture, so no data is lost. */
    int capturing;
    char capture_failure[1024];
} unet_cuda_ctx;

static inline unet_cuda_ctx *unet_cuda_ctx_of(const unet_op_args *a) { return (unet_cuda_ctx *)a->backend->ctx; }

/* Where a failed call was made, for its report. */
typedef struct {
    const unet_op_args *op;      /* in an op: its node and shapes (and through them the backend) */
    const unet_backend *backend; /* outside an op: the backend the work runs on (NULL: the process's only one) */
    const char *work;            /* outside an op: the work in words, with its shapes (NULL: nothing to add) */
    /* the call waits for queued work, so a fault of an earlier kernel may surface here: the report says how to
     * find the kernel that made it */
    int waits;
} unet_cuda_site;

static inline unet_cuda_site unet_at_op(const unet_op_args *a) {
    unet_cuda_site s = {a, a ? a->backend : NULL, NULL, 0};
    return s;
}

static inline unet_cuda_site unet_at_work(const unet_backend *b, const char *work, int waits) {
    unet_cuda_site s = {NULL, b, work, waits};
    return s;
}

/* The reporter: `call` as written, `msg` the library's own words. It ends
 * the run, except while a step is being captured as a CUDA graph, where it
 * keeps the first failure and returns (see unet_cuda_ctx). */
void unet_cuda_fail_at(const char *file, int line, const char *call, const char *msg, unet_cuda_site at);
/* The same in an op (a: NULL outside one), for the ops' checks of their own arguments and shapes. */
void unet_cuda_fail(const char *file, int line, const char *call, const char *msg, const unet_op_args *a);

/* The checks, one per library, alike: `at` is a unet_cuda_site. */
#define UNET_CHECK_STATUS_(status_t, ok, words, call, at)                                                              \
    do {                                                                                                               \
        status_t s_ = (call);                                                                                          \
        if (s_ != (ok)) unet_cuda_fail_at(__FILE__, __LINE__, #call, words(s_), (at));                                 \
    } while (0)
#define UNET_CUDA_CHECK(call, at) UNET_CHECK_STATUS_(cudaError_t, cudaSuccess, cudaGetErrorString, call, at)
#define UNET_CUDNN_CHECK(call, at)                                                                                     \
    UNET_CHECK_STATUS_(cudnnStatus_t, CUDNN_STATUS_SUCCESS, cudnnGetErrorString, call, at)
#define UNET_CUBLAS_CHECK(call, at)                                                                                    \
    UNET_CHECK_STATUS_(cublasStatus_t, CUBLAS_STATUS_SUCCESS, cublasLtGetStatusString, call, at)
/* for the file that includes nccl.h (dist_nccl.c) */
#define UNET_NCCL_CHECK(call, at) UNET_CHECK_STATUS_(ncclResult_t, ncclSuccess, ncclGetErrorString, call, at)

/* After every kernel launch: a launch error is reported as a failure of
 * `kernel`. With UNET_CUDA_SYNC=1 in the environment it also waits for the
 * kernel, so that a fault inside it (an illegal address, say) is reported
 * here rather than at a later, unrelated call (slow: for debugging only). */
void unet_cuda_launched_at(const char *file, int line, const char *kernel, unet_cuda_site at);
#define UNET_CUDA_LAUNCHED_AT(kernel, at) unet_cuda_launched_at(__FILE__, __LINE__, (kernel), (at))
#define UNET_CUDA_LAUNCHED(a)             UNET_CUDA_LAUNCHED_AT("kernel launch", unet_at_op(a))

#ifdef __cplusplus
}
#endif

#endif
