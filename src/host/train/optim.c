/* Schedules on the host, updates on the backend in one pass over the block. */
#include <math.h>

#include "unet/optim.h"

float unet_lr_at(const unet_optim_cfg *o, long step) {
    if (o->warmup_steps > 0 && step < o->warmup_steps) return o->lr * (float)(step + 1) / (float)o->warmup_steps;
    long t = step - o->warmup_steps, T = o->total_steps - o->warmup_steps;
    double frac = T > 0 ? fmin(1.0, (double)t / (double)T) : 0.0;
    switch (o->schedule) {
    case UNET_SCHED_CONSTANT: return o->lr;
    case UNET_SCHED_COSINE: return (float)(o->lr * 0.5 * (1.0 + cos(3.14159265358979323846 * frac)));
    case UNET_SCHED_POLY: return (float)(o->lr * pow(1.0 - frac, 0.9));
    }
    return o->lr;
}

void unet_optim_step(const unet_optim_cfg *o, unet_param_blocks *pb, long step) {
    const unet_backend *b = pb->backend;
    float lr = unet_lr_at(o, step);
    if (o->kind == UNET_OPT_SGD)
        b->sgd(b, pb->params, pb->grads, pb->opt_a, pb->n_trainable, lr, o->momentum, o->weight_decay, step == 0);
    else
        b->adam(b, pb->params, pb->grads, pb->opt_a, pb->opt_b, pb->n_trainable, lr, o->beta1, o->beta2, o->eps,
                o->weight_decay, o->kind == UNET_OPT_ADAMW, step + 1);
}
