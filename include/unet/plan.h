/* A graph compiled for one backend, batch and tile size: shapes inferred and
 * checked, the backward pass derived, every activation, gradient and saved
 * tensor given an offset in one arena by liveness. Running a plan allocates
 * nothing. */
#ifndef UNET_PLAN_H
#define UNET_PLAN_H

#include "unet/backend.h"
#include "unet/graph.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Parameters live in blocks on the backend, shared by every plan of a model
 * (a training plan and an evaluation plan, say). */
typedef struct {
    const unet_backend *backend;
    size_t n_trainable, n_state;
    float *params;               /* n_trainable, on the backend */
    float *grads;                /* n_trainable, same order */
    float *opt_a;                /* optimizer state: SGD momentum buffer, Adam first moment */
    float *opt_b;                /* Adam second moment (NULL for SGD) */
    float *state;                /* batch norm running statistics */
    float *state_good;           /* the statistics after the last finite step, which a dropped step goes back to */
    unet_optim_scalars *scalars; /* this step's learning rate and bias corrections, on the backend */
    unet_update_guard *guard;    /* what the update pass found non-finite (unet_backend.guard) */
} unet_param_blocks;

int unet_param_blocks_alloc(unet_param_blocks *pb, const unet_backend *b, const unet_graph *g, int with_adam, char *err,
                            size_t errlen);
void unet_param_blocks_free(unet_param_blocks *pb);
/* He initialisation (std sqrt(2/fan_in)), zero biases, ones for gamma and
 * running var: a pure function of the seed. */
void unet_param_init_host(const unet_graph *g, uint64_t seed, float *trainable, float *state);

typedef struct {
    int batch, height, width; /* input tile */
    int training;             /* 1: forward + loss + backward, batch statistics; 0: forward only */
    /* Optional: an explicit shape for every graph input, in input order (op
     * tests feed inputs of unrelated sizes). NULL: image (batch, C, height,
     * width), labels and weights (batch, 1, height, width). */
    const unet_shape *input_shapes;
    /* Plan memory only, allocate nothing (info, the largest batch that fits):
     * the plan reports statistics and cannot run. pb may have no blocks. */
    int plan_only;
    /* Data-parallel runs with synchronised batch norm: batch statistics summed
     * over every replica's batch. NULL: each replica normalises its own batch. */
    const unet_replica_sum *replica_sum;
} unet_plan_cfg;

typedef struct unet_plan unet_plan;

/* Compiles; on a user error (an impossible tile size, say) returns NULL with
 * one line in err that says what is wrong and what would be right. */
unet_plan *unet_plan_compile(const unet_graph *g, unet_param_blocks *pb, unet_plan_cfg cfg, char *err, size_t errlen);
void unet_plan_free(unet_plan *p);

/* Shape inference alone (no backend, no memory): the output shape of every
 * head for an input size; returns 0 or -1 with a message. */
int unet_graph_infer(const unet_graph *g, unet_plan_cfg cfg, unet_shape *out_shapes, int max_out, char *err,
                     size_t errlen);
/* The valid tile sizes nearest to `size` (below and above; 0 when none). */
void unet_graph_nearest_valid(const unet_graph *g, int size, int *below, int *above);

/* Inputs are uploaded from host NCHW arrays (image float32, label int32,
 * weight float32 or NULL: all ones). Sizes are the plan's. */
void unet_plan_set_inputs(unet_plan *p, const float *image, const int32_t *label, const float *weight);
/* One input from a host NCHW array (float32, or int32 for labels): op tests
 * and callers with several image-kind inputs. */
void unet_plan_set_input(unet_plan *p, int input_index, const void *host);
/* Seed for this step's random ops (dropout): written into the plan's seed in
 * backend memory, where the ops read it when they run. */
void unet_plan_set_seed(unet_plan *p, uint64_t seed);
/* The global index of this plan's first sample, for the whole run (set it
 * before the first step: a recorded step keeps it): the rank's offset in the
 * global batch of a data-parallel run, so dropout masks do not depend on how
 * the batch is split. */
void unet_plan_set_first_sample(unet_plan *p, uint64_t first_sample);
/* Enqueues the forward pass (on an asynchronous backend it may still be
 * running when this returns; unet_plan_loss waits for it). */
void unet_plan_forward(unet_plan *p);
/* Backward pass; fills pb->grads. Needs a training plan and a forward. */
void unet_plan_backward(unet_plan *p);
/* Called during unet_plan_backward each time a range [begin, end) of the
 * gradient block (in floats) becomes final, so that a data-parallel run can
 * start reducing it while the rest of the backward runs. The block is in graph
 * order and the backward runs in reverse, so ranges arrive from the end of the
 * block toward its start, and one backward covers the block exactly once. On
 * an asynchronous backend the range is final in stream order: its work has
 * been enqueued, not necessarily done. NULL fn: no calls. */
typedef void (*unet_grads_ready_fn)(void *ctx, size_t begin, size_t end);
void unet_plan_on_grads_ready(unet_plan *p, unet_grads_ready_fn fn, void *ctx);
/* For graphs without loss nodes (op tests): the gradient flowing into an
 * output, host NCHW float32; backward starts from these. */
void unet_plan_set_output_grad(unet_plan *p, int index, const float *host);
/* Total loss after forward (sum over heads of scale * head loss), and per
 * head. Reads the loss back from the backend, so it waits for the work
 * enqueued so far; the value stays readable after the backward and the
 * update, until the next forward. */
double unet_plan_loss(unet_plan *p, double *per_head);

int unet_plan_num_outputs(const unet_plan *p);
unet_shape unet_plan_output_shape(const unet_plan *p, int index);
/* Copies an output (head logits) to host NCHW float32. */
void unet_plan_read_output(unet_plan *p, int index, float *host);
/* Tests: the gradient of an input created with requires_grad. */
void unet_plan_read_input_grad(unet_plan *p, int input_index, float *host);
unet_shape unet_plan_input_shape(const unet_plan *p, int input_index);
/* The shape of any value of the graph (an input or a node's output) in this
 * plan: what an exporter writing the graph in another format needs. */
unet_shape unet_plan_value_shape(const unet_plan *p, int value);
/* Where the plan keeps its first input of this kind in backend memory: the
 * image (B,C,H,W) float32, the labels (B,1,H,W) int32 or the weights
 * (B,1,H,W) float32, in the NCHW layout unet_plan_set_inputs uploads; NULL
 * when the graph has no such input. The address is fixed for the plan's
 * life, so a recorded step reads what is written there before each replay:
 * the GPU augmentation warp writes its tiles there instead of an upload. */
void *unet_plan_input_data(unet_plan *p, unet_input_kind kind);

typedef struct {
    size_t arena_bytes;     /* planned: activations + gradients + saved data */
    size_t unplanned_bytes; /* what every tensor would take with no reuse */
    size_t peak_live_bytes; /* the most bytes alive at one step: a lower bound for the arena */
    size_t workspace_bytes;
    size_t param_bytes; /* parameters + gradients + optimizer state + running stats */
    int n_tensors, n_steps;
    double forward_flops; /* multiply-adds counted as 2 */
} unet_plan_stats;
unet_plan_stats unet_plan_get_stats(const unet_plan *p);

#ifdef __cplusplus
}
#endif

#endif
