/* One step of a compiled plan: forward, loss, backward, gradient averaging
 * and the optimizer update (forward alone for an inference plan), run the
 * same way by train and bench.
 *
 * Eager, the host walks the plan and enqueues every op. On a backend that can
 * record work (CUDA graphs) the step is captured once, after
 * UNET_GRAPH_WARMUP eager steps, and every later step is one replay: the
 * host writes the step's values (inputs, dropout seed, optimizer scalars)
 * into the fixed backend memory the recorded work reads, launches the graph
 * and goes on with the next batch while the device computes. A replayed step
 * computes exactly what the eager step would (the same kernels with the same
 * arguments in the same order), so the two give the same bits.
 *
 * A capture that fails (an op that cannot be recorded, an instantiation the
 * driver refuses) costs nothing but one note: nothing ran during it, and the
 * step, and every one after it, runs eagerly. Library-internal. */
#ifndef UNET_STEP_H
#define UNET_STEP_H

#include <stdint.h>
#include <stdio.h>

#include "unet/dist.h"
#include "unet/optim.h"
#include "unet/plan.h"

/* Eager steps before the capture: by then every kernel of the step has been
 * launched once (lazily loaded modules are in) and every cuDNN plan has run. */
#define UNET_GRAPH_WARMUP 3

typedef struct {
    unet_plan *plan;
    unet_param_blocks *pb;
    const unet_optim_cfg *optim; /* NULL: forward only (an inference plan) */
    unet_dist *dist;             /* gradient averaging; NULL: none */
    int average_state;           /* also average the batch norm running statistics over the ranks */
    int graph;                   /* record and replay where the backend can (--cuda-graph auto) */
    FILE *notes;                 /* the one line saying whether the step was captured; NULL: quiet */
} unet_stepper_cfg;

typedef enum {
    UNET_STEP_EAGER,     /* always: no graphs on this backend, or --cuda-graph off */
    UNET_STEP_WARMING,   /* eager until the capture */
    UNET_STEP_REPLAYING, /* every step a replay of the captured graph */
    UNET_STEP_REFUSED,   /* eager from here on: see why */
} unet_step_mode;

typedef struct {
    unet_stepper_cfg cfg;
    unet_step_mode mode;
    long eager_steps;   /* run so far */
    long captured_step; /* the step whose walk was recorded; -1: none */
    size_t nodes;       /* in the graph */
    unet_capture *graph;
    char why[1100]; /* UNET_STEP_REFUSED: what made the step eager */
} unet_stepper;

void unet_stepper_init(unet_stepper *t, const unet_stepper_cfg *cfg);
/* Step `step` (0-based, for the optimizer's schedule and SGD's first step)
 * with dropout seed `seed`, on the inputs already set in the plan. Returns
 * once the work is enqueued: unet_plan_loss waits for it. */
void unet_stepper_run(unet_stepper *t, long step, uint64_t seed);
/* 1 once steps are replays. */
int unet_stepper_replaying(const unet_stepper *t);
/* NULL-safe on a zeroed stepper. */
void unet_stepper_free(unet_stepper *t);

#endif
