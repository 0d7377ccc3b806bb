/* The configuration a checkpoint carries: predict, eval, info and prune
 * rebuild the model a checkpoint was trained with from it. */
#include "host/common/util.h"
#include "host/train/checkpoint_config.h"
#include "unet/checkpoint.h"

int unet_checkpoint_config(const char *path, unet_config *saved, long *step, char *err, size_t errlen) {
    unet_checkpoint_meta meta;
    if (unet_checkpoint_read_meta(path, &meta, err, errlen)) return -1;
    if (step) *step = meta.progress.step;
    if (!meta.config_json) return 0;
    unet_config_defaults(saved);
    char why[1024];
    int rc = unet_config_from_json(saved, meta.config_json, why, sizeof why);
    unet_checkpoint_meta_free(&meta);
    if (rc) unet_errorf(err, errlen, "%s: %s", path, why); /* which file holds the bad configuration */
    return rc ? -1 : 1;
}

void unet_config_take_model(unet_config *cfg, const unet_config *saved) {
    unet_config_merge(cfg, saved, UNET_GROUP_MODEL);
    if (!unet_config_is_set(cfg, "tile")) cfg->tile = saved->tile;
}
