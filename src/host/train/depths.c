/* The pruning depths of a deep-supervised network: costs and validation
 * metrics (depths.h). */
#include <string.h>

#include "host/train/depths.h"
#include "host/train/evaluate.h"
#include "host/train/session.h"
#include "unet/bench.h"
#include "unet/checkpoint.h"
#include "unet/tiling.h"

int unet_val_data_open(const unet_config *cfg, unet_val_data *v, char *err, size_t errlen) {
    memset(v, 0, sizeof *v);
    unet_dataset_opts o = {.raw_key = cfg->raw_key[0] ? cfg->raw_key : NULL,
                           .label_key = cfg->label_key[0] ? cfg->label_key : NULL,
                           .classes = cfg->model.classes};
    if (cfg->val[0]) {
        if (unet_dataset_open(cfg->val, &o, &v->val_ds, err, errlen)) return -1;
        v->view = unet_data_view_all(v->val_ds);
        return 0;
    }
    unet_data_view train;
    if (unet_dataset_open(cfg->data, &o, &v->train_ds, err, errlen)) return -1;
    return unet_data_split(v->train_ds, cfg->val_fraction, &train, &v->view, err, errlen);
}

void unet_val_data_close(unet_val_data *v) {
    if (v->train_ds) unet_dataset_close(v->train_ds);
    if (v->val_ds) unet_dataset_close(v->val_ds);
    memset(v, 0, sizeof *v);
}

int unet_evaluate_pruned(const unet_config *cfg, const unet_model_cfg *full, int depth, const char *checkpoint,
                         const unet_val_data *v, unet_seg_metrics *m, char *err, size_t errlen) {
    unet_config run = *cfg;
    run.model = *full;
    run.model.prune_depth = depth;
    run.model.deep_supervision = 0;
    unet_session s;
    unet_plan *plan = NULL;
    int rc = -1;
    if (unet_session_build(&s, &run, 0, 0, err, errlen)) goto out;
    unet_param_init_host(s.model.graph, 0, s.host_params, s.host_state);
    if (unet_checkpoint_load_weights(checkpoint, s.model.graph, s.host_params, s.host_state, err, errlen)) goto out;
    unet_session_upload(&s);
    unet_plan_cfg pc = {.batch = run.batch, .height = run.tile, .width = run.tile, .training = 0};
    plan = unet_plan_compile(s.model.graph, &s.pb, pc, err, errlen);
    unet_tiling t;
    if (!plan || unet_tiling_init(&t, plan, unet_pool_levels(&run.model), run.overlap, err, errlen)) goto out;
    unet_seg_stats stats;
    if (unet_evaluate_view(plan, &t, &v->view, &run.model, &stats, 1, err, errlen)) goto out;
    *m = unet_seg_stats_finish(&stats);
    rc = 0;
out:
    unet_plan_free(plan);
    unet_session_free(&s);
    return rc;
}

/* Times are the fastest of the timed steps: on a shared machine (two cores
 * and other jobs, OpenMP threads waiting on each other) the median can jump
 * tenfold, the fastest step is the one least disturbed. */
int unet_measure_costs(const unet_config *cfg, const unet_backend *b, const unet_model_cfg *m, int training,
                       unet_model_costs *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    unet_model_info info;
    if (unet_model_info_get(m, b, cfg->tile, cfg->batch, &info, err, errlen)) return -1;
    out->params = info.params;
    out->encoder_params = info.encoder_params;
    out->flops = info.flops_per_image;
    out->train_bytes = info.train_activation_bytes;
    unet_bench_cfg bc = {.tile = cfg->tile,
                         .batch = cfg->batch,
                         .warmup = cfg->bench_warmup,
                         .steps = UNET_COST_BENCH_STEPS,
                         .seed = cfg->seed,
                         .graph = cfg->cuda_graph == UNET_CUDA_GRAPH_AUTO};
    unet_bench_result r;
    if (training) {
        if (unet_bench_run(m, &cfg->optim, b, &bc, &r, err, errlen)) return -1;
        out->train_images_per_s = cfg->batch / (r.ms_min / 1e3);
    }
    bc.inference = 1;
    if (unet_bench_run(m, &cfg->optim, b, &bc, &r, err, errlen)) return -1;
    out->infer_ms = r.ms_min / cfg->batch;
    return 0;
}
