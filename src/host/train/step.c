/* The training step, eager or recorded once and replayed (see step.h). */
#include <stdarg.h>
#include <string.h>

#include "host/train/step.h"

/* One line, "cuda graph: ...", where the run wants it. */
__attribute__((format(printf, 2, 3))) static void note(const unet_stepper *t, const char *fmt, ...) {
    if (!t->cfg.notes) return;
    va_list ap;
    va_start(ap, fmt);
    fputs("cuda graph: ", t->cfg.notes);
    vfprintf(t->cfg.notes, fmt, ap);
    fputc('\n', t->cfg.notes);
    va_end(ap);
    fflush(t->cfg.notes);
}

void unet_stepper_init(unet_stepper *t, const unet_stepper_cfg *cfg) {
    memset(t, 0, sizeof *t);
    t->cfg = *cfg;
    t->captured_step = -1;
    const unet_backend *b = cfg->pb->backend;
    t->mode = cfg->graph && b->begin_capture ? UNET_STEP_WARMING : UNET_STEP_EAGER;
    const char *averaging = unet_dist_name(cfg->dist);
    if (t->mode == UNET_STEP_WARMING && strcmp(averaging, "none") != 0) {
        /* the communicator starts each bucket from the host while the backward
         * runs and waits for the allreduce under its watchdog: host work in
         * the middle of the step, which a recorded graph cannot hold */
        snprintf(t->why, sizeof t->why,
                 "gradients are averaged over %d process(es) by %s, whose bucketed allreduce is driven and waited for "
                 "from the host inside the step",
                 unet_dist_world(cfg->dist), averaging);
        t->mode = UNET_STEP_REFUSED;
        note(t, "not used, every step runs eagerly: %s", t->why);
    }
}

/* What one step enqueues, eager or recorded: the one walk both share. */
static void enqueue(const unet_stepper *t) {
    const unet_stepper_cfg *c = &t->cfg;
    unet_plan_forward(c->plan);
    if (!c->optim) return;
    unet_dist_grads_begin(c->dist, c->pb->grads, c->pb->n_trainable);
    unet_plan_backward(c->plan);
    unet_dist_grads_finish(c->dist);
    /* running statistics: the moving average of the ranks' mean batch statistics */
    if (c->average_state && c->pb->n_state) unet_dist_mean_f32(c->dist, c->pb->state, c->pb->n_state);
    unet_optim_apply(c->optim, c->pb);
}

/* Records the step's walk. Nothing runs while recording, so on success the
 * step still has to be replayed, and on failure run eagerly. */
static void capture(unet_stepper *t, long step) {
    const unet_backend *b = t->cfg.pb->backend;
    char why[sizeof t->why - 64];
    why[0] = '\0';
    if (b->begin_capture(b, why, sizeof why) == 0) {
        enqueue(t);
        t->graph = b->end_capture(b, &t->nodes, why, sizeof why);
    }
    if (!t->graph) {
        snprintf(t->why, sizeof t->why, "capturing step %ld failed: %s", step + 1, why);
        t->mode = UNET_STEP_REFUSED;
        note(t, "%s; every step runs eagerly from here on (the same results, only slower)", t->why);
        return;
    }
    t->captured_step = step;
    t->mode = UNET_STEP_REPLAYING;
    note(t, "step %ld captured after %ld eager steps (%zu nodes), replayed from here on", step + 1, t->eager_steps,
         t->nodes);
}

void unet_stepper_run(unet_stepper *t, long step, uint64_t seed) {
    const unet_backend *b = t->cfg.pb->backend;
    /* the values the recorded work reads from memory, written before it runs */
    unet_plan_set_seed(t->cfg.plan, seed);
    if (t->cfg.optim) unet_optim_prepare(t->cfg.optim, t->cfg.pb, step);
    if (t->mode == UNET_STEP_WARMING && t->eager_steps >= UNET_GRAPH_WARMUP) capture(t, step);
    if (t->mode == UNET_STEP_REPLAYING) {
        b->replay(b, t->graph);
        return;
    }
    enqueue(t);
    t->eager_steps++;
}

int unet_stepper_replaying(const unet_stepper *t) { return t->mode == UNET_STEP_REPLAYING; }

void unet_stepper_free(unet_stepper *t) {
    if (t->graph) t->cfg.pb->backend->release(t->cfg.pb->backend, t->graph);
    memset(t, 0, sizeof *t);
}
