/* Shape inference over a graph (core-internal). */
#ifndef UNET_SHAPES_H
#define UNET_SHAPES_H

#include <stdlib.h>

#include "host/core/graph_internal.h"
#include "unet/plan.h"

unet_shape unet_input_shape(const unet_graph *g, int input, unet_plan_cfg cfg);
/* Shapes of every value (indexed by value id); loss nodes skipped unless training. */
int unet_infer_all(const unet_graph *g, unet_plan_cfg cfg, unet_shape *shapes, char *err, size_t errlen);
/* unet_infer_all, with a failure turned into a user error naming the nearest valid tile sizes. */
int unet_infer_tile(const unet_graph *g, unet_plan_cfg cfg, unet_shape *shapes, char *err, size_t errlen);

#endif
