/* The communicator: picks a face (none, MPI, NCCL), carries the NCCL id to
 * every rank, cuts the gradient block into buckets as the backward finishes
 * them, and watches every collective so that a rank whose peers died or hang
 * says so and exits instead of waiting forever. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "host/common/util.h"
#include "host/dist/dist_internal.h"
#include "unet/dist.h"

#define DEFAULT_TIMEOUT_S    600.0
#define DEFAULT_BUCKET_BYTES ((size_t)25 << 20)

struct unet_dist {
    unet_dist_place place;
    unet_dist_kind kind;
    unet_dist_face *face;      /* NULL: nobody to talk to */
    unet_dist_face *bootstrap; /* MPI carrying the NCCL id under mpirun; finalised last */
    double timeout_s;
    size_t bucket_floats;
    char host[256];

    float *grads;
    size_t n_grads, pending_end; /* [pending_end, n) started; ranges below it not yet */
    size_t final_from;           /* [final_from, n) reported final by the backward */
    unet_dist_stats stats;
    unet_replica_sum replica;

    /* watchdog */
    pthread_t watchdog;
    int watchdog_started, stop;
    pthread_mutex_t lock;
    pthread_cond_t changed;
    const char *waiting_for; /* NULL: not in a collective */
    double deadline, started;
};

/* ---- the watchdog ------------------------------------------------------ */

static void *watchdog_main(void *arg) {
    unet_dist *d = arg;
    pthread_mutex_lock(&d->lock);
    while (!d->stop) {
        if (d->waiting_for && unet_now_s() > d->deadline) {
            fprintf(stderr,
                    "unet: rank %d of %d on %s waited %.0f s for the other ranks in %s: one of them died "
                    "or hangs (see its output); giving up (--dist-timeout sets the limit)\n",
                    d->place.rank, d->place.world, d->host, d->deadline - d->started, d->waiting_for);
            fflush(stderr);
            _exit(1); /* the launcher (mpirun, srun) ends the job once a rank fails */
        }
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        t.tv_nsec += 200000000L;
        if (t.tv_nsec >= 1000000000L) t.tv_sec++, t.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&d->changed, &d->lock, &t);
    }
    pthread_mutex_unlock(&d->lock);
    return NULL;
}

static void watch_for(unet_dist *d, const char *what, double seconds) {
    if (!d->watchdog_started) return;
    pthread_mutex_lock(&d->lock);
    d->waiting_for = what;
    d->started = unet_now_s();
    d->deadline = d->started + seconds;
    pthread_mutex_unlock(&d->lock);
}

static void watch(unet_dist *d, const char *what) { watch_for(d, what, d->timeout_s); }

static void unwatch(unet_dist *d) {
    if (!d->watchdog_started) return;
    pthread_mutex_lock(&d->lock);
    d->waiting_for = NULL;
    pthread_mutex_unlock(&d->lock);
}

/* A face that gives up by itself (gives_up) is watched a little longer, so
 * that its own message, after it aborted its communicator, comes first;
 * the watchdog stays the backstop of a wait that cannot poll. */
#define FACE_GRACE_S 10.0

static void watch_face(unet_dist *d, const char *what) {
    watch_for(d, what, d->face->gives_up ? d->timeout_s + FACE_GRACE_S : d->timeout_s);
}

/* The face gave up (a dead or hung peer, its communicator aborted): one line, and the rank ends, as the
 * watchdog ends it; the launcher (mpirun, srun, torchrun) then ends the job. */
static void give_up(const unet_dist *d, const char *what, const char *why) {
    fprintf(stderr, "unet: rank %d of %d on %s, in %s: %s; giving up (--dist-timeout sets the limit)\n", d->place.rank,
            d->place.world, d->host, what, why);
    fflush(stderr);
    _exit(1);
}

/* The face's blocking calls, watched; a face that gives up ends the rank with its reason. */
static void face_wait(unet_dist *d, const char *what) {
    char why[512] = "";
    watch_face(d, what);
    if (d->face->wait(d->face, d->timeout_s, why, sizeof why)) give_up(d, what, why);
    unwatch(d);
}

/* ---- opening ----------------------------------------------------------- */

static const char *kind_name(unet_dist_kind k) {
    static const char *const names[] = {"none", "mpi", "nccl", "auto"};
    return names[k];
}

static void replica_sum_fn(void *ctx, double *values, int n) { unet_dist_sum_f64(ctx, values, n); }

/* The backend's face between devices (NCCL), with the id from rank 0: over
 * MPI when mpirun started us, else TCP and the shared file. */
