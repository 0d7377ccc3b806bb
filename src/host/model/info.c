/* `unet info`: parameters, output sizes, FLOPs and planned memory of a model
 * at a tile size, from compiled plans that allocate nothing. */
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "host/train/session.h"
#include "unet/backend.h"
#include "unet/checkpoint.h"
#include "unet/model.h"
#include "unet/plan.h"
#include "unet/train.h"

int unet_model_info_get(const unet_model_cfg *m, const unet_backend *b, int tile, int batch, unet_model_info *out,
                        char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    unet_model model;
    if (unet_model_build(m, 1, 0, &model, err, errlen)) return -1;
    out->params = unet_graph_trainable_params(model.graph);
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

static double mib(size_t b) { return (double)b / 1048576.0; }

void unet_model_info_print(FILE *f, const unet_model_cfg *m, const unet_model_info *in, int json) {
    if (json) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "model", json_object_new_string(unet_model_kind_name(m->kind)));
        json_object_object_add(o, "params", json_object_new_int64((int64_t)in->params));
        json_object_object_add(o, "tile", json_object_new_int(in->tile));
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
        fprintf(f, "%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
        json_object_put(o);
        return;
    }
    fprintf(f, "model        %s, filters", unet_model_kind_name(m->kind));
    for (int i = 0; i < m->levels; i++) fprintf(f, "%s%d", i ? "," : " ", m->filters[i]);
    fprintf(f, ", %s padding\n", m->same_padding ? "same" : "valid");
    fprintf(f, "parameters   %zu (%.2fM)\n", in->params, in->params / 1e6);
    /* per grid node: parameters grouped by the name before the first dot */
    unet_model model;
    char err[256];
    if (unet_model_build(m, 0, 0, &model, err, sizeof err) == 0) {
        const unet_param *p = unet_graph_params(model.graph);
        int n = unet_graph_num_params(model.graph);
        for (int k = 0; k < n;) {
            size_t len = strcspn(p[k].name, "."), total = 0;
            int j = k;
            for (; j < n && strncmp(p[j].name, p[k].name, len) == 0 && p[j].name[len] == '.'; j++)
                if (p[j].kind == UNET_PARAM_TRAINABLE) total += p[j].count;
            fprintf(f, "  %-10.*s %12zu\n", (int)len, p[k].name, total);
            k = j;
        }
        unet_model_free(&model);
    }
    fprintf(f, "tile         %d -> output", in->tile);
    for (int i = 0; i < in->n_outputs; i++) fprintf(f, " %dx%d", in->outputs[i].h, in->outputs[i].w);
    fprintf(f, "\nvalid tiles  nearest below %d, above %d\n", in->valid_below, in->valid_above);
    fprintf(f, "FLOPs        %.3g per image forward (%.3g per trained image)\n", in->flops_per_image,
            3 * in->flops_per_image);
    fprintf(f, "memory       batch %d: training activations %.1f MiB (%.1f MiB without reuse), inference %.1f MiB, "
               "workspace %.1f MiB, parameters+gradients+optimizer %.1f MiB\n",
            in->batch, mib(in->train_activation_bytes), mib(in->unplanned_bytes), mib(in->infer_activation_bytes),
            mib(in->workspace_bytes), mib(in->param_bytes));
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

int unet_run_info(unet_config *cfg) {
    char err[1024], desc[128];
    if (cfg->checkpoint[0] && model_from_checkpoint(cfg, err, sizeof err)) {
        fprintf(stderr, "unet info: %s\n", err);
        return 2;
    }
    if (cfg->match_params[0]) return run_match(cfg);
    /* info plans memory; it needs a backend only for its tensor sizes */
    const unet_backend *b = unet_select_backend(cfg, desc, sizeof desc, err, sizeof err);
    unet_model_info info;
    if (!b || unet_model_info_get(&cfg->model, b, cfg->tile, cfg->batch, &info, err, sizeof err)) {
        fprintf(stderr, "unet: %s\n", err);
        return 2;
    }
    unet_model_info_print(stdout, &cfg->model, &info, cfg->json);
    return 0;
}
