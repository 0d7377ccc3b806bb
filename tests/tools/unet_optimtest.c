/* Runs the optimizer passes of one backend's table over a parameter block
 * read from files, so that the tests can hold the CUDA optimizers against
 * their CPU twins and both against torch.optim (tests/gpu/test_twins.py).
 *
 *   unet_optimtest --backend cpu|cuda --optimizer sgd|adam|adamw --n N --steps S --dir D
 *                  [--lr 0.01 --momentum 0.9 --wd 0 --beta1 0.9 --beta2 0.999 --eps 1e-8 --offset 0]
 *
 * Reads D/param.bin (N floats) and D/grads.bin (S x N floats: the gradient of
 * each step); writes D/param.out.bin, D/state_a.bin (SGD momentum buffer,
 * Adam first moment) and, for Adam, D/state_b.bin (second moment). Step s
 * (0-based) is SGD's first when s = 0 and Adam's step s + 1, as
 * src/host/train/optim.c calls them. --offset K places the block K floats
 * into its allocations, so that K not a multiple of 4 exercises the kernels'
 * unaligned (scalar) path.
 *
 * --guard skip|stop runs the guard before each update (unet_backend.guard),
 * with --state M statistics: D/states.bin (S x M floats) holds what each
 * step's forward leaves in them. Writes D/state.out.bin (M floats) and
 * D/guard.bin (the unet_update_guard as it is in memory). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unet/backend.h"
#include "unet/optim.h"

#define TOOL_NAME "unet_optimtest"
#include "tool_common.h"

/* A block of n floats at `offset` floats into a fresh allocation, set to host (or zeros). */
static float *device_block(const unet_backend *b, size_t n, size_t offset, const float *host) {
    float *base = b->alloc(b, (n + offset) * sizeof(float));
    if (!base) die("device allocation failed", NULL);
    b->memset0(b, base, (n + offset) * sizeof(float));
    if (host) b->upload_f32(b, base + offset, host, n);
    return base + offset;
}