static int open_nccl(unet_dist *d, const unet_backend *b, char *err, size_t errlen) {
    unsigned char id[UNET_DIST_ID_BYTES] = {0};
    if (d->place.rank == 0 && b->dist_id(b, id, err, errlen)) return -1;
    if (d->place.world > 1) {
        if (getenv("OMPI_COMM_WORLD_SIZE") && unet_dist_mpi_built()) {
            int rank, world;
            d->bootstrap = unet_dist_mpi_open(&rank, &world, err, errlen);
            if (!d->bootstrap) return -1;
            watch(d, "the broadcast of the NCCL id over MPI");
            unet_dist_mpi_broadcast(d->bootstrap, id, sizeof id);
            unwatch(d);
        } else {
            char addr[256], file[4096];
            int port;
            unet_rendezvous_master(addr, sizeof addr, &port);
            unet_rendezvous_file_path(file, sizeof file);
            unet_rendezvous *r;
            if (unet_rendezvous_begin(addr, port, file, d->place.rank, d->place.world, id, sizeof id, d->timeout_s, &r,
                                      err, errlen))
                return -1;
            watch(d, "NCCL's initialisation");
            d->face = b->dist_open(b, d->place.rank, d->place.world, id, err, errlen);
            unwatch(d);
            unet_rendezvous_end(r);
            return d->face ? 0 : -1;
        }
    }
    watch(d, "NCCL's initialisation");
    d->face = b->dist_open(b, d->place.rank, d->place.world, id, err, errlen);
    unwatch(d);
    return d->face ? 0 : -1;
}

int unet_dist_open(const unet_dist_opts *o, const unet_backend *b, unet_dist **out, char *err, size_t errlen) {
    *out = NULL;
    unet_dist *d = unet_alloc_zeroed(1, sizeof *d, "the communicator", err, errlen);
    if (!d) return -1;
    pthread_mutex_init(&d->lock, NULL);
    pthread_cond_init(&d->changed, NULL);
    d->timeout_s = o->timeout_s > 0 ? o->timeout_s : DEFAULT_TIMEOUT_S;
    d->bucket_floats = (o->bucket_bytes ? o->bucket_bytes : DEFAULT_BUCKET_BYTES) / sizeof(float);
    if (d->bucket_floats < 1) d->bucket_floats = 1;
    if (gethostname(d->host, sizeof d->host - 1)) snprintf(d->host, sizeof d->host, "?");
    if (unet_dist_place_from_env(o->rank, o->world, o->local_rank, &d->place, err, errlen)) goto fail;
    int gpu = strcmp(b->name, "cpu") != 0;
    unet_dist_kind k = o->kind;
    if (k == UNET_DIST_AUTO) k = d->place.world == 1 ? UNET_DIST_NONE : gpu ? UNET_DIST_NCCL : UNET_DIST_MPI;
    d->kind = k;
    if (k == UNET_DIST_NONE && d->place.world > 1) {
        snprintf(err, errlen,
                 "--dist none, but this process is rank %d of %d (from %s): every rank would train "
                 "alone; use --dist auto",
                 d->place.rank, d->place.world, d->place.source);
        goto fail;
    }
    if (k == UNET_DIST_MPI && gpu) {
        snprintf(err, errlen,
                 "--dist mpi averages gradients in host memory, and this run is on %s: use --dist nccl "
                 "(or auto) on GPUs, or --device cpu",
                 b->name);
        goto fail;
    }
    if (k == UNET_DIST_NCCL && !b->dist_open) {
        snprintf(err, errlen, "--dist nccl needs the CUDA backend (--device cuda); on the CPU use --dist mpi");
        goto fail;
    }
    if (d->place.world > 1) {
        if (pthread_create(&d->watchdog, NULL, watchdog_main, d) == 0) d->watchdog_started = 1;
    }
    if (k == UNET_DIST_MPI) {
        int rank, world;
        d->face = unet_dist_mpi_open(&rank, &world, err, errlen);
        if (!d->face) goto fail;
        if (!strcmp(d->place.source, "single")) {
            d->place.rank = rank, d->place.world = world, d->place.local_rank = rank, d->place.source = "mpi";
        } else if (rank != d->place.rank || world != d->place.world) {
            snprintf(err, errlen,
                     "MPI says rank %d of %d, but %s says rank %d of %d: launch with mpirun, or srun "
                     "--mpi=pmix, and no --rank/--world-size flags",
                     rank, world, d->place.source, d->place.rank, d->place.world);
            goto fail;
        }
    } else if (k == UNET_DIST_NCCL) {
        if (open_nccl(d, b, err, errlen)) goto fail;
    }
    d->replica = (unet_replica_sum){replica_sum_fn, d};
    *out = d;
    return 0;
fail:
    unet_dist_close(d);
    return -1;
}

/* Leaving can hang too (MPI_Finalize after a peer vanished): watched, briefly. */
#define CLOSE_TIMEOUT_S 60.0

