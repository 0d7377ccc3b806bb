/* What train, predict, eval and bench share: the backend a run asks for, the
 * model it builds, and whole-image evaluation through overlap-tile prediction. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "host/train/session.h"
#include "unet/checkpoint.h"

const unet_backend *unet_config_cuda_backend(const unet_config *cfg, int index, const char **precision, char *why,
                                             size_t whylen) {
    /* bf16 is in the CUDA backend but has not yet run on a GPU: auto means tf32 until it has */
    *precision = cfg->precision == UNET_PRECISION_AUTO ? "tf32" : unet_config_choice_name("precision", cfg->precision);
    return unet_cuda_backend(index < 0 ? 0 : index, *precision, !cfg->fast_nondeterministic, why, whylen);
}

const unet_backend *unet_select_backend(const unet_config *cfg, char *desc, size_t desclen, char *err, size_t errlen) {
    if (cfg->threads > 0) omp_set_num_threads(cfg->threads);
    int cuda, index;
    if (unet_config_device(cfg, &cuda, &index)) {
        snprintf(err, errlen, "--device must be cpu, cuda, cuda:N or auto, got '%s'", cfg->device);
        return NULL;
    }
    if (cuda != 0) {
        const char *prec;
        char why[512];
        const unet_backend *b = unet_config_cuda_backend(cfg, index, &prec, why, sizeof why);
        if (b) {
            snprintf(desc, desclen, "cuda:%d (%s%s)", index < 0 ? 0 : index, prec,
                     cfg->fast_nondeterministic ? ", nondeterministic engines allowed" : "");
            return b;
        }
        if (cuda == 1) {
            snprintf(err, errlen, "--device %s: %s (use --device cpu)", cfg->device, why);
            return NULL;
        }
    }
    snprintf(desc, desclen, "cpu (%d threads)", omp_get_max_threads());
    return unet_cpu_backend();
}

int unet_session_build(unet_session *s, const unet_config *cfg, int training, int with_weight, char *err,
                       size_t errlen) {
    memset(s, 0, sizeof *s);
    s->backend = unet_select_backend(cfg, s->device, sizeof s->device, err, errlen);
    if (!s->backend) return -1;
    if (unet_model_build(&cfg->model, training, with_weight, &s->model, err, errlen)) return -1;
    if (unet_param_blocks_alloc(&s->pb, s->backend, s->model.graph, cfg->optim.kind != UNET_OPT_SGD, err, errlen))
        return -1;
    s->host_params = calloc(s->pb.n_trainable + 1, sizeof(float));
    s->host_state = calloc(s->pb.n_state + 1, sizeof(float));
    if (!s->host_params || !s->host_state) {
        snprintf(err, errlen, "out of host memory for %zu parameters", s->pb.n_trainable);
        return -1;
    }
    return 0;
}

void unet_session_upload(unet_session *s) {
    const unet_backend *b = s->backend;
    b->upload_f32(b, s->pb.params, s->host_params, s->pb.n_trainable);
    if (s->pb.n_state) b->upload_f32(b, s->pb.state, s->host_state, s->pb.n_state);
}

void unet_session_download(unet_session *s) {
    const unet_backend *b = s->backend;
    b->download_f32(b, s->host_params, s->pb.params, s->pb.n_trainable);
    if (s->pb.n_state) b->download_f32(b, s->host_state, s->pb.state, s->pb.n_state);
}

void unet_session_free(unet_session *s) {
    unet_param_blocks_free(&s->pb);
    unet_model_free(&s->model);
    free(s->host_params);
    free(s->host_state);
    memset(s, 0, sizeof *s);
}

int unet_pool_levels(const unet_model_cfg *m) { return m->prune_depth ? m->prune_depth : m->levels - 1; }

int unet_evaluate_view(unet_plan *plan, const unet_tiling *t, const unet_data_view *v, int classes,
                       unet_seg_stats *per_head, int n_heads, char *err, size_t errlen) {
    unet_dataset_info info;
    unet_dataset_get_info(v->ds, &info);
    const int H = v->rows, W = info.w, C = info.c;
    float *raw = malloc((size_t)C * H * W * sizeof(float));
    int32_t *label = malloc((size_t)H * W * sizeof(int32_t));
    float *logits[UNET_MAX_LEVELS] = {0};
    uint8_t *pred = malloc((size_t)H * W); /* hard labels for the Rand score */
    int rc = raw && label && pred ? 0 : -1;
    for (int h = 0; h < n_heads && !rc; h++) {
        unet_seg_stats_init(&per_head[h], classes);
        logits[h] = malloc((size_t)unet_plan_output_shape(plan, h).c * H * W * sizeof(float));
        if (!logits[h]) rc = -1;
    }
    if (rc) snprintf(err, errlen, "out of host memory for a %dx%d validation image", H, W);
    for (int k = 0; k < v->images && !rc; k++) {
        rc = unet_data_view_read(v, k, raw, label, NULL, err, errlen);
        if (rc) break;
        if (unet_predict_tiled(plan, t, raw, C, H, W, logits, NULL, NULL)) {
            snprintf(err, errlen, "out of host memory predicting a %dx%d image", H, W);
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

int unet_checkpoint_config(const char *path, unet_config *saved, long *step, char *err, size_t errlen) {
    unet_checkpoint_meta meta;
    if (unet_checkpoint_read_meta(path, &meta, err, errlen)) return -1;
    if (step) *step = meta.step;
    if (!meta.config_json) return 0;
    unet_config_defaults(saved);
    int rc = unet_config_from_json(saved, meta.config_json, err, errlen);
    unet_checkpoint_meta_free(&meta);
    return rc ? -1 : 1;
}

void unet_config_take_model(unet_config *cfg, const unet_config *saved) {
    unet_config_merge(cfg, saved, UNET_GROUP_MODEL);
    if (!unet_config_is_set(cfg, "tile")) cfg->tile = saved->tile;
}
