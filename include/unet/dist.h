/* Data-parallel training: who sums the gradients. One process per device
 * (or per CPU socket); each runs the whole model on its slice of the global
 * batch, and the gradients are averaged over the processes before every
 * update, so W processes of batch B train exactly like one of batch W*B.
 *
 * Three faces behind one interface: none (a single process), MPI (Open MPI,
 * the CPU backend) and NCCL (the CUDA backend, gradients on the device on
 * their own stream). Gradients are averaged with allreduce over the
 * contiguous gradient block in buckets, each started as soon as the backward
 * has finished it (unet_plan_on_grads_ready), so communication overlaps the
 * rest of the backward.
 *
 * Every collective runs under a watchdog: a rank that waits longer than the
 * timeout for the others (one died or hangs) prints one line saying so and
 * exits, so a broken job never hangs until its time limit. */
#ifndef UNET_DIST_H
#define UNET_DIST_H

#include <stddef.h>

#include "unet/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { UNET_DIST_NONE, UNET_DIST_MPI, UNET_DIST_NCCL, UNET_DIST_AUTO } unet_dist_kind;

/* Where this process sits in the job. */
typedef struct {
    int rank, world, local_rank;
    const char *source; /* where rank and world came from: "slurm", "env", "openmpi", "flags" or "single" */
} unet_dist_place;

/* Rank, world size and local rank from SLURM_PROCID / SLURM_NTASKS /
 * SLURM_LOCALID, else RANK / WORLD_SIZE / LOCAL_RANK, else Open MPI's
 * OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK, else a single process; a flag
 * (>= 0) overrides its value. 0, or -1 with one line in err (a rank outside
 * the world, a malformed variable). */
int unet_dist_place_from_env(int flag_rank, int flag_world, int flag_local_rank, unet_dist_place *out, char *err,
                             size_t errlen);

/* The device a rank uses: --device as given when it names an index or the
 * CPU; otherwise cuda:(local rank mod visible devices) where there is a GPU
 * (for cuda and auto), else "cpu" for auto. buf holds the result. */
const char *unet_dist_device(const char *device, int local_rank, char *buf, size_t n);

typedef struct {
    unet_dist_kind kind;
    int rank, world, local_rank; /* -1: from the environment */
    double timeout_s;            /* watchdog; <= 0: 600 */
    size_t bucket_bytes;         /* gradient buckets; 0: 25 MiB */
} unet_dist_opts;

typedef struct unet_dist unet_dist;

/* Joins the job: resolves the place, picks the face (auto: none for one
 * process; NCCL on the CUDA backend, MPI on the CPU), initialises it and runs
 * the rendezvous. 0, or -1 with one line in err (a face not built in, MPI on
 * a GPU backend, a rendezvous that timed out). */
int unet_dist_open(const unet_dist_opts *o, const unet_backend *b, unet_dist **out, char *err, size_t errlen);
/* Leaves the job (MPI_Finalize, NCCL teardown); NULL is fine. */
void unet_dist_close(unet_dist *d);
/* After a failure on this rank: ends the whole job now, so the other ranks
 * do not wait for this one (MPI_Abort; elsewhere the watchdogs of the others
 * fire). Does not return when world > 1. */
void unet_dist_abort(unet_dist *d, int code);

int unet_dist_rank(const unet_dist *d);
int unet_dist_world(const unet_dist *d);
int unet_dist_local_rank(const unet_dist *d);
const char *unet_dist_name(const unet_dist *d); /* "none", "mpi", "nccl" */
const char *unet_dist_host(const unet_dist *d);
const char *unet_dist_source(const unet_dist *d); /* where the place came from (unet_dist_place.source) */

/* Gradient averaging, once per step: begin before the backward (grads is
 * pb->grads, n floats), the plan reports finished ranges through
 * unet_dist_grads_ready (a unet_grads_ready_fn; ctx is the unet_dist), and
 * finish waits for every bucket: afterwards grads holds the mean over the
 * ranks. A no-op with one process and no communicator. */
void unet_dist_grads_begin(unet_dist *d, float *grads, size_t n);
void unet_dist_grads_ready(void *d, size_t begin, size_t end);
void unet_dist_grads_finish(unet_dist *d);

/* Sums doubles over the ranks, on the host, blocking (losses, metric counts,
 * the stop flag). */
void unet_dist_sum_f64(unet_dist *d, double *values, int n);
/* The mean over the ranks of a float array in backend memory (batch norm
 * running statistics), blocking. */
void unet_dist_mean_f32(unet_dist *d, float *values, size_t n);
/* Synchronised batch norm's sums; NULL when the face cannot sum inside an op
 * (the CUDA backend for now) or there is one process. */
const unet_replica_sum *unet_dist_replica_sum(unet_dist *d);
/* Waits until every rank gets here. */
void unet_dist_barrier(unet_dist *d);

/* Communication time: seconds the training thread waited for gradient
 * buckets after the backward (what the overlap did not hide), buckets and
 * bytes reduced; reset by the call. */
typedef struct {
    double wait_s;
    long steps, buckets;
    double bytes;
} unet_dist_stats;
unet_dist_stats unet_dist_take_stats(unet_dist *d);

/* ---- rendezvous: rank 0's bytes (the NCCL unique id) to every rank ---- */

/* MASTER_ADDR and MASTER_PORT, or, when unset, the first host of
 * SLURM_JOB_NODELIST (SLURM_NODELIST) and a port derived from SLURM_JOB_ID;
 * else localhost and 29500. */
void unet_rendezvous_master(char *addr, size_t addrlen, int *port);
/* The shared file: UNET_RENDEZVOUS_FILE, or .unet-rendezvous-<job>-<restart>
 * in the working directory (job from SLURM_JOB_ID, else MASTER_PORT). */
void unet_rendezvous_file_path(char *buf, size_t n);

/* Rank 0 serves `bytes` of blob over TCP on port (every interface) and
 * writes it atomically to file (when not NULL); the other ranks take it from
 * whichever answers first: connecting to addr:port (TCP NULL addr: file
 * only), or reading the file (NULL file: TCP only). Rank 0 keeps serving
 * until unet_rendezvous_end, so late ranks still find it; the others return
 * once they have it. All wait at most timeout_s. 0, or -1 with one line. */
typedef struct unet_rendezvous unet_rendezvous;
int unet_rendezvous_begin(const char *addr, int port, const char *file, int rank, int world, void *blob, size_t bytes,
                          double timeout_s, unet_rendezvous **out, char *err, size_t errlen);
/* Rank 0: stops serving and removes the file; others: frees. NULL is fine. */
void unet_rendezvous_end(unet_rendezvous *r);

#ifdef __cplusplus
}
#endif

#endif
