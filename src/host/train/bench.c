/* Times the production training step (forward, loss, backward, update) or an
 * inference forward on random data. Timings are per step, after warm-up,
 * with the backend synchronised around each step. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "unet/bench.h"
#include "unet/plan.h"
#include "unet/rng.h"

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

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
    float *image = NULL, *tp = NULL, *ts = NULL;
    int32_t *label = NULL;
    double *times = NULL;
    if (unet_param_blocks_alloc(&pb, b, g, o->kind != UNET_OPT_SGD, err, errlen)) goto out_model;
    tp = calloc(pb.n_trainable + 1, sizeof(float));
    ts = calloc(pb.n_state + 1, sizeof(float));
    unet_param_init_host(g, c->seed, tp, ts);
    b->upload_f32(b, pb.params, tp, pb.n_trainable);
    if (pb.n_state) b->upload_f32(b, pb.state, ts, pb.n_state);
    unet_plan_cfg pc = {.batch = c->batch, .height = c->tile, .width = c->tile, .training = !c->inference};
    plan = unet_plan_compile(g, &pb, pc, err, errlen);
    if (!plan) goto out;
    size_t npix = (size_t)c->batch * c->tile * c->tile;
    image = malloc(npix * m->in_channels * sizeof(float));
    label = malloc(npix * sizeof(int32_t));
    uint64_t key = unet_rng_key(c->seed, 0xbe7c, 0);
    for (size_t i = 0; i < npix * m->in_channels; i++) image[i] = unet_uniform(key, i);
    int k = m->classes > 1 ? m->classes : 2;
    for (size_t i = 0; i < npix; i++) label[i] = (int32_t)(unet_uniform(key, npix * m->in_channels + i) * k) % k;
    unet_plan_set_inputs(plan, image, label, NULL);
    times = calloc((size_t)c->steps + 1, sizeof(double));
    for (int s = 0; s < c->warmup + c->steps; s++) {
        double t0 = now_ms();
        unet_plan_set_seed(plan, unet_rng_key(c->seed, 0xd0, (uint64_t)s));
        unet_plan_forward(plan);
        if (!c->inference) {
            double loss = unet_plan_loss(plan, NULL);
            if (s == 0) r->first_loss = loss;
            r->last_loss = loss;
            unet_plan_backward(plan);
            unet_optim_step(o, &pb, s);
        }
        b->sync(b);
        if (s >= c->warmup) times[s - c->warmup] = now_ms() - t0;
    }
    qsort(times, (size_t)c->steps, sizeof(double), cmp_double);
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
    unet_plan_free(plan);
    unet_param_blocks_free(&pb);
    free(image);
    free(label);
    free(tp);
    free(ts);
    free(times);
out_model:
    unet_model_free(&model);
    return rc;
}
