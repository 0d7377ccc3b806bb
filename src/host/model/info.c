/* `unet info`: parameters, output sizes, FLOPs and planned memory of a model
 * at a tile size, from compiled plans that allocate nothing. */
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "host/model/match.h"
#include "host/train/checkpoint_config.h"
#include "host/train/session.h"
#include "unet/backend.h"
#include "unet/checkpoint.h"
#include "unet/model.h"
#include "unet/plan.h"
#include "unet/commands.h"

/* Trainable values of a backbone: the parameters under smp's "encoder." (none in a plain model). */
static size_t backbone_params(const unet_graph *g) {
    const unet_param *p = unet_graph_params(g);
    size_t n = 0;
    for (int k = 0; k < unet_graph_num_params(g); k++)
        if (p[k].kind == UNET_PARAM_TRAINABLE && !strncmp(p[k].name, "encoder.", 8)) n += p[k].count;
    return n;
}

/* The characters of a parameter's name that name its group in `unet info`: a grid node (x1_2), a backbone's
 * layer (encoder.conv1, encoder.layer1, encoder.features.3) or smp's decoder block (decoder.blocks.0). */
static size_t group_length(const char *name) {
    int parts = !strncmp(name, "decoder.", 8) || !strncmp(name, "encoder.features.", 17) ? 3
                : !strncmp(name, "encoder.", 8)                                          ? 2
                                                                                         : 1;
    size_t len = 0;
    for (int k = 0; k < parts && name[len]; k++) {
        if (k) len++;
        len += strcspn(name + len, ".");
    }
    return len;
}

int unet_model_info_get(const unet_model_cfg *m, const unet_backend *b, int tile, int batch, unet_model_info *out,
                        char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    unet_model model;
    if (unet_model_build(m, 1, 0, &model, err, errlen)) return -1;
    out->params = unet_graph_trainable_params(model.graph);
    out->encoder_params = backbone_params(model.graph);
    out->state = unet_graph_state_count(model.graph);
    out->tile = tile;
    out->batch = batch;
    unet_graph_nearest_valid(model.graph, tile, &out->valid_below, &out->valid_above);
    unet_param_blocks pb = {.backend = b};
    int rc = -1;
    unet_plan_cfg cfg = {.batch = batch, .height = tile, .width = tile, .training = 1, .plan_only = 1};
    unet_plan *train = unet_plan_compile(model.graph, &pb, cfg, err, errlen);
    if (!train) goto out;
    cfg.training = 0;
    unet_plan *infer = unet_plan_compile(model.graph, &pb, cfg, err, errlen);
    if (!infer) {
        unet_plan_free(train);
        goto out;
    }
    unet_plan_stats ts = unet_plan_get_stats(train), is = unet_plan_get_stats(infer);
    out->n_outputs = unet_plan_num_outputs(infer);
    for (int o = 0; o < out->n_outputs; o++) out->outputs[o] = unet_plan_output_shape(infer, o);
    out->flops_per_image = is.forward_flops / batch;
    out->train_activation_bytes = ts.arena_bytes;
    out->infer_activation_bytes = is.arena_bytes;
    out->unplanned_bytes = ts.unplanned_bytes;
    out->workspace_bytes = ts.workspace_bytes > is.workspace_bytes ? ts.workspace_bytes : is.workspace_bytes;
    out->param_bytes = ts.param_bytes;
    unet_plan_free(train);
    unet_plan_free(infer);
    rc = 0;
out:
    unet_model_free(&model);
    return rc;
}

/* ---- the memory of a training run, and the largest batch that fits ------------------------- */

static int train_memory(const unet_graph *g, const unet_backend *b, int tile, int batch, int with_adam,
                        unet_train_memory *out, char *err, size_t errlen) {
    unet_param_blocks pb = {.backend = b};
    unet_plan_cfg cfg = {.batch = batch, .height = tile, .width = tile, .training = 1, .plan_only = 1};
    unet_plan *p = unet_plan_compile(g, &pb, cfg, err, errlen);
    if (!p) return -1;
    unet_plan_stats st = unet_plan_get_stats(p);
    unet_plan_free(p);
    /* the blocks as unet_param_blocks_alloc sizes them (alignment gaps included) */
    size_t nt = unet_graph_trainable_count(g), ns = unet_graph_state_count(g);
    memset(out, 0, sizeof *out);
    out->batch = batch;
    out->params = (nt + 2 * ns) * sizeof(float); /* the statistics twice: the guard keeps a good copy */
    out->grads = nt * sizeof(float);
    out->optimizer = (with_adam ? 2 : 1) * nt * sizeof(float);
    out->arena = st.arena_bytes;
    out->workspace = st.workspace_bytes;
    out->total = out->params + out->grads + out->optimizer + out->arena + out->workspace;
    return 0;
}

