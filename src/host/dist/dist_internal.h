/* The faces of the communicator (include/unet/dist.h): library-internal.
 * A face (unet_dist_face, include/unet/backend.h) moves bytes; the
 * bucketing, the watchdog and the choice of face are dist.c's. MPI's face is
 * here (mpi.c); a face between devices comes from the backend (its dist_id
 * and dist_open slots: NCCL on CUDA), so nothing here includes an MPI, CUDA
 * or NCCL header or names a CUDA function. */
#ifndef UNET_DIST_INTERNAL_H
#define UNET_DIST_INTERNAL_H

#include <stddef.h>

#include "unet/backend.h"

/* MPI (src/host/dist/mpi.c): initialises MPI and reports its rank and size;
 * NULL with one line in err when MPI is not built in. */
unet_dist_face *unet_dist_mpi_open(int *rank, int *world, char *err, size_t errlen);
/* Rank 0's bytes to every rank over MPI (the backend's communicator id). */
void unet_dist_mpi_broadcast(unet_dist_face *f, void *bytes, size_t n);
int unet_dist_mpi_built(void);

#endif
