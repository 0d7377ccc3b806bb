/* Where a process sits in a data-parallel job, from what its launcher set:
 * srun (SLURM_*), torchrun and friends (RANK, WORLD_SIZE, LOCAL_RANK), mpirun
 * (OMPI_COMM_WORLD_*); flags override. And which device a rank takes. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host/dist/dist_internal.h"
#include "unet/dist.h"

/* A variable holding a whole non-negative integer: 1 with *v, 0 when unset, -1 when malformed. */
static int env_int(const char *name, int *v, char *err, size_t errlen) {
    const char *s = getenv(name);
    if (!s || !s[0]) return 0;
    char *end;
    errno = 0;
    long x = strtol(s, &end, 10);
    if (*end || errno || x < 0 || x > 1 << 24) {
        snprintf(err, errlen,
                 "%s is '%s': it must be a non-negative integer (it tells this process its place "
                 "in the job)",
                 name, s);
        return -1;
    }
    *v = (int)x;
    return 1;
}

typedef struct {
    const char *source, *rank, *world, *local_rank;
} launcher;

static const launcher launchers[] = {
    {"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"},
    {"env", "RANK", "WORLD_SIZE", "LOCAL_RANK"},
    {"openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
};

/* Slurm's variables describe this process only inside a job step (srun): a
 * batch script or an salloc shell has SLURM_NTASKS of the allocation but is
 * one process. And mpirun inside an allocation starts its ranks through its
 * own daemons, which inherit the allocation's SLURM_PROCID: a process that
 * mpirun started (OMPI_COMM_WORLD_SIZE set at start) takes Open MPI's. */
static int launcher_applies(const launcher *l) {
    if (!strcmp(l->source, "slurm")) {
        const char *step = getenv("SLURM_STEP_ID");
        if (!step || !step[0] || getenv("OMPI_COMM_WORLD_SIZE")) return 0;
    }
    return getenv(l->rank) || getenv(l->world);
}

int unet_dist_place_from_env(int flag_rank, int flag_world, int flag_local_rank, unet_dist_place *out, char *err,
                             size_t errlen) {
    *out = (unet_dist_place){.rank = 0, .world = 1, .local_rank = 0, .source = "single"};
    for (size_t k = 0; k < sizeof launchers / sizeof launchers[0]; k++) {
        const launcher *l = &launchers[k];
        if (!launcher_applies(l)) continue;
        int rank = 0, world = 1, local = -1;
        if (env_int(l->rank, &rank, err, errlen) < 0 || env_int(l->world, &world, err, errlen) < 0 ||
            env_int(l->local_rank, &local, err, errlen) < 0)
            return -1;
        *out = (unet_dist_place){
            .rank = rank, .world = world, .local_rank = local >= 0 ? local : rank, .source = l->source};
        break;
    }
    int from_launcher = strcmp(out->source, "single") != 0;
    if (flag_rank >= 0) {
        out->rank = flag_rank;
        if (!from_launcher) out->local_rank = flag_rank; /* ranks given by hand: one machine */
    }
    if (flag_world >= 0) out->world = flag_world;
    if (flag_local_rank >= 0) out->local_rank = flag_local_rank;
    if (flag_rank >= 0 || flag_world >= 0) out->source = "flags";
    if (out->world < 1 || out->rank >= out->world) {
        snprintf(err, errlen, "rank %d of a world of %d (from %s): need 0 <= rank < world size", out->rank, out->world,
                 out->source);
        return -1;
    }
    return 0;
}

const char *unet_dist_device(const char *device, int local_rank, char *buf, size_t n) {
    int want_cuda = !strcmp(device, "cuda"), is_auto = !strcmp(device, "auto");
    if (!want_cuda && !is_auto) {
        snprintf(buf, n, "%s", device); /* cpu, or an explicit cuda:N */
        return buf;
    }
    int count = unet_cuda_devices();
    if (count > 0)
        snprintf(buf, n, "cuda:%d", local_rank % count);
    else
        snprintf(buf, n, "%s", want_cuda ? "cuda" : "cpu"); /* cuda without a device: the backend says why */
    return buf;
}