int unet_train_memory_get(const unet_model_cfg *m, const unet_backend *b, int tile, int batch, int with_adam,
                          unet_train_memory *out, char *err, size_t errlen) {
    unet_model model;
    if (unet_model_build(m, 1, 0, &model, err, errlen)) return -1;
    int rc = train_memory(model.graph, b, tile, batch, with_adam, out, err, errlen);
    unet_model_free(&model);
    return rc;
}

/* Whether batch fits: 1 (with *at filled), 0, or -1 on an error. A batch
 * whose extrapolation from batch 1 (the parameter blocks and batch x batch
 * 1's arena) exceeds the budget by half is not compiled: the arena grows in
 * proportion to the batch (its lower bound, the bytes alive at the busiest
 * step, exactly so but for alignment), and a backend need not be asked to
 * plan tensors far beyond any memory (cuDNN engines for more than 2^31
 * elements, say). */
typedef struct {
    const unet_graph *g;
    const unet_backend *b;
    int tile, with_adam;
    size_t budget;
    unet_train_memory one;
} batch_search;

static int batch_fits(const batch_search *s, int batch, unet_train_memory *at, char *err, size_t errlen) {
    double fixed = (double)(s->one.params + s->one.grads + s->one.optimizer);
    if (fixed + (double)batch * (double)s->one.arena > 1.5 * (double)s->budget) return 0;
    unet_train_memory m;
    if (train_memory(s->g, s->b, s->tile, batch, s->with_adam, &m, err, errlen)) return -1;
    if (m.total > s->budget) return 0;
    *at = m;
    return 1;
}

int unet_largest_batch(const unet_model_cfg *m, const unet_backend *b, int tile, int with_adam, size_t budget,
                       int max_batch, unet_train_memory *out, char *err, size_t errlen) {
    unet_model model;
    if (unet_model_build(m, 1, 0, &model, err, errlen)) return -1;
    batch_search s = {.g = model.graph, .b = b, .tile = tile, .with_adam = with_adam, .budget = budget};
    int rc = train_memory(model.graph, b, tile, 1, with_adam, &s.one, err, errlen);
    if (rc) goto out;
    *out = s.one;
    if (s.one.total > budget) {
        out->batch = 0;
        goto out;
    }
    /* fits(lo) and not fits(hi) (hi = max_batch + 1: nothing above was asked) */
    int lo = 1, hi = max_batch + 1;
    for (long bt = 2; bt <= max_batch; bt *= 2) {
        int f = batch_fits(&s, (int)bt, out, err, errlen);
        if (f < 0) goto fail;
        if (!f) {
            hi = (int)bt;
            break;
        }
        lo = (int)bt;
    }
    while (hi - lo > 1) {
        int mid = lo + (hi - lo) / 2;
        unet_train_memory at;
        int f = batch_fits(&s, mid, &at, err, errlen);
        if (f < 0) goto fail;
        if (f)
            lo = mid, *out = at;
        else
            hi = mid;
    }
    if (out->batch != lo) rc = train_memory(model.graph, b, tile, lo, with_adam, out, err, errlen);
    goto out;
fail:
    rc = -1;
out:
    unet_model_free(&model);
    return rc;
}

static double mib(size_t b) { return (double)b / 1048576.0; }

static double gib(size_t b) { return (double)b / 1073741824.0; }

static json_object *memory_json(const unet_train_memory *t) {
    json_object *o = json_object_new_object();
    json_object_object_add(o, "batch", json_object_new_int(t->batch));
    json_object_object_add(o, "params", json_object_new_int64((int64_t)t->params));
    json_object_object_add(o, "grads", json_object_new_int64((int64_t)t->grads));
    json_object_object_add(o, "optimizer", json_object_new_int64((int64_t)t->optimizer));
    json_object_object_add(o, "arena", json_object_new_int64((int64_t)t->arena));
    json_object_object_add(o, "workspace", json_object_new_int64((int64_t)t->workspace));
    json_object_object_add(o, "total", json_object_new_int64((int64_t)t->total));
    return o;
}