int main(int argc, char **argv) {
    const char *backend_name = "cpu", *optimizer = "sgd", *dir = NULL, *guard_policy = NULL;
    long n = 0, steps = 1, offset = 0, n_state = 0;
    float lr = 0.01f, momentum = 0.9f, wd = 0.0f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (!strcmp(a, "--backend"))
            backend_name = v;
        else if (!strcmp(a, "--optimizer"))
            optimizer = v;
        else if (!strcmp(a, "--dir"))
            dir = v;
        else if (!strcmp(a, "--n"))
            n = atol(v);
        else if (!strcmp(a, "--steps"))
            steps = atol(v);
        else if (!strcmp(a, "--offset"))
            offset = atol(v);
        else if (!strcmp(a, "--guard"))
            guard_policy = v;
        else if (!strcmp(a, "--state"))
            n_state = atol(v);
        else if (!strcmp(a, "--lr"))
            lr = strtof(v, NULL);
        else if (!strcmp(a, "--momentum"))
            momentum = strtof(v, NULL);
        else if (!strcmp(a, "--wd"))
            wd = strtof(v, NULL);
        else if (!strcmp(a, "--beta1"))
            beta1 = strtof(v, NULL);
        else if (!strcmp(a, "--beta2"))
            beta2 = strtof(v, NULL);
        else if (!strcmp(a, "--eps"))
            eps = strtof(v, NULL);
        else
            die("unknown option", a);
    }
    if (argc % 2 == 0) die("every option takes a value", argv[argc - 1]);
    int sgd = !strcmp(optimizer, "sgd"), adamw = !strcmp(optimizer, "adamw");
    if (!sgd && !adamw && strcmp(optimizer, "adam")) die("--optimizer must be sgd, adam or adamw", optimizer);
    if (!dir || n <= 0 || steps <= 0 || offset < 0) die("need --dir, --n > 0, --steps > 0 and --offset >= 0", NULL);

    const unet_backend *b = unet_cpu_backend();
    if (strcmp(backend_name, "cpu") != 0) {
        char err[512];
        b = unet_cuda_backend(0, "fp32", NULL, 1, err, sizeof err);
        if (!b) die(err, NULL);
    }
    size_t count = (size_t)n;
    float *host_p = read_exact(dir, "param.bin", count * sizeof(float));
    float *host_g = read_exact(dir, "grads.bin", count * (size_t)steps * sizeof(float));
    float *p = device_block(b, count, (size_t)offset, host_p);
    float *g = device_block(b, count, (size_t)offset, NULL);
    float *state_a = device_block(b, count, (size_t)offset, NULL);
    float *state_b = sgd ? NULL : device_block(b, count, (size_t)offset, NULL);
    /* the per-step values as training derives them, in backend memory */
    unet_optim_cfg o = {.kind = sgd     ? UNET_OPT_SGD
                                : adamw ? UNET_OPT_ADAMW
                                        : UNET_OPT_ADAM,
                        .lr = lr,
                        .momentum = momentum,
                        .weight_decay = wd,
                        .beta1 = beta1,
                        .beta2 = beta2,
                        .eps = eps,
                        .schedule = UNET_SCHED_CONSTANT,
                        .total_steps = steps};
    unet_optim_scalars *scalars = b->alloc(b, sizeof *scalars);
    if (!scalars) die("device allocation failed", NULL);
    /* the guard, its statistics and their good copy (which starts as the statistics before the first step) */
    if (guard_policy && strcmp(guard_policy, "skip") && strcmp(guard_policy, "stop"))
        die("--guard must be skip or stop", guard_policy);
    size_t ns = (size_t)n_state;
    float *host_states = guard_policy && ns ? read_exact(dir, "states.bin", ns * (size_t)steps * sizeof(float)) : NULL;
    float *state = ns ? device_block(b, ns, 0, NULL) : NULL, *state_good = ns ? device_block(b, ns, 0, NULL) : NULL;
    unet_update_guard host_guard = {.skip_policy = guard_policy && !strcmp(guard_policy, "skip")};
    unet_update_guard *guard = b->alloc(b, sizeof *guard);
    if (!guard) die("device allocation failed", NULL);
    b->upload_bytes(b, guard, &host_guard, sizeof host_guard);
    for (long s = 0; s < steps; s++) {
        b->upload_f32(b, g, host_g + (size_t)s * count, count);
        unet_optim_scalars host_scalars = unet_optim_scalars_at(&o, s);
        b->upload_bytes(b, scalars, &host_scalars, sizeof host_scalars);
        if (guard_policy) {
            if (ns) b->upload_f32(b, state, host_states + (size_t)s * ns, ns);
            b->guard(b, g, count, state, state_good, ns, scalars, guard);
        }
        if (sgd)
            b->sgd(b, p, g, state_a, count, scalars, momentum, wd);
        else
            b->adam(b, p, g, state_a, state_b, count, scalars, beta1, beta2, eps, wd, adamw);
    }
    b->sync(b);
    b->download_f32(b, host_p, p, count);
    write_file(dir, "param.out.bin", host_p, count * sizeof(float));
    b->download_f32(b, host_p, state_a, count);
    write_file(dir, "state_a.bin", host_p, count * sizeof(float));
    if (state_b) {
        b->download_f32(b, host_p, state_b, count);
        write_file(dir, "state_b.bin", host_p, count * sizeof(float));
    }
    if (guard_policy) {
        b->download_f32(b, (float *)&host_guard, (const float *)guard, sizeof host_guard / sizeof(float));
        write_file(dir, "guard.bin", &host_guard, sizeof host_guard);
        if (ns) {
            b->download_f32(b, host_states, state, ns);
            write_file(dir, "state.out.bin", host_states, ns * sizeof(float));
        }
    }
    b->free(b, scalars);
    b->free(b, guard);
    free(host_states);
    free(host_p);
    free(host_g);
    return 0;
}
