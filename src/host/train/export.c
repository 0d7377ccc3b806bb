/* unet export: the network a checkpoint's inference runs (what `unet predict
 * --mode ...` compiles: the pruned graph for fast, every head for accurate)
 * written as an ONNX model, with what a deployer needs to feed it and read
 * it in its metadata: the model, how images are scaled, the tile geometry of
 * overlap-tile prediction and what the outputs mean. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host/common/util.h"
#include "host/export/onnx.h"
#include "host/train/inference_model.h"
#include "unet/checkpoint.h"
#include "unet/commands.h"
#include "unet/tiling.h"

typedef struct {
    unet_model model;
    float *params, *state;
    unet_param_blocks pb; /* no blocks: the plan only infers shapes */
    unet_plan *plan;
    unet_tiling tiling;
} exported;

static void exported_free(exported *e) {
    unet_plan_free(e->plan);
    unet_model_free(&e->model);
    free(e->params);
    free(e->state);
}

/* The mode's network with the checkpoint's weights, compiled (shapes only)
 * at the tile as predict compiles it, and predict's tiling of it. */
static int load(unet_config *cfg, exported *e, char *err, size_t errlen) {
    int rc = unet_inference_model(cfg, err, errlen);
    if (rc < 0) return -1;
    if (rc == 0) {
        unet_errorf(err, errlen,
                    "%s has no unet.config metadata: export needs the model it was trained as (a "
                    "checkpoint written by unet train or unet prune)",
                    cfg->checkpoint);
        return -1;
    }
    if (unet_model_build(&cfg->model, 0, 0, &e->model, err, errlen)) return -1;
    const unet_graph *g = e->model.graph;
    if (!(e->params = unet_alloc_zeroed(unet_graph_trainable_count(g), sizeof(float), "the parameters", err, errlen)) ||
        !(e->state =
              unet_alloc_zeroed(unet_graph_state_count(g), sizeof(float), "the batch norm statistics", err, errlen)))
        return -1;
    if (unet_checkpoint_load_weights(cfg->checkpoint, g, e->params, e->state, err, errlen)) return -1;
    e->pb = (unet_param_blocks){.backend = unet_cpu_backend()};
    unet_plan_cfg pc = {.batch = 1, .height = cfg->tile, .width = cfg->tile, .training = 0, .plan_only = 1};
    if (!(e->plan = unet_plan_compile(g, &e->pb, pc, err, errlen))) return -1;
    return unet_tiling_init(&e->tiling, e->plan, unet_pool_levels(&cfg->model), cfg->overlap, err, errlen);
}

/* The heads whose probabilities make `prob`: the deepest (the last output)
 * unless the mode averages them all; a pruned network has its one head. */
static void choose_heads(const unet_config *cfg, const unet_model *m, unet_onnx_export *x) {
    const int all = cfg->mode == UNET_MODE_ACCURATE;
    x->n_heads = 0;
    for (int h = all ? 0 : m->n_heads - 1; h < m->n_heads; h++) {
        x->heads[x->n_heads] = h;
        x->head_column[x->n_heads++] = m->head_column[h];
    }
}

/* The metadata: keys and values, the values formatted into one buffer. */
typedef struct {
    unet_onnx_meta items[16];
    int n, overflow;
    size_t used;
    char text[16384];
} meta_list;

