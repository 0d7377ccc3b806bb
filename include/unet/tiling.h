/* Overlap-tile prediction (U-Net paper, Fig. 2): an image of any size is
 * mirrored at its borders and predicted tile by tile, and the tiles' outputs
 * are stitched into a map of the input's size. */
#ifndef UNET_TILING_H
#define UNET_TILING_H

#include <stdint.h>

#include "unet/plan.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int tile;   /* input tile */
    int out;    /* output size of one tile */
    int margin; /* context lost per side: (tile - out) / 2 */
    int stride; /* distance between tiles: a multiple of `align` no larger than `out` (valid padding) */
    int align;  /* 2^(pooling levels): tiles start on this grid so that stitching is exact */
    int same;   /* same padding: overlapping tiles blended with a Gaussian window */
} unet_tiling;

/* Geometry for an inference plan compiled at tile x tile; overlap in [0,1)
 * sets the stride for same padding (ignored for valid padding, where tiles
 * abut exactly). */
int unet_tiling_init(unet_tiling *t, unet_plan *plan, int pool_levels, float overlap, char *err, size_t errlen);

/* Mirror-pads by reflection without repeating the edge pixel (numpy's
 * 'reflect'), repeated for pads larger than the image. */
static inline int unet_reflect(int i, int n) {
    if (n == 1) return 0;
    int period = 2 * (n - 1);
    i %= period;
    if (i < 0) i += period;
    return i < n ? i : period - i;
}

/* Predicts one image (C, H, W): logits[o] (classes, H, W) for each output o
 * of the plan whose pointer is not NULL, in one pass over the tiles.
 * progress(done, total, ctx) is called after each batch of tiles when not
 * NULL. Uses the plan's batch for several tiles at once. 0, or -1 when out
 * of host memory. */
int unet_predict_tiled(unet_plan *plan, const unet_tiling *t, const float *image, int channels, int height, int width,
                       float **logits, void (*progress)(int done, int total, void *ctx), void *ctx);

#ifdef __cplusplus
}
#endif

#endif
