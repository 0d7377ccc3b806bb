/* The network a checkpoint's inference runs, shared by predict, eval and
 * export, so that an exported model is the network predict would run. */
#include <stdio.h>

#include "host/train/checkpoint_config.h"
#include "host/train/inference_model.h"

int unet_inference_model(unet_config *cfg, char *err, size_t errlen) {
    if (!cfg->checkpoint[0]) {
        snprintf(err, errlen, "needs --checkpoint FILE.safetensors (written by unet train --save)");
        return -1;
    }
    int file_depth = 0; /* a checkpoint written by unet prune holds the pruned network alone */
    unet_config saved;
    int rc = unet_checkpoint_config(cfg->checkpoint, &saved, NULL, err, errlen);
    if (rc < 0) return -1;
    if (rc == 1) {
        unet_config_take_model(cfg, &saved);
        file_depth = saved.model.prune_depth;
    }
    const int depth_given = unet_config_is_set(cfg, "depth");
    const int deepest = file_depth ? file_depth : cfg->model.levels - 1;
    if (depth_given && !unet_config_is_set(cfg, "mode")) cfg->mode = UNET_MODE_FAST; /* --depth alone: prune */
    if (cfg->mode == UNET_MODE_FAST) {
        if (!cfg->model.prune_depth) {
            snprintf(err, errlen, "--mode fast needs --depth d (1..%d): the network pruned to depth d", deepest);
            return -1;
        }
        if (cfg->model.prune_depth > deepest) {
            snprintf(err, errlen, "--depth %d is deeper than the network of %s (depth %d): use 1..%d",
                     cfg->model.prune_depth, cfg->checkpoint, deepest, deepest);
            return -1;
        }
        if (cfg->model.prune_depth < deepest && !cfg->model.deep_supervision) {
            snprintf(err, errlen,
                     "%s has one head, on X^{0,%d}: --depth %d needs head %d, which a model trained "
                     "with --deep-supervision has (prune such a checkpoint, not a pruned one)",
                     cfg->checkpoint, deepest, cfg->model.prune_depth, cfg->model.prune_depth);
            return -1;
        }
        /* head d alone: with deep supervision the graph would keep heads 1..d and the nodes only they need */
        cfg->model.deep_supervision = 0;
    } else {
        if (depth_given) {
            snprintf(err, errlen,
                     "--depth prunes the network and goes with --mode fast (--mode %s runs the "
                     "checkpoint's network as it is)",
                     unet_config_choice_name("mode", (int)cfg->mode));
            return -1;
        }
        cfg->model.prune_depth = file_depth;
    }
    return rc;
}