static void run_memory_json(json_object *o, const unet_run_memory *r) {
    json_object_object_add(o, "optimizer", json_object_new_string(r->optimizer));
    json_object_object_add(o, "memory", memory_json(&r->at_batch));
    json_object_object_add(o, "memory_layout", json_object_new_string(r->layout));
    if (r->note[0]) json_object_object_add(o, "memory_note", json_object_new_string(r->note));
    json_object_object_add(o, "memory_budget", r->budget ? json_object_new_int64((int64_t)r->budget) : NULL);
    json_object_object_add(o, "memory_budget_source", r->budget ? json_object_new_string(r->budget_source) : NULL);
    json_object_object_add(o, "largest_batch", r->budget ? json_object_new_int(r->largest.batch) : NULL);
    json_object_object_add(o, "largest_batch_memory", r->budget && r->largest.batch ? memory_json(&r->largest) : NULL);
    if (r->budget) json_object_object_add(o, "largest_batch_capped", json_object_new_boolean(r->largest_capped));
}

static void run_memory_text(FILE *f, const unet_run_memory *r) {
    const unet_train_memory *t = &r->at_batch;
    fprintf(f,
            "training run batch %d, %s: parameters %.1f MiB, gradients %.1f MiB, optimizer %.1f MiB, arena %.1f MiB, "
            "workspace %.1f MiB; total %.1f MiB (%.2f GiB), planned for the %s layout\n",
            t->batch, r->optimizer, mib(t->params), mib(t->grads), mib(t->optimizer), mib(t->arena), mib(t->workspace),
            mib(t->total), gib(t->total), !strcmp(r->layout, "cuda") ? "CUDA backend's" : "CPU backend's");
    if (r->note[0]) fprintf(f, "             %s\n", r->note);
    if (!r->budget) {
        fprintf(f,
                "largest batch  give --memory-budget GiB (or run on a CUDA device) for the largest batch that fits\n");
        return;
    }
    if (!r->largest.batch)
        fprintf(f, "largest batch  none: batch 1 takes %.2f GiB, more than the %.2f GiB of %s\n", gib(r->largest.total),
                gib(r->budget), r->budget_source);
    else
        fprintf(f, "largest batch  %d%s within %.2f GiB (%s): it takes %.2f GiB\n", r->largest.batch,
                r->largest_capped ? " (the most --batch takes)" : "", gib(r->budget), r->budget_source,
                gib(r->largest.total));
}

