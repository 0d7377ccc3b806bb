/* Optimizers and learning-rate schedules over the contiguous parameter block. */
#ifndef UNET_OPTIM_H
#define UNET_OPTIM_H

#include "unet/plan.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { UNET_OPT_SGD, UNET_OPT_ADAM, UNET_OPT_ADAMW } unet_optimizer_kind;
typedef enum { UNET_SCHED_CONSTANT, UNET_SCHED_COSINE, UNET_SCHED_POLY } unet_schedule_kind;

typedef struct {
    unet_optimizer_kind kind;
    float lr, momentum, weight_decay;
    float beta1, beta2, eps; /* Adam */
    unet_schedule_kind schedule;
    long total_steps;  /* schedule horizon */
    long warmup_steps; /* linear warm-up from 0, then the schedule */
} unet_optim_cfg;

/* Learning rate of step `step` (0-based). */
float unet_lr_at(const unet_optim_cfg *o, long step);
/* What the update of step `step` (0-based) reads besides the constants of o:
 * the learning rate, SGD's first step, Adam's bias corrections (step + 1). */
unet_optim_scalars unet_optim_scalars_at(const unet_optim_cfg *o, long step);

/* One update of pb->params from pb->grads, in two halves: prepare writes the
 * step's scalars into pb->scalars, apply enqueues the pass, which reads them
 * when it runs. A recorded step (a CUDA graph) holds apply and is replayed
 * after each step's prepare. */
void unet_optim_prepare(const unet_optim_cfg *o, unet_param_blocks *pb, long step);
void unet_optim_apply(const unet_optim_cfg *o, unet_param_blocks *pb);
/* Both: one update, step 0-based. */
void unet_optim_step(const unet_optim_cfg *o, unet_param_blocks *pb, long step);

/* The guard of the update pass (unet_update_guard in unet/backend.h): set
 * before the first step, with the policy (1: drop a non-finite step and go
 * on; 0: stop, every update from the first non-finite step on dropped) and
 * the steps a resumed run had dropped; read back (waiting for the work
 * enqueued so far) when the host reads the loss or saves. */
void unet_optim_guard_set(unet_param_blocks *pb, int skip_policy, long bad_steps);
void unet_optim_guard_read(const unet_param_blocks *pb, unet_update_guard *g);

#ifdef __cplusplus
}
#endif

#endif
