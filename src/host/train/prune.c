/* unet prune: the network of a checkpoint pruned to depth d (the nodes with
 * i + j <= d and head d, DESIGN.md) written as a checkpoint of its own. It
 * holds only the pruned network's tensors, and its configuration says
 * depth d without deep supervision, so predict, eval and info take it as
 * they take any checkpoint, with no trace of the full model. A checkpoint
 * without the engine's metadata (weights written by PyTorch) is described by
 * the model flags, as predict takes it.
 *
 * --auto chooses the depth, as the UNet++ paper leaves it to the validation
 * performance of each head: every depth of a deep-supervised checkpoint is
 * pruned as it would be written, scored on --val and timed, and the
 * shallowest whose IoU is within --tolerance of the best head's is written. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host/common/util.h"
#include "host/train/checkpoint_config.h"
#include "host/train/depths.h"
#include "host/train/session.h"
#include "unet/checkpoint.h"
#include "unet/commands.h"

/* The flags, before the checkpoint is read: a depth, or --auto with the
 * validation images to choose it on. */
static int check_flags(const unet_config *cfg, char *err, size_t errlen) {
    if (!cfg->checkpoint[0] || !cfg->output[0] || (!cfg->auto_depth && cfg->model.prune_depth < 1)) {
        snprintf(err, errlen,
                 "usage: unet prune --checkpoint C.safetensors --depth D --output P.safetensors "
                 "(D >= 1: keep the nodes with i + j <= D and head D), or --auto --val V.h5 "
                 "[--tolerance T] instead of --depth to choose D on validation images");
        return -1;
    }
    if (cfg->auto_depth && cfg->model.prune_depth) {
        snprintf(err, errlen, "--auto chooses the depth: give --auto or --depth %d, not both", cfg->model.prune_depth);
        return -1;
    }
    if (cfg->auto_depth && !cfg->val[0]) {
        snprintf(err, errlen, "--auto scores every head on validation images: add --val V.h5");
        return -1;
    }
    if (!cfg->auto_depth && (cfg->val[0] || unet_config_is_set(cfg, "tolerance"))) {
        snprintf(err, errlen, "--val and --tolerance are for --auto (choose the depth on validation images)");
        return -1;
    }
    return 0;
}

/* One depth of --auto's table. */
typedef struct {
    unet_model_costs cost;
    unet_seg_metrics m;
} depth_row;

static void print_table(const unet_config *run, const depth_row *rows, int levels, int best, int chosen, float tol) {
    printf("depth  params      GFLOPs/image  inference ms/tile (%dx%d)  val IoU\n", run->tile, run->tile);
    for (int d = 1; d <= levels; d++)
        printf("L%-5d %-11zu %-13.4f %-25.3f %.4f%s\n", d, rows[d].cost.params, rows[d].cost.flops / 1e9,
               rows[d].cost.infer_ms, rows[d].m.iou,
               d == chosen ? (d == best ? "  <- chosen (the best head)" : "  <- chosen")
               : d == best ? "  (best)"
                           : "");
    printf("chose depth %d: IoU %.4f, within %g of the best head (L%d, %.4f)\n", chosen, rows[chosen].m.iou,
           (double)tol, best, rows[best].m.iou);
}

/* --auto: depths 1..levels of the checkpoint's network (ev: its
 * configuration, --val the images v) pruned, scored and measured; *depth the
 * shallowest within --tolerance of the best. */
static int choose_depth(const unet_config *cfg, const unet_config *ev, const unet_val_data *v, int levels, int *depth,
                        char *err, size_t errlen) {
    char device[128];
    const unet_backend *b = unet_select_backend(ev, device, sizeof device, err, errlen);
    if (!b) return -1;
    depth_row rows[UNET_MAX_LEVELS + 1];
    int best = 0, rc = 0;
    for (int d = 1; d <= levels && !rc; d++) {
        unet_model_cfg pruned = ev->model;
        pruned.prune_depth = d;
        pruned.deep_supervision = 0;
        rc = unet_evaluate_pruned(ev, &ev->model, d, cfg->checkpoint, v, &rows[d].m, err, errlen) ||
             unet_measure_costs(ev, b, &pruned, 0, &rows[d].cost, err, errlen);
        if (!rc && (!best || rows[d].m.iou > rows[best].m.iou)) best = d;
    }
    if (rc) return -1;
    *depth = best;
    for (int d = best; d >= 1; d--)
        if (rows[d].m.iou >= rows[best].m.iou - cfg->tolerance) *depth = d;
    print_table(ev, rows, levels, best, *depth, cfg->tolerance);
    return 0;
}