void unet_model_info_print(FILE *f, const unet_model_cfg *m, const unet_model_info *in, const unet_run_memory *run,
                           int json) {
    if (json) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "model", json_object_new_string(unet_model_kind_name(m->kind)));
        json_object_object_add(o, "params", json_object_new_int64((int64_t)in->params));
        json_object_object_add(o, "encoder", json_object_new_string(unet_encoder_name(m->encoder)));
        if (m->encoder) {
            json_object *dc = json_object_new_array();
            for (int j = 0; j < m->decoder_levels; j++)
                json_object_array_add(dc, json_object_new_int(m->decoder_channels[j]));
            json_object_object_add(o, "decoder_channels", dc);
            json_object_object_add(o, "encoder_params", json_object_new_int64((int64_t)in->encoder_params));
        }
        json_object_object_add(o, "tile", json_object_new_int(in->tile));
        if (in->tile_asked) json_object_object_add(o, "tile_asked", json_object_new_int(in->tile_asked));
        json_object_object_add(o, "batch", json_object_new_int(in->batch));
        json_object *outs = json_object_new_array();
        for (int i = 0; i < in->n_outputs; i++) {
            json_object *s = json_object_new_array();
            json_object_array_add(s, json_object_new_int(in->outputs[i].h));
            json_object_array_add(s, json_object_new_int(in->outputs[i].w));
            json_object_array_add(outs, s);
        }
        json_object_object_add(o, "output_size", json_object_new_int(in->outputs[in->n_outputs - 1].h));
        json_object_object_add(o, "output_sizes", outs);
        json_object_object_add(o, "flops", json_object_new_double(in->flops_per_image));
        json_object_object_add(o, "activation_bytes", json_object_new_int64((int64_t)in->train_activation_bytes));
        json_object_object_add(o, "inference_activation_bytes",
                               json_object_new_int64((int64_t)in->infer_activation_bytes));
        json_object_object_add(o, "unplanned_bytes", json_object_new_int64((int64_t)in->unplanned_bytes));
        json_object_object_add(o, "workspace_bytes", json_object_new_int64((int64_t)in->workspace_bytes));
        json_object_object_add(o, "param_bytes", json_object_new_int64((int64_t)in->param_bytes));
        json_object *valid = json_object_new_array();
        json_object_array_add(valid, json_object_new_int(in->valid_below));
        json_object_array_add(valid, json_object_new_int(in->valid_above));
        json_object_object_add(o, "nearest_valid_tiles", valid);
        if (run) run_memory_json(o, run);
        fprintf(f, "%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
        json_object_put(o);
        return;
    }
    fprintf(f, "model        %s, ", unet_model_kind_name(m->kind));
    if (m->encoder) {
        fprintf(f, "encoder %s, decoder channels", unet_encoder_name(m->encoder));
        for (int j = 0; j < m->decoder_levels; j++) fprintf(f, "%s%d", j ? "," : " ", m->decoder_channels[j]);
    } else {
        fprintf(f, "filters");
        for (int i = 0; i < m->levels; i++) fprintf(f, "%s%d", i ? "," : " ", m->filters[i]);
    }
    fprintf(f, ", %s padding\n", m->same_padding ? "same" : "valid");
    fprintf(f, "parameters   %zu (%.2fM)", in->params, in->params / 1e6);
    if (m->encoder) fprintf(f, ", %zu (%.2fM) in the encoder", in->encoder_params, in->encoder_params / 1e6);
    fprintf(f, "\n");
    /* per grid node: parameters grouped by the name before the first dot */
    unet_model model;
    char err[256];
    if (unet_model_build(m, 0, 0, &model, err, sizeof err) == 0) {
        const unet_param *p = unet_graph_params(model.graph);
        int n = unet_graph_num_params(model.graph);
        for (int k = 0; k < n;) {
            size_t len = group_length(p[k].name), total = 0;
            int j = k;
            for (; j < n && strncmp(p[j].name, p[k].name, len) == 0 && p[j].name[len] == '.'; j++)
                if (p[j].kind == UNET_PARAM_TRAINABLE) total += p[j].count;
            fprintf(f, "  %-*.*s %12zu\n", m->encoder ? 22 : 10, (int)len, p[k].name, total);
            k = j;
        }
        unet_model_free(&model);
    }
    fprintf(f, "tile         %d -> output", in->tile);
    for (int i = 0; i < in->n_outputs; i++) fprintf(f, " %dx%d", in->outputs[i].h, in->outputs[i].w);
    fprintf(f, "\nvalid tiles  nearest below %d, above %d\n", in->valid_below, in->valid_above);
    if (in->tile_asked)
        fprintf(f,
                "             tile %d does not fit this network: the sizes are for %d, the nearest valid tile "
                "(the parameters do not depend on it)\n",
                in->tile_asked, in->tile);
    fprintf(f, "FLOPs        %.3g per image forward (%.3g per trained image)\n", in->flops_per_image,
            3 * in->flops_per_image);
    fprintf(f,
            "memory       batch %d: training activations %.1f MiB (%.1f MiB without reuse), inference %.1f MiB, "
            "workspace %.1f MiB, parameters+gradients+optimizer %.1f MiB\n",
            in->batch, mib(in->train_activation_bytes), mib(in->unplanned_bytes), mib(in->infer_activation_bytes),
            mib(in->workspace_bytes), mib(in->param_bytes));
    if (run) run_memory_text(f, run);
}

static void print_filters(FILE *f, const unet_model_cfg *m) {
    for (int i = 0; i < m->levels; i++) fprintf(f, "%s%d", i ? "," : "", m->filters[i]);
}

static double gap_percent(size_t n, size_t target) { return 100.0 * ((double)n - (double)target) / (double)target; }

static void match_line(FILE *f, const char *what, const unet_model_cfg *m, size_t n, size_t target) {
    fprintf(f, "%-13s filters ", what);
    print_filters(f, m);
    fprintf(f, ": %zu parameters (%.2fM), %+.2f%%\n", n, n / 1e6, gap_percent(n, target));
}

static json_object *match_json(const unet_model_cfg *m, size_t n, size_t target) {
    json_object *o = json_object_new_object(), *fl = json_object_new_array();
    for (int i = 0; i < m->levels; i++) json_object_array_add(fl, json_object_new_int(m->filters[i]));
    json_object_object_add(o, "filters", fl);
    json_object_object_add(o, "params", json_object_new_int64((int64_t)n));
    json_object_object_add(o, "gap", json_object_new_double(gap_percent(n, target) / 100.0));
    return o;
}

