/* Data augmentation of the U-Net paper and the usual extras, as the loader's
 * hook (unet_augment_fn in unet/data.h): one random draw per sample, from
 * the sample's own key, moves raw, label and weight together, so batches stay
 * a pure function of (seed, step).
 *
 * Geometry, composed into one map from each tile pixel to a source position
 * (sampled once, so nothing is interpolated twice):
 *   flip, rot90   a random element of the dihedral group of the square: a
 *                 horizontal flip with probability 1/2, then 0-3 quarter turns
 *   rotate:deg=D  a rotation by an angle uniform in [-D, D] degrees (default 15)
 *   scale:range=R a zoom by a factor uniform in [1 - R, 1 + R] (default 0.1)
 *   elastic       the paper's elastic deformation: displacement vectors on a
 *                 coarse G x G grid over the tile (grid=3), each component drawn
 *                 from a Gaussian of sigma=10 pixels, interpolated to every pixel
 *                 by a cubic B-spline (bicubic; as the elasticdeform package
 *                 does); raw sampled by a cubic B-spline (interp=cubic) or
 *                 bilinearly (interp=linear)
 * Labels and weights are sampled at the nearest pixel, so they keep their
 * values; positions outside the source window are mirrored (no repeated edge
 * pixel, like the tile's own border).
 * Intensity, on raw only, in this order: gamma:range=R (gamma in [1/(1+R),
 * 1+R] log-uniform on the tile's min..max, default 0.3), brightness:range=R
 * (add U(-R, R), default 0.1), contrast:range=R (scale about the tile's mean by
 * U(1-R, 1+R), default 0.2), noise:std=S (Gaussian noise of a standard deviation
 * uniform in [0, S], default 0.03).
 *
 * The --augment text: none, paper (= elastic,flip,rot90), or a comma-separated
 * list of the names above, each with optional :key=value settings, e.g.
 * "paper,noise:std=0.05" or "elastic:sigma=8:grid=5:interp=linear,flip". */
#ifndef UNET_AUGMENT_H
#define UNET_AUGMENT_H

#include "unet/data.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { UNET_INTERP_CUBIC, UNET_INTERP_LINEAR } unet_interp;

typedef struct {
    int elastic, flip, rot90, rotate, scale, gamma, brightness, contrast, noise; /* which are on */
    double elastic_sigma;                                                        /* pixels */
    int elastic_grid;                                                            /* control points per side, >= 2 */
    unet_interp interp;                                                          /* raw sampling */
    double rotate_degrees, scale_range, gamma_range, brightness_range, contrast_range, noise_std;
} unet_augment_cfg;

/* Parses the --augment text into cfg (defaults for what it does not say);
 * -1 with one line in err. */
int unet_augment_parse(const char *text, unet_augment_cfg *cfg, char *err, size_t errlen);
/* Whether cfg does anything at all (none: the loader needs no hook). */
int unet_augment_active(const unet_augment_cfg *cfg);
/* Pixels of source context per side the hook wants around a tile of this
 * size: what the deformation and rotation reach in nearly every draw (beyond
 * it, the source window is mirrored, which is still a plausible image). */
int unet_augment_context(const unet_augment_cfg *cfg, int tile);
/* What cfg does, in words, for the printed configuration. */
void unet_augment_describe(const unet_augment_cfg *cfg, char *buf, size_t len);

/* The hook: ctx is a const unet_augment_cfg *. Thread-safe. */
int unet_augment_apply(void *ctx, const unet_augment_args *a, char *err, size_t errlen);

/* One draw made explicit, for tests and for the CUDA twin: the tile pixel
 * (y, x) is first moved by the dihedral element (flip_x, then rot90 quarter
 * turns), giving (u, v); its source position is
 *   c + A (u - c, v - c) + d(u, v) + context,  c = (tile - 1) / 2,
 * A = rotation by angle (radians) divided by scale, and d the cubic B-spline
 * through the grid x grid displacements dy, dx (row-major, point (i, j) at
 * pixel (i, j) * (tile - 1) / (grid - 1); NULL: none). Same conventions as
 * elasticdeform.deform_grid(..., order=3, mode='mirror'). Its twin on a
 * device is the backend's warp (warper_create, warp_batch in unet/backend.h),
 * with the same arithmetic (src/common/warp_math.h), so a seed gives the same
 * tiles on either. */
typedef struct unet_warp {
    int grid;
    const double *dy, *dx;
    double angle, scale;
    int flip_x, rot90;
    unet_interp interp;
} unet_warp;
int unet_augment_warp(const unet_warp *w, const unet_augment_args *a, char *err, size_t errlen);

/* The random draws unet_augment_apply makes for key, as a warp, without
 * applying them (the intensity changes are not part of it): so that the host
 * draws and the GPU warps, with the CPU's deformation for the same seed.
 * grid_values holds 2 * cfg->elastic_grid^2 doubles; w->dy and w->dx point
 * into it when the elastic deformation is on. */
void unet_augment_draw(const unet_augment_cfg *cfg, uint64_t key, unet_warp *w, double *grid_values);

/* The same draws as the loader's deferred hook (unet_loader_opts.draw, for
 * the GPU warp): a record is plain bytes (it is copied between the loader's
 * buffers), unet_augment_record_bytes(cfg) of them; ctx is a const
 * unet_augment_cfg *. unet_augment_record_warp gives the warp a record
 * holds, dy and dx pointing into the record. */
size_t unet_augment_record_bytes(const unet_augment_cfg *cfg);
int unet_augment_record(void *ctx, uint64_t key, void *record, char *err, size_t errlen);
void unet_augment_record_warp(const void *record, unet_warp *w);
/* Whether cfg changes intensities (gamma, brightness, contrast, noise): the
 * part of unet_augment_apply that no warp does. */
int unet_augment_has_intensity(const unet_augment_cfg *cfg);

#ifdef __cplusplus
}
#endif

#endif
