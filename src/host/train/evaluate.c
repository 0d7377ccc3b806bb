/* Whole-image evaluation: every image of a view predicted through
 * overlap-tile prediction, each head's confusion counts, Rand score and
 * loss. */
#include <stdlib.h>

#include "host/common/util.h"
#include "host/train/evaluate.h"
#include "unet/backend.h"

/* The loss the model trains on, of one whole image's logits (1,K,H,W): the
 * CPU backend's own loss op, the sums of a training step's loss in the same
 * order, so that a validation loss and a training loss mean one thing. The
 * logits are on the host whatever the device, as evaluation reads them. */
static int image_loss(const unet_model_cfg *m, const float *logits, unet_shape s, const int32_t *label,
                      const float *weight, double *loss, char *err, size_t errlen) {
    unet_node node = unet_node_make(m->loss == UNET_LOSS_CE ? UNET_OP_SOFTMAX_CE : UNET_OP_BCE_DICE, "val_loss");
    node.scale = 1.0f;
    const unet_op_impl *op = unet_cpu_backend()->ops[node.op];
    unet_shape map = {1, 1, s.h, s.w};
    float out = 0.0f;
    unet_op_args a = {.node = &node,
                      .backend = unet_cpu_backend(),
                      .n_in = weight ? 3 : 2,
                      .in_shape = {s, map, map},
                      .out_shape = {1, 1, 1, 1},
                      .in = {logits, label, weight},
                      .out = &out};
    size_t bytes = op->workspace_bytes ? op->workspace_bytes(&a) : 0;
    void *workspace = bytes ? unet_alloc(bytes, 1, "a validation loss's sums", err, errlen) : NULL;
    if (bytes && !workspace) return -1;
    a.workspace = workspace;
    op->forward(&a);
    free(workspace);
    *loss = out;
    return 0;
}

int unet_evaluate_view(unet_plan *plan, const unet_tiling *t, const unet_data_view *v, const unet_model_cfg *m,
                       unet_seg_stats *per_head, int n_heads, char *err, size_t errlen) {
    unet_dataset_info info;
    unet_dataset_get_info(v->ds, &info);
    const int H = v->rows, W = info.w, C = info.c;
    const size_t pixels = (size_t)H * W;
    float *raw = unet_alloc((size_t)C * pixels, sizeof(float), "a validation image", err, errlen);
    int32_t *label = raw ? unet_alloc(pixels, sizeof(int32_t), "a validation label image", err, errlen) : NULL;
    /* the weight map weighs the validation loss as it weighs the training loss */
    float *weight =
        label && info.has_weight ? unet_alloc(pixels, sizeof(float), "a validation weight map", err, errlen) : NULL;
    /* hard labels for the Rand score */
    uint8_t *pred =
        label && (weight || !info.has_weight) ? unet_alloc(pixels, 1, "a validation prediction", err, errlen) : NULL;
    float *logits[UNET_MAX_LEVELS] = {0};
    int rc = pred ? 0 : -1;
    for (int h = 0; h < n_heads && !rc; h++) {
        unet_seg_stats_init(&per_head[h], m->classes);
        logits[h] = unet_alloc((size_t)unet_plan_output_shape(plan, h).c * pixels, sizeof(float),
                               "a validation image's logits", err, errlen);
        if (!logits[h]) rc = -1;
    }
    for (int k = 0; k < v->images && !rc; k++) {
        rc = unet_data_view_read(v, k, raw, label, weight, err, errlen);
        if (rc) break;
        if (unet_predict_tiled(plan, t, raw, C, H, W, logits, NULL, NULL)) {
            unet_errorf(err, errlen, "out of host memory predicting a %dx%d image", H, W);
            rc = -1;
            break;
        }
        for (int h = 0; h < n_heads && !rc; h++) {
            unet_shape s = {1, unet_plan_output_shape(plan, h).c, H, W};
            unet_seg_stats_add(&per_head[h], logits[h], s, label, H, W);
            unet_predict_labels(logits[h], s, pred);
            unet_seg_stats_add_rand(&per_head[h], pred, label, H, W);
            double loss;
            rc = image_loss(m, logits[h], s, label, weight, &loss, err, errlen);
            if (!rc) unet_seg_stats_add_loss(&per_head[h], loss);
        }
    }
    free(raw);
    free(label);
    free(weight);
    free(pred);
    for (int h = 0; h < n_heads; h++) free(logits[h]);
    return rc;
}
