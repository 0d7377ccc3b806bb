/* Checkpoints: one safetensors file a PyTorch user can load.
 *
 * Tensors: every parameter of the graph under its grid name in PyTorch's
 * layout (x{i}_{j}.conv1.weight [out,in,3,3], x{i}_{j}.up.weight [in,out,2,2],
 * head{j}.weight, x{i}_{j}.norm1.running_mean, ...), float32; for every batch
 * norm `<prefix>.num_batches_tracked` (I64 scalar, = the step) as PyTorch's
 * BatchNorm2d has it; then the optimizer state, when saved, under
 * optimizer.momentum_buffer.<param> (SGD) or optimizer.exp_avg.<param> and
 * optimizer.exp_avg_sq.<param> (Adam, AdamW).
 *
 * Metadata (strings): "format" = "pt", "unet.format_version" = "1",
 * "unet.step", "unet.optimizer_state" = none | sgd | adam, and "unet.config",
 * the run's configuration as JSON (unet_config_to_json), from which predict
 * rebuilds the model; where a run has them, "unet.skipped_steps" (updates
 * --on-nonfinite skip dropped) and "unet.best_metric", "unet.best_value",
 * "unet.best_step" (--save-best's record), so that --resume goes on as the
 * unbroken run would. */
#ifndef UNET_CHECKPOINT_H
#define UNET_CHECKPOINT_H

#include <stddef.h>

#include "unet/graph.h"

#ifdef __cplusplus
extern "C" {
#endif

#define UNET_CHECKPOINT_FORMAT_VERSION 1

/* Where a run stands besides its tensors. The batches, the dropout masks and
 * the learning rate are functions of (seed, step), so with these a resumed
 * run continues with the bits of an unbroken one. */
typedef struct {
    long step;            /* steps done */
    long skipped_steps;   /* updates dropped for a non-finite value (--on-nonfinite skip) */
    char best_metric[32]; /* --save-best's metric ("" none) */
    double best_value;    /* its best value so far */
    long best_step;       /* the step of that value (0: none yet) */
} unet_run_progress;

/* Writes atomically. params and state are the host blocks in the graph's
 * layout (unet_graph_params() offsets). Optimizer state: opt_a and opt_b NULL
 * for weights only; opt_a alone for SGD's momentum buffer; both for Adam's
 * first and second moments. config_json may be NULL. */
int unet_checkpoint_save(const char *path, const unet_graph *g, const float *params, const float *state,
                         const float *opt_a, const float *opt_b, const unet_run_progress *progress,
                         const char *config_json, char *err, size_t errlen);

/* --init: weights only. Every trainable and state tensor of the graph must be
 * there with its shape (F32, or F64/F16/BF16 converted), else one line naming
 * the tensor and both shapes; other tensors in the file are ignored. Only the
 * graph's tensors are written: alignment gaps in the blocks are left alone. */
int unet_checkpoint_load_weights(const char *path, const unet_graph *g, float *params, float *state, char *err,
                                 size_t errlen);

/* --init-encoder: the backbone's tensors (the graph's "encoder.*") from torchvision's state dict of that network
 * under torchvision's names (conv1.weight, layer1.0.bn1.running_mean, features.0.0.weight; its classifier and
 * num_batches_tracked ignored), as scripts/torchvision_weights.py writes it. A first convolution of 3 input
 * channels is adapted to the model's as smp's patch_first_conv does (1: their sum; C: the three in turn, times
 * 3 / C). A missing tensor, a shape that differs, a tensor the backbone lacks (another network's weights) or a
 * "unet.encoder" metadata naming another encoder is one line. The rest of the model is left as it is. */
int unet_checkpoint_load_encoder(const char *path, const char *encoder, const unet_graph *g, float *params,
                                 float *state, char *err, size_t errlen);

/* --resume: weights, the optimizer state the run uses (opt_b NULL: SGD's
 * momentum buffer into opt_a; else Adam's moments into opt_a and opt_b) and
 * the progress. A checkpoint without optimizer state, or with another
 * optimizer's, is an error that says what to do instead. */
int unet_checkpoint_load_resume(const char *path, const unet_graph *g, float *params, float *state, float *opt_a,
                                float *opt_b, unet_run_progress *progress, char *err, size_t errlen);

/* The metadata alone (no model needed): predict takes the model from it. */
typedef struct {
    char *config_json;          /* malloc'd; NULL when the file has none (weights written by PyTorch, say) */
    unet_run_progress progress; /* step 0 and nothing recorded when absent */
    int format_version;         /* 0 when absent */
    char optimizer_state[16];   /* "none", "sgd", "adam" ("none" when absent) */
} unet_checkpoint_meta;

int unet_checkpoint_read_meta(const char *path, unet_checkpoint_meta *meta, char *err, size_t errlen);
void unet_checkpoint_meta_free(unet_checkpoint_meta *meta);

#ifdef __cplusplus
}
#endif

#endif
