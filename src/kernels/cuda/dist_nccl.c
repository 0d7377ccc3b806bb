/* The NCCL face of the communicator (src/host/dist/dist.c), opened through
 * the CUDA backend's dist_id and dist_open slots: gradient buckets
 * are averaged (ncclAvg) on NCCL's own stream, each after an event that marks
 * where the backward finished it on the compute stream, so the allreduce of
 * the last layers runs while the backward computes the first. wait() makes
 * the compute stream wait for every bucket and blocks the host until they are
 * done, so that a rank whose peers died is caught by the watchdog there. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/common.h"
#include "kernels/cuda/ops.h"

#ifdef UNET_HAVE_NCCL
#include <nccl.h>

_Static_assert(sizeof(ncclUniqueId) == UNET_DIST_ID_BYTES, "NCCL unique id size");

/* A failed CUDA or NCCL call inside a step is not a user error: the backend's
 * checks (common.h) report it, with the communicator in words, and stop. */
typedef struct {
    unet_dist_face face;
    const unet_backend *b;
    char what[96]; /* "NCCL communicator, rank r of w", for the reports */
    ncclComm_t comm;
    int device;
    cudaStream_t compute, stream;
    cudaEvent_t *ready; /* one per bucket started since the last wait */
    int n_ready, cap_ready;
    cudaEvent_t done;
    double *scratch; /* device: host sums go through here */
    int scratch_n;
} nccl_face;

static unet_cuda_site at(const nccl_face *f) { return unet_at_work(f->b, f->what, 0); }
/* a call that waits for the streams, where an earlier kernel's fault may surface */
static unet_cuda_site waiting(const nccl_face *f) { return unet_at_work(f->b, f->what, 1); }

static cudaEvent_t next_event(nccl_face *f) {
    if (f->n_ready == f->cap_ready) {
        int ncap = f->cap_ready ? 2 * f->cap_ready : 64;
        cudaEvent_t *grown = realloc(f->ready, (size_t)ncap * sizeof *grown);
        if (!grown) unet_cuda_fail_at(__FILE__, __LINE__, "realloc", "out of host memory for the bucket events", at(f));
        for (int i = f->cap_ready; i < ncap; i++)
            UNET_CUDA_CHECK(cudaEventCreateWithFlags(&grown[i], cudaEventDisableTiming), at(f));
        f->ready = grown;
        f->cap_ready = ncap;
    }
    return f->ready[f->n_ready++];
}

static void nccl_start_sum(unet_dist_face *face, float *data, size_t n, int average) {
    nccl_face *f = (nccl_face *)face;
    cudaEvent_t ev = next_event(f);
    UNET_CUDA_CHECK(cudaEventRecord(ev, f->compute), at(f));
    UNET_CUDA_CHECK(cudaStreamWaitEvent(f->stream, ev, 0), at(f));
    UNET_NCCL_CHECK(ncclAllReduce(data, data, n, ncclFloat, average ? ncclAvg : ncclSum, f->comm, f->stream), at(f));
}

static void nccl_wait(unet_dist_face *face) {
    nccl_face *f = (nccl_face *)face;
    UNET_CUDA_CHECK(cudaEventRecord(f->done, f->stream), at(f));
    UNET_CUDA_CHECK(cudaStreamWaitEvent(f->compute, f->done, 0), at(f));
    UNET_CUDA_CHECK(cudaEventSynchronize(f->done), waiting(f));
    f->n_ready = 0;
}

static void nccl_sum_f64(unet_dist_face *face, double *values, int n) {
    nccl_face *f = (nccl_face *)face;
    if (n > f->scratch_n) {
        if (f->scratch) UNET_CUDA_CHECK(cudaFree(f->scratch), waiting(f));
        UNET_CUDA_CHECK(cudaMalloc((void **)&f->scratch, (size_t)n * sizeof(double)), waiting(f));
        f->scratch_n = n;
    }
    size_t bytes = (size_t)n * sizeof(double);
    UNET_CUDA_CHECK(cudaMemcpyAsync(f->scratch, values, bytes, cudaMemcpyHostToDevice, f->stream), at(f));
    UNET_NCCL_CHECK(ncclAllReduce(f->scratch, f->scratch, (size_t)n, ncclDouble, ncclSum, f->comm, f->stream), at(f));
    UNET_CUDA_CHECK(cudaMemcpyAsync(values, f->scratch, bytes, cudaMemcpyDeviceToHost, f->stream), waiting(f));
    UNET_CUDA_CHECK(cudaStreamSynchronize(f->stream), waiting(f));
}

