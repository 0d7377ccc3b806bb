/* unet prune: the network of a checkpoint pruned to depth d (the nodes with
 * i + j <= d and head d, DESIGN.md) written as a checkpoint of its own. It
 * holds only the pruned network's tensors, and its configuration says
 * depth d without deep supervision, so predict, eval and info take it as
 * they take any checkpoint, with no trace of the full model. A checkpoint
 * without the engine's metadata (weights written by PyTorch) is described by
 * the model flags, as predict takes it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host/common/util.h"
#include "host/train/checkpoint_config.h"
#include "host/train/session.h"
#include "unet/checkpoint.h"
#include "unet/commands.h"

int unet_run_prune(unet_config *cfg) {
    char err[1024] = "";
    int code = 2;
    unet_model pruned = {0}, full = {0};
    float *params = NULL, *state = NULL;
    char *json = NULL;
    unet_run_progress progress = {0};
    const int depth = cfg->model.prune_depth;

    if (!cfg->checkpoint[0] || !cfg->output[0] || depth < 1) {
        snprintf(err, sizeof err, "usage: unet prune --checkpoint C.safetensors --depth D --output P.safetensors "
                                  "(D >= 1: keep the nodes with i + j <= D and head D)");
        goto fail;
    }
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
    free(params);
    free(state);
    free(json);
    return code;
}
