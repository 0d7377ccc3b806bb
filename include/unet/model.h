/* The U-Net family, built from one grid (DESIGN.md): U-Net, U-Net^e, UNet+
 * and UNet++ differ only in which skips feed a decoder node. */
#ifndef UNET_MODEL_H
#define UNET_MODEL_H

#include <stdio.h>

#include "unet/graph.h"

#ifdef __cplusplus
extern "C" {
#endif

#define UNET_MAX_LEVELS 8

struct unet_backend;

typedef enum { UNET_MODEL_UNET, UNET_MODEL_UNET_E, UNET_MODEL_UNET_PLUS, UNET_MODEL_UNETPP } unet_model_kind;
typedef enum { UNET_LOSS_CE, UNET_LOSS_BCE_DICE } unet_loss_kind;
/* up(X^{i+1,j-1}): a 2x2 transposed convolution f_{i+1} -> f_i, bilinear x2 then a 1x1 convolution f_{i+1} -> f_i,
 * or nearest x2 alone (smp's decoder, which keeps the channels: encoder models only) */
typedef enum { UNET_UP_TRANSPOSED, UNET_UP_BILINEAR, UNET_UP_NEAREST } unet_up_kind;
/* The column X^{i,0}: the paper's blocks and max-pooling (plain), or a backbone of torchvision's whose five stages
 * give X^{1,0} .. X^{5,0} at strides 2 .. 32 (segmentation_models_pytorch's encoders, under its names). */
typedef enum {
    UNET_ENCODER_PLAIN,
    UNET_ENCODER_RESNET18,
    UNET_ENCODER_RESNET34,
    UNET_ENCODER_RESNET50,
    UNET_ENCODER_MOBILENET_V2,
    UNET_ENCODER_COUNT
} unet_encoder_kind;

/* The stages of a backbone, and so the levels of its decoder: L = 5. */
#define UNET_ENCODER_STAGES 5

typedef struct {
    unet_model_kind kind;
    int levels;                   /* number of filter levels = L + 1 (grid rows 0..L) */
    int filters[UNET_MAX_LEVELS]; /* f_0 .. f_L */
    int same_padding;             /* 0: valid (the U-Net paper), 1: same */
    int in_channels;
    int classes; /* 1: sigmoid head (BCE + Dice); >= 2: softmax (CE) */
    int batch_norm;
    unet_up_kind upsample;
    int fusion_add;       /* fuse skips by sum instead of concat */
    int deep_supervision; /* a head on every X^{0,j}, j = 1..L */
    float dropout;        /* at the end of the contracting path (on X^{L,0}) */
    unet_loss_kind loss;
    int prune_depth; /* 0: the full model; d: nodes with i + j <= d and head d */
    /* A backbone in place of the plain column (then filters and levels are unused): smp's Unet (kind unet) or
     * UnetPlusPlus (unetpp) decoder on it, with the widths of the decoder nodes X^{i,5-i} and 3x3 head. */
    unet_encoder_kind encoder;
    int decoder_levels;                    /* entries of decoder_channels: UNET_ENCODER_STAGES */
    int decoder_channels[UNET_MAX_LEVELS]; /* X^{4,1} .. X^{0,5}: smp's decoder_channels, 256,128,64,32,16 */
    int freeze_encoder_bn; /* the backbone's batch norms use their running statistics when training too */
} unet_model_cfg;

const char *unet_model_kind_name(unet_model_kind k);
int unet_model_kind_parse(const char *s, unet_model_kind *out);
const char *unet_encoder_name(unet_encoder_kind e);
int unet_encoder_parse(const char *s, unet_encoder_kind *out);
/* Channels of the backbone's features X^{1,0} .. X^{5,0} ([0] unused; 0 for the plain encoder). */
int unet_encoder_channels(unet_encoder_kind e, int level);

/* Checks the configuration; -1 with a one-line message when it cannot be built. */
int unet_model_validate(const unet_model_cfg *m, char *err, size_t errlen);

/* Poolings in the (pruned) network: tiles of overlap-tile prediction align to 2^this. */
int unet_pool_levels(const unet_model_cfg *m);

typedef struct {
    unet_graph *graph;
    int n_heads;
    int head_column[UNET_MAX_LEVELS]; /* column j of each output, in output order (increasing j) */
    int feature[UNET_MAX_LEVELS];     /* the graph value of X^{i,0}, the encoder's feature of level i (-1: none) */
} unet_model;

/* Builds the graph. with_loss: add loss nodes (label input, optional weight
 * input) for training; inference graphs omit them. */
int unet_model_build(const unet_model_cfg *m, int with_loss, int with_weight, unet_model *out, char *err,
                     size_t errlen);
void unet_model_free(unet_model *out);

/* Trainable parameters of a configuration (0 with a message when it cannot be built). */
size_t unet_model_param_count(const unet_model_cfg *m, char *err, size_t errlen);

/* Matched parameter counts (`unet info --match-params`, `unet compare`): the
 * U-Net (kind unet, one head, not pruned, every other option of `like`)
 * whose parameter count comes closest to `target`, in two families of
 * widths: filters w * 2^i for an integer w, and the filters of `like`
 * scaled by one factor and rounded level by level, which lands closer when
 * no integer w does (UNet++ 32..512 lies between w = 34 and w = 35). */
typedef struct {
    size_t target;
    unet_model_cfg by_width; /* filters w, 2w, 4w, ... */
    size_t by_width_params;
    int width;
    unet_model_cfg by_scale; /* filters round(scale * like.filters[i]) */
    size_t by_scale_params;
    double scale;
    const unet_model_cfg *best; /* the closer of the two (points into this struct) */
    size_t best_params;
} unet_params_match;
int unet_match_params(const unet_model_cfg *like, size_t target, unet_params_match *out, char *err, size_t errlen);

/* What a model costs at a tile size: `unet info`. Plans memory without allocating it. */
typedef struct {
    size_t params, state;  /* trainable floats, batch norm statistics */
    size_t encoder_params; /* trainable floats of the backbone (0 for the plain encoder) */
    int n_outputs;
    unet_shape outputs[UNET_MAX_LEVELS];
    int tile, valid_below, valid_above; /* the nearest valid tile sizes around `tile` (0: none) */
    int tile_asked;                     /* a tile the network does not take, `tile` the nearest valid one; 0: none */
    double flops_per_image;             /* forward; a training step is about 3x */
    size_t train_activation_bytes;      /* planned arena of a training step at `batch` */
    size_t infer_activation_bytes;      /* planned arena of inference at `batch` */
    size_t unplanned_bytes;             /* every training tensor with no reuse, for comparison */
    size_t workspace_bytes, param_bytes;
    int batch;
} unet_model_info;
int unet_model_info_get(const unet_model_cfg *m, const struct unet_backend *b, int tile, int batch,
                        unet_model_info *out, char *err, size_t errlen);

/* What a training run holds on its backend at a batch size, in bytes, from a
 * plan-only compile (nothing allocated): the parameter blocks (parameters with
 * the batch norm running statistics, their gradients, and the optimizer's
 * state: SGD's momentum buffer, or Adam's two moments), the planned arena of
 * a training step and the workspace its ops asked for. No weight map input:
 * a dataset with one adds batch x tile^2 x 4 bytes to the arena. */
typedef struct {
    int batch;
    size_t params, grads, optimizer, arena, workspace;
    size_t total; /* the sum of the five */
} unet_train_memory;
int unet_train_memory_get(const unet_model_cfg *m, const struct unet_backend *b, int tile, int batch, int with_adam,
                          unet_train_memory *out, char *err, size_t errlen);
/* The largest batch in 1..max_batch whose training memory fits in `budget`
 * bytes, by plan-only compiles at doubling batch sizes and then bisection;
 * *out is that batch's memory, out->batch 0 (and *out batch 1's memory) when
 * not even batch 1 fits. */
int unet_largest_batch(const unet_model_cfg *m, const struct unet_backend *b, int tile, int with_adam, size_t budget,
                       int max_batch, unet_train_memory *out, char *err, size_t errlen);

/* unet info's plan of a training run: its memory at --batch, and the largest
 * batch within a budget. */
typedef struct {
    const char *optimizer; /* its name */
    const char *layout;    /* the backend whose sizes were planned: "cpu" or "cuda" */
    const char *note;      /* "", or why the layout is not that of the device asked for */
    unet_train_memory at_batch;
    size_t budget;             /* 0: none given and no device to ask */
    const char *budget_source; /* "--memory-budget", "cuda:N free memory" */
    unet_train_memory largest; /* .batch 0: not even batch 1 fits */
    int largest_capped;        /* largest.batch is the most --batch takes: more would fit */
} unet_run_memory;

/* Human-readable (with per-node parameter counts) or one JSON object; run may be NULL. */
void unet_model_info_print(FILE *f, const unet_model_cfg *m, const unet_model_info *info, const unet_run_memory *run,
                           int json);

#ifdef __cplusplus
}
#endif

#endif
