/* Whole-image evaluation: every image of a view predicted through
 * overlap-tile prediction, each head's confusion counts and Rand score. */
#include <stdlib.h>

#include "host/common/util.h"
#include "host/train/evaluate.h"

int unet_evaluate_view(unet_plan *plan, const unet_tiling *t, const unet_data_view *v, int classes,
                       unet_seg_stats *per_head, int n_heads, char *err, size_t errlen) {
    unet_dataset_info info;
    unet_dataset_get_info(v->ds, &info);
    const int H = v->rows, W = info.w, C = info.c;
    const size_t pixels = (size_t)H * W;
    float *raw = unet_alloc((size_t)C * pixels, sizeof(float), "a validation image", err, errlen);
    int32_t *label = raw ? unet_alloc(pixels, sizeof(int32_t), "a validation label image", err, errlen) : NULL;
    /* hard labels for the Rand score */
    uint8_t *pred = label ? unet_alloc(pixels, 1, "a validation prediction", err, errlen) : NULL;
    float *logits[UNET_MAX_LEVELS] = {0};
    int rc = pred ? 0 : -1;
    for (int h = 0; h < n_heads && !rc; h++) {
        unet_seg_stats_init(&per_head[h], classes);
        logits[h] = unet_alloc((size_t)unet_plan_output_shape(plan, h).c * pixels, sizeof(float),
                               "a validation image's logits", err, errlen);
        if (!logits[h]) rc = -1;
    }
    for (int k = 0; k < v->images && !rc; k++) {
        rc = unet_data_view_read(v, k, raw, label, NULL, err, errlen);
        if (rc) break;
        if (unet_predict_tiled(plan, t, raw, C, H, W, logits, NULL, NULL)) {
            unet_errorf(err, errlen, "out of host memory predicting a %dx%d image", H, W);
            rc = -1;
            break;
        }
        for (int h = 0; h < n_heads; h++) {
            unet_shape s = {1, unet_plan_output_shape(plan, h).c, H, W};
            unet_seg_stats_add(&per_head[h], logits[h], s, label, H, W);
            unet_predict_labels(logits[h], s, pred);
            unet_seg_stats_add_rand(&per_head[h], pred, label, H, W);
        }
    }
    free(raw);
    free(label);
    free(pred);
    for (int h = 0; h < n_heads; h++) free(logits[h]);
    return rc;
}
