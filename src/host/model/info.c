/* `unet info`: parameters, output sizes, FLOPs and planned memory of a model
 * at a tile size, from compiled plans that allocate nothing. */
#include <string.h>

#include <json-c/json.h>

#include "unet/backend.h"
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

int unet_run_info(unet_config *cfg) {
    char err[1024], desc[128];
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
