/* The CUDA emulator's cuBLASLt and NCCL (tests/emu/README.md). cuBLASLt:
 * the descriptors, the heuristic query and a naive matmul over logical
 * elements (each matrix read through its own order, leading dimension and
 * batch stride, sums in double, rounded once), with the bias and ReLU
 * epilogues, independent of the backend's and the CPU's code. NCCL: one
 * rank; its allreduce runs on the stream like any other work (a copy when
 * the buffers differ: the sum and the average over one rank are the data
 * itself). UNET_CUDA_EMU_NCCL_FAULT plays a dead peer (see fault_at). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <string>
#include <vector>

#include "cublasLt.h"
#include "cuda_bf16.h"
#include "emu_runtime.h"
#include "nccl.h"

struct unet_emu_lt {
    int unused;
};
struct unet_emu_lt_matmul {
    cublasComputeType_t compute;
    cudaDataType_t scale;
    int32_t transa, transb;
    uint32_t epilogue;
    const void *bias;
    int32_t bias_type; /* -1: D's type */
};
struct unet_emu_lt_layout {
    cudaDataType_t type;
    uint64_t rows, cols;
    int64_t ld;
    int32_t order, batch;
    int64_t batch_stride;
};
struct unet_emu_lt_pref {
    uint64_t max_workspace;
    uint32_t alignment[4]; /* A, B, C, D: what the caller promises of its pointers */
};

struct unet_emu_nccl {
    long allreduces;                 /* started so far */
    ncclResult_t async;              /* what ncclCommGetAsyncError reports */
    std::vector<cudaStream_t> hung;  /* streams a collective hangs, until ncclCommAbort */
};

