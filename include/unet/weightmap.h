/* The border weight map of the U-Net paper (Ronneberger et al. 2015, eq. 2):
 *
 *   w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))
 *
 * d1, d2: Euclidean distances from x to the nearest and the second-nearest
 * cell (0 inside that cell). The exponential term applies to background
 * pixels (label 0) only, and only when the image has at least two cells. w_c
 * balances the classes: n / (2 n_bg) on background, n / (2 n_fg) on
 * foreground (n pixels), or 1 without balancing or when a class is absent.
 * Cells are the instance ids when given, else the 4-connected components of
 * label > 0. Distances are exact (Felzenszwalb-Huttenlocher squared distance
 * transforms); see weightmap.c for why restricting each cell's transform to
 * its neighbourhood loses nothing at float32 precision. */
#ifndef UNET_WEIGHTMAP_H
#define UNET_WEIGHTMAP_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    double w0;    /* border weight (10 in the paper) */
    double sigma; /* pixels (5 in the paper) */
    int balance;  /* class-balancing w_c; 0: w_c = 1 */
} unet_weightmap_cfg;

#define UNET_WEIGHTMAP_DEFAULTS                                                                                        \
    { 10.0, 5.0, 1 }

/* One image: label (H,W), cells (H,W) instance ids with 0 = none, or NULL
 * for the 4-connected components of label > 0; out (H,W). Returns the number
 * of cells, or -1 when out of memory. Thread-safe (no shared state). */
int unet_weight_map(const int32_t *label, const int32_t *cells, int h, int w, const unet_weightmap_cfg *cfg,
                    float *out);

/* The distance beyond which d1 + d2 no longer changes a float32 weight: the
 * border term there is below a quarter of the spacing of floats near the
 * smallest w_c (0.5). Each cell's transform covers its bounding box grown by
 * this much. */
double unet_weight_map_cutoff(const unet_weightmap_cfg *cfg);

#ifdef __cplusplus
}
#endif

#endif
