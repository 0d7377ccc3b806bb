/* Times the production training step (forward, loss, backward, update) or an
 * inference forward on random data, run by the same stepper as training
 * (eager, or replays of one CUDA graph). Timings are per step, after warm-up,
 * with the backend synchronised around each step. */
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "host/common/util.h"
#include "host/train/session.h"
#include "host/train/step.h"
#include "unet/bench.h"
#include "unet/commands.h"
#include "unet/plan.h"
#include "unet/rng.h"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int unet_bench_run(const unet_model_cfg *m, const unet_optim_cfg *o, const unet_backend *b, const unet_bench_cfg *c,
                   unet_bench_result *r, char *err, size_t errlen) {
    memset(r, 0, sizeof *r);
    unet_model model;
    if (unet_model_build(m, !c->inference, 0, &model, err, errlen)) return -1;
    const unet_graph *g = model.graph;
    unet_param_blocks pb;
    int rc = -1;
    unet_plan *plan = NULL;
    unet_stepper stepper;
    memset(&stepper, 0, sizeof stepper);
    float *image = NULL, *tp = NULL, *ts = NULL;
    int32_t *label = NULL;
    double *times = NULL, *cpu = NULL;
    if (unet_param_blocks_alloc(&pb, b, g, o->kind != UNET_OPT_SGD, err, errlen)) goto out_model;
    if (!(tp = unet_alloc_zeroed(pb.n_trainable, sizeof(float), "the parameters", err, errlen)) ||
        !(ts = unet_alloc_zeroed(pb.n_state, sizeof(float), "the batch norm statistics", err, errlen)))
        goto out;
    unet_param_init_host(g, c->seed, tp, ts);
    b->upload_f32(b, pb.params, tp, pb.n_trainable);
    if (pb.n_state) b->upload_f32(b, pb.state, ts, pb.n_state);
    unet_plan_cfg pc = {.batch = c->batch, .height = c->tile, .width = c->tile, .training = !c->inference};
    plan = unet_plan_compile(g, &pb, pc, err, errlen);
    if (!plan) goto out;
    size_t npix = (size_t)c->batch * c->tile * c->tile;
    if (!(image = unet_alloc(npix * m->in_channels, sizeof(float), "a batch", err, errlen)) ||
        !(label = unet_alloc(npix, sizeof(int32_t), "a batch's labels", err, errlen)) ||
        !(times = unet_alloc_zeroed((size_t)c->steps + 1, sizeof(double), "the step times", err, errlen)) ||
        !(cpu = unet_alloc_zeroed((size_t)c->steps + 1, sizeof(double), "the step CPU times", err, errlen)))
        goto out;
    uint64_t key = unet_rng_key(c->seed, 0xbe7c, 0);
    for (size_t i = 0; i < npix * m->in_channels; i++) image[i] = unet_uniform(key, i);
    int k = m->classes > 1 ? m->classes : 2;
    for (size_t i = 0; i < npix; i++) label[i] = (int32_t)(unet_uniform(key, npix * m->in_channels + i) * k) % k;
    unet_plan_set_inputs(plan, image, label, NULL);
    unet_stepper_cfg sc = {.plan = plan, .pb = &pb, .optim = c->inference ? NULL : o, .graph = c->graph};
    unet_stepper_init(&stepper, &sc);
    int warmup = c->warmup;
    if (stepper.mode == UNET_STEP_WARMING && warmup <= UNET_GRAPH_WARMUP) warmup = UNET_GRAPH_WARMUP + 1;
    int total = warmup + c->steps;
    for (int s = 0; s < total; s++) {
        double t0 = unet_now_s(), c0 = unet_cpu_s();
        unet_stepper_run(&stepper, s, unet_rng_key(c->seed, 0xd0, (uint64_t)s));
        /* a loss read waits for the step: only the first and the last */
        if (!c->inference && s == 0) r->first_loss = unet_plan_loss(plan, NULL);
        if (!c->inference && s == total - 1) r->last_loss = unet_plan_loss(plan, NULL);
        b->sync(b);
        if (s >= warmup) {
            times[s - warmup] = (unet_now_s() - t0) * 1e3;
            cpu[s - warmup] = (unet_cpu_s() - c0) * 1e3;
        }
    }
    r->cuda_graph = unet_stepper_replaying(&stepper);
    snprintf(r->cuda_graph_note, sizeof r->cuda_graph_note, "%s", stepper.why);
    qsort(times, (size_t)c->steps, sizeof(double), cmp_double);
    qsort(cpu, (size_t)c->steps, sizeof(double), cmp_double);
    r->cpu_ms_median = cpu[c->steps / 2];
    unet_plan_stats st = unet_plan_get_stats(plan);
    r->ms_median = times[c->steps / 2];
    r->ms_p90 = times[(int)(0.9 * (c->steps - 1))];
    r->ms_min = times[0];
    r->images_per_s = c->batch / (r->ms_median / 1e3);
    r->flops_per_image = st.forward_flops / c->batch;
    r->tflops = r->images_per_s * r->flops_per_image * (c->inference ? 1 : 3) / 1e12;
    r->activation_bytes = st.arena_bytes;
    r->workspace_bytes = st.workspace_bytes;
    r->param_bytes = st.param_bytes;
    rc = 0;
out:
    unet_stepper_free(&stepper);
    unet_plan_free(plan);
    unet_param_blocks_free(&pb);
    free(image);
    free(label);
    free(tp);
    free(ts);
    free(times);
    free(cpu);
out_model:
    unet_model_free(&model);
    return rc;
}