namespace {

/* An attribute's value of the size its type has, else invalid (as cuBLASLt checks sizeInBytes). */
template <class T>
cublasStatus_t take(T *to, const void *buf, size_t bytes) {
    if (!buf || bytes != sizeof(T)) return CUBLAS_STATUS_INVALID_VALUE;
    memcpy(to, buf, sizeof(T));
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t lt_bad(cublasStatus_t s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
cublasStatus_t lt_bad(cublasStatus_t s, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    unet_emu::say("cuBLASLt: %s", buf);
    return s;
}

size_t elem_bytes(cudaDataType_t t) { return t == CUDA_R_16BF ? 2 : 4; }

/* Memory offset (elements) of element (i, j) of batch b. */
int64_t at(const unet_emu_lt_layout &l, int64_t i, int64_t j, int64_t b) {
    return b * l.batch_stride + (l.order == CUBLASLT_ORDER_ROW ? i * l.ld + j : i + j * l.ld);
}

/* Bytes from the start of batch 0 to the end of the last element: what must lie in one device block. */
size_t extent(const unet_emu_lt_layout &l) {
    int64_t last = at(l, (int64_t)l.rows - 1, (int64_t)l.cols - 1, l.batch - 1);
    return (size_t)(last + 1) * elem_bytes(l.type);
}

double load(const void *p, cudaDataType_t t, int64_t off) {
    return t == CUDA_R_16BF ? unet_emu_bf16_float(((const unsigned short *)p)[off]) : ((const float *)p)[off];
}

/* The shapes agree: op(A) m x k, op(B) k x n, C and D m x n, leading dimensions that hold a row or column, one
 * batch count (a stride of 0 repeats a matrix), types cuBLASLt computes with float scale: float everywhere,
 * or bf16 A, B, C, D. */
cublasStatus_t check(const unet_emu_lt_matmul *op, const unet_emu_lt_layout *a, const unet_emu_lt_layout *b,
                     const unet_emu_lt_layout *c, const unet_emu_lt_layout *d) {
    if (!op || !a || !b || !c || !d) return lt_bad(CUBLAS_STATUS_NOT_INITIALIZED, "a descriptor is missing");
    uint64_t m = d->rows, n = d->cols;
    uint64_t am = op->transa ? a->cols : a->rows, ak = op->transa ? a->rows : a->cols;
    uint64_t bk = op->transb ? b->cols : b->rows, bn = op->transb ? b->rows : b->cols;
    if (am != m || bn != n || ak != bk || c->rows != m || c->cols != n)
        return lt_bad(CUBLAS_STATUS_INVALID_VALUE, "op(A) %llux%llu, op(B) %llux%llu, C %llux%llu, D %llux%llu disagree",
                      (unsigned long long)am, (unsigned long long)ak, (unsigned long long)bk, (unsigned long long)bn,
                      (unsigned long long)c->rows, (unsigned long long)c->cols, (unsigned long long)m,
                      (unsigned long long)n);
    for (const unet_emu_lt_layout *l : {a, b, c, d}) {
        int64_t need = (int64_t)(l->order == CUBLASLT_ORDER_ROW ? l->cols : l->rows);
        if (l->ld < need || l->batch != d->batch || l->batch < 1)
            return lt_bad(CUBLAS_STATUS_INVALID_VALUE, "a layout's leading dimension %lld is under %lld, or its batch "
                          "count %d differs from D's %d", (long long)l->ld, (long long)need, l->batch, d->batch);
    }
    if (a->type != b->type || c->type != d->type || (a->type == CUDA_R_16BF) != (d->type == CUDA_R_16BF))
        return lt_bad(CUBLAS_STATUS_NOT_SUPPORTED, "A, B, C, D must be all float or all bf16");
    if ((op->epilogue & CUBLASLT_EPILOGUE_BIAS) && !op->bias)
        return lt_bad(CUBLAS_STATUS_INVALID_VALUE, "a bias epilogue without CUBLASLT_MATMUL_DESC_BIAS_POINTER");
    return CUBLAS_STATUS_SUCCESS;
}

bool refuses_algos() {
    const char *v = getenv("UNET_CUDA_EMU_CUBLASLT_ALGOS"); /* 0: offer no algorithm (a cuBLASLt that cannot) */
    return v && !strcmp(v, "0");
}

} // namespace

extern "C" {

/* ---------------------------------------------------------------------------
 * cuBLASLt
 * ------------------------------------------------------------------------- */

cublasStatus_t cublasLtCreate(cublasLtHandle_t *handle) {
    if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) return CUBLAS_STATUS_NOT_INITIALIZED;
    *handle = new unet_emu_lt{0};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

size_t cublasLtGetVersion(void) { return 130000; }

const char *cublasLtGetStatusString(cublasStatus_t status) {
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "the operation completed successfully";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    }
    return "unknown status";
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *desc, cublasComputeType_t compute, cudaDataType_t scale) {
    if (!desc || (compute != CUBLAS_COMPUTE_32F && compute != CUBLAS_COMPUTE_32F_FAST_TF32) || scale != CUDA_R_32F)
        return CUBLAS_STATUS_INVALID_VALUE;
    *desc = new unet_emu_lt_matmul{compute, scale, CUBLAS_OP_N, CUBLAS_OP_N, CUBLASLT_EPILOGUE_DEFAULT, nullptr, -1};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
    delete desc;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr,
                                              const void *buf, size_t bytes) {
    if (!d) return CUBLAS_STATUS_NOT_INITIALIZED;
    switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA: return take(&d->transa, buf, bytes);
    case CUBLASLT_MATMUL_DESC_TRANSB: return take(&d->transb, buf, bytes);
    case CUBLASLT_MATMUL_DESC_EPILOGUE: return take(&d->epilogue, buf, bytes);
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: return take(&d->bias, buf, bytes);
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: return take(&d->bias_type, buf, bytes);
    }
    return CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *layout, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
    if (!layout || (type != CUDA_R_32F && type != CUDA_R_16BF)) return CUBLAS_STATUS_INVALID_VALUE;
    *layout = new unet_emu_lt_layout{type, rows, cols, ld, CUBLASLT_ORDER_COL, 1, 0};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
    delete layout;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t l, cublasLtMatrixLayoutAttribute_t attr,
                                                const void *buf, size_t bytes) {
    if (!l) return CUBLAS_STATUS_NOT_INITIALIZED;
    switch (attr) {
    case CUBLASLT_MATRIX_LAYOUT_ORDER: return take(&l->order, buf, bytes);
    case CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT: return take(&l->batch, buf, bytes);
    case CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET: return take(&l->batch_stride, buf, bytes);
    case CUBLASLT_MATRIX_LAYOUT_TYPE: return CUBLAS_STATUS_INVALID_VALUE;
    }
    return CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *pref) {
    if (!pref) return CUBLAS_STATUS_INVALID_VALUE;
    *pref = new unet_emu_lt_pref{0, {0, 0, 0, 0}};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
    delete pref;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void *buf,
                                                    size_t bytes) {
    if (!p) return CUBLAS_STATUS_NOT_INITIALIZED;
    switch (attr) {
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES: return take(&p->max_workspace, buf, bytes);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES: return take(&p->alignment[0], buf, bytes);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES: return take(&p->alignment[1], buf, bytes);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES: return take(&p->alignment[2], buf, bytes);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES: return take(&p->alignment[3], buf, bytes);
    }
    return CUBLAS_STATUS_INVALID_VALUE;
}


cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t results[], int *returned) {
    if (!handle || !pref || !results || !returned || requested < 1) return CUBLAS_STATUS_INVALID_VALUE;
    *returned = 0;
    if (cublasStatus_t s = check(desc, a, b, c, d)) return s;
    if (refuses_algos()) return CUBLAS_STATUS_NOT_SUPPORTED; /* as cuBLASLt answers when nothing fits */
    memset(&results[0], 0, sizeof results[0]);
    /* the one algorithm: it assumes the alignment the caller promised, and the matmul checks the promise */
    uint32_t promised = 16;
    for (uint32_t al : pref->alignment)
        if (al && al < promised) promised = al;
    results[0].algo.data[0] = 0x1a1a;
    results[0].algo.data[1] = promised;
    results[0].workspaceSize = 0;
    results[0].state = CUBLAS_STATUS_SUCCESS;
    results[0].wavesCount = 1.0f;
    *returned = 1;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void *alpha, const void *A,
                              cublasLtMatrixLayout_t a, const void *B, cublasLtMatrixLayout_t b, const void *beta,
                              const void *C, cublasLtMatrixLayout_t c, void *D, cublasLtMatrixLayout_t d,
                              const cublasLtMatmulAlgo_t *algo, void *workspace, size_t workspace_bytes,
                              cudaStream_t stream) {
    (void)workspace, (void)workspace_bytes;
    if (!handle || !alpha || !beta || !algo || algo->data[0] != 0x1a1a) return CUBLAS_STATUS_INVALID_VALUE;
    if (cublasStatus_t s = check(desc, a, b, c, d)) return s;
    const void *bias = desc->epilogue & CUBLASLT_EPILOGUE_BIAS ? desc->bias : nullptr;
    cudaDataType_t bias_type = desc->bias_type >= 0 ? (cudaDataType_t)desc->bias_type : d->type;
    struct {
        const void *p;
        size_t bytes;
        const char *name;
    } mats[] = {{A, extent(*a), "A"}, {B, extent(*b), "B"}, {C, extent(*c), "C"}, {D, extent(*d), "D"},
                {bias, bias ? d->rows * elem_bytes(bias_type) : 0, "the bias"}};
    for (auto &m : mats) {
        if (!m.bytes) continue;
        std::string why;
        if (!unet_emu::device_range(m.p, m.bytes, &why))
            return lt_bad(CUBLAS_STATUS_INVALID_VALUE, "%s: %s", m.name, why.c_str());
        if ((uintptr_t)m.p % algo->data[1])
            return lt_bad(CUBLAS_STATUS_INVALID_VALUE, "%s at %p is not %llu-byte aligned as the algorithm assumes",
                          m.name, m.p, (unsigned long long)algo->data[1]);
    }
    const unet_emu_lt_matmul op = *desc;
    const unet_emu_lt_layout la = *a, lb = *b, lc = *c, ld = *d;
    const double al = *(const float *)alpha, be = *(const float *)beta;
    cudaError_t e = unet_emu::enqueue(stream, "cublasLtMatmul", [=]() {
        bool tf32 = op.compute == CUBLAS_COMPUTE_32F_FAST_TF32 && la.type == CUDA_R_32F;
        auto in = [&](const void *p, const unet_emu_lt_layout &l, int64_t i, int64_t j, int64_t bt) {
            double v = load(p, l.type, at(l, i, j, bt));
            return tf32 ? (double)unet_emu::tf32((float)v) : v;
        };
        int64_t m = ld.rows, n = ld.cols, k = op.transa ? la.rows : la.cols;
        std::vector<double> out((size_t)(m * n));
        for (int64_t bt = 0; bt < ld.batch; bt++) {
            for (int64_t i = 0; i < m; i++)
                for (int64_t j = 0; j < n; j++) {
                    double s = 0.0;
                    for (int64_t p = 0; p < k; p++)
                        s += in(A, la, op.transa ? p : i, op.transa ? i : p, bt) *
                             in(B, lb, op.transb ? j : p, op.transb ? p : j, bt);
                    double r = al * s + (be != 0.0 ? be * load(C, lc.type, at(lc, i, j, bt)) : 0.0);
                    if (bias) r += load(bias, bias_type, i);
                    if ((op.epilogue & CUBLASLT_EPILOGUE_RELU) && r < 0.0) r = 0.0;
                    out[(size_t)(i * n + j)] = r; /* C may be D: store after every read of the batch */
                }
            for (int64_t i = 0; i < m; i++)
                for (int64_t j = 0; j < n; j++) {
                    int64_t off = at(ld, i, j, bt);
                    float v = (float)out[(size_t)(i * n + j)];
                    if (ld.type == CUDA_R_16BF)
                        ((unsigned short *)D)[off] = unet_emu_bf16_bits(v);
                    else
                        ((float *)D)[off] = v;
                }
        }
        unet_emu::check_redzones("cublasLtMatmul");
    });
    return e == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}

/* ---------------------------------------------------------------------------
 * NCCL
 * ------------------------------------------------------------------------- */

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
        unet_emu::say("NCCL is emulated for one rank only (asked for %d)", nranks);
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
        unet_emu::say("ncclAllReduce: %s", why.c_str());
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
