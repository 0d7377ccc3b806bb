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
    float beta1, beta2, eps;       /* Adam */
    unet_schedule_kind schedule;
    long total_steps;              /* schedule horizon */
    long warmup_steps;             /* linear warm-up from 0, then the schedule */
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

#ifdef __cplusplus
}
#endif

#endif
