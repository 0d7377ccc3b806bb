/* The faces of the communicator (include/unet/dist.h): library-internal.
 * A face moves bytes; the bucketing, the watchdog and the choice of face are
 * dist.c's. The NCCL face is compiled with the CUDA backend
 * (src/kernels/cuda/dist_nccl.c): nothing here includes an MPI or NCCL header. */
#ifndef UNET_DIST_INTERNAL_H
#define UNET_DIST_INTERNAL_H

#include <stddef.h>

#include "unet/backend.h"

#define UNET_NCCL_ID_BYTES 128

typedef struct unet_dist_face unet_dist_face;
struct unet_dist_face {
    const char *name;
    int host_memory; /* data lives on the host: ops can sum inside a kernel (synchronised batch norm) */
    /* Starts summing n floats of backend memory in place over the ranks
     * (average: then divided by the world size); wait finishes every start. */
    void (*start_sum)(unet_dist_face *f, float *data, size_t n, int average);
    void (*progress)(unet_dist_face *f); /* NULL: the face progresses by itself */
    void (*wait)(unet_dist_face *f);
    void (*sum_f64)(unet_dist_face *f, double *values, int n); /* host memory, blocking */
    void (*barrier)(unet_dist_face *f);
    void (*abort)(unet_dist_face *f, int code);
    void (*close)(unet_dist_face *f);
};

/* MPI (src/host/dist/mpi.c): initialises MPI and reports its rank and size;
 * NULL with one line in err when MPI is not built in. */
unet_dist_face *unet_dist_mpi_open(int *rank, int *world, char *err, size_t errlen);
/* Rank 0's bytes to every rank over MPI (the NCCL unique id). */
void unet_dist_mpi_broadcast(unet_dist_face *f, void *bytes, size_t n);
int unet_dist_mpi_built(void);

/* NCCL (CUDA builds): rank 0 makes the id, every rank opens with it on the
 * backend's device and stream. NULL / -1 with one line in err otherwise. */
int unet_dist_nccl_unique_id(unsigned char id[UNET_NCCL_ID_BYTES], char *err, size_t errlen);
unet_dist_face *unet_dist_nccl_open(const unet_backend *b, int rank, int world,
                                    const unsigned char id[UNET_NCCL_ID_BYTES], char *err, size_t errlen);
int unet_dist_nccl_built(void);
/* CUDA devices this process sees (0 without CUDA). */
int unet_dist_cuda_devices(void);

#endif
