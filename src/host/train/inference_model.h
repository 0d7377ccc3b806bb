/* The network a checkpoint's inference runs (predict, eval, export): the
 * model of its metadata with explicit flags winning, cut by --mode and
 * --depth. Library-internal. */
#ifndef UNET_INFERENCE_MODEL_H
#define UNET_INFERENCE_MODEL_H

#include <stddef.h>

#include "unet/config.h"

/* Fills cfg->model (and cfg->tile where not given) from cfg->checkpoint and
 * resolves the mode: --depth alone means --mode fast; fast prunes to --depth
 * with head d alone; deepest and accurate run the checkpoint's network as it
 * is. 1 when the checkpoint carries its model (unet.config), 0 when the flags
 * alone describe it, -1 with one line in err (a bad depth or mode, no
 * checkpoint, an unreadable file). */
int unet_inference_model(unet_config *cfg, char *err, size_t errlen);

#endif
