/* Schedules and the per-step optimizer values on the host, updates on the
 * backend in one pass over the block. */
#include <math.h>

#include "unet/optim.h"

float unet_lr_at(const unet_optim_cfg *o, long step) {
    if (o->warmup_steps > 0 && step < o->warmup_steps) return o->lr * (float)(step + 1) / (float)o->warmup_steps;
    long t = step - o->warmup_steps, T = o->total_steps - o->warmup_steps;
    double frac = T > 0 ? fmin(1.0, (double)t / (double)T) : 0.0;
    switch (o->schedule) {
    case UNET_SCHED_CONSTANT:
        return o->lr;
    case UNET_SCHED_COSINE:
        return (float)(o->lr * 0.5 * (1.0 + cos(3.14159265358979323846 * frac)));
    case UNET_SCHED_POLY:
        return (float)(o->lr * pow(1.0 - frac, 0.9));
    }
    return o->lr;
}

/* Computed here once, in C11 (no contraction into FMA), so that every
 * backend's update reads the same floats: the CPU and CUDA twins agree bit
 * for bit because neither derives these on its own. */
unet_optim_scalars unet_optim_scalars_at(const unet_optim_cfg *o, long step) {
    unet_optim_scalars s = {.lr = unet_lr_at(o, step),
                            .decay = 1.0f,
                            .step_size = 0.0f,
                            .bc2_sqrt = 1.0f,
                            .first = step == 0,
                            .step = step};
    if (o->kind != UNET_OPT_SGD) {
        /* PyTorch: bias corrections in double, step size lr / bc1, denominator sqrt(v) / sqrt(bc2) + eps */
        double t = (double)(step + 1);
        double bc1 = 1.0 - pow((double)o->beta1, t), bc2 = 1.0 - pow((double)o->beta2, t);
        s.step_size = (float)(s.lr / bc1);
        s.bc2_sqrt = (float)sqrt(bc2);
        if (o->kind == UNET_OPT_ADAMW) s.decay = 1.0f - s.lr * o->weight_decay;
    }
    return s;
}

void unet_optim_prepare(const unet_optim_cfg *o, unet_param_blocks *pb, long step) {
    unet_optim_scalars s = unet_optim_scalars_at(o, step);
    pb->backend->upload_bytes(pb->backend, pb->scalars, &s, sizeof s);
}

void unet_optim_apply(const unet_optim_cfg *o, unet_param_blocks *pb) {
    const unet_backend *b = pb->backend;
    b->guard(b, pb->grads, pb->n_trainable, pb->state, pb->state_good, pb->n_state, pb->scalars, pb->guard);
    if (o->kind == UNET_OPT_SGD)
        b->sgd(b, pb->params, pb->grads, pb->opt_a, pb->n_trainable, pb->scalars, o->momentum, o->weight_decay);
    else
        b->adam(b, pb->params, pb->grads, pb->opt_a, pb->opt_b, pb->n_trainable, pb->scalars, o->beta1, o->beta2,
                o->eps, o->weight_decay, o->kind == UNET_OPT_ADAMW);
}

void unet_optim_step(const unet_optim_cfg *o, unet_param_blocks *pb, long step) {
    unet_optim_prepare(o, pb, step);
    unet_optim_apply(o, pb);
}

/* The guard is a few integers; the float copies move its bytes as they are. */
_Static_assert(sizeof(unet_update_guard) % sizeof(float) == 0, "the guard moves as whole floats");

void unet_optim_guard_set(unet_param_blocks *pb, int skip_policy, long bad_steps) {
    unet_update_guard g = {.skip_policy = skip_policy, .bad_steps = bad_steps};
    pb->backend->upload_f32(pb->backend, (float *)pb->guard, (const float *)&g, sizeof g / sizeof(float));
}

void unet_optim_guard_read(const unet_param_blocks *pb, unet_update_guard *g) {
    pb->backend->download_f32(pb->backend, (float *)g, (const float *)pb->guard, sizeof *g / sizeof(float));
}
