/* Parameter blocks: parameters, gradients, optimizer state and batch norm
 * statistics, each one contiguous block in the graph's parameter order, so an
 * optimizer step or an allreduce is one pass over a block. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "host/core/graph_internal.h"
#include "unet/plan.h"
#include "unet/rng.h"

int unet_param_blocks_alloc(unet_param_blocks *pb, const unet_backend *b, const unet_graph *g, int with_adam, char *err,
                            size_t errlen) {
    memset(pb, 0, sizeof *pb);
    pb->backend = b;
    pb->n_trainable = g->trainable_count;
    pb->n_state = g->state_count;
    size_t nt = pb->n_trainable ? pb->n_trainable : 1, ns = pb->n_state ? pb->n_state : 1;
    pb->params = b->alloc(b, nt * sizeof(float));
    pb->grads = b->alloc(b, nt * sizeof(float));
    pb->opt_a = b->alloc(b, nt * sizeof(float));
    pb->opt_b = with_adam ? b->alloc(b, nt * sizeof(float)) : NULL;
    pb->state = b->alloc(b, ns * sizeof(float));
    pb->state_good = b->alloc(b, ns * sizeof(float));
    pb->scalars = b->alloc(b, sizeof *pb->scalars);
    pb->guard = b->alloc(b, sizeof *pb->guard);
    if (!pb->params || !pb->grads || !pb->opt_a || (with_adam && !pb->opt_b) || !pb->state || !pb->state_good ||
        !pb->scalars || !pb->guard) {
        snprintf(err, errlen, "out of %s memory for %zu parameters and their optimizer state", b->name,
                 pb->n_trainable);
        unet_param_blocks_free(pb);
        return -1;
    }
    b->memset0(b, pb->params, nt * sizeof(float)); /* the alignment gaps */
    b->memset0(b, pb->state, ns * sizeof(float));
    b->memset0(b, pb->state_good, ns * sizeof(float));
    b->memset0(b, pb->grads, nt * sizeof(float));
    b->memset0(b, pb->opt_a, nt * sizeof(float));
    if (pb->opt_b) b->memset0(b, pb->opt_b, nt * sizeof(float));
    b->memset0(b, pb->scalars, sizeof *pb->scalars);
    b->memset0(b, pb->guard, sizeof *pb->guard);
    return 0;
}

void unet_param_blocks_free(unet_param_blocks *pb) {
    const unet_backend *b = pb->backend;
    if (!b) return;
    void *blocks[] = {pb->params, pb->grads, pb->opt_a, pb->opt_b, pb->state, pb->state_good, pb->scalars, pb->guard};
    for (size_t i = 0; i < sizeof blocks / sizeof blocks[0]; i++)
        if (blocks[i]) b->free(b, blocks[i]);
    memset(pb, 0, sizeof *pb);
}

/* Standard normal from two counter-based uniforms (Box-Muller, 53-bit). */
static double normal(uint64_t key, uint64_t i) {
    double u1 = ((unet_mix64(key ^ unet_mix64(2 * i)) >> 11) + 1) * 0x1.0p-53; /* (0, 1] */
    double u2 = (unet_mix64(key ^ unet_mix64(2 * i + 1)) >> 11) * 0x1.0p-53;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

void unet_param_init_host(const unet_graph *g, uint64_t seed, float *trainable, float *state) {
    for (int k = 0; k < g->n_params; k++) {
        const unet_param *p = &g->params[k];
        float *dst = (p->kind == UNET_PARAM_TRAINABLE ? trainable : state) + p->offset;
        /* keyed by parameter index: the same seed gives the same bits */
        uint64_t key = unet_rng_key(seed, 0x1417, (uint64_t)k);
        double std = p->fan_in > 0 ? sqrt(2.0 / p->fan_in) : 0.0;
        for (size_t i = 0; i < p->count; i++) {
            switch (p->init) {
            case UNET_INIT_HE:
                dst[i] = (float)(std * normal(key, i));
                break;
            case UNET_INIT_ZERO:
                dst[i] = 0.0f;
                break;
            case UNET_INIT_ONE:
                dst[i] = 1.0f;
                break;
            }
        }
    }
}
