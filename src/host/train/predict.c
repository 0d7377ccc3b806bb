/* unet predict and unet eval: a trained model over whole images of any size,
 * by overlap-tile prediction. The model comes from the checkpoint's metadata;
 * explicit flags override it, and describe it for checkpoints without
 * metadata (weights saved by PyTorch under the engine's names). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "host/common/util.h"
#include "host/train/inference_model.h"
#include "host/train/session.h"
#include "unet/checkpoint.h"
#include "unet/commands.h"
#include "unet/data.h"
#include "unet/metrics.h"
#include "unet/tiling.h"

/* The mode's network of the checkpoint (unet_inference_model); then backend,
 * weights, an inference plan and its tiling. */
static int open_model(unet_config *cfg, unet_session *s, unet_plan **plan, unet_tiling *t, char *err, size_t errlen) {
    if (unet_inference_model(cfg, err, errlen) < 0) return -1;
    if (unet_session_build(s, cfg, 0, 0, err, errlen)) return -1;
    unet_param_init_host(s->model.graph, 0, s->host_params, s->host_state);
    if (unet_checkpoint_load_weights(cfg->checkpoint, s->model.graph, s->host_params, s->host_state, err, errlen))
        return -1;
    unet_session_upload(s);
    unet_plan_cfg pc = {.batch = cfg->batch, .height = cfg->tile, .width = cfg->tile, .training = 0};
    *plan = unet_plan_compile(s->model.graph, &s->pb, pc, err, errlen);
    if (!*plan) return -1;
    return unet_tiling_init(t, *plan, unet_pool_levels(&cfg->model), cfg->overlap, err, errlen);
}

/* The probabilities the mode asks for: the deepest head's (or the pruned
 * network's only head), or the mean over all heads (--mode accurate). */
static void head_probabilities(const unet_config *cfg, float **logits, int n_heads, unet_shape s, float *prob) {
    size_t n = unet_shape_count(s);
    if (cfg->mode != UNET_MODE_ACCURATE || n_heads == 1) {
        memcpy(prob, logits[n_heads - 1], n * sizeof(float));
        unet_probabilities(prob, s);
        return;
    }
    memset(prob, 0, n * sizeof(float));
    for (int h = 0; h < n_heads; h++) {
        unet_probabilities(logits[h], s);
        for (size_t i = 0; i < n; i++) prob[i] += logits[h][i] / n_heads;
    }
}

static void show_progress(int done, int total, void *ctx) {
    const int *image = ctx;
    if (isatty(2)) fprintf(stderr, "\rimage %d: tile %d/%d ", image[0] + 1, done, total);
}