/* `unet info --match-params`: the U-Net of the configured options whose
 * parameter count comes closest to the reference's. */
static int run_match(const unet_config *cfg) {
    char err[1024];
    size_t target;
    unet_model_cfg ref;
    unet_params_match match;
    if (unet_match_target(cfg, &target, &ref, err, sizeof err) ||
        unet_match_params(&cfg->model, target, &match, err, sizeof err)) {
        fprintf(stderr, "unet info: %s\n", err);
        return 2;
    }
    /* the configured filters as a U-Net: the gap the match closes */
    unet_model_cfg plain = cfg->model;
    plain.kind = UNET_MODEL_UNET;
    plain.deep_supervision = 0;
    plain.prune_depth = 0;
    size_t plain_n = unet_model_param_count(&plain, err, sizeof err);
    if (!plain_n) {
        fprintf(stderr, "unet info: %s\n", err);
        return 2;
    }
    const int by_scale = match.best == &match.by_scale;
    if (cfg->json) {
        json_object *o = json_object_new_object(), *r = json_object_new_object();
        json_object_object_add(r, "params", json_object_new_int64((int64_t)target));
        if (ref.levels) {
            json_object *fl = json_object_new_array();
            for (int i = 0; i < ref.levels; i++) json_object_array_add(fl, json_object_new_int(ref.filters[i]));
            json_object_object_add(r, "model", json_object_new_string(unet_model_kind_name(ref.kind)));
            json_object_object_add(r, "filters", fl);
        }
        json_object_object_add(o, "reference", r);
        json_object_object_add(o, "unet", match_json(&plain, plain_n, target));
        json_object *w = match_json(&match.by_width, match.by_width_params, target);
        json_object_object_add(w, "width", json_object_new_int(match.width));
        json_object_object_add(o, "by_width", w);
        json_object *s = match_json(&match.by_scale, match.by_scale_params, target);
        json_object_object_add(s, "scale", json_object_new_double(match.scale));
        json_object_object_add(o, "by_scale", s);
        json_object *b = match_json(match.best, match.best_params, target);
        json_object_object_add(b, "family", json_object_new_string(by_scale ? "scale" : "width"));
        json_object_object_add(o, "match", b);
        printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
        json_object_put(o);
        return 0;
    }
    if (ref.levels) {
        printf("reference     %s, filters ", unet_model_kind_name(ref.kind));
        print_filters(stdout, &ref);
        printf(", %s padding: %zu parameters (%.2fM)\n", ref.same_padding ? "same" : "valid", target, target / 1e6);
    } else {
        printf("reference     %zu parameters (%.2fM)\n", target, target / 1e6);
    }
    match_line(stdout, "U-Net", &plain, plain_n, target);
    char what[64];
    snprintf(what, sizeof what, "width w=%d", match.width);
    match_line(stdout, what, &match.by_width, match.by_width_params, target);
    snprintf(what, sizeof what, "scale %.4f", match.scale);
    match_line(stdout, what, &match.by_scale, match.by_scale_params, target);
    printf("match         --model unet --filters ");
    print_filters(stdout, match.best);
    printf(": %zu against %zu parameters, gap %+.2f%% (%s)\n", match.best_params, target,
           gap_percent(match.best_params, target), by_scale ? "scaled filters" : "integer width");
    return 0;
}

/* --checkpoint: the model of a checkpoint, explicit flags over it. */
static int model_from_checkpoint(unet_config *cfg, char *err, size_t errlen) {
    unet_config saved;
    int rc = unet_checkpoint_config(cfg->checkpoint, &saved, NULL, err, errlen);
    if (rc == 0)
        snprintf(err, errlen, "%s has no unet.config metadata: describe the model with flags instead of --checkpoint",
                 cfg->checkpoint);
    if (rc != 1) return -1;
    unet_config_take_model(cfg, &saved);
    return 0;
}

/* The size figures need a tile the network takes; the parameter counts do
 * not. A tile it does not take (the default 572 of a same-padding network,
 * say) gives way to the nearest valid one, the closer below or else the one
 * above; -1 when none fits. */
