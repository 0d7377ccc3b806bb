/* What `--match-params` asks to match: library-internal (unet info and
 * unet compare). */
#ifndef UNET_MATCH_H
#define UNET_MATCH_H

#include <stddef.h>

#include "unet/config.h"

/* --match-params: the parameter count to match, either the number given or
 * the count of the configured model as the given kind (then *reference is
 * that model; its levels are 0 for a number). */
int unet_match_target(const unet_config *cfg, size_t *target, unet_model_cfg *reference, char *err, size_t errlen);

#endif