void unet_dist_close(unet_dist *d) {
    if (!d) return;
    watch_for(d, "leaving the job", d->timeout_s < CLOSE_TIMEOUT_S ? d->timeout_s : CLOSE_TIMEOUT_S);
    if (d->face) d->face->close(d->face);
    if (d->bootstrap) d->bootstrap->close(d->bootstrap);
    d->face = d->bootstrap = NULL;
    if (d->watchdog_started) {
        pthread_mutex_lock(&d->lock);
        d->stop = 1;
        pthread_cond_broadcast(&d->changed);
        pthread_mutex_unlock(&d->lock);
        pthread_join(d->watchdog, NULL);
    }
    pthread_cond_destroy(&d->changed);
    pthread_mutex_destroy(&d->lock);
    free(d);
}

void unet_dist_abort(unet_dist *d, int code) {
    if (!d || d->place.world < 2) return;
    fflush(stdout);
    fflush(stderr);
    unet_dist_face *f = d->bootstrap ? d->bootstrap : d->face;
    if (f && f->abort) f->abort(f, code);
    _exit(code);
}

int unet_dist_rank(const unet_dist *d) { return d ? d->place.rank : 0; }
int unet_dist_world(const unet_dist *d) { return d ? d->place.world : 1; }
int unet_dist_local_rank(const unet_dist *d) { return d ? d->place.local_rank : 0; }
const char *unet_dist_name(const unet_dist *d) { return d ? kind_name(d->kind) : "none"; }
const char *unet_dist_host(const unet_dist *d) { return d ? d->host : "?"; }
const char *unet_dist_source(const unet_dist *d) { return d ? d->place.source : "single"; }

/* ---- gradients --------------------------------------------------------- */

void unet_dist_grads_begin(unet_dist *d, float *grads, size_t n) {
    if (!d || !d->face) return;
    d->grads = grads;
    d->n_grads = d->pending_end = d->final_from = n;
}

static void start_bucket(unet_dist *d, size_t begin, size_t end) {
    d->face->start_sum(d->face, d->grads + begin, end - begin, 1);
    d->stats.buckets++;
    d->stats.bytes += (double)(end - begin) * sizeof(float);
    d->pending_end = begin;
}

void unet_dist_grads_ready(void *ctx, size_t begin, size_t end) {
    unet_dist *d = ctx;
    if (!d || !d->face) return;
    if (end != d->final_from) {
        fprintf(stderr,
                "unet: internal error: gradient range [%zu, %zu) reported out of order (expected one ending "
                "at %zu)\n",
                begin, end, d->final_from);
        abort();
    }
    d->final_from = begin;
    if (d->pending_end - begin >= d->bucket_floats)
        start_bucket(d, begin, d->pending_end);
    else if (d->face->progress)
        d->face->progress(d->face);
}

void unet_dist_grads_finish(unet_dist *d) {
    if (!d || !d->face) return;
    if (d->final_from != 0) {
        fprintf(stderr, "unet: internal error: the backward left gradients [0, %zu) unreported\n", d->final_from);
        abort();
    }
    if (d->pending_end > 0) start_bucket(d, 0, d->pending_end);
    double t0 = unet_now_s();
    face_wait(d, "the gradient allreduce");
    d->stats.wait_s += unet_now_s() - t0;
    d->stats.steps++;
}

unet_dist_stats unet_dist_take_stats(unet_dist *d) {
    unet_dist_stats s = {0};
    if (!d) return s;
    s = d->stats;
    memset(&d->stats, 0, sizeof d->stats);
    return s;
}

/* ---- the other collectives -------------------------------------------- */

void unet_dist_sum_f64(unet_dist *d, double *values, int n) {
    if (!d || !d->face || n <= 0) return;
    const char *what = "a sum over the ranks";
    char why[512] = "";
    watch_face(d, what);
    if (d->face->sum_f64(d->face, values, n, d->timeout_s, why, sizeof why)) give_up(d, what, why);
    unwatch(d);
}

void unet_dist_mean_f32(unet_dist *d, float *values, size_t n) {
    if (!d || !d->face || n == 0) return;
    d->face->start_sum(d->face, values, n, 1);
    face_wait(d, "an average over the ranks");
}

const unet_replica_sum *unet_dist_replica_sum(unet_dist *d) {
    return d && d->face && d->face->host_memory && d->place.world > 1 ? &d->replica : NULL;
}

void unet_dist_barrier(unet_dist *d) {
    if (!d || !d->face) return;
    const char *what = "a barrier";
    char why[512] = "";
    watch_face(d, what);
    if (d->face->barrier(d->face, d->timeout_s, why, sizeof why)) give_up(d, what, why);
    unwatch(d);
}
