/* Shape inference and the valid-size search. A valid-padding network cannot
 * take every tile size (each pooling needs an even size, each skip must be at
 * least as large as what it is concatenated with), so an impossible size is a
 * user error that names the nearest sizes that work. */
#include <string.h>

#include "host/core/op_table.h"
#include "host/core/shapes.h"

/* The op's own rule (op_table.c), from its input shapes. */
static int infer_node(const unet_graph *g, const unet_node *n, const unet_shape *in, unet_shape *out, char *err,
                      size_t errlen) {
    if (n->op < 0 || n->op >= UNET_OP_COUNT) {
        snprintf(err, errlen, "%s: unknown op", n->name);
        return -1;
    }
    *out = in[0];
    return unet_op_row_of(n->op)->infer(g, n, in, out, err, errlen);
}

unet_shape unet_input_shape(const unet_graph *g, int input, unet_plan_cfg cfg) {
    if (cfg.input_shapes) return cfg.input_shapes[input];
    const unet_graph_input_desc *d = &g->inputs[input];
    return (unet_shape){cfg.batch, d->kind == UNET_INPUT_IMAGE ? d->channels : 1, cfg.height, cfg.width};
}

int unet_infer_all(const unet_graph *g, unet_plan_cfg cfg, unet_shape *shapes, char *err, size_t errlen) {
    for (int i = 0; i < g->n_inputs; i++) {
        shapes[g->inputs[i].value] = unet_input_shape(g, i, cfg);
        unet_shape s = shapes[g->inputs[i].value];
        if (s.n < 1 || s.c < 1 || s.h < 1 || s.w < 1) {
            snprintf(err, errlen, "input %s has an empty shape %dx%dx%dx%d", g->inputs[i].name, s.n, s.c, s.h, s.w);
            return -1;
        }
    }
    for (int k = 0; k < g->n_nodes; k++) {
        const unet_node *n = &g->nodes[k];
        if (!cfg.training && unet_op_is_loss(n->op)) continue;
        unet_shape in[UNET_MAX_IN];
        for (int i = 0; i < n->n_in; i++) in[i] = shapes[n->in[i]];
        if (infer_node(g, n, in, &shapes[n->out_value], err, errlen)) return -1;
    }
    return 0;
}

int unet_graph_infer(const unet_graph *g, unet_plan_cfg cfg, unet_shape *out_shapes, int max_out, char *err,
                     size_t errlen) {
    unet_shape *shapes = calloc((size_t)g->n_values, sizeof *shapes);
    if (!shapes) abort();
    int rc = unet_infer_all(g, cfg, shapes, err, errlen);
    if (!rc)
        for (int o = 0; o < g->n_outputs && o < max_out; o++) out_shapes[o] = shapes[g->outputs[o]];
    free(shapes);
    return rc;
}

static int size_is_valid(const unet_graph *g, int size) {
    char err[256];
    unet_plan_cfg cfg = {.batch = 1, .height = size, .width = size, .training = 1};
    unet_shape out[1];
    return size > 0 && unet_graph_infer(g, cfg, out, 1, err, sizeof err) == 0;
}

void unet_graph_nearest_valid(const unet_graph *g, int size, int *below, int *above) {
    *below = *above = 0;
    for (int s = size - 1; s > 0 && !*below; s--)
        if (size_is_valid(g, s)) *below = s;
    /* valid sizes recur every 2^(levels-1) pixels, so a bounded search finds one */
    for (int s = size + 1; s <= size + 4096 && !*above; s++)
        if (size_is_valid(g, s)) *above = s;
}

int unet_infer_tile(const unet_graph *g, unet_plan_cfg cfg, unet_shape *shapes, char *err, size_t errlen) {
    char why[512];
    if (!unet_infer_all(g, cfg, shapes, why, sizeof why)) return 0;
    if (cfg.input_shapes || cfg.height != cfg.width) {
        snprintf(err, errlen, "%s", why);
        return -1;
    }
    int below, above;
    unet_graph_nearest_valid(g, cfg.height, &below, &above);
    if (below && above)
        snprintf(err, errlen, "tile size %d does not fit this network (%s); nearest valid sizes: %d and %d", cfg.height,
                 why, below, above);
    else if (above)
        snprintf(err, errlen, "tile size %d does not fit this network (%s); smallest valid size: %d", cfg.height, why,
                 above);
    else
        snprintf(err, errlen, "tile size %d does not fit this network (%s)", cfg.height, why);
    return -1;
}
