/* The U-Net whose parameter count matches another model's: the baseline of
 * the UNet++ paper ("wide U-Net"), which separates the gain of the nested
 * skips from the gain of having more parameters. Counts come from building
 * the graph, so they are the counts training uses. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host/model/match.h"
#include "unet/model.h"

size_t unet_model_param_count(const unet_model_cfg *m, char *err, size_t errlen) {
    unet_model model;
    if (unet_model_build(m, 0, 0, &model, err, errlen)) return 0;
    size_t n = unet_graph_trainable_params(model.graph);
    unet_model_free(&model);
    return n;
}

/* Filters of one family at parameter k: w * 2^i (by width), or the filters
 * of `like` scaled so that the deepest level has k (by scale). */
static void family_filters(const unet_model_cfg *like, int by_scale, int k, unet_model_cfg *out) {
    const int top = like->levels - 1;
    for (int i = 0; i < like->levels; i++) {
        long f = by_scale ? lround((double)k * like->filters[i] / like->filters[top]) : (long)k << i;
        out->filters[i] = f < 1 ? 1 : (int)f;
    }
}

/* The k in [1, k_max] whose count comes closest to target; counts grow with
 * k, so a bisection finds the first k at or above target and the closer of
 * it and k - 1 wins. */
static int closest(const unet_model_cfg *like, int by_scale, int k_max, size_t target, unet_model_cfg *out,
                   size_t *params, char *err, size_t errlen) {
    *out = *like;
    int lo = 1, hi = k_max;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        family_filters(like, by_scale, mid, out);
        size_t n = unet_model_param_count(out, err, errlen);
        if (!n) return -1;
        if (n >= target)
            hi = mid;
        else
            lo = mid + 1;
    }
    int best = lo;
    family_filters(like, by_scale, lo, out);
    size_t n_best = unet_model_param_count(out, err, errlen);
    if (!n_best) return -1;
    if (lo > 1) {
        family_filters(like, by_scale, lo - 1, out);
        size_t n_below = unet_model_param_count(out, err, errlen);
        if (!n_below) return -1;
        if (target - n_below < (n_best > target ? n_best - target : target - n_best)) best = lo - 1, n_best = n_below;
    }
    family_filters(like, by_scale, best, out);
    *params = n_best;
    return best;
}

int unet_match_params(const unet_model_cfg *like, size_t target, unet_params_match *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    out->target = target;
    unet_model_cfg u = *like;
    u.kind = UNET_MODEL_UNET;
    u.deep_supervision = 0;
    u.prune_depth = 0;
    if (target == 0) {
        snprintf(err, errlen, "the parameter count to match must be positive");
        return -1;
    }
    if (unet_model_validate(&u, err, errlen)) return -1;
    const int top = u.levels - 1, f_max = 65536;
    int w = closest(&u, 0, f_max >> top, target, &out->by_width, &out->by_width_params, err, errlen);
    if (w < 0) return -1;
    out->width = w;
    int f = closest(&u, 1, f_max, target, &out->by_scale, &out->by_scale_params, err, errlen);
    if (f < 0) return -1;
    out->scale = (double)f / u.filters[top];
    double gap_w = fabs((double)out->by_width_params - (double)target);
    double gap_s = fabs((double)out->by_scale_params - (double)target);
    out->best = gap_s < gap_w ? &out->by_scale : &out->by_width;
    out->best_params = gap_s < gap_w ? out->by_scale_params : out->by_width_params;
    return 0;
}

int unet_match_target(const unet_config *cfg, size_t *target, unet_model_cfg *reference, char *err, size_t errlen) {
    memset(reference, 0, sizeof *reference);
    unet_model_kind kind;
    if (unet_model_kind_parse(cfg->match_params, &kind)) {
        /* the option's check let through a kind or a positive integer */
        *target = (size_t)strtoull(cfg->match_params, NULL, 10);
        return 0;
    }
    *reference = cfg->model;
    reference->kind = kind;
    reference->prune_depth = 0;
    if (kind == UNET_MODEL_UNET) reference->deep_supervision = 0;
    *target = unet_model_param_count(reference, err, errlen);
    return *target ? 0 : -1;
}