static int fit_tile(const unet_model_cfg *m, int *tile, char *err, size_t errlen) {
    unet_model model;
    if (unet_model_build(m, 1, 0, &model, err, errlen)) return -1;
    unet_plan_cfg pc = {.batch = 1, .height = *tile, .width = *tile, .training = 1};
    unet_shape outs[UNET_MAX_LEVELS];
    int rc = 0;
    if (unet_graph_infer(model.graph, pc, outs, UNET_MAX_LEVELS, err, errlen)) {
        int below, above;
        unet_graph_nearest_valid(model.graph, *tile, &below, &above);
        if (below || above)
            *tile = !above || (below && *tile - below < above - *tile) ? below : above;
        else
            rc = -1; /* err says why */
    }
    unet_model_free(&model);
    return rc;
}

int unet_run_info(unet_config *cfg) {
    char err[1024], desc[128];
    if (cfg->checkpoint[0] && model_from_checkpoint(cfg, err, sizeof err)) {
        fprintf(stderr, "unet info: %s\n", err);
        return 2;
    }
    if (cfg->match_params[0]) return run_match(cfg);
    const int tile_asked = cfg->tile;
    if (fit_tile(&cfg->model, &cfg->tile, err, sizeof err)) {
        fprintf(stderr, "unet info: %s\n", err);
        return 2;
    }
    /* info plans memory; it needs a backend only for its tensor sizes (and a
     * CUDA device for its free memory). --device cuda without a device plans
     * with the CPU backend's sizes when there is a budget to plan for. */
    unet_run_memory run = {.optimizer = unet_config_choice_name("optimizer", (int)cfg->optim.kind), .note = ""};
    char note[1024] = "", source[160] = "";
    int cuda = 0, index = -1;
    const unet_backend *b = NULL;
    if (!unet_config_device(cfg, &cuda, &index) && cuda == 1) {
        const char *prec;
        char why[512];
        b = unet_config_cuda_backend(cfg, index, &prec, why, sizeof why);
        if (!b && !(cfg->memory_budget > 0)) {
            fprintf(stderr,
                    "unet info: --device %s: %s%s%s; to plan a run for a GPU this machine does not have, give "
                    "--memory-budget GiB\n",
                    cfg->device, strstr(why, "no CUDA device") ? "" : "no CUDA device (", why,
                    strstr(why, "no CUDA device") ? "" : ")");
            return 2;
        }
        if (!b) {
            snprintf(note, sizeof note,
                     "no CUDA device here: the planner's sizes for the CPU layout (a CUDA run's "
                     "workspace, cuDNN's, differs)");
            b = unet_cpu_backend();
        }
        snprintf(desc, sizeof desc, "%s", cfg->device);
    } else {
        b = unet_select_backend(cfg, desc, sizeof desc, err, sizeof err);
    }
    unet_model_info info;
    if (!b || unet_model_info_get(&cfg->model, b, cfg->tile, cfg->batch, &info, err, sizeof err)) {
        fprintf(stderr, "unet: %s\n", err);
        return 2;
    }
    if (cfg->tile != tile_asked) info.tile_asked = tile_asked;
    run.note = note;
    run.layout = b->name;
    const int with_adam = cfg->optim.kind != UNET_OPT_SGD;
    if (unet_train_memory_get(&cfg->model, b, cfg->tile, cfg->batch, with_adam, &run.at_batch, err, sizeof err)) {
        fprintf(stderr, "unet: %s\n", err);
        return 2;
    }
    info.param_bytes = run.at_batch.params + run.at_batch.grads + run.at_batch.optimizer;
    if (cfg->memory_budget > 0) {
        run.budget = (size_t)((double)cfg->memory_budget * 1073741824.0);
        run.budget_source = "--memory-budget";
    } else if (b->memory_info) {
        size_t free_bytes, total_bytes;
        if (b->memory_info(b, &free_bytes, &total_bytes, err, sizeof err)) {
            fprintf(stderr, "unet info: %s (give --memory-budget GiB instead)\n", err);
            return 1;
        }
        snprintf(source, sizeof source, "the free memory of %.60s, of %.1f GiB", desc, gib(total_bytes));
        run.budget = free_bytes;
        run.budget_source = source;
    }
    const int max_batch = 1 << 20; /* the most --batch takes */
    if (run.budget) {
        if (unet_largest_batch(&cfg->model, b, cfg->tile, with_adam, run.budget, max_batch, &run.largest, err,
                               sizeof err)) {
            fprintf(stderr, "unet: %s\n", err);
            return 2;
        }
        run.largest_capped = run.largest.batch == max_batch;
    }
    unet_model_info_print(stdout, &cfg->model, &info, &run, cfg->json);
    return 0;
}