static void nccl_barrier(unet_dist_face *face) {
    double zero = 0.0;
    nccl_sum_f64(face, &zero, 1);
}

static void nccl_abort(unet_dist_face *face, int code) {
    (void)code;
    ncclCommAbort(((nccl_face *)face)->comm);
}

static void nccl_close(unet_dist_face *face) {
    nccl_face *f = (nccl_face *)face;
    cudaSetDevice(f->device);
    if (f->comm) ncclCommDestroy(f->comm);
    for (int i = 0; i < f->cap_ready; i++) cudaEventDestroy(f->ready[i]);
    free(f->ready);
    if (f->done) cudaEventDestroy(f->done);
    if (f->scratch) cudaFree(f->scratch);
    if (f->stream) cudaStreamDestroy(f->stream);
    free(f);
}

int unet_cuda_dist_id(const unet_backend *b, unsigned char id[UNET_DIST_ID_BYTES], char *err, size_t errlen) {
    (void)b;
    ncclUniqueId u;
    ncclResult_t r = ncclGetUniqueId(&u);
    if (r != ncclSuccess) {
        snprintf(err, errlen, "ncclGetUniqueId failed: %s (NCCL_DEBUG=INFO tells more)", ncclGetErrorString(r));
        return -1;
    }
    memcpy(id, u.internal, UNET_DIST_ID_BYTES);
    return 0;
}

unet_dist_face *unet_cuda_dist_open(const unet_backend *b, int rank, int world,
                                    const unsigned char id[UNET_DIST_ID_BYTES], char *err, size_t errlen) {
    const unet_cuda_ctx *ctx = (const unet_cuda_ctx *)b->ctx;
    nccl_face *f = calloc(1, sizeof *f);
    if (!f) {
        snprintf(err, errlen, "out of memory for the NCCL communicator");
        return NULL;
    }
    f->b = b;
    snprintf(f->what, sizeof f->what, "NCCL communicator, rank %d of %d", rank, world);
    f->device = ctx->device;
    f->compute = ctx->stream;
    cudaError_t e = cudaSetDevice(f->device);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&f->stream, cudaStreamNonBlocking);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&f->done, cudaEventDisableTiming);
    if (e != cudaSuccess) {
        snprintf(err, errlen, "NCCL setup on cuda:%d: %s", f->device, cudaGetErrorString(e));
        nccl_close(&f->face);
        return NULL;
    }
    ncclUniqueId u;
    memcpy(u.internal, id, UNET_DIST_ID_BYTES);
    ncclResult_t r = ncclCommInitRank(&f->comm, world, u, rank);
    if (r != ncclSuccess) {
        f->comm = NULL;
        snprintf(err, errlen, "ncclCommInitRank (rank %d of %d on cuda:%d) failed: %s (two ranks on one GPU? NCCL "
                 "refuses that; NCCL_DEBUG=INFO tells more)", rank, world, f->device, ncclGetErrorString(r));
        nccl_close(&f->face);
        return NULL;
    }
    f->face = (unet_dist_face){.name = "nccl", .host_memory = 0, .start_sum = nccl_start_sum, .progress = NULL,
                               .wait = nccl_wait, .sum_f64 = nccl_sum_f64, .barrier = nccl_barrier,
                               .abort = nccl_abort, .close = nccl_close};
    return &f->face;
}

#else

int unet_cuda_dist_id(const unet_backend *b, unsigned char id[UNET_DIST_ID_BYTES], char *err, size_t errlen) {
    (void)b, (void)id;
    snprintf(err, errlen, "--dist nccl: this unet was built with CUDA but without NCCL (install NCCL's headers "
             "and library, then reconfigure)");
    return -1;
}

unet_dist_face *unet_cuda_dist_open(const unet_backend *b, int rank, int world,
                                    const unsigned char id[UNET_DIST_ID_BYTES], char *err, size_t errlen) {
    (void)b, (void)rank, (void)world, (void)id;
    snprintf(err, errlen, "--dist nccl: this unet was built with CUDA but without NCCL");
    return NULL;
}

#endif
