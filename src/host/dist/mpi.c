/* The MPI face: Open MPI on the host. Gradient buckets go out as
 * non-blocking allreduces (MPI_Iallreduce) while the backward goes on; Open
 * MPI progresses them inside MPI calls, so the face tests them each time the
 * backward reports a range. Averages divide once a sum has arrived. Built
 * only where CMake found MPI (UNET_HAVE_MPI). */
#include <stdio.h>
#include <stdlib.h>

#include "host/dist/dist_internal.h"

#ifdef UNET_HAVE_MPI
#include <mpi.h>

#define CHUNK ((size_t)1 << 28) /* MPI counts are ints */

typedef struct {
    float *data;
    size_t n;
} average_range;

typedef struct {
    unet_dist_face face;
    int world, we_initialised;
    MPI_Request *requests;
    int n_requests, cap_requests;
    average_range *averages;
    int n_averages, cap_averages;
} mpi_face;

static void grow(void **p, int *cap, int need, size_t size) {
    if (need <= *cap) return;
    int ncap = *cap ? 2 * *cap : 64;
    while (ncap < need) ncap *= 2;
    void *q = realloc(*p, (size_t)ncap * size);
    if (!q) {
        fprintf(stderr, "unet: out of memory for MPI requests\n");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    *p = q;
    *cap = ncap;
}

static void mpi_start_sum(unet_dist_face *f, float *data, size_t n, int average) {
    mpi_face *m = (mpi_face *)f;
    for (size_t off = 0; off < n; off += CHUNK) {
        size_t count = n - off < CHUNK ? n - off : CHUNK;
        grow((void **)&m->requests, &m->cap_requests, m->n_requests + 1, sizeof *m->requests);
        MPI_Iallreduce(MPI_IN_PLACE, data + off, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD,
                       &m->requests[m->n_requests++]);
    }
    if (average && m->world > 1) {
        grow((void **)&m->averages, &m->cap_averages, m->n_averages + 1, sizeof *m->averages);
        m->averages[m->n_averages++] = (average_range){data, n};
    }
}

static void mpi_progress(unet_dist_face *f) {
    mpi_face *m = (mpi_face *)f;
    int done;
    if (m->n_requests) MPI_Testall(m->n_requests, m->requests, &done, MPI_STATUSES_IGNORE);
}

/* MPI's calls block: the communicator's watchdog ends one that lasts too long (gives_up = 0). */
static int mpi_wait(unet_dist_face *f, double timeout_s, char *err, size_t errlen) {
    (void)timeout_s, (void)err, (void)errlen;
    mpi_face *m = (mpi_face *)f;
    if (m->n_requests) MPI_Waitall(m->n_requests, m->requests, MPI_STATUSES_IGNORE);
    m->n_requests = 0;
    float inv = 1.0f / (float)m->world;
    for (int a = 0; a < m->n_averages; a++) {
        float *p = m->averages[a].data;
        for (size_t i = 0; i < m->averages[a].n; i++) p[i] *= inv;
    }
    m->n_averages = 0;
    return 0;
}

static int mpi_sum_f64(unet_dist_face *f, double *values, int n, double timeout_s, char *err, size_t errlen) {
    (void)f, (void)timeout_s, (void)err, (void)errlen;
    MPI_Allreduce(MPI_IN_PLACE, values, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    return 0;
}

static int mpi_barrier(unet_dist_face *f, double timeout_s, char *err, size_t errlen) {
    (void)f, (void)timeout_s, (void)err, (void)errlen;
    MPI_Barrier(MPI_COMM_WORLD);
    return 0;
}

static void mpi_abort(unet_dist_face *f, int code) {
    (void)f;
    MPI_Abort(MPI_COMM_WORLD, code);
}

static void mpi_close(unet_dist_face *f) {
    mpi_face *m = (mpi_face *)f;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (m->we_initialised && !finalized) MPI_Finalize();
    free(m->requests);
    free(m->averages);
    free(m);
}

unet_dist_face *unet_dist_mpi_open(int *rank, int *world, char *err, size_t errlen) {
    mpi_face *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory for the MPI communicator");
        return NULL;
    }
    int initialised = 0;
    MPI_Initialized(&initialised);
    if (!initialised) {
        int provided;
        /* only the training thread calls MPI (the loader's thread never does) */
        if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
            snprintf(err, errlen, "MPI_Init failed: start the ranks with mpirun, or srun --mpi=pmix");
            free(m);
            return NULL;
        }
        m->we_initialised = 1;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, rank);
    MPI_Comm_size(MPI_COMM_WORLD, world);
    m->world = *world;
    m->face = (unet_dist_face){.name = "mpi",
                               .host_memory = 1,
                               .start_sum = mpi_start_sum,
                               .progress = mpi_progress,
                               .wait = mpi_wait,
                               .sum_f64 = mpi_sum_f64,
                               .barrier = mpi_barrier,
                               .abort = mpi_abort,
                               .close = mpi_close};
    return &m->face;
}

void unet_dist_mpi_broadcast(unet_dist_face *f, void *bytes, size_t n) {
    (void)f;
    MPI_Bcast(bytes, (int)n, MPI_BYTE, 0, MPI_COMM_WORLD);
}

int unet_dist_mpi_built(void) { return 1; }

#else

unet_dist_face *unet_dist_mpi_open(int *rank, int *world, char *err, size_t errlen) {
    *rank = 0, *world = 1;
    snprintf(err, errlen,
             "--dist mpi: this unet was built without MPI (install libopenmpi-dev and openmpi-bin, "
             "then rebuild: scripts/setup.sh)");
    return NULL;
}

void unet_dist_mpi_broadcast(unet_dist_face *f, void *bytes, size_t n) { (void)f, (void)bytes, (void)n; }

int unet_dist_mpi_built(void) { return 0; }

#endif
