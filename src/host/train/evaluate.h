/* Whole-image evaluation through overlap-tile prediction, as validation,
 * `unet eval` and `unet compare` see it: library-internal. */
#ifndef UNET_EVALUATE_H
#define UNET_EVALUATE_H

#include <stddef.h>

#include "unet/data.h"
#include "unet/metrics.h"
#include "unet/model.h"
#include "unet/plan.h"
#include "unet/tiling.h"

/* Predicts every image of a view whole (overlap-tile, exact for valid
 * padding) and adds each head's confusion counts, Rand score and loss (the
 * model's, with the view's weight map where it has one) to per_head[h]. */
int unet_evaluate_view(unet_plan *plan, const unet_tiling *t, const unet_data_view *v, const unet_model_cfg *m,
                       unet_seg_stats *per_head, int n_heads, char *err, size_t errlen);

#endif