/* predict (label NULL) or eval (per-class statistics into stats). */
static int run(unet_config *cfg, int evaluate) {
    char err[1024] = "";
    int code = 2;
    unet_session s;
    memset(&s, 0, sizeof s);
    unet_plan *plan = NULL;
    unet_dataset *ds = NULL;
    unet_prediction_file *pf = NULL;
    float *raw = NULL, *prob = NULL, *logits[UNET_MAX_LEVELS] = {0};
    int32_t *label = NULL;
    uint8_t *pred = NULL;
    FILE *log = NULL;
    const char *input = evaluate ? cfg->data : cfg->input;
    if (!input[0]) {
        snprintf(err, sizeof err, "needs %s FILE.h5", evaluate ? "--data" : "--input");
        goto fail;
    }
    if (!evaluate && !cfg->output[0]) {
        snprintf(err, sizeof err, "needs --output FILE.h5 for the probabilities and labels");
        goto fail;
    }
    /* fail fast on outputs: before the model and the data are read */
    if ((!evaluate && unet_check_output_file(cfg->output, "--output", err, sizeof err)) ||
        (evaluate && cfg->log[0] && unet_check_output_file(cfg->log, "--log", err, sizeof err)))
        goto fail;
    unet_tiling t;
    if (open_model(cfg, &s, &plan, &t, err, sizeof err)) goto fail;
    unet_dataset_opts dopts = {.raw_key = cfg->raw_key[0] ? cfg->raw_key : NULL,
                               .label_key = cfg->label_key[0] ? cfg->label_key : NULL,
                               .classes = evaluate ? cfg->model.classes : 0,
                               .label_optional = !evaluate};
    if (unet_dataset_open(input, &dopts, &ds, err, sizeof err)) goto fail;
    unet_dataset_info info;
    unet_dataset_get_info(ds, &info);
    if (info.c != cfg->model.in_channels) {
        snprintf(err, sizeof err, "%s has %d channel(s) but the model takes %d", input, info.c, cfg->model.in_channels);
        goto fail;
    }
    const int H = info.h, W = info.w, K = cfg->model.classes, n_heads = s.model.n_heads;
    unet_shape shape = {1, K, H, W};
    const size_t pixels = (size_t)H * W;
    if (!(raw = unet_alloc(info.c * pixels, sizeof(float), "an image", err, sizeof err)) ||
        !(prob = unet_alloc(K * pixels, sizeof(float), "an image's probabilities", err, sizeof err)) ||
        !(pred = unet_alloc(pixels, 1, "an image's labels", err, sizeof err)) ||
        (evaluate && !(label = unet_alloc(pixels, sizeof(int32_t), "an image's true labels", err, sizeof err))))
        goto fail;
    for (int h = 0; h < n_heads; h++)
        if ((cfg->mode == UNET_MODE_ACCURATE || h == n_heads - 1) &&
            !(logits[h] = unet_alloc(K * pixels, sizeof(float), "an image's logits", err, sizeof err)))
            goto fail;
    /* eval --log: the metrics' JSON line is appended (opened now: a bad path fails before the work) */
    if (evaluate && cfg->log[0] && !(log = fopen(cfg->log, "a"))) {
        snprintf(err, sizeof err, "cannot write the log %s (is the directory there and writable?)", cfg->log);
        goto fail;
    }
    code = 1;
    if (!evaluate && unet_prediction_file_create(cfg->output, info.n, K, H, W, &pf, err, sizeof err)) goto fail;
    unet_seg_stats stats;
    unet_seg_stats_init(&stats, K);
    unet_data_view all = unet_data_view_all(ds);
    printf("device: %s; %d image(s) of %dx%d; tile %d -> %d, stride %d\n", s.device, info.n, H, W, t.tile, t.out,
           t.stride);
    for (int k = 0; k < info.n; k++) {
        if (unet_data_view_read(&all, k, raw, label, NULL, err, sizeof err)) goto fail;
        int ctx[1] = {k};
        if (unet_predict_tiled(plan, &t, raw, info.c, H, W, logits, show_progress, ctx)) {
            snprintf(err, sizeof err, "out of host memory predicting a %dx%d image", H, W);
            goto fail;
        }
        head_probabilities(cfg, logits, n_heads, shape, prob);
        unet_labels_from_probabilities(prob, shape, pred);
        if (evaluate) {
            unet_seg_stats_add_labels(&stats, pred, label, (size_t)H * W);
            unet_seg_stats_add_rand(&stats, pred, label, H, W);
        } else if (unet_prediction_file_write(pf, k, prob, pred, err, sizeof err)) {
            goto fail;
        }
    }
    if (isatty(2)) fputc('\n', stderr);
    if (!evaluate) {
        if (unet_prediction_file_close(pf, 1, err, sizeof err)) {
            pf = NULL;
            goto fail;
        }
        pf = NULL;
        printf("wrote %s: prob (%d, %d, %d, %d), pred (%d, %d, %d)\n", cfg->output, info.n, K, H, W, info.n, H, W);
    } else {
        unet_seg_metrics m = unet_seg_stats_finish(&stats);
        /* the headline members first, then per class (include/unet/metrics.h) */
        char members[16384];
        unet_seg_metrics_json(members, sizeof members, &m, "");
        if (log) fprintf(log, "{%s, \"images\": %d}\n", members + 2, info.n);
        if (cfg->json) {
            printf("{%s, \"images\": %d}\n", members + 2, info.n);
        } else {
            printf("IoU %.4f  Dice %.4f  pixel accuracy %.4f  pixel error %.4f  Rand error %.4f  (%d images", m.iou,
                   m.dice, m.pixel_accuracy, m.pixel_error, m.rand_error, info.n);
            if (K >= 3) printf("; IoU, Dice and Rand error: means over classes 1..%d", K - 1);
            printf(")\n");
            unet_seg_metrics_print_classes(stdout, &m, "  ");
        }
    }
    code = 0;
    goto done;
fail:
    fprintf(stderr, "unet: %s\n", err);
done:
    if (pf) unet_prediction_file_close(pf, 0, err, 0);
    if (log) fclose(log);
    unet_plan_free(plan);
    unet_session_free(&s);
    if (ds) unet_dataset_close(ds);
    free(raw);
    free(prob);
    free(pred);
    free(label);
    for (int h = 0; h < UNET_MAX_LEVELS; h++) free(logits[h]);
    return code;
}

int unet_run_predict(unet_config *cfg) { return run(cfg, 0); }
int unet_run_eval(unet_config *cfg) { return run(cfg, 1); }