static void meta(meta_list *l, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void meta(meta_list *l, const char *key, const char *fmt, ...) {
    const size_t room = sizeof l->text - l->used;
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(l->text + l->used, room, fmt, ap);
    va_end(ap);
    if (l->n == (int)(sizeof l->items / sizeof l->items[0]) || len < 0 || (size_t)len >= room) {
        l->overflow = 1;
        return;
    }
    l->items[l->n++] = (unet_onnx_meta){key, l->text + l->used};
    l->used += (size_t)len + 1;
}

/* What a deployer needs besides the graph: the model, how to scale images,
 * the tile geometry of overlap-tile prediction and what the outputs mean. */
static void describe(const unet_config *cfg, const exported *e, const unet_onnx_export *x, meta_list *l) {
    const unet_model_cfg *m = &cfg->model;
    const unet_tiling *t = &e->tiling;
    char *json = unet_config_to_json(cfg, 1);
    meta(l, "unet.config", "%s", json ? json : "{}");
    free(json);
    char heads[64] = "";
    for (int h = 0; h < x->n_heads; h++)
        snprintf(heads + strlen(heads), sizeof heads - strlen(heads), "%s%d", h ? "," : "", x->head_column[h]);
    meta(l, "unet.mode", "%s", unet_config_choice_name("mode", (int)cfg->mode));
    meta(l, "unet.heads", "%s", heads);
    meta(l, "unet.input",
         "image (N, %d, H, W) float32: uint8 images divided by 255, uint16 by 65535, float32 as "
         "they are (as unet reads raw)",
         m->in_channels);
    meta(l, "unet.input_scale", "{\"uint8\": 255, \"uint16\": 65535, \"float32\": 1}");
    meta(l, "unet.padding", "%s", m->same_padding ? "same" : "valid");
    if (m->same_padding)
        meta(l, "unet.shape",
             "height and width: any multiples of %d (2^%d poolings); the outputs have the input's "
             "size",
             t->align, unet_pool_levels(m));
    else
        meta(l, "unet.shape", "a fixed %dx%d tile; prob %dx%d, its centre (a margin of %d lost per side)", t->tile,
             t->tile, t->out, t->out, t->margin);
    meta(l, "unet.tile", "%d", t->tile);
    meta(l, "unet.out", "%d", t->out);
    meta(l, "unet.margin", "%d", t->margin);
    meta(l, "unet.align", "%d", t->align);
    meta(l, "unet.stride", "%d", t->stride);
    meta(l, "unet.overlap_tile",
         "as unet predict: mirror the image by margin (reflection without repeating the edge pixel); tiles of tile "
         "pixels start every stride pixels at -margin; %s",
         t->same ? "each head's logits (logits_head<j>) are blended with a Gaussian window (sigma tile/8, at least "
                   "1e-3) and divided by the summed window, then turned into probabilities (sigmoid or softmax) "
                   "and averaged over the heads"
                 : "each tile's prob is copied to the image at the tile's origin (tiles abut exactly)");
    meta(l, "unet.classes", "%d", m->classes);
    meta(l, "unet.output", "prob (N, %d, h, w): %s%s; logits_head<j>: the logits of head j (on X^{0,j})", m->classes,
         m->classes == 1 ? "the sigmoid of the logits, the probability of class 1 (label: prob > 0.5)"
                         : "the softmax over the classes (label: the argmax over channels)",
         x->n_heads > 1 ? ", the mean over the heads' probabilities" : "");
    meta(l, "unet.batch_norm", "%s",
         m->batch_norm ? "BatchNormalization nodes with the running statistics, not folded into the convolutions"
                       : "none");
}

int unet_run_export(unet_config *cfg) {
    char err[1024] = "";
    exported e;
    memset(&e, 0, sizeof e);
    meta_list *meta = NULL;
    int code = 2;
    if (!cfg->output[0]) {
        unet_errorf(err, sizeof err, "needs --output M.onnx (where to write the model)");
        goto fail;
    }
    if (load(cfg, &e, err, sizeof err)) goto fail;
    unet_onnx_export x = {.graph = e.model.graph,
                          .plan = e.plan,
                          .params = e.params,
                          .state = e.state,
                          .dynamic_hw = e.tiling.same,
                          .opset = cfg->opset};
    choose_heads(cfg, &e.model, &x);
    if (!(meta = unet_alloc_zeroed(1, sizeof *meta, "the export's metadata", err, sizeof err))) goto fail;
    describe(cfg, &e, &x, meta);
    if (meta->overflow) {
        unet_errorf(err, sizeof err, "internal error: the export's metadata outgrew its buffer");
        goto fail;
    }
    x.meta = meta->items, x.n_meta = meta->n;
    char doc[4400], depth[32] = "";
    if (cfg->mode == UNET_MODE_FAST) snprintf(depth, sizeof depth, " --depth %d", cfg->model.prune_depth);
    snprintf(doc, sizeof doc, "%s exported by unet export --mode %s%s from %s", unet_model_kind_name(cfg->model.kind),
             unet_config_choice_name("mode", (int)cfg->mode), depth, cfg->checkpoint);
    x.graph_name = unet_model_kind_name(cfg->model.kind);
    x.doc = doc;
    if (unet_onnx_write(cfg->output, &x, err, sizeof err)) goto fail;
    unet_shape in = unet_plan_input_shape(e.plan, 0);
    if (e.tiling.same)
        printf("wrote %s: %s, image (N, %d, H, W) -> prob (N, %d, H, W), H and W multiples of %d; opset %d\n",
               cfg->output, unet_model_kind_name(cfg->model.kind), in.c, cfg->model.classes, e.tiling.align,
               cfg->opset);
    else
        printf("wrote %s: %s, image (N, %d, %d, %d) -> prob (N, %d, %d, %d); opset %d\n", cfg->output,
               unet_model_kind_name(cfg->model.kind), in.c, in.h, in.w, cfg->model.classes, e.tiling.out, e.tiling.out,
               cfg->opset);
    code = 0;
    goto done;
fail:
    fprintf(stderr, "unet export: %s\n", err);
done:
    exported_free(&e);
    free(meta);
    return code;
}
