/* The pruning depths of a deep-supervised network: each depth's costs and
 * its metrics on the validation images, as `unet compare` reports them and
 * `unet prune --auto` chooses among them. Library-internal. */
#ifndef UNET_DEPTHS_H
#define UNET_DEPTHS_H

#include <stddef.h>

#include "unet/backend.h"
#include "unet/config.h"
#include "unet/data.h"
#include "unet/metrics.h"
#include "unet/model.h"

/* The validation images: --val, or the --val-fraction split of --data. */
typedef struct {
    unet_dataset *train_ds, *val_ds;
    unet_data_view view;
} unet_val_data;

int unet_val_data_open(const unet_config *cfg, unet_val_data *v, char *err, size_t errlen);
void unet_val_data_close(unet_val_data *v);

/* The metrics of a checkpoint's network pruned to `depth` (head d alone),
 * over whole validation images as `unet eval --mode fast --depth d` sees
 * them; cfg gives the tile, batch, overlap and device. */
int unet_evaluate_pruned(const unet_config *cfg, const unet_model_cfg *full, int depth, const char *checkpoint,
                         const unet_val_data *v, unet_seg_metrics *m, char *err, size_t errlen);

/* What a model costs at cfg's tile and batch: `unet info`'s parameters,
 * FLOPs and planned training memory, `unet bench`'s timed steps. */
typedef struct {
    size_t params;
    size_t encoder_params; /* of the backbone; 0 for the plain encoder */
    double flops;          /* forward FLOPs per image */
    size_t train_bytes;    /* the training step's planned activation arena */
    double train_images_per_s;
    double infer_ms; /* per tile of inference */
} unet_model_costs;

#define UNET_COST_BENCH_STEPS 10 /* timed steps per measurement, after --bench-warmup */

/* The costs of model m; the training throughput only when `training`. */
int unet_measure_costs(const unet_config *cfg, const unet_backend *b, const unet_model_cfg *m, int training,
                       unet_model_costs *out, char *err, size_t errlen);

#endif
