/* The NCCL face of the communicator (src/host/dist/dist.c), opened through
 * the CUDA backend's dist_id and dist_open slots: gradient buckets
 * are averaged (ncclAvg) on NCCL's own stream, each after an event that marks
 * where the backward finished it on the compute stream, so the allreduce of
 * the last layers runs while the backward computes the first. wait() makes
 * the compute stream wait for every bucket and the host poll until they are
 * done.
 *
 * A dead peer: its collectives never complete here, and a wait on them
 * (cudaEventSynchronize) would never return. So every wait polls the event
 * and the communicator's asynchronous error (ncclCommGetAsyncError, where
 * NCCL reports a peer that closed its connections or a network failure),
 * and gives up after the run's --dist-timeout: either way it aborts the
 * communicator (ncclCommAbort ends its pending collectives, here and, as its
 * connections close, on the peers, whose own polls then see the error) and
 * says why; the communicator layer ends the rank with that line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
    /* sums of host doubles (the per-step loss, validation counts, barriers): one page-locked host buffer and one
     * device buffer, made at open, so that a sum allocates nothing and copies through no pageable memory */
    double *sum_host, *sum_device;
    cudaEvent_t summed;
} nccl_face;

/* Doubles a sum moves at a time: more go in pieces of this many. */
#define SUM_CHUNK 4096
/* Between two polls of a wait: short against a step, long enough to leave the core to the loader. */
#define POLL_NS 20000L

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

static double seconds_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

/* Ends the communicator's pending collectives, here and (its connections closing) on the peers. */
static void abort_comm(nccl_face *f) {
    if (f->comm) ncclCommAbort(f->comm);
    f->comm = NULL;
}

/* Polls until ev (recorded on NCCL's stream) is reached: 0; or, when the
 * communicator reports a failure or timeout_s pass first, aborts it and
 * returns -1 with why in err. The async error is asked before the event:
 * a collective that failed may never reach it. */
static int poll_until(nccl_face *f, cudaEvent_t ev, double timeout_s, char *err, size_t errlen) {
    double start = seconds_now();
    for (;;) {
        ncclResult_t async = ncclSuccess, r = ncclCommGetAsyncError(f->comm, &async);
        if (r != ncclSuccess || (async != ncclSuccess && async != ncclInProgress)) {
            snprintf(err, errlen,
                     "NCCL reports \"%s\" (a peer died, or the network failed): the NCCL "
                     "communicator is aborted",
                     ncclGetErrorString(r != ncclSuccess ? r : async));
            abort_comm(f);
            return -1;
        }
        cudaError_t e = cudaEventQuery(ev);
        if (e == cudaSuccess) return 0;
        /* anything but "not yet" is a fault of the device, not of a peer */
        if (e != cudaErrorNotReady)
            unet_cuda_fail_at(__FILE__, __LINE__, "cudaEventQuery", cudaGetErrorString(e), waiting(f));
        cudaGetLastError(); /* "not yet" is an answer: no later check may take it for a failure */
        double waited = seconds_now() - start;
        if (waited > timeout_s) {
            snprintf(err, errlen,
                     "waited %.0f s for the other ranks: one of them died or hangs (see its output); "
                     "the NCCL communicator is aborted",
                     waited);
            abort_comm(f);
            return -1;
        }
        struct timespec pause = {0, POLL_NS};
        nanosleep(&pause, NULL);
    }
}

static int nccl_wait(unet_dist_face *face, double timeout_s, char *err, size_t errlen) {
    nccl_face *f = (nccl_face *)face;
    UNET_CUDA_CHECK(cudaEventRecord(f->done, f->stream), at(f));
    UNET_CUDA_CHECK(cudaStreamWaitEvent(f->compute, f->done, 0), at(f));
    f->n_ready = 0;
    return poll_until(f, f->done, timeout_s, err, errlen);
}

/* Host doubles summed over the ranks through the buffers made at open, a chunk at a time. */
static int nccl_sum_f64(unet_dist_face *face, double *values, int n, double timeout_s, char *err, size_t errlen) {
    nccl_face *f = (nccl_face *)face;
    for (int first = 0; first < n; first += SUM_CHUNK) {
        int count = n - first < SUM_CHUNK ? n - first : SUM_CHUNK;
        size_t bytes = (size_t)count * sizeof(double);
        /* the page-locked buffer is free: the previous sum was polled to its end */
        memcpy(f->sum_host, values + first, bytes);
        UNET_CUDA_CHECK(cudaMemcpyAsync(f->sum_device, f->sum_host, bytes, cudaMemcpyHostToDevice, f->stream), at(f));
        UNET_NCCL_CHECK(
            ncclAllReduce(f->sum_device, f->sum_device, (size_t)count, ncclDouble, ncclSum, f->comm, f->stream), at(f));
        UNET_CUDA_CHECK(cudaMemcpyAsync(f->sum_host, f->sum_device, bytes, cudaMemcpyDeviceToHost, f->stream), at(f));
        UNET_CUDA_CHECK(cudaEventRecord(f->summed, f->stream), at(f));
        if (poll_until(f, f->summed, timeout_s, err, errlen)) return -1;
        memcpy(values + first, f->sum_host, bytes);
    }
    return 0;
}

static int nccl_barrier(unet_dist_face *face, double timeout_s, char *err, size_t errlen) {
    double zero = 0.0;
    return nccl_sum_f64(face, &zero, 1, timeout_s, err, errlen);
}

static void nccl_abort(unet_dist_face *face, int code) {
    (void)code;
    abort_comm((nccl_face *)face);
}

static void nccl_close(unet_dist_face *face) {
    nccl_face *f = (nccl_face *)face;
    cudaSetDevice(f->device);
    if (f->comm) ncclCommDestroy(f->comm);
    for (int i = 0; i < f->cap_ready; i++) cudaEventDestroy(f->ready[i]);
    free(f->ready);
    if (f->done) cudaEventDestroy(f->done);
    if (f->summed) cudaEventDestroy(f->summed);
    if (f->sum_host) cudaFreeHost(f->sum_host);
    if (f->sum_device) cudaFree(f->sum_device);
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
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&f->summed, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaHostAlloc((void **)&f->sum_host, SUM_CHUNK * sizeof(double), cudaHostAllocDefault);
    if (e == cudaSuccess) e = cudaMalloc((void **)&f->sum_device, SUM_CHUNK * sizeof(double));
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
        snprintf(err, errlen,
                 "ncclCommInitRank (rank %d of %d on cuda:%d) failed: %s (two ranks on one GPU? NCCL "
                 "refuses that; NCCL_DEBUG=INFO tells more)",
                 rank, world, f->device, ncclGetErrorString(r));
        nccl_close(&f->face);
        return NULL;
    }
    f->face = (unet_dist_face){.name = "nccl",
                               .host_memory = 0,
                               .gives_up = 1,
                               .start_sum = nccl_start_sum,
                               .progress = NULL,
                               .wait = nccl_wait,
                               .sum_f64 = nccl_sum_f64,
                               .barrier = nccl_barrier,
                               .abort = nccl_abort,
                               .close = nccl_close};
    return &f->face;
}

#else

int unet_cuda_dist_id(const unet_backend *b, unsigned char id[UNET_DIST_ID_BYTES], char *err, size_t errlen) {
    (void)b, (void)id;
    snprintf(err, errlen,
             "--dist nccl: this unet was built with CUDA but without NCCL (install NCCL's headers "
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