int unet_run_bench(unet_config *cfg) {
    char err[1024], desc[128];
    const unet_backend *b = unet_select_backend(cfg, desc, sizeof desc, err, sizeof err);
    unet_bench_cfg c = {.tile = cfg->tile,
                        .batch = cfg->batch,
                        .warmup = cfg->bench_warmup,
                        .steps = (int)cfg->steps,
                        .inference = cfg->mode != UNET_MODE_DEEPEST,
                        .seed = cfg->seed,
                        .graph = cfg->cuda_graph == UNET_CUDA_GRAPH_AUTO};
    unet_bench_result r;
    if (!b || unet_bench_run(&cfg->model, &cfg->optim, b, &c, &r, err, sizeof err)) {
        fprintf(stderr, "unet: %s\n", err);
        return 2;
    }
    if (cfg->json) {
        json_object *note = json_object_new_string(r.cuda_graph_note);
        printf("{\"device\": \"%s\", \"model\": \"%s\", \"tile\": %d, \"batch\": %d, \"steps\": %d, "
               "\"inference\": %d, \"ms_median\": %.4f, \"ms_p90\": %.4f, \"cpu_ms_median\": %.4f, "
               "\"images_per_s\": %.4f, \"tflops\": %.4f, \"flops_per_image\": %.6g, \"activation_bytes\": %zu, "
               "\"workspace_bytes\": %zu, \"param_bytes\": %zu, \"first_loss\": %.6g, \"last_loss\": %.6g, "
               "\"cuda_graph\": %s, \"cuda_graph_note\": %s}\n",
               desc, unet_model_kind_name(cfg->model.kind), c.tile, c.batch, c.steps, c.inference, r.ms_median,
               r.ms_p90, r.cpu_ms_median, r.images_per_s, r.tflops, r.flops_per_image, r.activation_bytes,
               r.workspace_bytes, r.param_bytes, r.first_loss, r.last_loss, r.cuda_graph ? "true" : "false",
               json_object_to_json_string_ext(note, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(note);
    } else {
        printf("%s on %s%s: tile %d batch %d: %.2f ms/step median (p90 %.2f), %.2f images/s, %.3f TFLOP/s\n",
               c.inference ? "inference" : "training", desc, r.cuda_graph ? ", one CUDA graph" : "", c.tile, c.batch,
               r.ms_median, r.ms_p90, r.images_per_s, r.tflops);
        if (r.cuda_graph_note[0]) printf("cuda graph: not used (%s)\n", r.cuda_graph_note);
    }
    return 0;
}
