/* The configuration a checkpoint carries (its unet.config metadata), for
 * the commands that take their model from a checkpoint: library-internal. */
#ifndef UNET_CHECKPOINT_CONFIG_H
#define UNET_CHECKPOINT_CONFIG_H

#include <stddef.h>

#include "unet/config.h"

/* The configuration a checkpoint was trained with: 1 with *saved filled
 * (and *step when not NULL), 0 when the file has no unet.config metadata
 * (weights written by PyTorch, say), -1 with a message. */
int unet_checkpoint_config(const char *path, unet_config *saved, long *step, char *err, size_t errlen);
/* Takes the model (and the tile) of a checkpoint's configuration where the
 * command line did not set them. */
void unet_config_take_model(unet_config *cfg, const unet_config *saved);

#endif
