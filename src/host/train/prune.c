/* unet prune: the network of a checkpoint pruned to depth d (the nodes with
 * i + j <= d and head d, DESIGN.md) written as a checkpoint of its own. It
 * holds only the pruned network's tensors, and its configuration says
 * depth d without deep supervision, so predict, eval and info take it as
 * they take any checkpoint, with no trace of the full model. */
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
    long step = 0;
    unet_config saved;
    unet_config_defaults(&saved);
    const int depth = cfg->model.prune_depth;

    if (!cfg->checkpoint[0] || !cfg->output[0] || depth < 1) {
        snprintf(err, sizeof err, "usage: unet prune --checkpoint C.safetensors --depth D --output P.safetensors "
                                  "(D >= 1: keep the nodes with i + j <= D and head D)");
        goto fail;
    }
    int rc = unet_checkpoint_config(cfg->checkpoint, &saved, &step, err, sizeof err);
    if (rc == 0)
        snprintf(err, sizeof err, "%s has no unet.config metadata: prune needs the model it was trained as "
                                  "(a checkpoint written by unet train)", cfg->checkpoint);
    if (rc != 1) goto fail;
    const int levels_deep = saved.model.prune_depth ? saved.model.prune_depth : saved.model.levels - 1;
    if (depth > levels_deep) {
        snprintf(err, sizeof err, "--depth %d is deeper than the network of %s (depth %d): use 1..%d", depth,
                 cfg->checkpoint, levels_deep, levels_deep);
        goto fail;
    }
    unet_model_cfg full_cfg = saved.model;
    saved.model.prune_depth = depth;
    saved.model.deep_supervision = 0; /* head d alone: deep supervision would keep heads 1..d and their nodes */
    if (unet_model_build(&saved.model, 0, 0, &pruned, err, sizeof err) ||
        unet_model_build(&full_cfg, 0, 0, &full, err, sizeof err))
        goto fail;
    const unet_graph *g = pruned.graph;
    const size_t n_params = unet_graph_trainable_count(g), n_state = unet_graph_state_count(g);
    if (!(params = unet_alloc_zeroed(n_params, sizeof(float), "the parameters", err, sizeof err)) ||
        !(state = unet_alloc_zeroed(n_state, sizeof(float), "the batch norm statistics", err, sizeof err)))
        goto fail;
    code = 1;
    /* every tensor of the pruned graph is in the full checkpoint; the rest of the file is left behind */
    if (unet_checkpoint_load_weights(cfg->checkpoint, g, params, state, err, sizeof err)) goto fail;
    json = unet_config_to_json(&saved, 0);
    if (unet_checkpoint_save(cfg->output, g, params, state, NULL, NULL, step, json, err, sizeof err)) goto fail;
    size_t n = unet_graph_trainable_params(g), n_full = unet_graph_trainable_params(full.graph);
    printf("wrote %s: %s pruned to depth %d, %zu of %zu parameters (%.1f%%)\n", cfg->output,
           unet_model_kind_name(saved.model.kind), depth, n, n_full, 100.0 * (double)n / (double)n_full);
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