int unet_run_prune(unet_config *cfg) {
    char err[1024] = "";
    int code = 2;
    unet_model pruned = {0}, full = {0};
    float *params = NULL, *state = NULL;
    char *json = NULL;
    unet_run_progress progress = {0};
    unet_config ev;          /* --auto: the configuration the depths are scored and timed under */
    unet_val_data val = {0}; /* --auto: the images they are scored on */
    int depth = cfg->model.prune_depth;

    if (check_flags(cfg, err, sizeof err)) goto fail;
    if (unet_check_output_file(cfg->output, "--output", err, sizeof err)) goto fail;
    /* the model: the checkpoint's configuration, explicit flags over it; without one (weights written by PyTorch
     * under the engine's names) the flags describe it, as predict takes them */
    unet_config saved;
    int rc = unet_checkpoint_config(cfg->checkpoint, &saved, &progress.step, err, sizeof err);
    if (rc < 0) goto fail;
    int file_depth = 0;
    unet_config out = *cfg; /* the pruned checkpoint's configuration: the saved run's where there is one */
    if (rc == 1) {
        file_depth = saved.model.prune_depth;
        unet_config_take_model(cfg, &saved);
        out = saved;
        out.model = cfg->model;
    }
    const int levels_deep = file_depth ? file_depth : cfg->model.levels - 1;
    if (cfg->auto_depth) {
        if (!cfg->model.deep_supervision || file_depth) {
            snprintf(err, sizeof err,
                     "--auto chooses among the heads of a deep-supervised network, and %s has one "
                     "head%s: give --depth D, or train with --deep-supervision",
                     cfg->checkpoint, file_depth ? " (it is pruned already)" : "");
            goto fail;
        }
        ev = out; /* the checkpoint's tile, batch and overlap, scored on --val */
        ev.val = cfg->val;
        if (unet_val_data_open(&ev, &val, err, sizeof err)) goto fail;
        code = 1; /* from here on a failure is the evaluation's */
        if (choose_depth(cfg, &ev, &val, levels_deep, &depth, err, sizeof err)) goto fail;
    }
    if (depth > levels_deep) {
        snprintf(err, sizeof err, "--depth %d is deeper than the network of %s (depth %d): use 1..%d", depth,
                 cfg->checkpoint, levels_deep, levels_deep);
        goto fail;
    }
    unet_model_cfg full_cfg = cfg->model;
    full_cfg.prune_depth = file_depth;
    out.model.prune_depth = depth;
    out.model.deep_supervision = 0; /* head d alone: deep supervision would keep heads 1..d and their nodes */
    if (unet_model_build(&out.model, 0, 0, &pruned, err, sizeof err) ||
        unet_model_build(&full_cfg, 0, 0, &full, err, sizeof err))
        goto fail;
    const unet_graph *g = pruned.graph;
    const size_t n_params = unet_graph_trainable_count(g), n_state = unet_graph_state_count(g);
    if (!(params = unet_alloc_zeroed(n_params, sizeof(float), "the parameters", err, sizeof err)) ||
        !(state = unet_alloc_zeroed(n_state, sizeof(float), "the batch norm statistics", err, sizeof err)))
        goto fail;
    /* every tensor of the pruned graph is in the full checkpoint; the rest of the file is left behind */
    if (unet_checkpoint_load_weights(cfg->checkpoint, g, params, state, err, sizeof err)) goto fail;
    code = 1;
    json = unet_config_to_json(&out, 0);
    if (unet_checkpoint_save(cfg->output, g, params, state, NULL, NULL, &progress, json, err, sizeof err)) goto fail;
    size_t n = unet_graph_trainable_params(g), n_full = unet_graph_trainable_params(full.graph);
    printf("wrote %s: %s pruned to depth %d, %zu of %zu parameters (%.1f%%)\n", cfg->output,
           unet_model_kind_name(out.model.kind), depth, n, n_full, 100.0 * (double)n / (double)n_full);
    code = 0;
    goto done;
fail:
    fprintf(stderr, "unet prune: %s\n", err);
done:
    unet_model_free(&pruned);
    unet_model_free(&full);
    unet_val_data_close(&val);
    free(params);
    free(state);
    free(json);
    return code;
}
