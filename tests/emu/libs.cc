/* The CUDA emulator's cuBLAS and NCCL (tests/emu/README.md). cuBLAS: the
 * handle and its settings, which the backend makes and keeps (it calls no
 * routine). NCCL: one rank; its allreduce runs on the stream like any
 * other work (a copy when the buffers differ: the sum and the average over
 * one rank are the data itself). UNET_CUDA_EMU_NCCL_FAULT plays a dead
 * peer (see fault_at). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <string>
#include <vector>

#include "cublas_v2.h"
#include "emu_runtime.h"
#include "nccl.h"

struct unet_emu_cublas {
    cudaStream_t stream;
    cublasMath_t math;
    cublasAtomicsMode_t atomics;
};

struct unet_emu_nccl {
    long allreduces;                 /* started so far */
    ncclResult_t async;              /* what ncclCommGetAsyncError reports */
    std::vector<cudaStream_t> hung;  /* streams a collective hangs, until ncclCommAbort */
};

extern "C" {

cublasStatus_t cublasCreate(cublasHandle_t *handle) {
    if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
    *handle = new unet_emu_cublas{nullptr, CUBLAS_DEFAULT_MATH, CUBLAS_ATOMICS_NOT_ALLOWED};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle) {
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (mode < CUBLAS_DEFAULT_MATH || mode > CUBLAS_TF32_TENSOR_OP_MATH) return CUBLAS_STATUS_INVALID_VALUE;
    handle->math = mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetAtomicsMode(cublasHandle_t handle, cublasAtomicsMode_t mode) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->atomics = mode;
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusString(cublasStatus_t status) {
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
    if (!id) return ncclInvalidArgument;
    memset(id, 0, sizeof *id);
    snprintf(id->internal, sizeof id->internal, "unet CUDA emulator, one rank");
    return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank) {
    (void)id;
    if (!comm || rank < 0 || rank >= nranks) return ncclInvalidArgument;
    if (nranks != 1) {
        fprintf(stderr, "unet CUDA emulator: NCCL is emulated for one rank only (asked for %d)\n", nranks);
        return ncclInvalidUsage;
    }
    *comm = new unet_emu_nccl{0, ncclSuccess, {}};
    return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    delete comm;
    return ncclSuccess;
}

/* Ends the communicator's pending collectives (the hung ones finish, their results garbage as NCCL leaves
 * them) and frees it, as NCCL's does: the handle is gone after it. */
ncclResult_t ncclCommAbort(ncclComm_t comm) {
    if (!comm) return ncclSuccess;
    for (cudaStream_t s : comm->hung) unet_emu::release_hang(s);
    delete comm;
    return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *async_error) {
    if (!comm || !async_error) return ncclInvalidArgument;
    *async_error = comm->async;
    return ncclSuccess;
}

static size_t type_bytes(ncclDataType_t t) {
    switch (t) {
    case ncclInt8:
    case ncclUint8: return 1;
    case ncclFloat16:
    case ncclBfloat16: return 2;
    case ncclInt64:
    case ncclUint64:
    case ncclFloat64: return 8;
    default: return 4;
    }
}

/* UNET_CUDA_EMU_NCCL_FAULT=error:N or hang:N plays a peer that dies at the N-th allreduce (counted from 1):
 * that collective and every later one never completes (the stream stops there: enqueue_hang), and with error
 * NCCL reports it as the communicator's asynchronous error (ncclRemoteError, as when a peer's connections
 * close), with hang nothing is reported (a peer that hangs without dying). 0: no fault here; else 'e' or 'h'. */
static char fault_at(long allreduce) {
    const char *v = getenv("UNET_CUDA_EMU_NCCL_FAULT");
    if (!v || !*v) return 0;
    char kind = v[0];
    const char *colon = strchr(v, ':');
    long from = colon ? atol(colon + 1) : 1;
    return (kind == 'e' || kind == 'h') && allreduce >= from ? kind : 0;
}

ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t stream) {
    if (!comm) return ncclInvalidUsage;
    if (op < ncclSum || op > ncclAvg) return ncclInvalidArgument;
    size_t bytes = count * type_bytes(type);
    std::string why;
    if (!unet_emu::device_range(send, bytes, &why) || !unet_emu::device_range(recv, bytes, &why)) {
        fprintf(stderr, "unet CUDA emulator: ncclAllReduce: %s\n", why.c_str());
        return ncclInvalidArgument;
    }
    if (char fault = fault_at(++comm->allreduces)) {
        if (fault == 'e') comm->async = ncclRemoteError;
        unet_emu::enqueue_hang(stream, "ncclAllReduce waiting for a dead peer");
        comm->hung.push_back(stream);
        return ncclSuccess;
    }
    cudaError_t e = unet_emu::enqueue(stream, "ncclAllReduce", [send, recv, bytes]() {
        if (send != recv) memmove(recv, send, bytes);
    });
    return e == cudaSuccess ? ncclSuccess : ncclUnhandledCudaError;
}

const char *ncclGetErrorString(ncclResult_t result) {
    switch (result) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    }
    return "unknown result code";
}

} // extern "C"
